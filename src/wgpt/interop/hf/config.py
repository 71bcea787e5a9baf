"""Hugging Face export and import: wgpt's Transformer as ``GPT2LMHeadModel``, ``LlamaForCausalLM``
or ``Qwen3ForCausalLM``.

``export`` writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads
offline: ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer
(``tokenizer.json``, which encodes text to wgpt's own ids, ``tokenizer_config.json``,
``special_tokens_map.json``) and ``wgpt.json`` (the model class, its config and the tokenizer's
record: what makes such a directory a wgpt export, and what rebuilds the model exactly).
``load_hf_weights`` reads such a directory, or one saved by transformers itself, into a wgpt
model: ``train.py init_from=<dir>``, and ``eval.py``/``generate.py ckpt_path=<dir>``
(``implied.py`` reads its config.json as a wgpt config).

Which transformers class a model exports as follows from its positions: learned ones make it
GPT-2-shaped (LayerNorm, an ungated MLP, biases, one key/value head per query head), rotary ones
Llama-shaped (RMSNorm, a gated MLP, any key/value heads, biases or none), or Qwen3-shaped with
``qk_norm`` (Llama's, with queries and keys RMS-normalized per head before the rotation, no
biases, attention windows per layer). A knob that class cannot express (``norm=rmsnorm`` with
learned positions, ...) is refused in one line naming it. Nothing here imports transformers: the
files are JSON and safetensors, written and read directly.

What differs between the layouts, and is converted both ways:

- GPT-2's linear layers are ``Conv1D`` (weight (in, out), our ``nn.Linear``'s transposed), and
  its queries, keys and values are one ``c_attn``; ours are ``wq`` and ``wkv`` (keys, then values).
- wgpt rotates consecutive pairs of features (``rotary.py``); HF Llama and Qwen3 rotate the first
  half of a head against the second (``rotate_half``). The query and key rows are permuted on
  export (as Meta-to-HF conversion does) and back on import, so that both compute the same
  attention; so are the QK-norm gains, which scale those features before the rotation.
- The vocabulary is padded to a multiple of 64 (``padded_vocab_size``): exported as it is
  (``vocab_size`` = the padded size), the padding ids suppressed in ``generation_config.json`` as
  generate.py masks them. A smaller vocabulary (HF GPT-2's 50,257) is padded on import.
- Tied embeddings are stored once (``tie_word_embeddings``).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from wgpt.interop.hf.knobs import KNOBS_IN_HF  # noqa: F401  (tests and docs read it here)
from wgpt.interop.hf.windows import layer_windows, qwen3_windows
from wgpt.models.knobs import place_dropout
from wgpt.models.transformer import Transformer, mlp_hidden_size
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

WGPT_FILE = "wgpt.json"  # marks a directory as a wgpt export (see export's overwrite rule)
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # transformers' sharded save
GPT2, LLAMA, QWEN3 = "gpt2", "llama", "qwen3"  # each class's model_type
ARCHITECTURES = {GPT2: "GPT2LMHeadModel", LLAMA: "LlamaForCausalLM", QWEN3: "Qwen3ForCausalLM"}
MODEL_CLASSES = {GPT2: "wgpt.models.gpt.GPT", LLAMA: "wgpt.models.llama.Llama", QWEN3: "wgpt.models.llama.Llama"}
# wgpt's activations under each class's names: GPT-2 calls the tanh GELU "gelu_new", Llama's
# and Qwen3's configs take any of transformers' ACT2FN names.
GPT2_ACTIVATIONS = {"gelu": "gelu_new", "silu": "silu", "relu": "relu", "relu2": "relu2"}
LLAMA_ACTIVATIONS = {"gelu": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu", "relu2": "relu2"}
HF_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
    "relu2": "relu2",  # transformers' ReLUSquaredActivation
}
# Knobs that fix the weights' shapes or the function they compute: an init_from directory must
# agree on every one of them with the model it is loaded into.
ARCHITECTURE_KNOBS = (
    "d_embed",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "norm",
    "norm_affine",
    "qk_norm",
    "activation",
    "gated",
    "pos",
    "bias",
    "tie_embeddings",
    "parallel_block",
    "attn_window",
    "window_pattern",
    "logit_softcap",
)
# Each knob's default, for a config saved before the knob existed. Not in ARCHITECTURE_KNOBS,
# though they change what the model computes: document_mask and document_positions, which say
# how training packs text (starting from a model trained on single documents is the usual case).
KNOB_DEFAULTS = {k: p.default for k, p in inspect.signature(Transformer).parameters.items()}


# Export.


def architecture(config: Mapping[str, Any], model_class: str = "wgpt.models.transformer.Transformer") -> str:
    """GPT2, LLAMA or QWEN3: the transformers class a wgpt model ``config`` exports as; a one-line
    WgptError naming the first knob that class cannot express."""
    if not model_class.startswith("wgpt.models.") or model_class.rpartition(".")[2] not in (
        "GPT",
        "Llama",
        "Transformer",
    ):
        raise WgptError(
            f"model class {model_class} is not wgpt's Transformer (GPT, Llama): "
            "only those export to Hugging Face transformers"
        )
    c = {**KNOB_DEFAULTS, **config}  # a knob a config lacks (saved before it existed) is at its default
    windowed = any(w is not None for w in layer_windows(c))
    if c["pos"] == "learned":
        family, name = GPT2, "GPT2LMHeadModel (learned positions)"
        wrong = [
            ("norm", c["norm"] != "layernorm", "it has LayerNorm only"),
            ("gated", c["gated"], "its MLP is not gated"),
            ("bias", not c["bias"], "it has biases in every layer"),
            (
                "n_kv_heads",
                c["n_kv_heads"] not in (None, c["n_heads"]),
                "it has a key/value head per query head",
            ),
            (
                "qk_norm",
                c["qk_norm"],
                "it does not normalize queries and keys; Qwen3ForCausalLM does, with rotary ones",
            ),
        ]
        fix = "train with pos=rotary for a Llama-shaped export, or with GPT-2's settings"
    elif c["qk_norm"]:
        family, name = QWEN3, "Qwen3ForCausalLM (rotary positions, qk_norm)"
        wrong = [
            ("norm", c["norm"] != "rmsnorm", "it has RMSNorm only"),
            ("gated", not c["gated"], "its MLP is gated (gate, up, down)"),
            # Its attention_bias covers attention's four projections; wgpt's bias also the MLP's.
            ("bias", c["bias"], "its MLP has no biases"),
        ]
        fix = "train with Qwen3's settings (norm=rmsnorm gated=true bias=false), or qk_norm=false for Llama's"
    else:
        family, name = LLAMA, "LlamaForCausalLM (rotary positions)"
        wrong = [
            ("norm", c["norm"] != "rmsnorm", "it has RMSNorm only"),
            ("gated", not c["gated"], "its MLP is gated (gate, up, down)"),
        ]
        fix = "train with pos=learned for a GPT-2-shaped export, or with Llama's settings"
    # Knobs whose fix is not another class's settings: windows are Qwen3's alone, the rest no class's.
    fixes = {
        k: f"no transformers class has it: train with model.{k}={shown_value(KNOB_DEFAULTS[k])} to export"
        for k in ("parallel_block", "logit_softcap", "document_positions")
    }
    if family != QWEN3:
        wrong.append(("attn_window", windowed, "every layer attends to all earlier positions"))
        fixes["attn_window"] = "train with model.attn_window=null, or with qk_norm=true for a windowed Qwen3 export"
    wrong += [
        ("parallel_block", c["parallel_block"], "its blocks are sequential"),
        ("logit_softcap", c["logit_softcap"] is not None, "its logits are not capped"),
        (
            "document_positions",
            c["document_positions"],
            "its positions count from the start of the sequence, not of each document",
        ),
    ]
    for knob, bad, why in wrong:
        if bad:
            raise WgptError(
                f"model.{knob}={shown_value(c[knob])} has no {name} equivalent ({why}): "
                f"it cannot be exported; {fixes.get(knob, fix)}"
            )
    return family


def hf_config(config: Mapping[str, Any], family: str, tokenizer, dtype: str = "float32") -> dict[str, Any]:
    """config.json of the transformers model computing what the wgpt model ``config`` computes
    (its weights stored in ``dtype``)."""

    c = config
    # Documents are separated by end-of-text in training, and generate.py begins an empty prompt
    # with it: it is also the model's beginning of text, as in GPT-2.
    ids = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == GPT2:
        return {
            "architectures": [ARCHITECTURES[GPT2]],
            "model_type": GPT2,
            "vocab_size": c["vocab_size"],
            "n_positions": c["max_seq_len"],
            "n_embd": c["d_embed"],
            "n_layer": c["n_layers"],
            "n_head": c["n_heads"],
            "n_inner": 4 * c["d_embed"],
            "activation_function": GPT2_ACTIVATIONS[c["activation"]],
            "resid_pdrop": place_dropout(c, "resid"),
            "embd_pdrop": place_dropout(c, "embed"),
            "attn_pdrop": place_dropout(c, "attn"),
            "layer_norm_epsilon": c["norm_eps"],
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": c["tie_embeddings"],
            "use_cache": True,
            "dtype": dtype,
            **ids,
        }
    n_kv_heads = c["n_kv_heads"] or c["n_heads"]
    # Qwen3's config is Llama's without mlp_bias (its MLP has none) and with attention windows;
    # its QK-norm has no setting (always on), its eps is rms_norm_eps, as wgpt's is norm_eps.
    own = {"mlp_bias": c["bias"], "pretraining_tp": 1} if family == LLAMA else qwen3_windows(c)
    return {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": c["vocab_size"],
        "hidden_size": c["d_embed"],
        "num_hidden_layers": c["n_layers"],
        "num_attention_heads": c["n_heads"],
        "num_key_value_heads": n_kv_heads,
        "head_dim": c["d_embed"] // c["n_heads"],
        "intermediate_size": mlp_hidden_size(c["d_embed"], True, c["multiple_of"], c["ffn_dim_multiplier"]),
        "hidden_act": LLAMA_ACTIVATIONS[c["activation"]],
        "max_position_embeddings": c["max_seq_len"],
        "rms_norm_eps": c["norm_eps"],
        # Both spellings: transformers 5 reads rope_parameters, 4.x rope_theta.
        "rope_theta": c["rope_theta"],
        "rope_parameters": {"rope_type": "default", "rope_theta": c["rope_theta"]},
        "attention_bias": c["bias"],
        **own,
        # HF Llama and Qwen3 drop out attention weights only; wgpt's residual and embedding
        # dropout is for training, so inference is the same either way.
        "attention_dropout": place_dropout(c, "attn"),
        "tie_word_embeddings": c["tie_embeddings"],
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": dtype,
        **ids,
    }


def generation_config(config: Mapping[str, Any], tokenizer) -> dict[str, Any]:
    """generation_config.json: end-of-text ends a text and begins one, and the padding rows of
    the vocabulary (ids past the tokenizer's) are never drawn, as in generate.py."""
    padding = list(range(len(tokenizer), config["vocab_size"]))
    return {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **({"suppress_tokens": padding} if padding else {}),
    }


# Import (implied.py reads a directory's config.json as a wgpt config).


@dataclass
class HFDir:
    """A transformers model directory, read without loading its weights."""

    path: Path
    key: str  # the setting that named it (init_from, ckpt_path), for messages
    config: dict[str, Any]  # its config.json
    family: str  # its model_type: GPT2, LLAMA or QWEN3
    weight_files: list[Path]
    wgpt: dict[str, Any] | None  # wgpt.json, when wgpt exported it

    @property
    def source(self) -> str:
        return f"{self.key}={self.path}"


def shown_value(v) -> str:
    """A value as a Hydra override writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)
