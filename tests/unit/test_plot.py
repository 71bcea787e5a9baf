"""wgpt.tools.plot and wgpt.tools.runs on hand-made run dirs: labels, overrides, tokens per step, the
summary of a failed job. python -m wgpt.tools.plot on a real sweep: tests/e2e/test_plot_cli.py."""

import math

from wgpt.tools.plot import plot_summary
from wgpt.tools.runs import read_overrides, run_labels, tokens_per_step


def test_labels_keep_what_differs_and_title_what_is_shared():
    labels, shared = run_labels(
        [
            ["model=gpt2-tiny", "optim.lr=1e-3", "trainer.max_steps=8"],
            ["model=llama3-tiny", "optim.lr=1e-3", "trainer.max_steps=8"],
        ],
        ["0-gpt2-tiny", "1-llama3-tiny"],
    )
    assert labels == ["model=gpt2-tiny", "model=llama3-tiny"] and shared == ["optim.lr=1e-3", "trainer.max_steps=8"]
    # Nothing of its own: the dir name; the same overrides twice: the dir names tell them apart.
    assert run_labels([["optim.lr=1e-3"]], ["2026-11-23_19-11-14"]) == (["2026-11-23_19-11-14"], ["optim.lr=1e-3"])
    labels, shared = run_labels([["a=1", "b=2"], ["a=1", "b=2"], ["a=1", "b=3"]], ["x", "y", "z"])
    assert labels == ["b=2 (x)", "b=2 (y)", "b=3"] and shared == ["a=1"]


def test_overrides_of_where_and_when_are_left_out(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- optim.lr=0.003\n- start_datetime=2026-01-01_00-00-00\n- hydra.run.dir=/x\n- hydra/launcher=slurm\n"
        "- paths.output_root=/tmp/out\n- +trainer.profiler=simple\n- data.num_workers=0\n"
    )
    assert read_overrides(tmp_path) == ["optim.lr=0.003", "+trainer.profiler=simple"]
    assert read_overrides(tmp_path / "missing") == []


def test_tokens_per_step_counts_accumulation_and_ddp_processes(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(
        "model: {max_seq_len: 64}\ndata: {batch_size: 8, seq_len: '${model.max_seq_len}'}\n"
        "trainer: {devices: auto, num_nodes: 1, accumulate_grad_batches: 2}\n"
    )
    assert tokens_per_step(tmp_path) is None  # devices=auto and no log to say how many processes ran
    (tmp_path / "train.log").write_text(
        "[...][lightning.fabric.utilities.distributed][INFO] - Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2\n"
        "[...][rank 1][lightning.fabric.utilities.distributed][INFO] - "
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2\n"
    )
    assert tokens_per_step(tmp_path) == 8 * 64 * 2 * 2


def test_a_job_without_a_best_loss_says_how_it_ended():
    rows = [
        {"best_val_loss": "5.5", "best_step": "8", "status": "completed"},
        {"best_val_loss": "nan", "best_step": "-1", "status": "failed", "error": "Error: boom"},
    ]
    ax = plot_summary(rows, ["optim.lr=0.001", "optim.lr=10"], ["C0", "C1"], "title").axes[0]
    assert [t.get_text().strip() for t in ax.texts] == ["5.5000  (step 8)", "failed: Error: boom"]
    assert ax.get_xlim()[0] < 5.5 and not any(math.isnan(p.get_width()) for p in ax.patches)
    # Ranked by bits per byte, a job from before wgpt measured them (no best_val_bpb) says so.
    ax = plot_summary(rows, ["optim.lr=0.001", "optim.lr=10"], ["C0", "C1"], "title", metric="val_bpb").axes[0]
    assert [t.get_text().strip() for t in ax.texts] == ["completed: no best_val_bpb", "failed: Error: boom"]
