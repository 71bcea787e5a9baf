"""train.py end to end, through the real command line: Hydra composition, Lightning, run dirs.
The composed config alone: tests/unit/test_train.py."""

import json
import math
import re

import pytest
import torch

from wgpt.core.devices import cpu_precision

from conftest import FAST, paths, read_metrics, run_cli


def test_gpt2_tiny_trains_and_leaves_a_complete_run_dir(gpt2_tiny_run):
    # conftest's GPT2_TINY_RUN, started from another directory, as `python /path/to/train.py`:
    # nothing depends on the cwd.
    _, run_dir = gpt2_tiny_run
    assert run_dir.name[:4].isdigit() and len(run_dir.name) == len("2026-01-01_00-00-00")

    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {p.name for p in (run_dir / ".hydra").iterdir()}
    assert "model=gpt2-tiny" in (run_dir / ".hydra" / "overrides.yaml").read_text()

    log = (run_dir / "train.log").read_text()
    assert f"precision auto: {cpu_precision()} on this CPU" in log
    assert "step 2 | epoch 0 | train_loss" in log and "step 8 | val_loss" in log and "val_ppl" in log
    assert re.search(
        r"step 8 \| epoch 0 \| train_loss \S+ \| grad_norm \S+ \| lr \S+ \| [\d,]+ tokens/s \| [\d.]+ samples/s "
        r"\| MFU [\d.]+%",
        log,
    )

    rows = read_metrics(run_dir)
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert len(val) == 2 and len(train) == 4  # validations at steps 4 and 8 (the end); a train row every 2 steps
    assert val[-1] < val[0] < math.log(50304)  # it learns
    assert all(
        math.isclose(float(r["val_ppl"]), math.exp(float(r["val_loss"])), rel_tol=1e-4) for r in rows if r["val_loss"]
    )
    # Speed in every train row: 128 tokens a sample (seq_len), MFU a fraction of the CPU's peak.
    speed = [r for r in rows if r["train_loss"]]
    assert all(float(r["tokens_per_sec"]) == pytest.approx(128 * float(r["samples_per_sec"])) for r in speed)
    assert all(0 < float(r["mfu"]) < 1 and float(r["flops_per_sec"]) > 0 for r in speed)
    assert all(float(r["grad_norm"]) > 0 for r in speed)  # before clipping (trainer.gradient_clip_val 1.0)

    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert checkpoints == {
        "recent.ckpt",
        "recent-previous.ckpt",
        f"best-{run_dir.name}.ckpt",
        f"best-{run_dir.name}.safetensors",
    }
    recent = torch.load(run_dir / "checkpoints" / "recent.ckpt", weights_only=True)
    previous = torch.load(run_dir / "checkpoints" / "recent-previous.ckpt", weights_only=True)
    assert previous["global_step"] < recent["global_step"]
    best = torch.load(run_dir / "checkpoints" / f"best-{run_dir.name}.ckpt", weights_only=True)
    assert recent["global_step"] == 8
    assert recent["model_config"]["name"] == "gpt2-tiny" and recent["model_config"]["d_embed"] == 32
    assert recent["best_metrics"]["val_loss"] == pytest.approx(min(val), rel=1e-5)
    assert recent["best_metrics"]["val_ppl"] == pytest.approx(math.exp(min(val)), rel=1e-5)
    assert math.isfinite(recent["best_metrics"]["train_loss"])
    assert best["global_step"] == recent["best_metrics"]["step"] == 8


def test_llama3_tiny_trains_with_gradient_accumulation(sweep):
    # Job 1 of conftest's SWEEP: llama3-tiny, trainer.accumulate_grad_batches=2.
    _, sweep_dir = sweep
    run_dir = sweep_dir / "1-llama3-tiny"
    rows = read_metrics(run_dir)
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(val) == 2 and val[-1] < val[0]  # validation every 4 optimizer steps (8 batches), then the end
    # The log file shows the real loss, not the one divided for accumulation.
    logged = {
        int(line.split("step ")[1].split(" ")[0]): float(line.split("train_loss ")[1].split(" ")[0])
        for line in (run_dir / "train.log").read_text().splitlines()
        if "train_loss" in line
    }
    assert logged and all(loss > 5 for loss in logged.values())
    checkpoint = torch.load(run_dir / "checkpoints" / "recent.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # optimizer steps: 16 batches
    assert checkpoint["model_config"]["n_kv_heads"] == 2 and checkpoint["model_config"]["tie_embeddings"] is True


def test_multirun_gives_one_job_dir_per_model(sweep):
    _, sweep_dir = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0-gpt2-tiny", "1-llama3-tiny"]
    for job in jobs:
        ckpt = torch.load(sweep_dir / job / "checkpoints" / "recent.ckpt", weights_only=True)
        assert ckpt["global_step"] == 8 and ckpt["model_config"]["name"] == job[2:]
        assert (sweep_dir / job / "metrics.csv").exists() and (sweep_dir / job / "train.log").exists()
        assert "model=" + job[2:] in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_machine_a_run_takes_the_gpu_and_its_checkpoint_evaluates_and_samples(tmp_path, data_dir):
    """What the CPU-pinned runs leave out: accelerator, devices and precision left to auto (one
    GPU at most; compile off, for a quick first step), then eval.py and generate.py on their
    default device."""
    overrides = [o for o in FAST if o != "trainer.accelerator=cpu"]
    result = run_cli(
        "train.py", "model=gpt2-tiny", *overrides, "trainer.max_devices=1", "compile=false", *paths(tmp_path, data_dir)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    precision = "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    assert f"precision auto: {precision} on this GPU" in (run_dir / "train.log").read_text()
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["global_step"] == 8

    scored = run_cli(
        "eval.py",
        f"ckpt_path={ckpt}",
        "batch_size=4",
        "max_batches=4",
        "splits=[validation]",
        f"paths.data_dir={data_dir}",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    loss = json.loads((run_dir / "eval-recent.json").read_text())["results"]["shakespeare"]["validation"]["loss"]
    assert loss == pytest.approx(checkpoint["best_metrics"]["val_loss"], rel=2e-2)  # both in bf16 on the GPU
    sampled = run_cli("generate.py", f"ckpt_path={ckpt}", "prompt=To be", "max_new_tokens=5")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert sampled.stdout.startswith("To be")


def test_bad_input_ends_in_one_line(tmp_path, data_dir):
    result = run_cli("train.py", "data.seq_len=4096", *paths(tmp_path, data_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: data.seq_len=4096 exceeds model.max_seq_len=128: lower data.seq_len or raise model.max_seq_len"
    )
    assert "Traceback" not in result.stderr
