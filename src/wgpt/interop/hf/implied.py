"""A Hugging Face directory's config.json read as a wgpt model config (``implied_config``), and
checked against the model its weights go into (``check_fits_config``): import's side of config.py."""

from __future__ import annotations

from typing import Any, Mapping

from wgpt.interop.hf.config import (
    ARCHITECTURE_KNOBS,
    ARCHITECTURES,
    GPT2,
    HF_ACTIVATIONS,
    KNOB_DEFAULTS,
    LLAMA,
    MODEL_CLASSES,
    QWEN3,
    HFDir,
    shown_value,
)
from wgpt.interop.hf.windows import layer_windows, window_knobs
from wgpt.models.transformer import mlp_hidden_size
from wgpt.util.errors import WgptError


def implied_config(d: HFDir) -> tuple[str, dict[str, Any]]:
    """(wgpt model class, its full config) that computes what the directory's model computes; a
    one-line WgptError for a setting wgpt's Transformer has no equivalent of."""
    c, source = d.config, d.source

    def refuse(setting: str, why: str):
        raise WgptError(
            f"{source}: config.json has {setting}, which wgpt's Transformer has no equivalent of ({why}): "
            "it cannot be loaded"
        )

    def get(name: str, default=None):
        value = c.get(name, default)
        return default if value is None else value

    if d.family == GPT2:
        act = get("activation_function", "gelu_new")
        d_embed = c.get("n_embd", c.get("hidden_size"))
        if act not in HF_ACTIVATIONS:
            refuse(
                f"activation_function={act}",
                "wgpt's gelu is the tanh approximation, gelu_new; silu and relu are the others",
            )
        if get("n_inner") not in (None, 4 * d_embed):
            refuse(f"n_inner={c['n_inner']}", f"GPT-2-shaped MLPs are 4 x n_embd = {4 * d_embed} wide")
        for name, want in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
            ("add_cross_attention", False),
        ):
            if get(name, want) != want:
                refuse(f"{name}={c[name]}", "attention here is plain scaled dot-product self-attention")
        config = dict(
            d_embed=d_embed,
            n_layers=c.get("n_layer", c.get("num_hidden_layers")),
            n_heads=c.get("n_head", c.get("num_attention_heads")),
            n_kv_heads=None,
            max_seq_len=c.get("n_positions", c.get("max_position_embeddings", 1024)),
            norm="layernorm",
            norm_eps=get("layer_norm_epsilon", 1e-5),
            activation=HF_ACTIVATIONS[act],
            gated=False,
            multiple_of=256,
            ffn_dim_multiplier=None,
            pos="learned",
            rope_theta=10000.0,
            bias=True,
            tie_embeddings=get("tie_word_embeddings", True),
        )
    else:
        act = get("hidden_act", "silu")
        d_embed, n_heads = c.get("hidden_size"), c.get("num_attention_heads")
        if act not in HF_ACTIVATIONS:
            refuse(
                f"hidden_act={act}", "wgpt's gated MLP takes silu, gelu (tanh approximation, gelu_pytorch_tanh) or relu"
            )
        if isinstance(d_embed, int) and isinstance(n_heads, int):
            # Qwen3Config's head_dim defaults to 128, not to hidden_size / num_attention_heads.
            head_dim = get("head_dim", 128 if d.family == QWEN3 else d_embed // n_heads)
            if head_dim != d_embed // n_heads:
                refuse(
                    f"head_dim={head_dim}",
                    f"wgpt's heads are hidden_size / num_attention_heads = {d_embed // n_heads} wide",
                )
        rope = get("rope_parameters") or get("rope_scaling") or {}
        if not isinstance(rope, dict):
            refuse(f"rope_parameters={rope}", "wgpt's rotary positions are the plain ones, rope_type=default")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            refuse(f"rope type {rope_type}", "wgpt's rotary positions are the plain ones, rope_type=default")
        mlp_bias = get("mlp_bias", False) if d.family == LLAMA else False  # Qwen3's MLP has no biases
        if bool(get("attention_bias", False)) != bool(mlp_bias):
            refuse(
                f"attention_bias={get('attention_bias', False)}, mlp_bias={mlp_bias}",
                "wgpt's bias knob is for every linear layer",
            )
        width = get("intermediate_size")
        hint = (d.wgpt or {}).get("model_config") or {}
        mlp = _mlp_knobs(d_embed, width, hint.get("multiple_of", 256), hint.get("ffn_dim_multiplier"))
        config = dict(
            d_embed=d_embed,
            n_layers=c.get("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", n_heads),
            max_seq_len=get("max_position_embeddings", 2048),
            norm="rmsnorm",
            norm_eps=get("rms_norm_eps", 1e-6),
            activation=HF_ACTIVATIONS[act],
            gated=True,
            **mlp,
            pos="rotary",
            rope_theta=float(rope.get("rope_theta") or get("rope_theta", 10000.0)),
            bias=bool(get("attention_bias", False)),
            tie_embeddings=get("tie_word_embeddings", False),
        )
    made = (d.wgpt or {}).get("model_config") or {}  # the wgpt model an export came from
    name = made.get("name") or d.path.name
    # What config.json cannot say, an export's wgpt.json does: gains of ones there are a wgpt
    # model's without gains, and documents masked from each other in training (the same model on
    # a sequence of one document, which is all transformers sees).
    affine = made.get("norm_affine", True)
    # Qwen3 alone normalizes queries and keys; no class has parallel blocks (export refuses them).
    plain = dict(norm_affine=affine, qk_norm=d.family == QWEN3, parallel_block=False)
    # Knobs newer than the Transformer of a saved config, left out at their defaults: the config
    # then also builds a Transformer from before them.
    newer = window_knobs(c, source) if d.family == QWEN3 else {}
    if made.get("document_mask"):
        newer["document_mask"] = True
    config = dict(vocab_size=c.get("vocab_size"), **config, **plain, **newer, dropout=0.0, sdpa=True, name=name)
    return MODEL_CLASSES[d.family], config


def _mlp_knobs(d_embed: int, width, multiple_of: int, multiplier) -> dict[str, Any]:
    """multiple_of and ffn_dim_multiplier that size a gated MLP ``width`` wide: the given ones
    if they do, else the width itself as multiple_of (scaled down first when 8/3 d_embed is wider)."""

    if not isinstance(width, int) or not isinstance(d_embed, int) or width < 1:
        return dict(multiple_of=multiple_of, ffn_dim_multiplier=multiplier)  # the model's own check reports it
    base = int(2 * 4 * d_embed / 3)
    for m, f in ((multiple_of, multiplier), (width, None), (width, width / base)):
        if mlp_hidden_size(d_embed, True, m, f) == width:
            return dict(multiple_of=m, ffn_dim_multiplier=f)
    return dict(multiple_of=width, ffn_dim_multiplier=width / base)


def check_fits_config(d: HFDir, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The directory's implied config, after checking that a model of ``model_config`` can take
    its weights: a one-line WgptError listing the ``model.*`` overrides that make it so."""

    _, implied = implied_config(d)
    # A knob a config lacks (saved before the knob existed, or left out at its default) is at its default.
    theirs, ours = {**KNOB_DEFAULTS, **implied}, {**KNOB_DEFAULTS, **model_config}
    # Windows differ where a layer's does: window_pattern=SL is SLSL's, attn_window=null is pattern L's.
    windows_differ = layer_windows(theirs) != layer_windows(ours)

    def differs(k: str) -> bool:
        if k in ("attn_window", "window_pattern"):
            return windows_differ and theirs[k] != ours[k]
        if k == "n_kv_heads":  # null: one per query head
            return (theirs[k] or theirs["n_heads"]) != (ours[k] or ours["n_heads"])
        return theirs[k] != ours[k]

    knobs = list(ARCHITECTURE_KNOBS)
    if implied["pos"] == "learned":
        knobs.append("max_seq_len")  # the learned position table's rows
    differ = [k for k in knobs if differs(k)]
    width = lambda c: mlp_hidden_size(c["d_embed"], c["gated"], c["multiple_of"], c["ffn_dim_multiplier"])  # noqa: E731
    if implied["gated"] and not differ and width(implied) != width(ours):
        differ += ["multiple_of", "ffn_dim_multiplier"]
    if differ:
        overrides = " ".join(f"model.{k}={shown_value(theirs[k])}" for k in differ)
        has = ", ".join(f"{k}={shown_value(ours.get(k))}" for k in differ)
        made_by = ((d.wgpt or {}).get("model_config") or {}).get("name")
        preset = f"model={made_by} with the overrides of its run" if made_by else "the preset it was trained as"
        raise WgptError(
            f"{d.source} holds a {ARCHITECTURES[d.family]} that model {ours.get('name', '?')} ({has}) does not fit: "
            f"its config.json implies {overrides}: add those overrides, or use {preset}"
        )
    return implied
