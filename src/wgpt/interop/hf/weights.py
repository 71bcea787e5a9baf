"""Weights between wgpt's names and layouts and transformers' (GPT-2's fused Conv1D ``c_attn``,
Llama's and Qwen3's rotary halves), both ways, and the vocabulary padding wgpt's embedding tables carry."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from wgpt.interop.hf.config import ARCHITECTURES, GPT2, HFDir
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


def to_hf(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], family: str) -> dict[str, torch.Tensor]:
    """wgpt weights (``model.state_dict()`` names) -> the transformers class's, contiguous, tied ones once."""
    if not config.get("norm_affine", True):
        state = {**state, **unit_gains(state, config)}  # transformers' norms have gains: ones compute the same
    out: dict[str, torch.Tensor] = {}
    H, K = config["n_heads"], config["n_kv_heads"] or config["n_heads"]
    D = config["d_embed"] // H
    for i in range(config["n_layers"]):
        ours = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        if family == GPT2:
            h = f"transformer.h.{i}."
            t = lambda w: w.t()  # noqa: E731  (Conv1D keeps weights as (in, out))
            out |= {
                h + "ln_1.weight": ours["attn_norm.weight"],
                h + "ln_1.bias": ours["attn_norm.bias"],
                h + "attn.c_attn.weight": t(torch.cat([ours["attn.wq.weight"], ours["attn.wkv.weight"]])),
                h + "attn.c_attn.bias": torch.cat([ours["attn.wq.bias"], ours["attn.wkv.bias"]]),
                h + "attn.c_proj.weight": t(ours["attn.proj.weight"]),
                h + "attn.c_proj.bias": ours["attn.proj.bias"],
                h + "ln_2.weight": ours["mlp_norm.weight"],
                h + "ln_2.bias": ours["mlp_norm.bias"],
                h + "mlp.c_fc.weight": t(ours["mlp.fc.weight"]),
                h + "mlp.c_fc.bias": ours["mlp.fc.bias"],
                h + "mlp.c_proj.weight": t(ours["mlp.proj.weight"]),
                h + "mlp.c_proj.bias": ours["mlp.proj.bias"],
            }
            continue
        h = f"model.layers.{i}."
        for suffix in ("weight", "bias") if config["bias"] else ("weight",):
            k, v = ours[f"attn.wkv.{suffix}"].split(K * D)
            gate, up = ours[f"mlp.gate_up.{suffix}"].chunk(2)
            out |= {
                h + f"self_attn.q_proj.{suffix}": _halves(ours[f"attn.wq.{suffix}"], H),
                h + f"self_attn.k_proj.{suffix}": _halves(k, K),
                h + f"self_attn.v_proj.{suffix}": v,
                h + f"self_attn.o_proj.{suffix}": ours[f"attn.proj.{suffix}"],
                h + f"mlp.gate_proj.{suffix}": gate,
                h + f"mlp.up_proj.{suffix}": up,
                h + f"mlp.down_proj.{suffix}": ours[f"mlp.proj.{suffix}"],
            }
        if config.get("qk_norm"):  # Qwen3: a gain per feature of a head, reordered as the q and k rows are
            out[h + "self_attn.q_norm.weight"] = _halves(ours["attn.q_norm.weight"], 1)
            out[h + "self_attn.k_norm.weight"] = _halves(ours["attn.k_norm.weight"], 1)
        out[h + "input_layernorm.weight"] = ours["attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = ours["mlp_norm.weight"]
    if family == GPT2:
        out |= {
            "transformer.wte.weight": state["wte.weight"],
            "transformer.wpe.weight": state["wpe.weight"],
            "transformer.ln_f.weight": state["final_norm.weight"],
            "transformer.ln_f.bias": state["final_norm.bias"],
        }
    else:
        out |= {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["final_norm.weight"]}
    if not config["tie_embeddings"]:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def unit_gains(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Gains of ones (and, for a LayerNorm with bias, biases of zeros) for every norm of a model
    ``config`` without learned gains (``norm_affine=false``), by wgpt name."""
    d, blocks = config["d_embed"], range(config["n_layers"])
    per_block = ("attn_norm",) if config.get("parallel_block") else ("attn_norm", "mlp_norm")
    sizes = {f"blocks.{i}.{n}": d for i in blocks for n in per_block} | {"final_norm": d}
    biased = set(sizes) if config["norm"] == "layernorm" and config["bias"] else set()
    if config.get("qk_norm"):  # over each head's features, never with a bias (transformer.py's Block)
        sizes |= {f"blocks.{i}.attn.{n}": d // config["n_heads"] for i in blocks for n in ("q_norm", "k_norm")}
    like = state["wte.weight"]
    gains = {}
    for norm, size in sizes.items():
        gains[f"{norm}.weight"] = torch.ones(size, dtype=like.dtype, device=like.device)
        if norm in biased:
            gains[f"{norm}.bias"] = torch.zeros(size, dtype=like.dtype, device=like.device)
    return gains


def _halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from wgpt's rotary layout (pairs 2j, 2j+1) to HF's (j, j + D/2)."""
    shape = w.shape
    return w.reshape(heads, -1, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """``_halves`` undone: HF's rotary row layout back to wgpt's."""
    shape = w.shape
    return w.reshape(heads, 2, -1, *shape[1:]).transpose(1, 2).reshape(shape)


def from_hf(
    weights: Mapping[str, torch.Tensor], config: Mapping[str, Any], family: str, source: str
) -> dict[str, torch.Tensor]:
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
            raise WgptError(
                f"{source} has no weight {name}, which its config.json says a {ARCHITECTURES[family]} has: "
                "the directory is damaged"
            )
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
                p + "attn_norm.weight": take(h + "ln_1.weight"),
                p + "attn_norm.bias": take(h + "ln_1.bias"),
                p + "attn.wq.weight": qkv[:C],
                p + "attn.wkv.weight": qkv[C:],
                p + "attn.wq.bias": qkv_bias[:C],
                p + "attn.wkv.bias": qkv_bias[C:],
                p + "attn.proj.weight": take(h + "attn.c_proj.weight").t(),
                p + "attn.proj.bias": take(h + "attn.c_proj.bias"),
                p + "mlp_norm.weight": take(h + "ln_2.weight"),
                p + "mlp_norm.bias": take(h + "ln_2.bias"),
                p + "mlp.fc.weight": take(h + "mlp.c_fc.weight").t(),
                p + "mlp.fc.bias": take(h + "mlp.c_fc.bias"),
                p + "mlp.proj.weight": take(h + "mlp.c_proj.weight").t(),
                p + "mlp.proj.bias": take(h + "mlp.c_proj.bias"),
            }
            continue
        h = f"model.layers.{i}."
        for suffix in ("weight", "bias") if config["bias"] else ("weight",):
            a, m = h + "self_attn.", h + "mlp."
            out |= {
                p + f"attn.wq.{suffix}": _pairs(take(a + f"q_proj.{suffix}"), H),
                p + f"attn.wkv.{suffix}": torch.cat(
                    [_pairs(take(a + f"k_proj.{suffix}"), K), take(a + f"v_proj.{suffix}")]
                ),
                p + f"attn.proj.{suffix}": take(a + f"o_proj.{suffix}"),
                p + f"mlp.gate_up.{suffix}": torch.cat(
                    [take(m + f"gate_proj.{suffix}"), take(m + f"up_proj.{suffix}")]
                ),
                p + f"mlp.proj.{suffix}": take(m + f"down_proj.{suffix}"),
            }
        if config["qk_norm"]:
            out[p + "attn.q_norm.weight"] = _pairs(take(h + "self_attn.q_norm.weight"), 1)
            out[p + "attn.k_norm.weight"] = _pairs(take(h + "self_attn.k_norm.weight"), 1)
        out[p + "attn_norm.weight"] = take(h + "input_layernorm.weight")
        out[p + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
    if family == GPT2:
        out |= {
            "wte.weight": take("transformer.wte.weight"),
            "wpe.weight": take("transformer.wpe.weight"),
            "final_norm.weight": take("transformer.ln_f.weight"),
            "final_norm.bias": take("transformer.ln_f.bias"),
        }
    else:
        out |= {"wte.weight": take("model.embed_tokens.weight"), "final_norm.weight": take("model.norm.weight")}
    if config["tie_embeddings"]:
        used.add("lm_head.weight")  # transformers may save the tied copy too
        out["lm_head.weight"] = out["wte.weight"]
    else:
        out["lm_head.weight"] = take("lm_head.weight")
    if not config.get("norm_affine", True):  # the model has no gains: they must be the unit ones
        for name, unit in unit_gains(out, config).items():
            if not torch.equal(out.pop(name), unit.to(out["wte.weight"].dtype)):
                raise WgptError(
                    f"{source}: its norm gain {name} is not all ones (bias zeros), though its wgpt.json says the "
                    "model has no gains (norm_affine=false): the directory was changed after export"
                )
    extra = next((name for name in w if name not in used), None)
    if extra is not None:
        raise WgptError(
            f"{source} has a weight {extra} that a {ARCHITECTURES[family]} of its config.json lacks: "
            "the directory is damaged"
        )
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
            raise WgptError(
                f"{d.source}: {file.name} is not a readable safetensors file ({e}): the directory is damaged"
            ) from None
    return weights


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
    log.info(
        "%s: %d vocabulary rows padded to %d (ids %d-%d start as the mean of the others)",
        source,
        rows,
        vocab_size,
        rows,
        vocab_size - 1,
    )
    return state
