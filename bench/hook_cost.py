"""The runner's per-step hooks, timed inside a real train.py run: the seconds spent in each named
function as a share of the training time (from the first optimizer step to the last), and per
optimizer step. For the costs that docs/troubleshooting.md (the guard) and docs/diagnostics.md
state, which must stay a small share of a step.

    python bench/hook_cost.py                                  # the guard's hooks, on the quick start, 200 steps
    python bench/hook_cost.py --hooks diagnostics -- model=gpt2-tiny   # the layer diagnostics', the whole quick start
    python bench/hook_cost.py --hooks wgpt.lightning.guard:StepGuard.check -- model=gpt2-tiny trainer.max_steps=50

``--hooks`` takes ``module:Class.method`` names, or ``guard`` and ``diagnostics`` for the hooks
of those callbacks. "max ms" is the slowest call: for a hook that works on some steps only (the
diagnostics on their interval), the cost of one such step.

Each hook is wrapped with a timer (``time.perf_counter`` around the call; the work it queues on a
GPU is measured only as far as the call waits for it). On a GPU the time a hook makes the host
wait shows in the step time, not here: compare ``tokens/s`` of runs with the hook on and off.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
GUARD_HOOKS = [
    "wgpt.lightning.guard:StepGuard.check",
    "wgpt.core.guard:SkipGuard.on_train_batch_end",
    "wgpt.core.guard:SkipGuard.on_train_batch_start",
    "wgpt.core.guard:SkipGuard.report",
]
DIAGNOSTICS_HOOKS = [
    "wgpt.core.diagnostics:LayerDiagnostics.on_before_optimizer_step",
    "wgpt.core.diagnostics:LayerDiagnostics.on_train_batch_end",
]
PRESETS = {"guard": GUARD_HOOKS, "diagnostics": DIAGNOSTICS_HOOKS}
DEFAULT_RUN = ["model=gpt2-tiny", "trainer.max_steps=200", "trainer.enable_progress_bar=false"]


class StepClock(L.Callback):
    """The training time: from the first optimizer step's start to the last step's end, validations left out."""

    def __init__(self):
        self.start = self.end = None
        self.validating = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = self.start or time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end, self.steps = time.perf_counter(), trainer.global_step

    def on_validation_start(self, trainer, pl_module):
        self._v = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self.validating += time.perf_counter() - self._v


def wrap(target: str, spent: dict[str, list[float]]) -> None:
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[target].append(time.perf_counter() - start)

    setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hooks", nargs="+", default=["guard"], help="module:Class.method to time, or a preset")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = parser.parse_args()
    args.hooks = [hook for name in args.hooks for hook in PRESETS.get(name, [name])]
    spent: dict[str, list[float]] = defaultdict(list)
    for target in args.hooks:
        wrap(target, spent)
    clock = StepClock()
    from wgpt.core import callbacks

    build = callbacks.build_callbacks
    callbacks.build_callbacks = lambda *a, **k: [*build(*a, **k), clock]
    import wgpt.core.train as train_module

    train_module.build_callbacks = callbacks.build_callbacks
    sys.argv = ["train.py", *(args.overrides or DEFAULT_RUN)]
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    training = clock.end - clock.start - clock.validating
    print(
        f"\n{clock.steps} optimizer steps, {training:.1f} s of training ({1e3 * training / clock.steps:.1f} ms a step)"
    )
    print(f"{'hook':<64} {'calls':>6} {'ms a step':>10} {'max ms':>8} {'share':>8}")
    total = 0.0
    for target in args.hooks:
        seconds, calls = sum(spent[target]), spent[target]
        total += seconds
        per_step, slowest = 1e3 * seconds / clock.steps, 1e3 * max(calls, default=0.0)
        print(f"{target:<64} {len(calls):>6} {per_step:>10.4f} {slowest:>8.1f} {seconds / training:>8.3%}")
    print(f"{'all':<64} {'':>6} {1e3 * total / clock.steps:>10.4f} {'':>8} {total / training:>8.3%}")


if __name__ == "__main__":
    main()
