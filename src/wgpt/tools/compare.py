"""Is B better than A? Seeds compared with statistics: ``python -m wgpt.compare <sweep or run dirs...>``.

Finished jobs are grouped by their overrides other than ``seed`` (or by ``--by`` keys); each group
gets n, the mean with its 95% Student-t interval of the final and the best value of ``--metric``,
the seeds' standard deviation and tokens/s; each group against the baseline gets the difference of
final values with Welch's interval and p-value (Holm-adjusted over the groups compared; with
``--paired``, a paired t-test over equal seeds too); and the time to a target on each group's mean
curve: steps, tokens, training seconds and FLOPs, and the ratio to the baseline's. Written beside
the table: ``compare.csv``, ``compare.json`` and ``compare.png``.

    python -m wgpt.compare outputs/multirun/2026-12-02_14-31-58
    python -m wgpt.compare outputs/multirun/A outputs/multirun/B --baseline model.norm=layernorm --paired
    python -m wgpt.compare outputs/multirun/A --by optim.lr --metric val_loss --target 4.2
"""

from __future__ import annotations

import argparse
import atexit
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback

from wgpt.core.launch import rank_tag
from wgpt.core.report import one_line_errors
from wgpt.tools.comparison import Comparison, compare_jobs
from wgpt.tools.runs import SWEEP_DIR, load_jobs
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text
from wgpt.util.tables import csv_text, text_table


def _number(value: float, digits: int = 4) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _interval(mean: float, low: float, high: float, n: int) -> str:
    if n < 2:
        return f"{_number(mean)}, no interval (n={n})"
    return f"{_number(mean)} [{_number(low)}, {_number(high)}]"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _amount(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.4g}{unit}"


def format_comparison(result: Comparison) -> str:
    """The statistics table, then the time-to-target table, as plain text."""
    m = result.metric
    base = result.baseline
    stats_rows = [
        [
            "group",
            "n",
            f"final {m} (95% CI)",
            "sd",
            f"best {m} (95% CI)",
            "tokens/s",
            "final - baseline (Welch 95% CI)",
            "p" + (" (Holm)" if result.holm else ""),
        ]
    ]
    if result.paired:
        stats_rows[0] += ["paired diff (95% CI)", "paired p"]
    for g in result.groups:
        row = [
            g.label,
            str(g.n),
            _interval(g.final.mean, g.final.low, g.final.high, g.n),
            _number(g.final.sd) if g.n > 1 else "-",
        ]
        row += [_interval(g.best.mean, g.best.low, g.best.high, g.n), _amount(g.tokens_per_sec)]
        if g is base:
            row += ["baseline", "-"]
        else:
            d = g.welch
            shown = f"{d.diff:+.4f}" + (
                f" [{d.low:+.4f}, {d.high:+.4f}]" if not math.isnan(d.low) else " (needs n>=2 in both)"
            )
            row += [shown, _p(g.p_adjusted)]
        if result.paired:
            if g is base or g.paired is None:
                row += ["-", "-"]
            else:
                d = g.paired
                shown = f"{d.diff:+.4f}" + (
                    f" [{d.low:+.4f}, {d.high:+.4f}]" if not math.isnan(d.low) else f" ({d.n} pairs)"
                )
                row += [f"{shown} over {d.n} seeds", _p(d.p)]
        stats_rows.append(row)
    direction = "<=" if result.mode == "min" else ">="
    lines = [
        f"{m} of {sum(g.n for g in result.groups)} finished runs in {len(result.groups)} groups; "
        f"baseline: {base.label}" + (f"; shared: {', '.join(result.shared)}" if result.shared else ""),
        text_table(stats_rows),
        "",
        f"Time to {m} {direction} {result.target:.4f} ({result.target_source}), on each group's mean curve "
        "(mean over seeds at each validation, linear interpolation):",
    ]
    target_rows = [
        ["group", "seeds reaching it", "steps (x baseline)", "tokens", "train seconds (x baseline)", "FLOPs"]
    ]
    for g in result.groups:
        t = g.target
        if t is None:
            target_rows.append([g.label, f"{g.reached} of {g.n}", "not reached", "-", "-", "-"])
            continue
        bound = "<= " if g.target_at_first else ""  # reached by the first validation: maybe sooner
        steps = f"{bound}{t['steps']:.0f}" + (f" ({g.ratios['steps']:.2f}x)" if "steps" in g.ratios else "")
        seconds = _number(t["train_seconds"], 1) + (
            f" ({g.ratios['train_seconds']:.2f}x)" if "train_seconds" in g.ratios else ""
        )
        target_rows.append(
            [g.label, f"{g.reached} of {g.n}", steps, _amount(t["tokens"]), seconds, _amount(t["flops"])]
        )
    lines.append(text_table(target_rows))
    if any(g.target_at_first for g in result.groups):
        lines.append("<= : reached by the first validation (it may have come sooner)")
    for g in result.groups:
        if g is not base and "steps" in g.ratios:
            within = "at most " if g.target_at_first else ""
            lines.append(
                f"{g.label} reaches {result.target_source_short} in {within}{g.ratios['steps']:.2f}x "
                f"the steps of {base.label}"
            )
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def write_outputs(result: Comparison, out: Path, draw: bool = True) -> list[Path]:
    """compare.csv (a row per group), compare.json (everything, the runs and curves included), and
    compare.png (unless ``draw`` is false) in ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.csv", out / "compare.json"]
    atomic_write_text(written[0], csv_text(result.csv_rows()))
    atomic_write_text(written[1], json.dumps(result.as_json(), indent=2, allow_nan=True) + "\n")
    if draw:
        from wgpt.tools.compare_plot import plot_comparison  # matplotlib with it: only when a figure is drawn

        written.append(plot_comparison(result, out / "compare.png"))
    return written


def default_out(paths: Sequence[Path]) -> Path:
    """A single sweep (or other dir of runs) holds the comparison; otherwise the current dir."""
    first = Path(paths[0])
    if len(paths) == 1 and not (first / "metrics.csv").is_file():
        return first
    return Path(".")


# --------------------------------------------------------------------------- the end of a -m sweep


class SweepComparison(Callback):
    """Hydra callback: at the end of a ``-m`` sweep with several seeds of a setting, the comparison
    table (printed after the sweep's summary) and its files in the sweep dir."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        if not rank_tag():
            # atexit runs last-registered first: this is registered before SweepSummary's (its place
            # in conf/train.yaml), so the comparison prints after the sweep's table.
            atexit.register(report_comparison, Path(config.hydra.sweep.dir))


def report_comparison(sweep_dir: Path) -> None:
    """The comparison at a sweep's end; a problem is one line, for the sweep itself is over."""
    try:
        jobs, notes = load_jobs([sweep_dir], "val_bpb")
        result = compare_jobs(jobs, "val_bpb", notes=notes)
    except WgptError:
        return  # nothing finished, or nothing to compare: the sweep's own table says so
    except Exception as e:  # noqa: BLE001 (after the sweep: a traceback would bury its table)
        print(f"note: no comparison of the seeds: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if max(g.n for g in result.groups) < 2:
        return  # one seed per setting: the sweep's table is the comparison
    where = "not saved"
    try:
        written = write_outputs(result, sweep_dir)
        where = f"{', '.join(p.name for p in written)} in {sweep_dir}"
    except Exception as e:  # noqa: BLE001 (the table still prints)
        print(f"note: could not write the comparison's files: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"\nComparison over seeds ({where}):", flush=True)
    print(format_comparison(result), flush=True)


# --------------------------------------------------------------------------- the command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wgpt.compare",
        description="Compare groups of seeds: intervals, Welch's test against a baseline, time to a target.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help=f"sweep dirs ({SWEEP_DIR}) or run dirs")
    parser.add_argument(
        "--by", nargs="+", metavar="KEY", help="group by these config keys (default: every override but seed)"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="the group to compare against, repeatable to narrow it (default: the first group)",
    )
    parser.add_argument("--metric", default="val_bpb", help="a validation column of metrics.csv (default: val_bpb)")
    parser.add_argument("--mode", choices=["min", "max"], default="min", help="min: lower is better (losses, bpb)")
    parser.add_argument("--target", help="the value to time (default: the baseline's mean final value)")
    parser.add_argument("--paired", action="store_true", help="also a paired t-test over equal seeds")
    parser.add_argument("--out", help="where compare.csv/json/png go (default: the one sweep dir given, else .)")
    parser.add_argument("--no-plot", action="store_true", help="write no compare.png")
    return parser.parse_args(argv)


def parse_target(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WgptError(
            f"--target {text!r} is not a number: pass the metric's value to reach, e.g. --target 1.95"
        ) from None
    if not math.isfinite(value):
        raise WgptError(f"--target {text}: pass a finite number")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors():
        target = parse_target(args.target)
        paths = [Path(p) for p in args.dirs]
        jobs, notes = load_jobs(paths, args.metric)
        result = compare_jobs(
            jobs,
            args.metric,
            by=args.by,
            baseline=args.baseline,
            mode=args.mode,
            target=target,
            paired=args.paired,
            notes=notes,
        )
        print(format_comparison(result))
        for path in write_outputs(result, Path(args.out) if args.out else default_out(paths), draw=not args.no_plot):
            print(f"Wrote {path}")


if __name__ == "__main__":
    main()
