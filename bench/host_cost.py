"""The runner's own host time per micro-batch, measured directly rather than as a wall-clock ratio:
CPU time of the main thread (``time.thread_time``, which another process on a shared machine
does not inflate the way it inflates wall time), split by whose code spends it.

    python bench/host_cost.py                     # the empty shape, accumulation 1 and 4, 5 repeats
    python bench/host_cost.py --shape tiny --accumulate 4 --repeats 3

Parts, each timed exclusively (time in a nested part counts only there):
- model: the loss function (forward and loss) and ``Tensor.backward``
- optimizer: its step, ``zero_grad``, gradient clipping and the schedule's step
- loader hand-off: the DataLoader iterator's ``__next__`` (receiving a batch from the workers;
  waiting for one is not CPU time and does not count)
- wgpt: every hook of wgpt's module and callbacks that Lightning calls
- Lightning: the rest of the main thread's time, i.e. the loop and its hook dispatch

The plain loop of ``overhead.py`` (what one writes by hand) is measured the same way: its "rest"
is its own loop. Each wrapped call costs the clock a little (calibrated, and taken off the
rest). Reported per micro-batch, over the second ``--window`` optimizer steps of a run, median
over ``--repeats`` runs in fresh processes (train.py and the plain loop alternating), at each
accumulation; from accumulation 1 and 4 the runner's time splits into a cost per micro-batch
and a cost per optimizer step (time = micro-batches x m + steps x s).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import ROOT, TRAIN_ONLY

PARTS = ("lightning", "wgpt", "loader", "model", "optimizer")
now = time.thread_time_ns


class Clock:
    """Exclusive CPU nanoseconds per part, and how many timed calls each part had."""

    def __init__(self):
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [part, start, time in nested parts]

    def enter(self, part: str) -> None:
        self._stack.append([part, now(), 0])

    def leave(self) -> None:
        part, start, nested = self._stack.pop()
        elapsed = now() - start
        self.ns[part] += elapsed - nested
        self.calls[part] += 1
        if self._stack:
            self._stack[-1][2] += elapsed

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        timed.__wrapped__ = fn
        return timed

    def snapshot(self) -> dict:
        return {"at": now(), "ns": dict(self.ns), "calls": dict(self.calls)}


CLOCK = Clock()


def wrapper_cost_ns() -> float:
    """CPU time one timed call adds outside its own part (the wrapper, two clock reads)."""

    def noop():
        return None

    timed, n = Clock().wrap("x", noop), 20000
    best = []
    for _ in range(5):
        start = now()
        for _ in range(n):
            noop()
        bare = now() - start
        start = now()
        for _ in range(n):
            timed()
        best.append((now() - start - bare) / n)
    return min(best)


def time_torch_parts() -> None:
    """Model and optimizer work, wherever it is called from: torch's own functions, wrapped."""
    import torch
    import torch.optim.lr_scheduler as lr_scheduler
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    import wgpt.lightning.module
    import wgpt.models.loss

    timed_loss = CLOCK.wrap("model", wgpt.models.loss.next_token_loss)
    wgpt.models.loss.next_token_loss = wgpt.lightning.module.next_token_loss = timed_loss
    torch.Tensor.backward = CLOCK.wrap("model", torch.Tensor.backward)
    torch.optim.Optimizer.zero_grad = CLOCK.wrap("optimizer", torch.optim.Optimizer.zero_grad)
    torch.nn.utils.clip_grad_norm_ = CLOCK.wrap("optimizer", torch.nn.utils.clip_grad_norm_)
    lr_scheduler.LRScheduler.step = CLOCK.wrap("optimizer", lr_scheduler.LRScheduler.step)
    register_optimizer_step_pre_hook(lambda *a: CLOCK.enter("optimizer"))
    register_optimizer_step_post_hook(lambda *a: CLOCK.leave())
    iterator = torch.utils.data.dataloader._BaseDataLoaderIter
    iterator.__next__ = CLOCK.wrap("loader", iterator.__next__)
    # Lightning runs the forward and backward of an optimizer step's last micro-batch in a closure
    # that torch's optimizer calls inside its step: the closure's own code is Lightning's.
    from lightning.pytorch.loops.optimization.automatic import Closure

    Closure.__call__ = CLOCK.wrap("lightning", Closure.__call__)


def time_wgpt_hooks(trainer, module, datamodule) -> None:
    """Every hook Lightning calls on wgpt's module and datamodule (those wgpt defines) and on wgpt's callbacks."""
    from wgpt.data.datamodule import DatasetLightningWrapper
    from wgpt.lightning.module import ModelLightningWrapper

    for obj, cls, whose in ((module, ModelLightningWrapper, "module"), (datamodule, DatasetLightningWrapper, "data")):
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("__") and name not in ("forward", "configure_model"):
                setattr(obj, name, CLOCK.wrap(f"wgpt:{whose}.{name}", getattr(obj, name)))
    for callback in trainer.callbacks:
        if not type(callback).__module__.startswith("wgpt."):
            continue
        for name in dir(callback):
            if name.startswith("on_") and callable(getattr(callback, name)):
                setattr(callback, name, CLOCK.wrap(f"wgpt:{type(callback).__name__}.{name}", getattr(callback, name)))


def time_lightning_parts() -> None:
    """Lightning's loop split by what it does (``--lightning-parts``): its hook dispatch to the
    module, to the callbacks and to the strategy (each hook's own work being the module's, the
    callback's or the strategy's), the fetch, the automatic optimization's closure and steps, the
    logger connector, the end-of-batch checks; what remains is the loop's own code."""
    from lightning.pytorch.loops import fetchers, training_epoch_loop
    from lightning.pytorch.loops.optimization import automatic
    from lightning.pytorch.trainer import call
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    for name in ("_call_callback_hooks", "_call_lightning_module_hook", "_call_strategy_hook"):
        setattr(call, name, CLOCK.wrap(f"lightning:{name.strip('_')}", getattr(call, name)))
    fetch = fetchers._PrefetchDataFetcher
    fetch.__next__ = CLOCK.wrap("lightning:fetch", fetch.__next__)
    optimization = automatic._AutomaticOptimization
    optimization.run = CLOCK.wrap("lightning:automatic optimization", optimization.run)
    connector = logger_connector._LoggerConnector
    for name in ("on_batch_start", "on_batch_end", "update_train_step_metrics"):
        setattr(connector, name, CLOCK.wrap("lightning:logger connector", getattr(connector, name)))
    loop = training_epoch_loop._TrainingEpochLoop
    loop.on_advance_end = CLOCK.wrap("lightning:on_advance_end", loop.on_advance_end)
    loop.update_lr_schedulers = CLOCK.wrap("lightning:update_lr_schedulers", loop.update_lr_schedulers)


def run_train_py(accumulate: int, window: int, extra: list[str], run_dir: str) -> dict:
    """train.py in this process, its parts timed; the window: from the first batch of step
    window+1 to the first of step 2*window (train.py loads a step's micro-batches as one batch)."""
    import lightning as L
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    time_torch_parts()
    marks, advances = {}, [0]
    first, last = window, 2 * window - 1  # Lightning's batches: one per optimizer step
    advance = _TrainingEpochLoop.advance

    def counted_advance(self, data_fetcher):
        if advances[0] in (first, last):
            marks[advances[0]] = CLOCK.snapshot()
        advances[0] += 1
        return advance(self, data_fetcher)

    _TrainingEpochLoop.advance = counted_advance
    fit = L.Trainer.fit

    def timed_fit(trainer, model, *args, datamodule=None, **kwargs):
        time_wgpt_hooks(trainer, model, datamodule)
        return fit(trainer, model, *args, datamodule=datamodule, **kwargs)

    L.Trainer.fit = timed_fit
    overrides = [
        *TRAIN_ONLY,
        f"trainer.max_steps={2 * window}",
        f"trainer.accumulate_grad_batches={accumulate}",
        *extra,
        f"hydra.run.dir={run_dir}/run",
        f"paths.output_root={run_dir}/outputs",
    ]
    sys.argv = [str(ROOT / "train.py"), *overrides]
    os.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    return window_result(marks[first], marks[last], (window - 1) * accumulate, window - 1)


def run_plain(accumulate: int, window: int, extra: list[str], model_name: str) -> dict:
    import overhead

    time_torch_parts()
    marks = []
    overhead.plain_loop(
        model_name,
        window,
        [*extra, f"trainer.accumulate_grad_batches={accumulate}"],
        on_window=lambda: marks.append(CLOCK.snapshot()),
    )
    return window_result(marks[0], marks[1], window * accumulate, window)


def window_result(start: dict, end: dict, micro_batches: int, steps: int) -> dict:
    spent = {p: end["ns"][p] - start["ns"].get(p, 0) for p in end["ns"]}
    parts = {p: spent.get(p, 0) for p in PARTS}
    parts["wgpt"] = sum(ns for p, ns in spent.items() if p.startswith("wgpt:"))
    calls = sum(end["calls"].values()) - sum(start["calls"].values())
    # The rest of the main thread's time: Lightning's loop, or the plain loop's own.
    rest = end["at"] - start["at"] - sum(spent.values()) - calls * wrapper_cost_ns()
    lightning = {p[10:]: ns for p, ns in spent.items() if p.startswith("lightning:")}
    parts["lightning"] += rest + sum(lightning.values())
    hooks = {p[5:]: ns / micro_batches / 1e3 for p, ns in spent.items() if p.startswith("wgpt:") and ns}
    lightning = {p: ns / micro_batches / 1e3 for p, ns in {**lightning, "loop (the rest)": rest}.items()}
    return {
        "us": {p: ns / micro_batches / 1e3 for p, ns in parts.items()},
        "wgpt_hooks_us": dict(sorted(hooks.items(), key=lambda kv: -kv[1])),
        "lightning_parts_us": dict(sorted(lightning.items(), key=lambda kv: -kv[1])),
        "timed_calls_per_micro_batch": calls / micro_batches,
        "micro_batches": micro_batches,
        "steps": steps,
    }


def in_subprocess(kind: str, accumulate: int, window: int, extra: list[str], model: str, detail: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="wgpt-host-") as tmp:
        command = [
            sys.executable,
            __file__,
            *(["--lightning-parts"] if detail else []),
            f"--_{kind}",
            "--accumulate",
            str(accumulate),
            "--window",
            str(window),
            "--model",
            model,
            "--extra",
            json.dumps(extra),
            "--_dir",
            tmp,
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    import overhead

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument(
        "--shape", default="empty", choices=sorted(overhead.SHAPES), help="bench shape (overhead.SHAPES)"
    )
    parser.add_argument("--accumulate", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--window", type=int, default=200, help="measured optimizer steps, after as many warm-up steps")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, alternating")
    parser.add_argument("--extra", default="[]", help="JSON list of more overrides for both")
    parser.add_argument("--lightning-parts", action="store_true", help="split Lightning's time too (more timed calls)")
    parser.add_argument("--_train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = json.loads(args.extra)
    if args._train or args._plain:
        (accumulate,) = args.accumulate
        if args._train:
            if args.lightning_parts:
                time_lightning_parts()
            result = run_train_py(accumulate, args.window, [f"model={args.model}", *extra], args._dir)
        else:
            result = run_plain(accumulate, args.window, extra, args.model)
        print(json.dumps(result))
        return

    extra = [*overhead.SHAPES[args.shape], *extra]
    overhead.in_subprocess("loader", args.model, args.window, extra)  # prepares data and tokenizer first
    print(
        f"{args.model}, shape {args.shape}: CPU microseconds per micro-batch (main thread), "
        f"median of {args.repeats} runs",
        file=sys.stderr,
    )
    print(
        "| accumulation | train.py: Lightning | train.py: wgpt | plain loop: its own loop | runner's own "
        "(train.py - plain, min-max) | loader hand-off | model | optimizer |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    own, hooks = {}, {}
    for accumulate in args.accumulate:
        runs = {"train.py": [], "plain": []}
        for repeat in range(args.repeats):
            for kind in ("train.py", "plain") if repeat % 2 == 0 else ("plain", "train.py"):
                flag = "train" if kind == "train.py" else "plain"
                runs[kind].append(in_subprocess(flag, accumulate, args.window, extra, args.model, args.lightning_parts))
        us = {kind: {p: statistics.median(r["us"][p] for r in rs) for p in PARTS} for kind, rs in runs.items()}
        # Each repeat's own difference: a drift of the machine hits both runs of a pair.
        pairs = [
            t["us"]["lightning"] + t["us"]["wgpt"] - p["us"]["lightning"]
            for t, p in zip(runs["train.py"], runs["plain"])
        ]
        own[accumulate] = statistics.median(pairs)
        hooks[accumulate] = {
            kind: {h: statistics.median(r[kind].get(h, 0) for r in runs["train.py"]) for h in runs["train.py"][0][kind]}
            for kind in ("wgpt_hooks_us", "lightning_parts_us")
        }
        t, p = us["train.py"], us["plain"]
        print(
            f"| {accumulate} | {t['lightning']:.0f} | {t['wgpt']:.0f} | {p['lightning']:.0f} "
            f"| {own[accumulate]:.0f} ({min(pairs):.0f}-{max(pairs):.0f}) | {t['loader']:.0f} / {p['loader']:.0f} "
            f"| {t['model']:.0f} / {p['model']:.0f} | {t['optimizer']:.0f} / {p['optimizer']:.0f} |",
            flush=True,
        )
    if 1 in own and 4 in own:
        per_micro_batch = (4 * own[4] - own[1]) / 3
        print(
            f"\nrunner's own: {per_micro_batch:.0f} us per micro-batch + {own[1] - per_micro_batch:.0f} us per "
            "optimizer step (from accumulation 1 and 4: 4 x own(4) = 4m + s, own(1) = m + s)"
        )
    for accumulate, kinds in hooks.items():
        for kind, whose in (("wgpt_hooks_us", "wgpt's hooks"), ("lightning_parts_us", "Lightning's parts")):
            top = ", ".join(f"{h} {v:.1f}" for h, v in list(kinds[kind].items())[:10] if v >= 0.5)
            if kind == "wgpt_hooks_us" or args.lightning_parts:
                print(f"{whose} at accumulation {accumulate}, us per micro-batch: {top}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
