"""Loss curves of runs and sweeps as a PNG: ``python -m wgpt.plot <run or sweep dirs...>``.

Reads what every run leaves in its dir: ``metrics.csv`` (the curves), ``.hydra/overrides.yaml``
(the labels) and ``.hydra/config.yaml`` with ``train.log`` (the tokens each optimizer step
trains on). A sweep dir (``outputs/multirun/<time>/``) stands for its job dirs, and its
``summary.csv`` becomes a second figure: the best validation loss of each job, or its bits per
byte when ``val_bpb`` is drawn before ``val_loss`` (compare runs of different tokenizers so).

    python -m wgpt.plot outputs/multirun/2026-11-23_19-21-02          # -> <sweep dir>/loss.png, loss-summary.png
    python -m wgpt.plot outputs/gpt2-tiny/A outputs/llama3-tiny/B --out cmp.png
    python -m wgpt.plot <run dir> --metric val_ppl,tokens_per_sec     # any metrics.csv columns, a panel each
    python -m wgpt.plot outputs/multirun/<time> --metric val_bpb      # -> bpb.png, bpb-summary.png
    python -m wgpt.plot --diagnostics <run dir>                       # -> <run dir>/diagnostics.png

``--diagnostics`` draws a run's ``diagnostics.csv`` instead (``wgpt.tools.diagnostics_plot``).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from wgpt.core.report import one_line_errors
from wgpt.core.sweep import best_row
from wgpt.tools.diagnostics_plot import diagnostics_figure, read_diagnostics
from wgpt.tools.runs import SWEEP_DIR, Run, is_noise, load_runs, read_overrides, run_labels
from wgpt.util.errors import WgptError
from wgpt.util.files import written_atomically

DEFAULT_METRICS = ["train_loss", "val_loss"]
Y_LABELS = {
    "loss": "cross-entropy loss (nats per token)",
    "ppl": "perplexity",
    "bpb": "bits per byte",
    "tokens_per_sec": "tokens/s",
}
VAL_LINESTYLES = ["-", "--", ":", "-."]  # val_loss, then val_loss/<dataset>, ... in one panel
# What a sweep's summary figure can rank jobs by: metric -> (summary.csv column, axis label).
SUMMARY_METRICS = {
    "val_loss": ("best_val_loss", "best validation loss"),
    "val_bpb": ("best_val_bpb", "best validation bits per byte"),
}


def _title(heading: str, shared: Sequence[str]) -> str:
    return "\n".join([heading, *filter(None, [_wrap(", ".join(shared), 100)])])


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` characters, broken after the commas between overrides."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


# --------------------------------------------------------------------------- figures


def _panel(metric: str) -> str:
    """The panel a metric is drawn in: train_loss, val_loss and val_loss/<dataset> share "loss";
    val_bpb and val_bpb/<dataset> have "bpb" (bits per byte are not nats per token)."""
    return re.sub(r"^(train|val)_", "", metric.split("/")[0])


def summary_metric(metrics: Sequence[str]) -> str:
    """The metric a sweep's summary figure ranks jobs by: the first drawn of val_loss and val_bpb
    (either alone or per dataset), val_loss when neither is."""
    return next((m.split("/")[0] for m in metrics if m.split("/")[0] in SUMMARY_METRICS), "val_loss")


def palette(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def plot_curves(runs: Sequence[Run], labels: Sequence[str], title: str, metrics: Sequence[str], by_tokens: bool):
    """One panel per group of metrics (train/val loss together), one colour per run; validation
    solid with markers, train faint. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    panels: dict[str, list[str]] = {}
    for metric in metrics:
        panels.setdefault(_panel(metric), []).append(metric)
    styles = {}
    for group in panels.values():
        val = [m for m in group if m.startswith("val_")]
        for metric in group:
            if metric in val:
                linestyle = VAL_LINESTYLES[val.index(metric) % len(VAL_LINESTYLES)]
                styles[metric] = dict(linestyle=linestyle, linewidth=1.8, marker="o", markersize=4)
            elif metric.startswith("train_") and len(group) > 1:  # beside validation: the noisy one, in the background
                styles[metric] = dict(linewidth=1.2, alpha=0.45)
            else:
                styles[metric] = dict(linewidth=1.5)

    fig = Figure(figsize=(11, 1.2 + 4.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colours = palette(len(runs))
    for ax, (key, group) in zip(axes, panels.items()):
        for run, colour in zip(runs, colours):
            for metric in group:
                points = run.metrics.get(metric)
                if points:
                    scale = run.tokens_per_step if by_tokens else 1
                    ax.plot([s * scale for s, _ in points], [v for _, v in points], color=colour, **styles[metric])
        ax.set_ylabel(Y_LABELS.get(key, key))
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("tokens trained on (optimizer steps x tokens per step)" if by_tokens else "optimizer steps")
    if by_tokens:
        axes[-1].xaxis.set_major_formatter(EngFormatter(sep=""))  # 1.2M, not 1200000
    axes[0].set_title(title, fontsize=10)  # over the axes alone: the legend beside them keeps clear of it
    # Outside the axes, so no legend ever covers a curve: runs on the right (long labels wrapped,
    # so they cannot squeeze the axes), line styles under the x axis.
    run_handles = [Line2D([], [], color=c, linewidth=2.5, label=_wrap(label, 40)) for c, label in zip(colours, labels)]
    fig.legend(handles=run_handles, loc="outside right upper", fontsize=9)
    style_handles = [Line2D([], [], color="0.3", label=m, **styles[m]) for m in metrics]
    fig.legend(handles=style_handles, loc="outside lower center", ncols=len(style_handles), fontsize=9, frameon=False)
    return fig


def read_summary(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep's ``summary.csv`` (``wgpt.core.sweep.write_sweep_csv``), each with ``path``, its job dir."""
    with open(path, newline="") as f:
        return [{**row, "path": (path.parent / row.get("dir", "")).resolve()} for row in csv.DictReader(f)]


def _job(row: dict[str, Any]) -> str:
    """``job 3: `` before a sweep job's label: a search's trials are told apart by number."""
    return f"job {row['job']}: " if row.get("job") not in (None, "") else ""


def _number(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def plot_summary(
    rows: Sequence[dict[str, Any]], labels: Sequence[str], colours: Sequence, title: str, metric: str = "val_loss"
):
    """Horizontal bars: the best ``metric`` (val_loss or val_bpb, see ``SUMMARY_METRICS``) of each
    sweep job, in job (trial) order, with its value and step; a job without one says how it ended.
    The best job's bar is outlined and named under the title. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    column, axis_label = SUMMARY_METRICS[metric]
    best = [_number(row.get(column)) for row in rows]
    finite = [b for b in best if math.isfinite(b)]
    winner = best_row(rows, column)
    if winner is not None:
        i = next(i for i, row in enumerate(rows) if row is winner)
        title = f"{title}\nbest: {labels[i]} ({best[i]:.4f})"
    fig = Figure(figsize=(10, 1.6 + 0.45 * len(rows)), layout="constrained")
    ax = fig.subplots()
    positions = range(len(rows))
    bars = ax.barh(positions, [b if math.isfinite(b) else 0 for b in best], color=colours, height=0.6)
    if winner is not None:
        bars[i].set_edgecolor("black")
        bars[i].set_linewidth(2)
    ax.set_yticks(positions, labels, fontsize=9)
    ax.invert_yaxis()  # job 0 on top, as in the table
    # The bars start near the best loss, not at 0: sweeps differ by hundredths of a nat.
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    spread = (high - low) or max(abs(high) * 0.05, 0.1)
    left = max(0.0, low - 0.6 * spread)
    ax.set_xlim(left, high + 0.9 * spread)  # room for the value labels
    for y, (row, value) in enumerate(zip(rows, best)):
        if math.isfinite(value):
            step = row.get("best_step") or ""
            text = f"{value:.4f}" + (f"  (step {step})" if step not in ("", "-1") else "")
            ax.text(value, y, "  " + text, va="center", fontsize=9)
        else:
            status = row.get("status", "")
            # A job that ended well but has no value: made before wgpt measured it (val_bpb).
            why = row.get("error") or (f"no {column}" if status == "completed" else status) or "no validation"
            ax.text(left, y, f"  {status}: {why}"[:90], va="center", fontsize=9, color="firebrick")
    ax.set_xlabel(axis_label + (f" (the axis starts at {left:.2f}, not 0)" if left > 0 else ""))
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)  # over the whole figure: long job labels push the axes right
    return fig


def save_png(fig, path: Path) -> None:
    """Write the figure to a temporary file beside ``path`` and rename it into place: a crash or
    a full disk never leaves half a PNG under the real name."""
    try:
        with written_atomically(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as e:
        reason = e.strerror or e
        raise WgptError(f"cannot write {path}: {reason}: pass --out a .png path in a writable directory") from None


# --------------------------------------------------------------------------- the command


def plot(
    paths: Sequence[str | Path], out: str | Path | None = None, metrics: Sequence[str] | None = None, x: str = "auto"
) -> list[Path]:
    """Draw the runs under ``paths``; returns the PNGs written (curves, then the sweeps' summary if any)."""
    metrics = list(dict.fromkeys(metrics or DEFAULT_METRICS))
    paths = [Path(p) for p in paths]
    out = Path(out) if out is not None else None
    if out is not None and out.suffix.lower() != ".png":
        raise WgptError(f"--out {out}: only PNG is written: name the file <something>.png")
    runs, summaries = load_runs(paths)

    logged = sorted({column for run in runs for column in run.metrics})
    for metric in metrics:
        if not any(metric in run.metrics for run in runs):
            have = ", ".join(logged) or "no rows yet"
            raise WgptError(f"--metric {metric}: no run logged it; their metrics.csv have: {have}")
    shown = [run for run in runs if any(run.metrics.get(m) for m in metrics)]
    for run in runs:
        if run not in shown:
            print(f"note: {run.dir} has no {'/'.join(metrics)} rows yet; left out", file=sys.stderr)

    unknown = [run for run in shown if run.tokens_per_step is None]
    if x == "tokens" and unknown:
        raise WgptError(
            f"--x tokens: the tokens per step of {unknown[0].dir} are unknown (no .hydra/config.yaml): use --x steps"
        )
    by_tokens = x == "tokens" or (x == "auto" and not unknown)
    if x == "auto" and unknown:
        print(f"note: x axis in optimizer steps: the tokens per step of {unknown[0].dir} are unknown", file=sys.stderr)

    every = [*shown, *(run for run in runs if run not in shown)]  # labels and colours: the plotted runs first
    labels, shared = run_labels([run.overrides for run in every], [run.name for run in every])
    colours = dict(zip((run.dir for run in every), palette(len(every))))
    label_of = {run.dir: label for run, label in zip(every, labels)}

    out = out or (paths[0] if len(paths) == 1 else Path(".")) / ("-".join(dict.fromkeys(map(_panel, metrics))) + ".png")
    heading = " and ".join(metrics) + (f" of {len(shown)} runs" if len(shown) > 1 else "")
    fig = plot_curves(shown, [label_of[run.dir] for run in shown], _title(heading, shared), metrics, by_tokens)
    save_png(fig, out)
    written = [out]

    rows = [row for path in summaries for row in read_summary(path)]
    if rows:
        # A job that left no metrics.csv (failed at start) is labelled from the summary's own columns.
        summary_labels = [
            _job(row)
            + (
                label_of.get(row["path"])
                or " ".join(o for o in row.get("overrides", "").split() if not is_noise(o))
                or row.get("dir", "?")
            )
            for row in rows
        ]
        summary_colours = [colours.get(row["path"], "0.6") for row in rows]
        ranked_by = summary_metric(metrics)
        heading = f"{SUMMARY_METRICS[ranked_by][1]} per sweep job"
        fig = plot_summary(rows, summary_labels, summary_colours, _title(heading, shared), ranked_by)
        summary_out = out.with_name(f"{out.stem}-summary.png")
        save_png(fig, summary_out)
        written.append(summary_out)
    return written


def plot_diagnostics(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Draw the ``diagnostics.csv`` of one run dir into ``out`` (default: ``<run dir>/diagnostics.png``)."""
    if len(paths) != 1:
        raise WgptError(f"--diagnostics draws one run dir, not {len(paths)}: pass one")
    run_dir = Path(paths[0])
    out = Path(out) if out is not None else run_dir / "diagnostics.png"
    if out.suffix.lower() != ".png":
        raise WgptError(f"--out {out}: only PNG is written: name the file <something>.png")
    series = read_diagnostics(run_dir)
    title = f"layer diagnostics of {run_dir.resolve().parent.name}/{run_dir.resolve().name}"
    overrides = [o for o in read_overrides(run_dir) if not is_noise(o)]
    save_png(diagnostics_figure(series, _title(title, overrides)), out)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wgpt.plot",
        description="Draw the train and validation loss curves of runs and sweeps into a PNG.",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help=f"run dirs (outputs/<model>/<time>) or sweep dirs ({SWEEP_DIR})"
    )
    parser.add_argument("--out", help="the PNG to write (default: <DIR>/loss.png for one DIR, ./loss.png for several)")
    parser.add_argument(
        "--metric",
        action="append",
        metavar="NAME[,NAME...]",
        help="metrics.csv columns to draw, repeatable (default: train_loss,val_loss); train_X and val_X share a "
        "panel; a sweep's summary ranks by whichever of val_loss and val_bpb comes first",
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="draw the run's diagnostics.csv (per-layer norms, update ratios, activations) into <DIR>/diagnostics.png",
    )
    parser.add_argument(
        "--x",
        choices=["auto", "tokens", "steps"],
        default="auto",
        help="x axis: tokens trained on (comparable across batch sizes), or optimizer steps; auto: tokens where known",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    metrics = [name for names in args.metric or [] for name in names.split(",") if name]
    with one_line_errors():
        if args.diagnostics:
            print(f"Wrote {plot_diagnostics(args.dirs, out=args.out)}")
            return
        for path in plot(args.dirs, out=args.out, metrics=metrics, x=args.x):
            print(f"Wrote {path}")


if __name__ == "__main__":
    main()
