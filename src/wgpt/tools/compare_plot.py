"""The figure of ``python -m wgpt.compare``: each group's mean validation curve with its 95% band,
against optimizer steps, tokens and training seconds, the target drawn across."""

from __future__ import annotations

import math
from pathlib import Path

from wgpt.tools.comparison import Comparison
from wgpt.tools.plot import palette, save_png

X_AXES = (
    ("steps", "optimizer steps"),
    ("tokens", "tokens trained on"),
    ("train_seconds", "training seconds (validation left out)"),
)


def plot_comparison(result: Comparison, out: Path) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(16, 5.2), layout="constrained")
    axes = fig.subplots(1, len(X_AXES), sharey=True)
    colours = palette(len(result.groups))
    for ax, (axis, name) in zip(axes, X_AXES):
        for group, colour in zip(result.groups, colours):
            curve = group.curve
            x = curve[axis]
            if not x or any(math.isnan(v) for v in x):
                continue  # this group's runs did not record it (made before train_seconds was logged)
            label = f"{group.label} (n={group.n})" + (" [baseline]" if group is result.baseline else "")
            ax.plot(x, curve["mean"], color=colour, marker="o", markersize=3, linewidth=1.6, label=label)
            if group.n > 1:
                ax.fill_between(x, curve["low"], curve["high"], color=colour, alpha=0.18, linewidth=0)
        ax.axhline(result.target, color="0.35", linestyle="--", linewidth=1)
        ax.set_xlabel(name)
        ax.grid(True, alpha=0.3)
        if axis != "steps":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes[0].set_ylabel(f"{result.metric} (mean over seeds, 95% band)")
    axes[0].legend(fontsize=8, loc="upper right")
    title = f"{result.metric}: target {result.target:.4f} ({result.target_source})"
    if result.shared:
        title += "\n" + ", ".join(result.shared)
    fig.suptitle(title, fontsize=10)
    save_png(fig, out)
    return out
