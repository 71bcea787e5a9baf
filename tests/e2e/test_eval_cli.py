"""eval.py on conftest's gpt2-tiny checkpoint: loss, perplexity and top-k accuracy saved beside it,
other data, and bad input. The Evaluator itself: tests/unit/test_eval.py."""

import csv
import json
import math
import shutil

import pytest
import torch
from test_crash_safety import Payload

from conftest import run_cli

# The run validated on the CPU: eval.py there too (on a GPU it would score in bf16, a little apart).
CPU = ["device=cpu"]


@pytest.fixture
def trained(gpt2_tiny_run, tmp_path):
    """The recent.ckpt of a copy of conftest's gpt2-tiny run dir: eval.py writes its results beside it."""
    _, run_dir = gpt2_tiny_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    return copy / "checkpoints" / "recent.ckpt"


def test_eval_py_scores_the_runs_own_data_and_saves_json(trained, data_dir):
    # The run validated on its first 4 batches of 4 windows: so does this, and the losses agree.
    result = run_cli(
        "eval.py", f"ckpt_path={trained}", "batch_size=4", "max_batches=4", f"paths.data_dir={data_dir}", *CPU
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((trained.parents[1] / "eval-recent.json").read_text())
    checkpoint = torch.load(trained, weights_only=True)
    best = checkpoint["best_metrics"]
    validation = saved["results"]["shakespeare"]["validation"]
    assert validation["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    # Bits per byte too: as the run logged them (metrics.csv, the checkpoint, summary.json), with
    # the tokenizer the checkpoint records.
    assert checkpoint["tokenizer"]["name"] == saved["tokenizer"]["name"] == "r50k"
    with open(trained.parents[1] / "metrics.csv") as f:
        logged = [float(row["val_bpb"]) for row in csv.DictReader(f) if row.get("val_bpb")]
    summary = json.loads((trained.parents[1] / "summary.json").read_text())
    assert validation["bpb"] == pytest.approx(best["val_bpb"], rel=1e-4) and best["step"] == 8
    assert validation["bpb"] == pytest.approx(logged[-1], rel=1e-4)
    assert summary["best_val_bpb"] == summary["final_val_bpb"] == best["val_bpb"]
    # Not a per-token loss in other units: r50k spells ~4 bytes of Shakespeare per token.
    assert 2.5 < validation["loss"] / math.log(2) / validation["bpb"] < 6
    assert validation["tokens"] == 4 * 4 * 128 and 0 < validation["top1_acc"] <= validation["top5_acc"] < 1
    assert set(saved["results"]["shakespeare"]) == {"validation", "test"} and saved["global_step"] == 8
    assert "shakespeare  validation" in result.stdout and "eval-recent.json" in result.stdout
    assert f"{validation['bpb']:.4f}" in result.stdout.split("shakespeare  validation")[1].splitlines()[0]


def test_eval_py_takes_other_data_and_refuses_bad_input(trained, data_dir, tmp_path):
    result = run_cli(
        "eval.py",
        f"ckpt_path={trained}",
        "data=shakespeare",
        "splits=[test]",
        "max_batches=1",
        f"paths.data_dir={data_dir}",
        *CPU,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((trained.parents[1] / "eval-recent.json").read_text())["results"]["shakespeare"]) == {"test"}

    bad = run_cli("eval.py", f"ckpt_path={trained}", "splits=[valid]")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "Error: splits=['valid'] names 'valid': use validation, test or train"
    )
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["model_config"] = Payload(tmp_path / "ran")
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    evil = run_cli("eval.py", f"ckpt_path={tmp_path / 'evil.ckpt'}")
    assert evil.returncode == 1 and "holds more than tensors and plain containers" in evil.stderr
    assert not (tmp_path / "ran").exists()
