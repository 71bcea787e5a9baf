"""The Transformer's knobs checked before any weight is allocated: one line naming the first
knob whose value cannot be built (``ModelConfigError``)."""

from __future__ import annotations

from typing import Literal, get_args

from wgpt.util.errors import WgptError

Norm = Literal["layernorm", "rmsnorm", "cosinenorm"]
Activation = Literal["gelu", "silu", "relu", "relu2"]
Positions = Literal["learned", "rotary"]


class ModelConfigError(WgptError, ValueError):
    """A knob with a value the model cannot be built with (a ValueError too, like bad shapes)."""


def check_knobs(config: dict) -> None:
    """A one-line ModelConfigError for the first knob of a Transformer ``config`` that cannot be built."""
    for key in ("vocab_size", "d_embed", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
        _check_positive_int(key, config[key])
    if config["n_kv_heads"] is not None:
        _check_positive_int("n_kv_heads", config["n_kv_heads"])
    for key, choices in (("norm", Norm), ("activation", Activation), ("pos", Positions)):
        if config[key] not in get_args(choices):
            raise ModelConfigError(f"{key}={config[key]!r} is not one of {', '.join(get_args(choices))}")
    for key in ("norm_affine", "qk_norm", "gated", "bias", "tie_embeddings", "zero_init", "parallel_block", "sdpa"):
        if not isinstance(config[key], bool):
            raise ModelConfigError(f"{key}={config[key]!r} is not true or false")
    if not _is_number(config["dropout"]) or not 0 <= config["dropout"] < 1:
        raise ModelConfigError(f"dropout={config['dropout']!r} is not a probability in [0, 1): 0.0 turns dropout off")
    for key in ("dropout_embed", "dropout_attn", "dropout_resid"):
        value = config[key]
        if value is not None and (not _is_number(value) or not 0 <= value < 1):
            raise ModelConfigError(f"{key}={value!r} is not a probability in [0, 1), or null for dropout's value")
    for key in ("norm_eps", "rope_theta"):
        if not _is_number(config[key]) or config[key] <= 0:
            raise ModelConfigError(f"{key}={config[key]!r} is not a number > 0")
    multiplier = config["ffn_dim_multiplier"]
    if multiplier is not None and (not _is_number(multiplier) or multiplier <= 0):
        raise ModelConfigError(f"ffn_dim_multiplier={multiplier!r} is not a number > 0, or null for 1")
    if multiplier is not None and not config["gated"]:
        raise ModelConfigError(
            f"ffn_dim_multiplier={multiplier} sizes gated MLPs only (a plain one is 4 x d_embed): "
            "set gated=true or ffn_dim_multiplier=null"
        )
    d_embed, n_heads = config["d_embed"], config["n_heads"]
    if d_embed % n_heads:
        raise ModelConfigError(f"d_embed={d_embed} is not divisible by n_heads={n_heads}")
    n_kv_heads = config["n_kv_heads"]
    if n_kv_heads is not None and n_heads % n_kv_heads:
        raise ModelConfigError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
    if config["pos"] == "rotary" and (d_embed // n_heads) % 2:
        raise ModelConfigError(
            f"pos='rotary' rotates pairs of features, but the head size d_embed/n_heads = {d_embed}/{n_heads} "
            f"= {d_embed // n_heads} is odd: change d_embed or n_heads, or use pos=learned"
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{key}={value!r} is not a positive integer")
