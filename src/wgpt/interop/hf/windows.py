"""Attention windows between wgpt's knobs (``attn_window``, ``window_pattern``) and Qwen3's
config.json (``layer_types``, ``sliding_window``, ``use_sliding_window``, ``max_window_layers``).

Both mean the same window: key j is visible to query i iff 0 <= i - j < window (transformers'
``sliding_window_overlay``: ``kv_idx > q_idx - sliding_window``). wgpt's pattern is a string over
the layers, repeated when shorter ('S' windowed, 'L' full; null: every layer windowed when
attn_window is set); transformers' is a list with a name per layer.

The knobs are read with ``config.get``: a config saved before they existed has no windows.
"""

from __future__ import annotations

from typing import Any, Mapping

from wgpt.util.errors import WgptError

FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' layer_types entries


def layer_windows(config: Mapping[str, Any]) -> list[int | None]:
    """Each layer's attention window in a wgpt model ``config`` (None: every earlier position)."""
    window, pattern, n = config.get("attn_window"), config.get("window_pattern"), config["n_layers"]
    if window is None:
        return [None] * n
    pattern = pattern or "S"
    return [window if pattern[i % len(pattern)] == "S" else None for i in range(n)]


def qwen3_windows(config: Mapping[str, Any]) -> dict[str, Any]:
    """The window settings of a Qwen3 config.json computing what wgpt model ``config`` computes."""
    windowed = [w is not None for w in layer_windows(config)]
    if not any(windowed):
        # transformers sets sliding_window to null itself where use_sliding_window is false.
        return dict(
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=len(windowed),
            layer_types=[FULL] * len(windowed),
        )
    return dict(
        use_sliding_window=True,
        sliding_window=config["attn_window"],
        # layer_types says which layers are windowed (transformers 5 reads it); transformers
        # from before layer_types windows the layers from max_window_layers on, which is the
        # same only where the windowed layers are the last ones.
        max_window_layers=windowed.index(True),
        layer_types=[SLIDING if w else FULL for w in windowed],
    )


def window_knobs(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """attn_window and window_pattern of a Qwen3 config.json ``hf``, as Qwen3Config reads it;
    {} where no layer is windowed (so that the config also builds a Transformer from before
    those knobs). A one-line WgptError for a layer type wgpt has no equivalent of."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    n = hf.get("num_hidden_layers")
    if window is None or not isinstance(n, int):
        return {}
    types = hf.get("layer_types")
    if types is None:  # Qwen3Config's default: windowed from max_window_layers (28) on
        types = [SLIDING if i >= hf.get("max_window_layers", 28) else FULL for i in range(n)]
    odd = next((t for t in types if t not in (FULL, SLIDING)), None)
    if odd is not None or len(types) != n:
        setting = f"layer_types entry {odd}" if odd is not None else f"{len(types)} layer_types for {n} layers"
        raise WgptError(
            f"{source}: config.json has {setting}, which wgpt's Transformer has no equivalent of "
            f"(a layer attends fully, {FULL}, or in a window, {SLIDING}): it cannot be loaded"
        )
    letters = "".join("S" if t == SLIDING else "L" for t in types)
    if "S" not in letters:
        return {}
    # The shortest pattern that repeats to the layers' (an override to type, and what a preset would say).
    pattern = next(letters[:p] for p in range(1, n + 1) if (letters[:p] * n)[:n] == letters)
    return dict(attn_window=window, window_pattern=None if pattern == "S" else pattern)
