"""Hugging Face export and import: wgpt's Transformer as ``GPT2LMHeadModel`` or ``LlamaForCausalLM``.

``export`` writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads
offline: ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer
(``tokenizer.json``, which encodes text to wgpt's own ids, ``tokenizer_config.json``,
``special_tokens_map.json``) and ``wgpt.json`` (the model class, its config and the tokenizer's
record: what makes such a directory a wgpt export, and what rebuilds the model exactly).
``load_hf_weights`` reads such a directory, or one saved by transformers itself, into a wgpt
model: ``train.py init_from=<dir>``, and ``eval.py``/``generate.py ckpt_path=<dir>``.

Which transformers class a model exports as follows from its positions: learned ones make it
GPT-2-shaped (LayerNorm, an ungated MLP, biases, one key/value head per query head), rotary ones
Llama-shaped (RMSNorm, a gated MLP, any key/value heads, biases or none). A knob that class
cannot express (``norm=rmsnorm`` with learned positions, ...) is refused in one line naming it.
Nothing here imports transformers: the files are JSON and safetensors, written and read directly.

What differs between the two layouts, and is converted both ways:

- GPT-2's linear layers are ``Conv1D`` (weight (in, out), our ``nn.Linear``'s transposed), and
  its queries, keys and values are one ``c_attn``; ours are ``wq`` and ``wkv`` (keys, then values).
- wgpt rotates consecutive pairs of features (``rotary.py``); HF Llama rotates the first half of
  a head against the second (``rotate_half``). The query and key rows are permuted on export (as
  Meta-to-HF conversion does) and back on import, so that both compute the same attention.
- The vocabulary is padded to a multiple of 64 (``padded_vocab_size``): exported as it is
  (``vocab_size`` = the padded size), the padding ids suppressed in ``generation_config.json`` as
  generate.py masks them. A smaller vocabulary (HF GPT-2's 50,257) is padded on import.
- Tied embeddings are stored once (``tie_word_embeddings``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from wgpt.errors import WgptError

log = logging.getLogger("wgpt")

WGPT_FILE = "wgpt.json"  # marks a directory as a wgpt export (see export's overwrite rule)
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # transformers' sharded save
GPT2, LLAMA = "gpt2", "llama"
ARCHITECTURES = {GPT2: "GPT2LMHeadModel", LLAMA: "LlamaForCausalLM"}
MODEL_CLASSES = {GPT2: "wgpt.models.gpt.GPT", LLAMA: "wgpt.models.llama.Llama"}
# wgpt's activations under each class's names: GPT-2 calls the tanh GELU "gelu_new", Llama's
# config takes any of transformers' ACT2FN names.
GPT2_ACTIVATIONS = {"gelu": "gelu_new", "silu": "silu", "relu": "relu"}
LLAMA_ACTIVATIONS = {"gelu": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}
HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "silu": "silu", "swish": "silu", "relu": "relu"}
# Knobs that fix the weights' shapes or the function they compute: an init_from directory must
# agree on every one of them with the model it is loaded into.
ARCHITECTURE_KNOBS = ("d_embed", "n_layers", "n_heads", "n_kv_heads", "norm", "activation", "gated", "pos", "bias", "tie_embeddings")


# Export.


def architecture(config: Mapping[str, Any], model_class: str = "wgpt.models.transformer.Transformer") -> str:
    """GPT2 or LLAMA: the transformers class a wgpt model ``config`` exports as; a one-line
    WgptError naming the first knob that class cannot express."""
    if not model_class.startswith("wgpt.models.") or model_class.rpartition(".")[2] not in ("GPT", "Llama", "Transformer"):
        raise WgptError(
            f"model class {model_class} is not wgpt's Transformer (GPT, Llama): only those export to Hugging Face transformers"
        )
    if config["pos"] == "learned":
        family, name = GPT2, "GPT2LMHeadModel (learned positions)"
        wrong = [
            ("norm", config["norm"] != "layernorm", "it has LayerNorm only"),
            ("gated", config["gated"], "its MLP is not gated"),
            ("bias", not config["bias"], "it has biases in every layer"),
            ("n_kv_heads", config["n_kv_heads"] not in (None, config["n_heads"]), "it has a key/value head per query head"),
        ]
        fix = "train with pos=rotary for a Llama-shaped export, or with GPT-2's settings"
    else:
        family, name = LLAMA, "LlamaForCausalLM (rotary positions)"
        wrong = [
            ("norm", config["norm"] != "rmsnorm", "it has RMSNorm only"),
            ("gated", not config["gated"], "its MLP is gated (gate, up, down)"),
        ]
        fix = "train with pos=learned for a GPT-2-shaped export, or with Llama's settings"
    for knob, bad, why in wrong:
        if bad:
            raise WgptError(f"model.{knob}={_value(config[knob])} has no {name} equivalent ({why}): it cannot be exported; {fix}")
    return family


def hf_config(config: Mapping[str, Any], family: str, tokenizer, dtype: str = "float32") -> dict[str, Any]:
    """config.json of the transformers model computing what the wgpt model ``config`` computes
    (its weights stored in ``dtype``)."""
    from wgpt.models.transformer import mlp_hidden_size

    c = config
    # Documents are separated by end-of-text in training, and generate.py begins an empty prompt
    # with it: it is also the model's beginning of text, as in GPT-2.
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if family == GPT2:
        return {
            "architectures": [ARCHITECTURES[GPT2]], "model_type": GPT2, "vocab_size": c["vocab_size"],
            "n_positions": c["max_seq_len"], "n_embd": c["d_embed"], "n_layer": c["n_layers"], "n_head": c["n_heads"],
            "n_inner": 4 * c["d_embed"], "activation_function": GPT2_ACTIVATIONS[c["activation"]],
            "resid_pdrop": c["dropout"], "embd_pdrop": c["dropout"], "attn_pdrop": c["dropout"],
            "layer_norm_epsilon": c["norm_eps"], "initializer_range": 0.02, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": c["tie_embeddings"], "use_cache": True, "dtype": dtype, **ids,
        }  # fmt: skip
    n_kv_heads = c["n_kv_heads"] or c["n_heads"]
    return {
        "architectures": [ARCHITECTURES[LLAMA]], "model_type": LLAMA, "vocab_size": c["vocab_size"],
        "hidden_size": c["d_embed"], "num_hidden_layers": c["n_layers"], "num_attention_heads": c["n_heads"],
        "num_key_value_heads": n_kv_heads, "head_dim": c["d_embed"] // c["n_heads"],
        "intermediate_size": mlp_hidden_size(c["d_embed"], True, c["multiple_of"], c["ffn_dim_multiplier"]),
        "hidden_act": LLAMA_ACTIVATIONS[c["activation"]], "max_position_embeddings": c["max_seq_len"],
        "rms_norm_eps": c["norm_eps"],
        # Both spellings: transformers 5 reads rope_parameters, 4.x rope_theta.
        "rope_theta": c["rope_theta"], "rope_parameters": {"rope_type": "default", "rope_theta": c["rope_theta"]},
        "attention_bias": c["bias"], "mlp_bias": c["bias"],
        # HF Llama drops out attention weights only; wgpt's residual and embedding dropout is
        # for training, so inference is the same either way.
        "attention_dropout": c["dropout"], "tie_word_embeddings": c["tie_embeddings"], "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True, "dtype": dtype, **ids,
    }  # fmt: skip


def to_hf(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], family: str) -> dict[str, torch.Tensor]:
    """wgpt weights (``model.state_dict()`` names) -> the transformers class's, contiguous, tied ones once."""
    out: dict[str, torch.Tensor] = {}
    H, K = config["n_heads"], config["n_kv_heads"] or config["n_heads"]
    D = config["d_embed"] // H
    for i in range(config["n_layers"]):
        ours = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        if family == GPT2:
            h = f"transformer.h.{i}."
            t = lambda w: w.t()  # noqa: E731  (Conv1D keeps weights as (in, out))
            out |= {
                h + "ln_1.weight": ours["attn_norm.weight"], h + "ln_1.bias": ours["attn_norm.bias"],
                h + "attn.c_attn.weight": t(torch.cat([ours["attn.wq.weight"], ours["attn.wkv.weight"]])),
                h + "attn.c_attn.bias": torch.cat([ours["attn.wq.bias"], ours["attn.wkv.bias"]]),
                h + "attn.c_proj.weight": t(ours["attn.proj.weight"]), h + "attn.c_proj.bias": ours["attn.proj.bias"],
                h + "ln_2.weight": ours["mlp_norm.weight"], h + "ln_2.bias": ours["mlp_norm.bias"],
                h + "mlp.c_fc.weight": t(ours["mlp.fc.weight"]), h + "mlp.c_fc.bias": ours["mlp.fc.bias"],
                h + "mlp.c_proj.weight": t(ours["mlp.proj.weight"]), h + "mlp.c_proj.bias": ours["mlp.proj.bias"],
            }  # fmt: skip
            continue
        h = f"model.layers.{i}."
        for suffix in ("weight", "bias") if config["bias"] else ("weight",):
            k, v = ours[f"attn.wkv.{suffix}"].split(K * D)
            gate, up = ours[f"mlp.gate_up.{suffix}"].chunk(2)
            out |= {
                h + f"self_attn.q_proj.{suffix}": _halves(ours[f"attn.wq.{suffix}"], H),
                h + f"self_attn.k_proj.{suffix}": _halves(k, K), h + f"self_attn.v_proj.{suffix}": v,
                h + f"self_attn.o_proj.{suffix}": ours[f"attn.proj.{suffix}"],
                h + f"mlp.gate_proj.{suffix}": gate, h + f"mlp.up_proj.{suffix}": up,
                h + f"mlp.down_proj.{suffix}": ours[f"mlp.proj.{suffix}"],
            }  # fmt: skip
        out[h + "input_layernorm.weight"] = ours["attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = ours["mlp_norm.weight"]
    if family == GPT2:
        out |= {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
                "transformer.ln_f.weight": state["final_norm.weight"], "transformer.ln_f.bias": state["final_norm.bias"]}  # fmt: skip
    else:
        out |= {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["final_norm.weight"]}
    if not config["tie_embeddings"]:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def _halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from wgpt's rotary layout (pairs 2j, 2j+1) to HF's (j, j + D/2)."""
    shape = w.shape
    return w.reshape(heads, -1, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """``_halves`` undone: HF's rotary row layout back to wgpt's."""
    shape = w.shape
    return w.reshape(heads, 2, -1, *shape[1:]).transpose(1, 2).reshape(shape)


def tokenizer_files(tokenizer, max_seq_len: int) -> dict[str, str]:
    """tokenizer.json (what ``tokenizers`` and transformers load; it encodes text to the same ids
    as ``tokenizer``), tokenizer_config.json and special_tokens_map.json."""
    from wgpt.data.tokenizer import SPECIAL_TOKENS

    end, _, pad = SPECIAL_TOKENS
    specials = {"bos_token": end, "eos_token": end, "pad_token": pad}  # end-of-text begins text too (see hf_config)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": max_seq_len,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
    }  # fmt: skip
    return {
        "tokenizer.json": tokenizer_json(tokenizer),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(specials, indent=2) + "\n",
    }


def tokenizer_json(tokenizer) -> str:
    """A ``tokenizers`` JSON that encodes text as ``tokenizer`` does: a wgpt BPE is one already;
    r50k is rebuilt from its tiktoken ranks (``_r50k_json``)."""
    from wgpt.data.tokenizer import R50K

    if getattr(tokenizer, "json_text", None) is not None:
        return tokenizer.json_text
    if tokenizer.name == R50K:
        return _r50k_json()
    raise WgptError(f"tokenizer {tokenizer.name} cannot be written as a Hugging Face tokenizer.json")


@lru_cache(maxsize=1)
def _r50k_json() -> str:
    """r50k as a ``tokenizers`` byte-level BPE: the tiktoken ranks as its vocabulary, each rank's
    merge recovered by running BPE on the token with only lower ranks allowed (as tiktoken's own
    conversion to transformers does), wgpt's split pattern, the 3 specials after the 50,256 ranks.
    ``ignore_merges`` looks a whole piece up first, as tiktoken does. Encodes every text to the
    ids tiktoken gives, except text that spells a special token: Hugging Face tokenizers read
    that as the special token, wgpt as plain text."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from wgpt.data.tokenizer import PAT_STR, SPECIAL_TOKENS, _load_ranks

    ranks = _load_ranks()
    vocab = {_spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            first, second = _last_merge(token, rank, ranks)
            merges.append((_spell(first), _spell(second)))
    tokenizer = HFTokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tokenizer.token_to_id(SPECIAL_TOKENS[0]) == len(ranks)  # the ids wgpt gives them
    return tokenizer.to_str()


def _spell(token: bytes) -> str:
    """A token's bytes in the byte-level alphabet (GPT-2's printable stand-ins)."""
    return "".join(_byte_chars()[b] for b in token)


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    from wgpt.data.bpe import _byte_alphabet

    return {b: c for c, b in _byte_alphabet().items()}


def _last_merge(token: bytes, rank: int, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make ``token``: its bytes merged by lowest rank, below ``rank``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(
            ((r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1], rank)) < rank),
            default=None,
        )
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"r50k token {token!r} is not one merge of two lower-ranked tokens")
    return parts[0], parts[1]


def export(
    source: str | Path, out: str | Path, overwrite: bool = False, key: str = "ckpt_path", dtype: str | None = None
) -> Path:
    """export.py: the model at ``source`` (a .ckpt, a .safetensors beside it, a run dir, or an
    export) written to the directory ``out`` for transformers, temp-then-rename; its floating-point
    weights cast to ``dtype`` ("bfloat16", "float16", "float32"; None: as stored).

    ``out`` may be missing, empty, or a previous wgpt export (it has wgpt.json), which is
    replaced; anything else only with ``overwrite=True``, and never a directory that holds the
    source or the current directory."""
    from safetensors.torch import save_file

    from wgpt.checkpoint import load_model_source, peek_model, readable_as_usual

    out = Path(out).expanduser().resolve()
    source_path = Path(source).expanduser().resolve()
    _check_out(out, source_path, overwrite)  # before the (slow) load
    peeked = peek_model(source_path, key)
    if peeked is not None and {"pos", "norm"} <= set(peeked[1]):
        architecture(peeked[1], peeked[0])  # a knob without an equivalent: refused before the weights are read
    loaded = load_model_source(source_path, key=key)
    model_class = f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}"
    config = dict(loaded.model.config)
    family = architecture(config, model_class)
    tokenizer = loaded.tokenizer
    weights = to_hf(loaded.model.state_dict(), config, family)
    if dtype is not None:
        weights = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in weights.items()}
    dtype = str(weights["lm_head.weight" if "lm_head.weight" in weights else next(iter(weights))].dtype).removeprefix("torch.")
    files = {
        "config.json": json.dumps(hf_config(config, family, tokenizer, dtype), indent=2) + "\n",
        "generation_config.json": json.dumps(generation_config(config, tokenizer), indent=2) + "\n",
        **tokenizer_files(tokenizer, config["max_seq_len"]),
        WGPT_FILE: json.dumps({
            "format": "wgpt-export", "version": 1, "architecture": ARCHITECTURES[family],
            "model_class": model_class, "model_config": config, "tokenizer": tokenizer.record(),
            "source": str(source_path), "global_step": loaded.global_step,
        }, indent=2) + "\n",
    }  # fmt: skip
    with _replaced_atomically(out) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        readable_as_usual(tmp / WEIGHTS_FILE)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    size = (out / WEIGHTS_FILE).stat().st_size
    print(
        f"Exported {config.get('name', 'model')} (step {loaded.global_step}, {sum(v.numel() for v in weights.values()) / 1e6:.2f}M "
        f"parameters, vocab_size {config['vocab_size']}, tokenizer {tokenizer.name}) as {ARCHITECTURES[family]} to {out} "
        f"({size / 2**20:.1f} MiB): load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return out


def generation_config(config: Mapping[str, Any], tokenizer) -> dict[str, Any]:
    """generation_config.json: end-of-text ends a text and begins one, and the padding rows of
    the vocabulary (ids past the tokenizer's) are never drawn, as in generate.py."""
    padding = list(range(len(tokenizer), config["vocab_size"]))
    return {
        "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, **({"suppress_tokens": padding} if padding else {}),
    }  # fmt: skip


def is_export(path: Path) -> bool:
    return (path / WGPT_FILE).is_file() and (path / "config.json").is_file()


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WgptError(f"out={out} is a file: give a directory to export into")
    if out == source or out in source.parents:
        raise WgptError(f"out={out} holds the model being exported ({source}): export into another directory")
    if out == Path.cwd() or out in Path.cwd().parents:
        raise WgptError(f"out={out} holds the current directory: export into a directory of its own")
    if out.is_dir() and any(out.iterdir()) and not is_export(out) and not overwrite:
        raise WgptError(
            f"out={out} exists and is not a wgpt export (no {WGPT_FILE}): give a new or empty directory, "
            "or overwrite=true to replace it and everything in it"
        )


class _replaced_atomically:
    """Files written into a temporary directory beside ``out``, which then takes ``out``'s place
    whole: a kill midway leaves the old ``out`` (or none), never half an export. On an error the
    temporary directory, and the parent directories made for it, are removed again."""

    def __init__(self, out: Path):
        self.out = out
        self.made = [d for d in reversed(out.parents) if not d.exists()]  # shallowest first
        self.tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        self.old = out.with_name(f".{out.name}.old-{os.getpid()}")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for directory in reversed(self.made):
                try:
                    directory.rmdir()
                except OSError:
                    break
            return
        _fsync_dir(self.tmp)
        if self.out.exists():
            os.replace(self.out, self.old)
        os.replace(self.tmp, self.out)
        _fsync_dir(self.out.parent)
        shutil.rmtree(self.old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for file in [*path.iterdir(), path] if path.is_dir() else [path]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Import.


@dataclass
class HFDir:
    """A transformers model directory, read without loading its weights."""

    path: Path
    key: str  # the setting that named it (init_from, ckpt_path), for messages
    config: dict[str, Any]  # its config.json
    family: str  # GPT2 or LLAMA
    weight_files: list[Path]
    wgpt: dict[str, Any] | None  # wgpt.json, when wgpt exported it

    @property
    def source(self) -> str:
        return f"{self.key}={self.path}"


def read_hf_dir(path: str | Path, key: str = "init_from") -> HFDir:
    """A directory as transformers' ``save_pretrained`` (or ``export``) writes it, checked: a
    one-line WgptError when it is missing, not a model directory, or of a kind wgpt cannot load."""
    path = Path(path).expanduser().resolve()
    source = f"{key}={path}"
    if not path.exists():
        raise WgptError(f"{source} does not exist: give a Hugging Face model directory (config.json, model.safetensors), e.g. one export.py wrote")
    if not path.is_dir():
        raise WgptError(f"{source} is a file: give the Hugging Face model directory (config.json, model.safetensors) it is part of")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise WgptError(f"{source} has no config.json: it is not a Hugging Face model directory (give one that export.py or save_pretrained wrote)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise WgptError(f"{source}: config.json is not JSON ({e}): the directory is damaged") from None
    if not isinstance(config, dict):
        raise WgptError(f"{source}: config.json holds no model config: the directory is damaged")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise WgptError(
            f"{source} holds a model_type={model_type} model: wgpt loads gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM) only"
        )
    if (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise WgptError(f"{source}: {INDEX_FILE} is damaged (no weight_map)") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = [path / WEIGHTS_FILE]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        pickled = next((p.name for p in path.glob("pytorch_model*.bin")), None)
        if pickled:
            raise WgptError(
                f"{source} holds {pickled}, not {missing.name}: wgpt reads safetensors only (a .bin is a pickle, which could run code); "
                "convert it where you trust it: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)"
            )
        raise WgptError(f"{source} has no {missing.name}: the directory is incomplete (export it again)")
    wgpt = None
    if (path / WGPT_FILE).is_file():
        try:
            wgpt = json.loads((path / WGPT_FILE).read_text(encoding="utf-8"))
        except ValueError as e:
            raise WgptError(f"{source}: {WGPT_FILE} is not JSON ({e}): the directory is damaged (export it again)") from None
    return HFDir(path, key, config, model_type, files, wgpt)


def implied_config(d: HFDir) -> tuple[str, dict[str, Any]]:
    """(wgpt model class, its full config) that computes what the directory's model computes; a
    one-line WgptError for a setting wgpt's Transformer has no equivalent of."""
    c, source = d.config, d.source

    def refuse(setting: str, why: str):
        raise WgptError(f"{source}: config.json has {setting}, which wgpt's Transformer has no equivalent of ({why}): it cannot be loaded")

    def get(name: str, default=None):
        value = c.get(name, default)
        return default if value is None else value

    if d.family == GPT2:
        act = get("activation_function", "gelu_new")
        d_embed = c.get("n_embd", c.get("hidden_size"))
        if act not in HF_ACTIVATIONS:
            refuse(f"activation_function={act}", "wgpt's gelu is the tanh approximation, gelu_new; silu and relu are the others")
        if get("n_inner") not in (None, 4 * d_embed):
            refuse(f"n_inner={c['n_inner']}", f"GPT-2-shaped MLPs are 4 x n_embd = {4 * d_embed} wide")
        for name, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
            if get(name, want) != want:
                refuse(f"{name}={c[name]}", "attention here is plain scaled dot-product self-attention")
        config = dict(
            d_embed=d_embed, n_layers=c.get("n_layer", c.get("num_hidden_layers")),
            n_heads=c.get("n_head", c.get("num_attention_heads")), n_kv_heads=None,
            max_seq_len=c.get("n_positions", c.get("max_position_embeddings", 1024)), norm="layernorm",
            norm_eps=get("layer_norm_epsilon", 1e-5), activation=HF_ACTIVATIONS[act], gated=False, multiple_of=256,
            ffn_dim_multiplier=None, pos="learned", rope_theta=10000.0, bias=True,
            tie_embeddings=get("tie_word_embeddings", True),
        )  # fmt: skip
    else:
        act = get("hidden_act", "silu")
        d_embed, n_heads = c.get("hidden_size"), c.get("num_attention_heads")
        if act not in HF_ACTIVATIONS:
            refuse(f"hidden_act={act}", "wgpt's gated MLP takes silu, gelu (tanh approximation, gelu_pytorch_tanh) or relu")
        if isinstance(d_embed, int) and isinstance(n_heads, int) and get("head_dim", d_embed // n_heads) != d_embed // n_heads:
            refuse(f"head_dim={c['head_dim']}", f"wgpt's heads are hidden_size / num_attention_heads = {d_embed // n_heads} wide")
        rope = get("rope_parameters") or get("rope_scaling") or {}
        if not isinstance(rope, dict):
            refuse(f"rope_parameters={rope}", "wgpt's rotary positions are the plain ones, rope_type=default")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            refuse(f"rope type {rope_type}", "wgpt's rotary positions are the plain ones, rope_type=default")
        if bool(get("attention_bias", False)) != bool(get("mlp_bias", False)):
            refuse(f"attention_bias={get('attention_bias', False)}, mlp_bias={get('mlp_bias', False)}", "wgpt's bias knob is for every linear layer")
        width = get("intermediate_size")
        hint = (d.wgpt or {}).get("model_config") or {}
        mlp = _mlp_knobs(d_embed, width, hint.get("multiple_of", 256), hint.get("ffn_dim_multiplier"))
        config = dict(
            d_embed=d_embed, n_layers=c.get("num_hidden_layers"), n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", n_heads), max_seq_len=get("max_position_embeddings", 2048),
            norm="rmsnorm", norm_eps=get("rms_norm_eps", 1e-6), activation=HF_ACTIVATIONS[act], gated=True, **mlp,
            pos="rotary", rope_theta=float(rope.get("rope_theta") or get("rope_theta", 10000.0)),
            bias=bool(get("attention_bias", False)), tie_embeddings=get("tie_word_embeddings", False),
        )  # fmt: skip
    name = ((d.wgpt or {}).get("model_config") or {}).get("name") or d.path.name
    config = dict(vocab_size=c.get("vocab_size"), **config, dropout=0.0, sdpa=True, name=name)
    return MODEL_CLASSES[d.family], config


def _mlp_knobs(d_embed: int, width, multiple_of: int, multiplier) -> dict[str, Any]:
    """multiple_of and ffn_dim_multiplier that size a gated MLP ``width`` wide: the given ones
    if they do, else the width itself as multiple_of (scaled down first when 8/3 d_embed is wider)."""
    from wgpt.models.transformer import mlp_hidden_size

    if not isinstance(width, int) or not isinstance(d_embed, int) or width < 1:
        return dict(multiple_of=multiple_of, ffn_dim_multiplier=multiplier)  # the model's own check reports it
    base = int(2 * 4 * d_embed / 3)
    for m, f in ((multiple_of, multiplier), (width, None), (width, width / base)):
        if mlp_hidden_size(d_embed, True, m, f) == width:
            return dict(multiple_of=m, ffn_dim_multiplier=f)
    return dict(multiple_of=width, ffn_dim_multiplier=width / base)


def from_hf(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any], family: str, source: str) -> dict[str, torch.Tensor]:
    """The transformers class's weights -> wgpt's names and layout (``config``: the implied one)."""
    prefix = "transformer." if family == GPT2 else "model."
    w = {}
    for name, tensor in weights.items():
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # old saves of buffers (GPT-2's causal masks, rotary tables), rebuilt by the model
        # A save of the bare model (GPT2Model, LlamaModel) has no prefix: the hub's own gpt2 is one.
        w[name if name.startswith((prefix, "lm_head.")) else prefix + name] = tensor
    out, used = {}, set()

    def take(name: str) -> torch.Tensor:
        if name not in w:
            raise WgptError(f"{source} has no weight {name}, which its config.json says a {ARCHITECTURES[family]} has: the directory is damaged")
        used.add(name)
        return w[name]

    H, K = config["n_heads"], config["n_kv_heads"] or config["n_heads"]
    for i in range(config["n_layers"]):
        p = f"blocks.{i}."
        if family == GPT2:
            h = f"transformer.h.{i}."
            qkv, qkv_bias = take(h + "attn.c_attn.weight").t(), take(h + "attn.c_attn.bias")
            C = config["d_embed"]
            out |= {
                p + "attn_norm.weight": take(h + "ln_1.weight"), p + "attn_norm.bias": take(h + "ln_1.bias"),
                p + "attn.wq.weight": qkv[:C], p + "attn.wkv.weight": qkv[C:],
                p + "attn.wq.bias": qkv_bias[:C], p + "attn.wkv.bias": qkv_bias[C:],
                p + "attn.proj.weight": take(h + "attn.c_proj.weight").t(), p + "attn.proj.bias": take(h + "attn.c_proj.bias"),
                p + "mlp_norm.weight": take(h + "ln_2.weight"), p + "mlp_norm.bias": take(h + "ln_2.bias"),
                p + "mlp.fc.weight": take(h + "mlp.c_fc.weight").t(), p + "mlp.fc.bias": take(h + "mlp.c_fc.bias"),
                p + "mlp.proj.weight": take(h + "mlp.c_proj.weight").t(), p + "mlp.proj.bias": take(h + "mlp.c_proj.bias"),
            }  # fmt: skip
            continue
        h = f"model.layers.{i}."
        for suffix in ("weight", "bias") if config["bias"] else ("weight",):
            a, m = h + "self_attn.", h + "mlp."
            out |= {
                p + f"attn.wq.{suffix}": _pairs(take(a + f"q_proj.{suffix}"), H),
                p + f"attn.wkv.{suffix}": torch.cat([_pairs(take(a + f"k_proj.{suffix}"), K), take(a + f"v_proj.{suffix}")]),
                p + f"attn.proj.{suffix}": take(a + f"o_proj.{suffix}"),
                p + f"mlp.gate_up.{suffix}": torch.cat([take(m + f"gate_proj.{suffix}"), take(m + f"up_proj.{suffix}")]),
                p + f"mlp.proj.{suffix}": take(m + f"down_proj.{suffix}"),
            }  # fmt: skip
        out[p + "attn_norm.weight"] = take(h + "input_layernorm.weight")
        out[p + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
    if family == GPT2:
        out |= {"wte.weight": take("transformer.wte.weight"), "wpe.weight": take("transformer.wpe.weight"),
                "final_norm.weight": take("transformer.ln_f.weight"), "final_norm.bias": take("transformer.ln_f.bias")}  # fmt: skip
    else:
        out |= {"wte.weight": take("model.embed_tokens.weight"), "final_norm.weight": take("model.norm.weight")}
    if config["tie_embeddings"]:
        used.add("lm_head.weight")  # transformers may save the tied copy too
        out["lm_head.weight"] = out["wte.weight"]
    else:
        out["lm_head.weight"] = take("lm_head.weight")
    extra = next((name for name in w if name not in used), None)
    if extra is not None:
        raise WgptError(f"{source} has a weight {extra} that a {ARCHITECTURES[family]} of its config.json lacks: the directory is damaged")
    return {k: v.contiguous() for k, v in out.items()}


def read_weights(d: HFDir) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files (safetensors holds tensors only: no code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = {}
    for file in d.weight_files:
        try:
            weights |= load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise WgptError(f"{d.source}: {file.name} is not a readable safetensors file ({e}): the directory is damaged") from None
    return weights


def check_fits_config(d: HFDir, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The directory's implied config, after checking that a model of ``model_config`` can take
    its weights: a one-line WgptError listing the ``model.*`` overrides that make it so."""
    from wgpt.models.transformer import mlp_hidden_size

    _, implied = implied_config(d)
    ours = dict(model_config)
    norm = lambda c, k: (c[k] or c["n_heads"]) if k == "n_kv_heads" else c[k]  # noqa: E731  (null: one per query head)
    knobs = list(ARCHITECTURE_KNOBS)
    if implied["pos"] == "learned":
        knobs.append("max_seq_len")  # the learned position table's rows
    differ = [k for k in knobs if k not in ours or norm(implied, k) != norm(ours, k)]
    width = lambda c: mlp_hidden_size(c["d_embed"], c["gated"], c["multiple_of"], c["ffn_dim_multiplier"])  # noqa: E731
    if implied["gated"] and not differ and width(implied) != width(ours):
        differ += ["multiple_of", "ffn_dim_multiplier"]
    if differ:
        overrides = " ".join(f"model.{k}={_value(implied[k])}" for k in differ)
        has = ", ".join(f"{k}={_value(ours.get(k))}" for k in differ)
        made_by = ((d.wgpt or {}).get("model_config") or {}).get("name")
        preset = f"model={made_by} with the overrides of its run" if made_by else "the preset it was trained as"
        raise WgptError(
            f"{d.source} holds a {ARCHITECTURES[d.family]} that model {ours.get('name', '?')} ({has}) does not fit: "
            f"its config.json implies {overrides}: add those overrides, or use {preset}"
        )
    return implied


def check_hf_vocab(d: HFDir, vocab_size: int, tokenizer) -> None:
    """The directory's vocabulary rows fit ``vocab_size`` (the run's tokenizer, padded): fewer are
    padded on loading; more only if the extra rows are beyond every id of ``tokenizer``."""
    rows = d.config.get("vocab_size")
    if isinstance(rows, int) and rows > vocab_size:
        name = f"tokenizer {tokenizer.name} ({len(tokenizer)} tokens)" if tokenizer is not None else "this model"
        raise WgptError(
            f"{d.source} has {rows} vocabulary rows, more than the {vocab_size} of {name}, padded: "
            "its tokenizer is not this run's: use the tokenizer it was trained with"
        )


def check_hf_tokenizer(d: HFDir, tokenizer) -> None:
    """A one-line WgptError unless the directory's tokenizer gives its ids the meaning
    ``tokenizer`` gives them (a wgpt export: the same tokenizer; another directory: the same
    vocabulary, e.g. HF GPT-2's for r50k). Without tokenizer files, says so in the log."""
    from wgpt.data.tokenizer import tokenizer_config

    record = (d.wgpt or {}).get("tokenizer")
    if record is not None:
        if record.get("fingerprint") != tokenizer.fingerprint:
            raise WgptError(
                f"{d.source} was trained with tokenizer {record.get('name')} ({record.get('fingerprint')}), this run uses "
                f"{tokenizer.name} ({tokenizer.fingerprint}): train with {tokenizer_config(record.get('name'))} on the data it was trained on"
            )
        return
    theirs = _dir_vocab(d)
    if theirs is None:
        log.warning("%s has no tokenizer files: its ids are taken to mean what they mean to tokenizer %s", d.source, tokenizer.name)
        return
    ours = ordinary_vocab(tokenizer)
    if theirs != ours:
        wrong = next((t for t, i in theirs.items() if ours.get(t) != i), None)
        raise WgptError(
            f"{d.source} has a tokenizer whose ids are not those of this run's {tokenizer.name} "
            f"({len(theirs)} tokens there, {len(ours)} here; e.g. {wrong!r} is {theirs.get(wrong)} there, {ours.get(wrong)} here): "
            "start from a model of the same tokenizer (r50k is GPT-2's)"
        )


def ordinary_vocab(tokenizer) -> dict[str, int]:
    """{byte-level token: id} of a wgpt tokenizer's ordinary (non-special) tokens."""
    from wgpt.data.tokenizer import R50K, _load_ranks

    if getattr(tokenizer, "json_text", None) is not None:
        return _json_vocab(json.loads(tokenizer.json_text))
    if tokenizer.name == R50K:
        return {_spell(token): rank for token, rank in _load_ranks().items()}
    raise WgptError(f"tokenizer {tokenizer.name} has no byte-level vocabulary to compare")


def _json_vocab(data: Mapping[str, Any]) -> dict[str, int] | None:
    vocab = (data.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    specials = {t.get("content") for t in data.get("added_tokens") or []}
    return {t: i for t, i in vocab.items() if t not in specials}


def _dir_tokenizer(d: HFDir) -> dict[str, Any] | None:
    """The directory's tokenizer.json, parsed (GPT-2's vocab.json made into its shape), or None."""
    if (d.path / "tokenizer.json").is_file():
        try:
            return json.loads((d.path / "tokenizer.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise WgptError(f"{d.source}: tokenizer.json is not JSON ({e}): the directory is damaged") from None
    if (d.path / "vocab.json").is_file():
        vocab = json.loads((d.path / "vocab.json").read_text(encoding="utf-8"))
        return {"model": {"vocab": vocab}, "added_tokens": [{"content": "<|endoftext|>"}]}  # GPT-2's special token
    return None


def _dir_vocab(d: HFDir) -> dict[str, int] | None:
    """The directory's tokenizer's ordinary tokens, or None when it has no tokenizer files."""
    data = _dir_tokenizer(d)
    return None if data is None else _json_vocab(data) or {}


def tokenizer_from_hf_dir(d: HFDir):
    """The wgpt tokenizer of a directory: a wgpt export's own; r50k for a directory whose
    vocabulary is GPT-2's; a wgpt BPE's tokenizer.json (one with wgpt's special tokens)."""
    from wgpt.data.bpe import BPETokenizer
    from wgpt.data.tokenizer import SPECIAL_TOKENS, R50k, tokenizer_from_record

    record = (d.wgpt or {}).get("tokenizer")
    if record is not None:
        return tokenizer_from_record(record, source=d.source)
    data = _dir_tokenizer(d)
    if data is None:
        raise WgptError(f"{d.source} has no tokenizer (tokenizer.json): wgpt cannot tell what its ids mean")
    r50k = R50k().load()
    if _json_vocab(data) == ordinary_vocab(r50k):
        return r50k
    specials = {t.get("content") for t in data.get("added_tokens") or []}
    if (d.path / "tokenizer.json").is_file() and set(SPECIAL_TOKENS) <= specials:
        text = (d.path / "tokenizer.json").read_text(encoding="utf-8")
        return BPETokenizer(text, f"bpe{len(_json_vocab(data) or {}) + len(SPECIAL_TOKENS)}")
    raise WgptError(
        f"{d.source} has a tokenizer that is neither r50k (GPT-2's) nor a wgpt BPE: wgpt can only run models of its own tokenizers"
    )


def load_hf_weights(model: nn.Module, path: str | Path, tokenizer=None, key: str = "init_from") -> HFDir:
    """Load a transformers directory's weights into ``model`` (``train.py init_from=<dir>``):
    checked to fit its config (one line naming the ``model.*`` values the directory implies), and
    ``tokenizer``'s ids (when given). A vocabulary smaller than the model's (HF GPT-2's 50,257
    against r50k's padded 50,304) is padded, each new row the mean of the others, and says so."""
    from wgpt.checkpoint import check_fits

    d = read_hf_dir(path, key)
    implied = check_fits_config(d, model.config)
    check_hf_vocab(d, model.config["vocab_size"], tokenizer)
    if tokenizer is not None:
        check_hf_tokenizer(d, tokenizer)
    state = from_hf(read_weights(d), implied, d.family, d.source)
    state = pad_vocab(state, model.config["vocab_size"], implied["tie_embeddings"], d.source)
    check_fits(model, state, d.source)
    model.load_state_dict(state)
    changed = [f"{k}={_value(implied[k])} there, {_value(model.config[k])} here" for k in ("norm_eps", "rope_theta", "max_seq_len")
               if k in implied and implied[k] != model.config[k] and not (k == "rope_theta" and implied["pos"] == "learned")]  # fmt: skip
    if changed:
        log.info("%s: kept this model's %s", d.source, "; ".join(changed))
    return d


def pad_vocab(state: dict[str, torch.Tensor], vocab_size: int, tied: bool, source: str) -> dict[str, torch.Tensor]:
    """Embedding (and untied output) rows added up to ``vocab_size``: each the mean of the
    existing rows, so a new token's logit starts at the average one, not at 0 (well above the
    average in a trained model) where it would crowd out real tokens."""
    rows = state["wte.weight"].shape[0]
    if rows >= vocab_size:
        return state
    for name in ("wte.weight",) if tied else ("wte.weight", "lm_head.weight"):
        w = state[name]
        state[name] = torch.cat([w, w.float().mean(0, keepdim=True).to(w.dtype).expand(vocab_size - rows, -1)])
    if tied:
        state["lm_head.weight"] = state["wte.weight"]
    log.info("%s: %d vocabulary rows padded to %d (ids %d-%d start as the mean of the others)", source, rows, vocab_size, rows, vocab_size - 1)
    return state


def model_from_hf_dir(path: str | Path, tokenizer=None, key: str = "ckpt_path") -> tuple[nn.Module, HFDir]:
    """The wgpt model of a transformers directory, with its weights, in eval mode: a wgpt
    export's own class and config, else the config its config.json implies; the vocabulary
    padded for ``tokenizer`` (when given)."""
    import importlib

    from wgpt.models import padded_vocab_size

    d = read_hf_dir(path, key)
    model_class, config = implied_config(d)
    if d.wgpt is not None and isinstance(d.wgpt.get("model_config"), dict):
        model_class, config = d.wgpt.get("model_class", model_class), dict(d.wgpt["model_config"])
        check_fits_config(d, config)
    if tokenizer is not None:
        config["vocab_size"] = max(config["vocab_size"], padded_vocab_size(len(tokenizer)))
    if not isinstance(model_class, str) or not model_class.startswith("wgpt.models."):
        raise WgptError(f"{d.source}: {WGPT_FILE} names model class {model_class!r}, not one of wgpt.models")
    module_name, _, class_name = model_class.rpartition(".")
    try:
        model = getattr(importlib.import_module(module_name), class_name)(**config)
    except (TypeError, ValueError) as e:
        raise WgptError(f"{d.source}: its config does not build a wgpt model ({e})") from None
    load_hf_weights(model, d.path, tokenizer, key)
    return model.eval(), d


def _value(v) -> str:
    """A value as a Hydra override writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


# train.py init_from=<dir>.


def check_init_from(cfg, model: nn.Module, ckpt_path: str | None) -> HFDir | None:
    """``init_from`` checked before any heavy work (the directory, and its model against ``model``,
    the meta-device one of the run's config): the directory to start from, or None when none is
    given or when ``resume=auto`` found a checkpoint to continue instead (that run began from it)."""
    path = cfg.get("init_from")
    if path is None:
        return None
    if cfg.get("ckpt_path") is not None:
        raise WgptError(
            f"init_from={path} and ckpt_path={cfg.ckpt_path}: init_from starts a new run from a model's weights "
            "(step 0, a fresh optimizer), ckpt_path continues a run: give one of them"
        )
    if ckpt_path is not None:
        log.info("init_from=%s is not used: resume=auto continues %s", path, ckpt_path)
        return None
    d = read_hf_dir(path, "init_from")
    check_fits_config(d, model.config)
    return d


def check_init_tokenizer(d: HFDir, tokenizer) -> None:
    """The run's tokenizer (known once the data is ready) against the directory's."""
    from wgpt.models import padded_vocab_size

    check_hf_vocab(d, padded_vocab_size(len(tokenizer)), tokenizer)
    check_hf_tokenizer(d, tokenizer)


def start_from(model: nn.Module, d: HFDir) -> None:
    """train.py init_from: ``model`` takes the directory's weights; the run itself starts afresh."""
    load_hf_weights(model, d.path, key=d.key)
    step = (d.wgpt or {}).get("global_step")
    made_at = f", step {step} of the run that made it" if step is not None else ""
    log.info("init_from: the weights of %s (%s%s); this run starts at step 0 with a fresh optimizer", d.path, ARCHITECTURES[d.family], made_at)
