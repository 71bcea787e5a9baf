"""`optim/scheduler=wsd` through train.py: the learning rate of each step, and bad options in one line.
The schedule itself: tests/unit/test_schedules.py."""

from __future__ import annotations

import json

import pytest

from wgpt.optim.scheduler import wsd

from conftest import FAST, ROOT, paths, run_cli

# Through train.py: the config reaches the optimizer, and bad options are one line.
WSD = [
    "optim/scheduler=wsd",
    "optim.scheduler.warmup_steps=2",
    "optim.scheduler.decay_fraction=0.5",
    "optim.scheduler.min_lr_ratio=0.1",
]


def test_train_with_wsd_follows_the_schedule(tmp_path, data_dir):
    probe = tmp_path / "probe.json"
    result = run_cli(
        "train.py",
        *WSD,
        *FAST,
        *paths(tmp_path, data_dir),
        "+callbacks.probe._target_=probes.FastPathProbe",
        f"+callbacks.probe.path={probe}",
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lrs = json.loads(probe.read_text())["lr"]  # FAST: 8 steps at lr 1e-2; warmup 2, decay over the last 4
    expected = [1e-2 * wsd(s, 8, warmup_steps=2, decay_fraction=0.5, min_lr_ratio=0.1) for s in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[1:5] == pytest.approx([1e-2] * 4) and lrs[4] > lrs[5] > lrs[6] > lrs[7] > 1e-3


@pytest.mark.parametrize(
    "override, says",
    [
        ("optim.scheduler.decay_shape=bogus", "Error: optim.scheduler.decay_shape=bogus is not one of linear, cosine"),
        ("optim.scheduler.decay_fraction=2", "Error: optim.scheduler.decay_fraction=2 is out of range: give a number"),
    ],
)
def test_bad_wsd_options_are_one_line(override, says, tmp_path, data_dir):
    result = run_cli("train.py", *WSD, override, *FAST, *paths(tmp_path, data_dir))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(says), result.stderr[-2000:]
