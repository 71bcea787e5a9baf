"""python -m wgpt.tools.plot on a real sweep made through train.py: the PNGs, their labels, bad input;
and --diagnostics on a real run's diagnostics.csv. The labels and run reading on hand-made dirs:
tests/unit/test_plot.py (the diagnostics figure: tests/unit/test_diagnostics.py)."""

import csv
import math
import struct
from pathlib import Path

import matplotlib.image
import pytest

from wgpt.tools.plot import plot_curves, plot_summary, read_summary, summary_metric
from wgpt.tools.runs import load_runs, run_labels, tokens_per_step

from conftest import read_metrics, run_cli


@pytest.fixture
def sweep_dir(sweep) -> Path:
    """conftest's SWEEP: jobs 0-gpt2-tiny and 1-llama3-tiny, validation at steps 4 and 8, train loss every 2."""
    return sweep[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header, after checking the file decodes as a whole."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert matplotlib.image.imread(path).ndim == 3  # every chunk readable, not just the header
    return struct.unpack(">II", data[16:24])


def test_a_sweep_gives_its_loss_curves_and_summary(sweep_dir):
    result = run_cli("-m", "wgpt.tools.plot", str(sweep_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    curves, summary = sweep_dir / "loss.png", sweep_dir / "loss-summary.png"
    assert result.stdout.splitlines() == [f"Wrote {curves}", f"Wrote {summary}"]
    width, height = png_size(curves)
    assert 1000 <= width <= 2500 and 500 <= height <= 1500
    width, height = png_size(summary)
    assert 800 <= width <= 2500 and 200 <= height <= 1000
    assert not list(sweep_dir.glob(".*.tmp"))  # written whole, then renamed

    # What the figures hold: both jobs, labelled by the override that differs, the rest in the title.
    runs, summaries = load_runs([sweep_dir])
    assert [run.dir.name for run in runs] == ["0-gpt2-tiny", "1-llama3-tiny"]
    labels, shared = run_labels([run.overrides for run in runs], [run.name for run in runs])
    assert labels == ["model=gpt2-tiny", "model=llama3-tiny"]
    assert "model.d_embed=32" in shared and "trainer.max_steps=8" in shared
    assert not any(o.startswith(("paths.", "trainer.enable_progress_bar")) for o in shared)  # noise
    fig = plot_curves(runs, labels, "title", ["train_loss", "val_loss"], by_tokens=True)
    run_legend, style_legend = fig.legends
    assert [t.get_text() for t in run_legend.get_texts()] == labels
    assert [t.get_text() for t in style_legend.get_texts()] == ["train_loss", "val_loss"]
    assert fig.axes[0].get_xlabel().startswith("tokens trained on")

    (summary_csv,) = summaries
    rows = read_summary(summary_csv)
    assert [row["path"] for row in rows] == [run.dir for run in runs]
    fig = plot_summary(rows, labels, ["C0", "C1"], "title")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == labels
    values = [t.get_text().split()[0] for t in fig.axes[0].texts]
    assert values == [f"{float(row['best_val_loss']):.4f}" for row in rows]


def test_a_run_dir_is_plotted_on_tokens_into_its_own_dir(sweep_dir):
    run = sweep_dir / "1-llama3-tiny"
    result = run_cli("-m", "wgpt.tools.plot", str(run), "--metric", "val_ppl,tokens_per_sec")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "ppl-tokens_per_sec.png"  # named after its panels, one above the other; a run has no summary
    assert result.stdout.strip() == f"Wrote {out}"
    width, height = png_size(out)
    assert height > width * 0.8

    (loaded,), _ = load_runs([run])
    # batch x llama3-tiny's max_seq_len x accumulate_grad_batches, one process
    assert tokens_per_step(run) == loaded.tokens_per_step == 4 * 128 * 2
    # A row of metrics.csv at Lightning's step s is drawn at s + 1 steps done, as train.log counts.
    assert [steps for steps, _ in loaded.metrics["val_loss"]] == [4, 8]
    assert [steps for steps, _ in loaded.metrics["train_loss"]] == [2, 4, 6, 8]
    assert "step 4 | val_loss" in (run / "train.log").read_text()


def test_bits_per_byte_get_a_panel_and_a_ranking_of_their_own(sweep, sweep_dir, tmp_path):
    out = tmp_path / "sweep.png"
    result = run_cli("-m", "wgpt.tools.plot", str(sweep_dir), "--metric", "val_bpb", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"Wrote {out}", f"Wrote {tmp_path / 'sweep-summary.png'}"]
    width, height = png_size(out)
    assert 1000 <= width <= 2500 and 500 <= height <= 1500  # one panel
    png_size(tmp_path / "sweep-summary.png")

    runs, (summary_csv,) = load_runs([sweep_dir])
    labels = [run.name for run in runs]
    # Beside the losses, val_bpb is drawn in a panel of its own: bits per byte are not nats per token.
    fig = plot_curves(runs, labels, "title", ["train_loss", "val_loss", "val_bpb"], by_tokens=False)
    loss_ax, bpb_ax = fig.axes[:2]
    assert loss_ax.get_ylabel().startswith("cross-entropy loss") and bpb_ax.get_ylabel() == "bits per byte"
    for run, line in zip(runs, bpb_ax.get_lines()):
        assert list(line.get_ydata()) == [v for _, v in run.metrics["val_bpb"]]
        # ~4 bytes per r50k token: well below the loss in bits, so a shared axis would flatten one of them
        assert all(bpb < loss / math.log(2) / 2 for bpb, (_, loss) in zip(line.get_ydata(), run.metrics["val_loss"]))
    assert len(loss_ax.get_lines()) == 2 * len(runs)  # train and val loss of each run, no bpb among them

    # The sweep summary ranks by the best val_bpb (that of the best val_loss validation) when that is drawn.
    assert summary_metric(["val_bpb"]) == "val_bpb" and summary_metric(["val_loss", "val_bpb"]) == "val_loss"
    assert summary_metric(["val_bpb/shakespeare"]) == "val_bpb" and summary_metric(["tokens_per_sec"]) == "val_loss"
    rows = read_summary(summary_csv)
    table = sweep[0].stdout.split("Sweep summary")[1].splitlines()  # as train.py -m printed it
    header = table[1].split()
    after_loss = header.index("best_val_loss") + 1
    assert header[after_loss : after_loss + 2] == ["final_val_bpb", "best_val_bpb"]
    for row, line in zip(rows, table[3:5]):
        assert line.split()[header.index("best_val_bpb")] == f"{float(row['best_val_bpb']):.4f}"
    fig = plot_summary(rows, labels, ["C0", "C1"], "title", metric="val_bpb")
    values = [float(t.get_text().split()[0]) for t in fig.axes[0].texts]
    assert values == [pytest.approx(float(row["best_val_bpb"]), abs=1e-4) for row in rows]
    assert values == [pytest.approx(min(v for _, v in run.metrics["val_bpb"]), abs=1e-4) for run in runs]
    assert fig.axes[0].get_xlabel().startswith("best validation bits per byte")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist: pass a run dir"),
        ("no_metrics", "no metrics.csv under"),
        ("unwritable_out", "cannot write"),
        ("unknown_metric", "--metric val_acc: no run logged it; their metrics.csv have: "),
    ],
)
def test_bad_input_ends_in_one_line(case, message, sweep_dir, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "a_file").write_text("")
    args = {
        "missing": [str(tmp_path / "nowhere")],
        "no_metrics": [str(tmp_path / "empty")],
        "unwritable_out": [str(sweep_dir), "--out", str(tmp_path / "a_file" / "loss.png")],  # under a file
        "unknown_metric": [str(sweep_dir), "--metric", "val_acc"],
    }[case]
    result = run_cli("-m", "wgpt.tools.plot", *args)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and message in line and "Traceback" not in result.stderr


def test_a_run_writes_its_layer_diagnostics_apart_and_they_plot(gpt2_tiny_run, tmp_path):
    """conftest's GPT2_TINY_RUN: 8 steps, logged every 2, so diagnosed at step 8 (4 x 2) alone."""
    _, run_dir = gpt2_tiny_run
    rows = list(csv.DictReader(open(run_dir / "diagnostics.csv", newline="")))
    assert list(rows[0]) == ["step", "block", "kind", "metric", "value"] and {r["step"] for r in rows} == {"8"}
    found = {(r["block"], r["kind"], r["metric"]) for r in rows}
    for metric in ("grad_norm", "weight_norm", "update_ratio"):
        assert {("0", "attn", metric), ("0", "mlp", metric), ("0", "norm", metric), ("", "embedding", metric)} <= found
    assert {("0", "", "residual_rms"), ("0", "attn", "attn_entropy"), ("", "output", "max_logit")} <= found
    assert all(math.isfinite(float(r["value"])) for r in rows)
    metrics = read_metrics(run_dir)[0]
    assert "grad_norm" in metrics and not {"update_ratio", "residual_rms", "attn_entropy"} & set(metrics)

    out = tmp_path / "diagnostics.png"  # the shared run is read-only
    result = run_cli("-m", "wgpt.tools.plot", "--diagnostics", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Wrote {out}" and png_size(out)[0] > 1000
    result = run_cli("-m", "wgpt.tools.plot", "--diagnostics", str(tmp_path))
    assert result.returncode == 1 and result.stderr.strip().startswith(f"Error: {tmp_path}: no diagnostics.csv")
