"""The figure of a run's ``diagnostics.csv`` (wgpt.core.diagnostics), which ``python -m wgpt.plot
--diagnostics <run dir>`` writes: layer-by-step heat maps of the update/weight ratio and the
gradient norm, and per-layer lines of the residual stream's RMS, the attention entropy and the
largest attention score, with the largest output logit."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from wgpt.core.diagnostics import FILE, label
from wgpt.util.errors import WgptError

HEAT_MAPS = {
    "update_ratio": "update / weight norm of the step (log scale, 3 decades)",
    "grad_norm": "gradient norm (log scale, 3 decades)",
}
LINES = {
    "residual_rms": "residual stream RMS (block output)",
    "attn_entropy": "mean attention entropy (nats)",
    "attn_max_logit": "largest attention score q.k/sqrt(d)",
}
SPAN = 1e3  # the heat maps' colour scale: the largest value down to a thousandth of it
KIND_ORDER = {"embedding": 0, "attn": 1, "mlp": 2, "norm": 3, "": 4, "other": 5, "output": 6}

# metric -> (block, kind) -> [(step, value)]
Series = dict[str, dict[tuple[str, str], list[tuple[int, float]]]]


def read_diagnostics(run_dir: Path) -> Series:
    """``<run_dir>/diagnostics.csv`` by metric and (block, kind); one line naming the fix where
    there is none."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise WgptError(
            f"{run_dir}: no {FILE}: that run logged no diagnostics (callbacks.diagnostics=null, or it stopped "
            "before its first diagnosed step): pass a run dir trained with the default callbacks"
        )
    series: Series = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step, value = int(row["step"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                continue  # a row torn by a kill
            series[row["metric"]][(row["block"] or "", row["kind"] or "")].append((step, value))
    if not series:
        raise WgptError(f"{path}: no rows yet: plot it after the run's first diagnosed step")
    return series


def _order(key: tuple[str, str]) -> tuple:
    """Embeddings first, then each block's groups in order, the final norm and the output last."""
    block, kind = key
    return (0 if kind == "embedding" else 2 if block == "" else 1, int(block or 0), KIND_ORDER.get(kind, 5), kind)


def diagnostics_figure(series: Series, title: str):
    """The heat maps over the line panels. Returns a matplotlib Figure."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 9.5), layout="constrained")
    # Two heat maps over three line panels, on a grid of six columns.
    axes = fig.subplot_mosaic([[m for m in HEAT_MAPS for _ in range(3)], [m for m in LINES for _ in range(2)]])
    for metric, name in HEAT_MAPS.items():
        ax = axes[metric]
        groups = sorted(series.get(metric, {}), key=_order)
        steps = sorted({s for g in groups for s, _ in series[metric][g]})
        column = {s: i for i, s in enumerate(steps)}
        grid = [[math.nan] * len(steps) for _ in groups]
        for r, g in enumerate(groups):
            for s, v in series[metric][g]:
                grid[r][column[s]] = v if v > 0 else math.nan
        finite = [v for row in grid for v in row if math.isfinite(v)]
        if finite:
            # Three decades at most: a step at the end of a schedule (learning rate ~0) would
            # otherwise stretch the scale and flatten every other column; anything lower is darkest.
            low, high = max(min(finite), max(finite) / SPAN), max(finite)
            norm = LogNorm(low, high, clip=True)
            image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
            fig.colorbar(image, ax=ax, shrink=0.9)
        ax.set_yticks(range(len(groups)), [label(*g) for g in groups], fontsize=8)
        shown = range(0, len(steps), max(1, len(steps) // 12))
        ax.set_xticks(list(shown), [str(steps[i]) for i in shown], fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_title(name, fontsize=10)
    for metric, name in LINES.items():
        ax = axes[metric]
        layers = sorted(series.get(metric, {}), key=_order)
        colours = [colormaps["viridis"](i / max(1, len(layers) - 1)) for i in range(len(layers))]  # shallow to deep
        for colour, g in zip(colours, layers):
            points = sorted(series[metric][g])
            xs, ys = [s for s, _ in points], [v for _, v in points]
            ax.plot(xs, ys, color=colour, marker="o", markersize=3, label=label(*g))
        if metric == "attn_max_logit" and "max_logit" in series:
            points = sorted(next(iter(series["max_logit"].values())))
            ax.plot([s for s, _ in points], [v for _, v in points], "k--", marker="x", label="output logit (largest)")
            ax.set_title("largest attention score; output logit dashed", fontsize=10)
        else:
            ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if layers:
            ax.legend(fontsize=7, ncols=2)
    fig.suptitle(title, fontsize=11)
    return fig
