"""The Transformer's knobs checked before any weight is allocated: one line naming the first
knob whose value cannot be built (``ModelConfigError``)."""

from __future__ import annotations

from typing import Literal, get_args

from wgpt.util.errors import WgptError

Norm = Literal["layernorm", "rmsnorm", "cosinenorm"]
Activation = Literal["gelu", "silu", "relu", "relu2"]
Positions = Literal["learned", "rotary"]


DROPOUT_PLACES = ("embed", "attn", "resid")  # where the Transformer drops out (dropout_<place>)
# Knobs that change attention or the output, at their off values: what tools show where set.
VARIANT_KNOBS = {
    "attn_window": None,
    "window_pattern": None,
    "document_mask": False,
    "document_positions": False,
    "logit_softcap": None,
    "z_loss": None,
}


def place_dropout(config: dict, place: str) -> float:
    """The dropout probability at ``place`` (DROPOUT_PLACES) of a Transformer ``config``: its
    own ``dropout_<place>`` where set, else ``dropout`` (also for configs from before places had one)."""
    value = config.get(f"dropout_{place}")
    return config["dropout"] if value is None else value


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
    switches = ("norm_affine", "qk_norm", "gated", "bias", "tie_embeddings", "zero_init", "parallel_block")
    for key in (*switches, "document_mask", "document_positions", "sdpa"):
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
    _check_output_knobs(config)
    _check_mask_knobs(config)
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


def _check_output_knobs(config: dict) -> None:
    cap = config["logit_softcap"]
    if cap is not None and (not _is_number(cap) or not 0 < cap < float("inf")):
        raise ModelConfigError(f"logit_softcap={cap!r} is not a number > 0 (e.g. 30.0), or null for no cap")
    z_loss = config["z_loss"]
    if z_loss is not None and (not _is_number(z_loss) or not 0 <= z_loss < float("inf")):
        raise ModelConfigError(f"z_loss={z_loss!r} is not a weight >= 0 (PaLM's: 1e-4), or null for none")


def _check_mask_knobs(config: dict) -> None:
    window, pattern = config["attn_window"], config["window_pattern"]
    if window is not None:
        _check_positive_int("attn_window", window)
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern or set(pattern) - {"S", "L"}:
            raise ModelConfigError(
                f"window_pattern={pattern!r} is not a string of S (windowed) and L (full) layers, e.g. SSSL"
            )
        if window is None:
            raise ModelConfigError(
                f"window_pattern={pattern!r} chooses windowed layers, but attn_window is null: set it"
            )
    eot_id = config["eot_id"]
    if eot_id is not None and (isinstance(eot_id, bool) or not isinstance(eot_id, int) or eot_id < 0):
        raise ModelConfigError(f"eot_id={eot_id!r} is not a token id (an integer >= 0), or null for the tokenizer's")
    if config["document_mask"] and eot_id is None:
        raise ModelConfigError(
            "document_mask=true needs the end-of-text id: eot_id is null (train.py sets it from the tokenizer)"
        )
    if eot_id is not None and eot_id >= config["vocab_size"]:
        raise ModelConfigError(f"eot_id={eot_id} is not below vocab_size={config['vocab_size']}")
    if config["document_positions"] and not config["document_mask"]:
        raise ModelConfigError("document_positions=true restarts positions at document borders: set document_mask=true")
    if config["document_positions"] and config["pos"] != "rotary":
        raise ModelConfigError(
            f"document_positions=true restarts rotary positions, but pos={config['pos']!r}: set pos=rotary"
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{key}={value!r} is not a positive integer")
