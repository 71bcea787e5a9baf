"""Every conf/optim option training through train.py, a checkpoint of another optimizer refused, and
rule selectors checked on the command line. The optimizers themselves: tests/unit/test_optim.py."""

import csv

import torch

from conftest import FAST, paths, run_cli


def test_every_optim_option_and_an_override_train_through_train_py(tmp_path, data_dir):
    # With accumulation and clipping (trainer.gradient_clip_val: 1.0), which a combined optimizer must pass through.
    result = run_cli(
        "train.py",
        "-m",
        "optim=adamw,sgd,adafactor,muon",
        "trainer.accumulate_grad_batches=2",
        *FAST,
        *paths(tmp_path, data_dir),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = tmp_path.glob("outputs/multirun/*/summary.csv")
    rows = list(csv.DictReader(open(summary)))
    assert [r["optim"] for r in rows] == ["adamw", "sgd", "adafactor", "muon"] and {r["status"] for r in rows} == {
        "completed"
    }
    # Each checkpoint holds its optimizer's own state (Muon's run: AdamW's and Muon's).
    state_keys = {
        "adamw": ["exp_avg"],
        "sgd": ["momentum_buffer"],
        "adafactor": ["row_var"],
        "muon": ["exp_avg", "momentum_buffer"],
    }
    for row in rows:
        (ckpt,) = tmp_path.glob(f"outputs/multirun/*/{row['dir']}/checkpoints/recent.ckpt")
        saved = torch.load(ckpt, weights_only=True)["optimizer_states"][0]
        states = saved["optimizers"] if row["optim"] == "muon" else [saved]
        assert [key for key, state in zip(state_keys[row["optim"]], states) if key in state["state"][0]] == state_keys[
            row["optim"]
        ]

    radam = run_cli("train.py", "optim._target_=torch.optim.RAdam", *FAST, *paths(tmp_path / "radam", data_dir))
    assert radam.returncode == 0, radam.stderr[-3000:]
    (ckpt,) = (tmp_path / "radam").glob("outputs/gpt2-tiny/*/checkpoints/recent.ckpt")
    assert "decoupled_weight_decay" in torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"][0]


def test_a_checkpoint_of_another_optimizer_is_refused_in_one_line(gpt2_tiny_run, data_dir, tmp_path):
    _, run_dir = gpt2_tiny_run  # trained with adamw
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    for optim in ("muon", "sgd"):
        result = run_cli("train.py", f"optim={optim}", f"ckpt_path={ckpt}", *FAST, *paths(tmp_path, data_dir))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: ckpt_path={ckpt} holds the state of another optimizer or other parameter groups than this run's "
            f"(optim={optim}): continue it with the optim settings of its run"
        )
    assert not any((tmp_path / "outputs").rglob("*.ckpt"))


def test_rule_selectors_must_be_lists(data_dir, tmp_path):
    result = run_cli("train.py", "+optim.param_groups.x={names:'blocks.0.*'}", *FAST, *paths(tmp_path, data_dir))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        "Error: optim.param_groups.x.names=blocks.0.* is not a list of strings"
    ), result.stderr[-2000:]
