"""The quick start with the default r50k tokenizer against a small BPE trained on the corpus.

    python bench/compare_tokenizers.py                      # r50k for 450 steps vs bpe4096 for 1,350
    python bench/compare_tokenizers.py --vocab-size 8192 --bpe-steps 900

Each run is ``python train.py model=gpt2-tiny [tokenizer=bpe ...]`` as a user types it (the BPE
is trained and its bins written inside the timed command, as on a first run), timed from start to
exit. Then ``eval.py`` scores each final checkpoint on the whole validation split (Macbeth and
Twelfth Night: the same text for both tokenizers), so the bits per byte compare. Prints tokens/s
(the median of the run's logged rates), wall time, and validation loss and bits per byte.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, last, median


def run(args: list[str], cwd: Path) -> float:
    """Seconds ``python <args>`` took; exits on failure."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument(
        "--bpe-steps", type=int, default=1350, help="optimizer steps of the BPE run (r50k: the quick start's 450)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both runs")
    parser.add_argument("--keep", type=Path, help="keep the runs (and the data) in this directory")
    args = parser.parse_args()

    bpe = ["tokenizer=bpe", f"tokenizer.vocab_size={args.vocab_size}", f"trainer.max_steps={args.bpe_steps}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wgpt-bench-tok-") as tmp:
        tmp = args.keep or tmp
        data_dir = Path(tmp) / "data"
        for name, overrides in [("r50k", []), (f"bpe{args.vocab_size}", bpe)]:
            out = Path(tmp) / name
            seconds = run(
                [
                    str(ROOT / "train.py"),
                    "model=gpt2-tiny",
                    *overrides,
                    *args.extra,
                    f"paths.data_dir={data_dir}",
                    f"paths.output_root={out}",
                    "trainer.enable_progress_bar=false",
                ],
                cwd=ROOT,
            )
            (run_dir,) = (out / "gpt2-tiny").iterdir()
            with open(run_dir / "metrics.csv") as f:
                metrics = list(csv.DictReader(f))
            rates = [float(r["tokens_per_sec"]) for r in metrics if r.get("tokens_per_sec")][1:]  # the first warms up
            ckpt = run_dir / "checkpoints" / "recent.ckpt"
            run(
                [str(ROOT / "eval.py"), f"ckpt_path={ckpt}", "splits=[validation]", f"paths.data_dir={data_dir}"],
                cwd=ROOT,
            )
            scored = json.loads((run_dir / "eval-recent.json").read_text())["results"]["shakespeare"]["validation"]
            steps = int(float(last(metrics, "step"))) + 1
            rows.append(
                [
                    name,
                    str(steps),
                    f"{seconds:.0f}",
                    f"{median(rates):,.0f}",
                    f"{last(metrics, 'val_loss'):.3f}",
                    f"{last(metrics, 'val_bpb'):.3f}",
                    f"{scored['loss']:.3f}",
                    f"{scored['bpb']:.3f}",
                    f"{scored['tokens']:,}",
                ]
            )
            curve = [
                (int(float(r["step"])) + 1, float(r["val_loss"]), float(r["val_bpb"]))
                for r in metrics
                if r.get("val_bpb")
            ]
            print(
                f"{name}: {seconds:.0f} s; validation (step, loss, bpb): "
                + ", ".join(f"({s}, {loss:.3f}, {bpb:.3f})" for s, loss, bpb in curve),
                file=sys.stderr,
                flush=True,
            )
    header = ["tokenizer", "steps", "wall s", "tokens/s", "val_loss", "val_bpb", "eval loss", "eval bpb", "eval tokens"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
