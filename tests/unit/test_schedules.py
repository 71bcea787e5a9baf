"""The warmup-stable-decay schedule (wgpt.optim.scheduler.wsd): its curve, each decay shape, the edge
cases, its option checks and the continue-and-cool property; every schedule's range checks.
`optim/scheduler=wsd` through train.py: tests/e2e/test_schedules_cli.py."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from omegaconf import OmegaConf

from wgpt.optim.scheduler import wsd
from wgpt.util.checks import check_targets
from wgpt.util.errors import WgptError

SHAPES = ["linear", "cosine", "sqrt"]


def curve(total_steps: int, last: int | None = None, **options) -> list[float]:
    return [wsd(s, total_steps, **options) for s in range((total_steps if last is None else last) + 1)]


def test_warmup_then_an_exact_plateau_then_a_linear_decay_to_zero():
    lrs = curve(1000, warmup_steps=100)  # defaults: the last 20% decay linearly to 0
    assert lrs[0] == pytest.approx(0.01) and lrs[49] == pytest.approx(0.5) and lrs[99] == 1.0
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))  # rises through the warmup
    assert lrs[99:801] == [1.0] * 702  # exactly the peak, up to the decay's first step
    assert lrs[900] == pytest.approx(0.5) and lrs[999] == pytest.approx(0.005)
    assert lrs[1000] == 0.0  # min_lr_ratio at the last step
    assert all(a > b for a, b in zip(lrs[800:], lrs[801:]))  # falls at every step of the decay


@pytest.mark.parametrize("shape", SHAPES)
def test_each_decay_shape_falls_from_the_peak_to_min_lr_ratio(shape):
    lrs = curve(1000, warmup_steps=0, decay_fraction=0.4, min_lr_ratio=0.1, decay_shape=shape)
    assert lrs[:601] == [1.0] * 601
    assert lrs[1000] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[600:], lrs[601:]))
    assert all(0.1 <= v <= 1.0 for v in lrs)
    # a quarter and half of the way down: 0.1 + 0.9 x the shape's fraction left
    left = {"linear": (0.75, 0.5), "cosine": ((1 + math.cos(math.pi / 4)) / 2, 0.5), "sqrt": (0.5, 1 - math.sqrt(0.5))}[
        shape
    ]
    assert lrs[700] == pytest.approx(0.1 + 0.9 * left[0]) and lrs[800] == pytest.approx(0.1 + 0.9 * left[1])


def test_the_shapes_differ():
    quarter = {shape: wsd(850, 1000, warmup_steps=0, decay_shape=shape) for shape in SHAPES}
    assert quarter["sqrt"] < quarter["linear"] < quarter["cosine"]  # sqrt falls fastest at first, cosine slowest


@pytest.mark.parametrize("shape", SHAPES)
def test_steps_beyond_the_run_keep_the_final_value(shape):
    final = wsd(100, 100, warmup_steps=10, min_lr_ratio=0.05, decay_shape=shape)
    assert final == pytest.approx(0.05)
    later = [wsd(s, 100, warmup_steps=10, min_lr_ratio=0.05, decay_shape=shape) for s in (101, 150, 10_000)]
    assert later == [final] * 3


def test_no_warmup_starts_at_the_peak():
    assert wsd(0, 1000, warmup_steps=0) == 1.0
    assert wsd(0, 1000, warmup_steps=1) == 1.0  # one warmup step: (0 + 1) / 1


def test_decay_fraction_zero_never_decays():
    assert curve(100, last=500, warmup_steps=10, decay_fraction=0.0, min_lr_ratio=0.1)[9:] == [1.0] * 492


def test_decay_fraction_one_decays_from_the_end_of_the_warmup():
    lrs = curve(10, warmup_steps=0, decay_fraction=1.0)
    assert lrs == pytest.approx([1 - s / 10 for s in range(11)])


def test_a_run_shorter_than_warmup_and_decay_rises_then_falls_to_the_minimum():
    # 10 steps: warmup 8, decay over the last 5: the lower of the two ramps, never the peak
    lrs = curve(10, warmup_steps=8, decay_fraction=0.5, min_lr_ratio=0.1)
    assert lrs[:6] == pytest.approx([(s + 1) / 8 for s in range(6)])
    top = lrs.index(max(lrs))
    assert max(lrs) < 1.0 and 0 < top < 10
    assert all(a < b for a, b in zip(lrs[:top], lrs[1 : top + 1]))
    assert all(a > b for a, b in zip(lrs[top:], lrs[top + 1 :]))
    assert lrs[10] == pytest.approx(0.1)


def test_tiny_runs_still_decay_to_the_minimum():
    # 0.2 x 2 steps rounds to 0; the decay is still one step long, so min_lr_ratio is reached
    assert curve(2, warmup_steps=0) == [1.0, 1.0, 0.0]
    # the module asks for step 0 with total_steps=1 (the run's length is not known yet): the warmup's start
    assert wsd(0, 1, warmup_steps=100) == pytest.approx(0.01)
    assert wsd(0, 1, warmup_steps=0) == 1.0


def test_the_stable_phase_does_not_depend_on_the_run_length():
    """Continue and cool: up to the shorter run's decay, both lengths give the same factors."""
    for shape in SHAPES:
        short = curve(1000, last=799, warmup_steps=100, decay_shape=shape)
        long = curve(5000, last=799, warmup_steps=100, decay_shape=shape)
        assert short == long
    assert wsd(900, 1000, warmup_steps=100) == pytest.approx(0.5) and wsd(900, 5000, warmup_steps=100) == 1.0


def test_a_run_resumed_with_more_steps_keeps_the_peak_and_decays_at_its_new_end():
    """LambdaLR, as the module builds it: a state saved in the stable phase of a 100-step run,
    loaded beside a schedule for 200 steps, stays at the peak until the longer run's decay."""
    lr = 1e-2

    def scheduler(total_steps: int):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        schedule = partial(wsd, warmup_steps=10, decay_fraction=0.2)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total_steps))

    optimizer, first = scheduler(100)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        first.step()
    state = optimizer.state_dict(), first.state_dict()  # what a checkpoint keeps

    optimizer, resumed = scheduler(200)
    optimizer.load_state_dict(state[0])  # the lr of step 60 comes back with the optimizer, as in Lightning
    resumed.load_state_dict(state[1])
    for _ in range(60, 201):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        resumed.step()

    assert lrs[:10] == pytest.approx([lr * (s + 1) / 10 for s in range(10)])
    assert lrs[9:161] == pytest.approx([lr] * 152, rel=1e-12)  # past the first run's decay (step 80)
    assert lrs[180] == pytest.approx(lr / 2) and lrs[200] == 0.0


@pytest.mark.parametrize(
    "options, says",
    [
        ({"decay_fraction": 1.5}, "optim.scheduler.decay_fraction=1.5 is out of range: give a number"),
        ({"decay_fraction": -0.1}, "optim.scheduler.decay_fraction=-0.1 is out of range: give a number"),
        ({"min_lr_ratio": -0.1}, "optim.scheduler.min_lr_ratio=-0.1 is out of range: give a number"),
        ({"min_lr_ratio": 2.0}, "optim.scheduler.min_lr_ratio=2.0 is out of range: give a number"),
        ({"warmup_steps": -1}, "optim.scheduler.warmup_steps=-1 is out of range: give a number"),
        ({"decay_shape": "exp"}, "optim.scheduler.decay_shape=exp is not one of linear, cosine, sqrt"),
    ],
)
def test_options_out_of_range_are_a_one_line_error(options, says):
    """Checked from wsd's signature (its Ranges), as every _target_ is, before a run starts."""
    node = OmegaConf.create({"_target_": "wgpt.optim.scheduler.wsd", "_partial_": True, **options})
    with pytest.raises(WgptError) as error:
        check_targets(node, "optim.scheduler")
    message = str(error.value)
    assert message.startswith(says) and "\n" not in message, message


@pytest.mark.parametrize(
    "schedule, options, says",
    [
        (
            "warmup_cosine",
            {"warmup_steps": -5},
            "optim.scheduler.warmup_steps=-5 is out of range: give a number of 0 or more",
        ),
        (
            "warmup_cosine",
            {"min_lr_ratio": 1.5},
            "optim.scheduler.min_lr_ratio=1.5 is out of range: give a number in [0, 1]",
        ),
        ("one_cycle", {"pct_start": 0.0}, "optim.scheduler.pct_start=0.0 is out of range: give a number in (0, 1]"),
        ("one_cycle", {"div_factor": -1.0}, "optim.scheduler.div_factor=-1.0 is out of range: give a number above 0"),
        ("one_cycle", {"anneal_strategy": "exp"}, "optim.scheduler.anneal_strategy=exp is not one of cos, linear"),
    ],
)
def test_every_schedule_checks_its_ranges(schedule, options, says):
    node = OmegaConf.create({"_target_": f"wgpt.optim.scheduler.{schedule}", "_partial_": True, **options})
    with pytest.raises(WgptError, match=None) as error:
        check_targets(node, "optim.scheduler")
    assert str(error.value).startswith(says), error.value
