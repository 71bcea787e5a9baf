"""callbacks.guard: a bad step leaves weights and optimizer state as they were, on each skip route;
spikes are judged against running statistics that resume exactly; a run with a NaN batch names it
and finishes finite; max_skips bad steps in a row stop with the command that continues; no
checkpoint holds NaN weights."""

import logging
import math

import pytest
import torch
from omegaconf import OmegaConf

from wgpt.core.guard import INJECT_ENV, SkipGuard, parse_steps
from wgpt.core.overrides import job_difference
from wgpt.interop.checkpoint import SafeCheckpointIO, weights_finite
from wgpt.lightning.guard import WARMUP, StepGuard, skip_route
from wgpt.util.errors import WgptError
from wgpt.util.files import keep_copy

from helpers_fit import datamodule, tiny_module, toy_bins, trainer


class NoScaler:  # a precision plugin without a GradScaler (float32, bf16)
    scaler = None


OPTIMIZERS = {
    "device: fused AdamW": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1, fused=True),
    "host: foreach AdamW": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1, foreach=True),
    "host: SGD with momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    # Fused SGD fills its momentum buffers with empty_like on its first step, found_inf or not.
    "host: fused SGD with momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
}


def optimizer_state(optimizer) -> list[torch.Tensor]:
    return [v.clone() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_a_bad_step_leaves_weights_and_optimizer_state_untouched(name, bad_value):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = OPTIMIZERS[name](model.parameters())
    assert skip_route(optimizer, NoScaler()) == name.split(":")[0]
    guard = StepGuard()

    def step(number: int, scale: float) -> torch.Tensor:
        optimizer.zero_grad()
        (model(torch.randn(2, 4)).sum() * scale).backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        bad = guard.check(norm, optimizer, NoScaler(), number)
        optimizer.step()
        return bad

    assert not step(1, 1.0)
    weights, state = [p.detach().clone() for p in model.parameters()], optimizer_state(optimizer)
    assert step(2, bad_value)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(state, optimizer_state(optimizer)))  # Adam's step count too
    assert not step(3, 1.0)  # the next good step updates, as the second step would have
    assert not any(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    if "Adam" in name:
        assert all(optimizer.state[p]["step"].item() == 2 for p in model.parameters())


def test_a_bad_first_step_leaves_no_optimizer_state_and_float16_overflows_are_left_to_the_scaler():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = OPTIMIZERS["host: fused SGD with momentum"](model.parameters())
    model(torch.randn(2, 4)).sum().mul(math.nan).backward()
    assert StepGuard().check(torch.tensor(math.nan), optimizer, NoScaler(), 1)
    optimizer.step()
    assert all(not optimizer.state[p] for p in model.parameters())

    class Scaler:  # float16: an overflow is the GradScaler's to skip (and to lower its scale for)
        scaler = object()

    guard = StepGuard(z=3.0)
    assert not guard.check(torch.tensor(math.inf), optimizer, Scaler(), 1)
    assert guard.state_dict()["count"] == 0  # and it does not enter the statistics


def test_a_spike_is_judged_against_running_statistics_that_resume_exactly():
    guard, one = StepGuard(z=6.0), torch.ones(())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    norms = [1.0 + 0.05 * math.sin(i) for i in range(WARMUP + 10)]
    early = StepGuard(z=6.0)
    assert not early.check(one * 50, optimizer, NoScaler(), 1)  # before WARMUP good steps, only NaN/inf are bad
    assert [bool(guard.check(one * n, optimizer, NoScaler(), i + 1)) for i, n in enumerate(norms)] == [False] * len(
        norms
    )
    resumed = StepGuard(z=6.0)
    resumed.load_state_dict(guard.state_dict())
    for g in (guard, resumed):
        assert g.check(one * 50, optimizer, NoScaler(), 100)  # a spike: 50 std above
        assert not g.check(one * 1.02, optimizer, NoScaler(), 101)
    assert guard.state_dict() == resumed.state_dict()  # the spike did not move the statistics
    assert guard.state_dict()["count"] == len(norms) + 1
    forced = StepGuard(forced=parse_steps(["7-8"]))
    assert [bool(forced.check(one, optimizer, NoScaler(), s)) for s in (6, 7, 8, 9)] == [False, True, True, False]


def test_skip_steps_take_steps_and_ranges_and_refuse_the_rest_in_one_line():
    assert parse_steps([5, "10-12", " 3 "]) == {3, 5, 10, 11, 12}
    for bad in ("12-10", "0", "a-b", "-3"):
        with pytest.raises(WgptError, match=r"callbacks.guard.skip_steps has .*: give optimizer steps"):
            parse_steps([bad])
    # Continuing past a bad stretch is still the same run for resume=auto.
    assert job_difference(["optim.lr=1e-3"], ["optim.lr=1e-3", "callbacks.guard.skip_steps=[120-127]"]) is None


def test_no_checkpoint_with_nan_weights_is_written_and_the_one_there_stays(tmp_path):
    io, path = SafeCheckpointIO(), tmp_path / "recent.ckpt"
    good = {"global_step": 3, "state_dict": {"w": torch.ones(2), "steps": torch.tensor(3)}}
    io.save_checkpoint(good, path)
    assert weights_finite(good["state_dict"]) and not weights_finite({"w": torch.tensor([1.0, math.nan])})
    io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.tensor([math.inf, 1.0])}}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    keep_copy(path, tmp_path / "recent-previous.ckpt")
    io.save_checkpoint({**good, "global_step": 5}, path)
    assert torch.load(tmp_path / "recent-previous.ckpt", weights_only=True)["global_step"] == 3


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return toy_bins(tmp_path_factory.mktemp("toy"))


def fit_guarded(toy_dir, steps: int, guard: SkipGuard, micro_batches: int = 1, log_every: int = 2):
    module, data = tiny_module(), datamodule(toy_dir, micro_batches=micro_batches)
    fit = trainer(max_steps=steps, limit_val_batches=0, log_every_n_steps=log_every, callbacks=[guard], logger=True)
    fit.fit(module, datamodule=data)
    return module, data


def test_a_nan_batch_is_skipped_named_and_the_run_ends_finite(toy_dir, monkeypatch, caplog):
    monkeypatch.setenv(INJECT_ENV, "3:nan,4:inf")
    guard = SkipGuard()
    with caplog.at_level(logging.WARNING, logger="wgpt"):
        module, data = fit_guarded(toy_dir, 6, guard, micro_batches=2)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [m.split(" (")[0] for m in skipped] == ["step 3 skipped", "step 4 skipped"]
    # The batch named is the step's: its two micro-batches (8 windows), recomputed from the sampler.
    windows = data.step_windows(0, 4, 2)["toy"]
    assert f"toy windows {windows}" in skipped[0] and len(windows) == 8
    fresh = datamodule(toy_dir, micro_batches=2)  # the run's loader, from the start (no trainer to resume from)
    fresh.setup("fit")
    loader = fresh.train_dataloader()
    step3 = torch.as_tensor(next(b for i, b in enumerate(loader) if i == 2))  # (k, B, T + 1) windows of step 3
    train = data.splits["toy"]["train"]
    expected = torch.stack([train[w][0] for w in windows]).view(2, 4, -1)
    assert torch.equal(step3[..., :-1].long(), expected)
    assert guard.total == 2 and all(torch.isfinite(p).all() for p in module.parameters())


def test_max_skips_in_a_row_stop_with_the_command_that_continues(toy_dir, monkeypatch):
    monkeypatch.setenv(INJECT_ENV, "2:nan,3:nan,4:nan")
    with pytest.raises(WgptError, match=r"resume=auto callbacks.guard.skip_steps=\[2-4\]"):
        fit_guarded(toy_dir, 8, SkipGuard(max_skips=3))
    # Forced skips (a stretch passed over on resuming) do not count towards max_skips.
    guard = SkipGuard(max_skips=3, skip_steps=["2-4"])
    fit_guarded(toy_dir, 6, guard)
    assert guard.total == 3 and guard.streak == []


def test_skips_apart_never_add_up_to_a_run(toy_dir, monkeypatch, tmp_path):
    # Logged every step, so each skip is read at the next batch and good steps between reset the run.
    monkeypatch.setenv(INJECT_ENV, "2:nan,4:nan,6:nan")
    monkeypatch.chdir(tmp_path)  # Lightning's default logger writes lightning_logs/ here
    guard = SkipGuard(max_skips=2)
    fit_guarded(toy_dir, 8, guard, log_every=1)
    assert guard.total == 3 and guard.streak == []


def test_the_guard_config_builds_and_refuses_bad_values_in_one_line():
    cfg = OmegaConf.load("conf/callbacks/default.yaml").guard
    assert cfg.z is None and cfg.max_skips >= 1 and list(cfg.skip_steps) == []
    with pytest.raises(WgptError, match="callbacks.guard.z=-1"):
        SkipGuard(z=-1)
