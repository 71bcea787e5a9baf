"""What the layer diagnostics (callbacks.diagnostics) cost: train.py run as given, with the
callback's hooks timed, against the training time (validation left out). Prints one line:
diagnosed steps, training seconds, the hooks' seconds and their share.

    python bench/diagnostics_cost.py model=gpt2-tiny                       # the quick start
    python bench/diagnostics_cost.py model=gpt2-tiny trainer.max_steps=200

Timed on the host: on a GPU the hooks' kernels would be counted where the values are read (the
one sync of a diagnosed step), so the share holds there too. Any train.py override goes through.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

from wgpt.core.diagnostics import LayerDiagnostics

ROOT = Path(__file__).resolve().parent.parent
clock = {"hooks": 0.0, "train": 0.0, "validation": 0.0, "diagnosed": 0, "steps": 0}


def timed(hook):
    def run(self, trainer, *args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(self, trainer, *args, **kwargs)
        finally:
            clock["hooks"] += time.perf_counter() - start

    return run


def patch() -> None:
    cls = LayerDiagnostics
    measure = cls.on_train_batch_end
    cls.on_before_optimizer_step = timed(cls.on_before_optimizer_step)

    def after(self, trainer, *args, **kwargs):
        clock["diagnosed"] += self._before is not None
        return measure(self, trainer, *args, **kwargs)

    cls.on_train_batch_end = timed(after)
    starts = {}

    def on_train_start(self, trainer, pl_module, _start=cls.on_train_start):
        starts["train"] = time.perf_counter()
        _start(self, trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        clock["train"] += time.perf_counter() - starts["train"]
        clock["steps"] = trainer.global_step

    def on_validation_start(self, trainer, pl_module):
        starts["validation"] = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            clock["validation"] += time.perf_counter() - starts["validation"]

    cls.on_train_start, cls.on_train_end = on_train_start, on_train_end
    cls.on_validation_start, cls.on_validation_end = on_validation_start, on_validation_end


def main() -> None:
    patch()
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    training = clock["train"] - clock["validation"]
    print(
        f"{clock['steps']} steps, {clock['diagnosed']} diagnosed: training {training:.1f} s (validation left out), "
        f"diagnostics hooks {clock['hooks']:.2f} s = {clock['hooks'] / training:.2%} "
        f"({1000 * clock['hooks'] / max(clock['diagnosed'], 1):.0f} ms per diagnosed step, "
        f"{1000 * training / max(clock['steps'], 1):.0f} ms per step)"
    )


if __name__ == "__main__":
    main()
