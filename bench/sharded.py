"""Training memory per rank, measured: DDP against FSDP (and FSDP with activation checkpointing) on
the same ranks, through train.py, next to the estimate the start-up check uses.

    python bench/sharded.py                                      # gpt2 (124M), 2 CPU processes (gloo)
    python bench/sharded.py --model llama3-1b --accelerator gpu --devices 8 --batch-size 8 --seq-len 2048

Each run trains ``--steps`` optimizer steps; at the last one, just before the optimizer steps, a
callback adds up the bytes of what each rank holds: its weights, their gradients and the AdamW
state (a sharded tensor counts its local shard only), and reads the rank's peak memory (GPU:
``max_memory_allocated``; CPU: the process's peak RSS, imported libraries and the full-size
model every rank builds before sharding included). tokens/s is over all ranks, steps 2 to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT_ENV = "WGPT_BENCH_STATE_BYTES"  # where the callback writes rank<r>.json
GIB = 2**30


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors if isinstance(t, torch.Tensor))


class StateBytes(L.Callback):
    """Writes this rank's weight, gradient and optimizer-state bytes and peak memory at the last step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 != trainer.max_steps:
            return
        params = list(pl_module.parameters())
        state = [v for s in optimizer.state.values() for v in s.values()]
        if trainer.strategy.root_device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        record = {
            "weights": _bytes(params),
            "grads": _bytes(p.grad for p in params if p.grad is not None),
            "optimizer": _bytes(state),
            "peak": peak,
        }
        Path(os.environ[OUT_ENV], f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run(strategy: str, checkpointing: bool, args, extra: list[str]) -> dict:
    from harness import TRAIN_ONLY, last

    with tempfile.TemporaryDirectory(prefix="wgpt-sharded-") as tmp:
        overrides = [
            f"model={args.model}",
            f"trainer.strategy={strategy}",
            f"trainer.accelerator={args.accelerator}",
            f"trainer.devices={args.devices}",
            f"trainer.max_steps={args.steps}",
            "trainer.log_every_n_steps=1",
            f"trainer.activation_checkpointing={str(checkpointing).lower()}",
            f"data.batch_size={args.batch_size}",
            f"data.seq_len={args.seq_len}",
            "data.num_workers=0",
            "+callbacks.state_bytes._target_=sharded.StateBytes",
            *TRAIN_ONLY,
            *extra,
            f"hydra.run.dir={tmp}/run",
            f"paths.output_root={tmp}/outputs",
        ]
        env = {
            **os.environ,
            OUT_ENV: tmp,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
        }
        result = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
        import csv

        with open(Path(tmp) / "run" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return {"ranks": ranks, "tokens_per_sec": last(rows, "tokens_per_sec")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    args, extra = parser.parse_known_args()  # the rest: train.py overrides for every run

    from wgpt.core.compose import compose_train_config
    from wgpt.core.devices import training_memory_gib
    from wgpt.data.tokenizer import tokenizer_spec
    from wgpt.models import padded_vocab_size
    from wgpt.models.build import build_model

    cfg = compose_train_config([f"model={args.model}"])
    with torch.device("meta"):
        model = build_model(cfg.model, padded_vocab_size(tokenizer_spec(cfg).vocab_size))
    params = sum(p.numel() for p in model.parameters())
    peak_name = "peak GPU memory" if args.accelerator in ("gpu", "cuda") else "peak RSS"
    print(
        f"{args.model}: {params / 1e6:,.0f}M parameters, {args.devices} x {args.accelerator}, "
        f"{args.batch_size} x {args.seq_len} tokens per rank and step, {args.steps} steps\n"
    )
    print(f"| strategy | weights | gradients | AdamW state | sum | estimate | {peak_name} | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, checkpointing in (("ddp", False), ("fsdp", False), ("fsdp", True)):
        measured = run(strategy, checkpointing, args, extra)
        rank0 = measured["ranks"][0]
        total = rank0["weights"] + rank0["grads"] + rank0["optimizer"]
        shards = args.devices if strategy == "fsdp" else 1
        name = strategy + (" + activation checkpointing" if checkpointing else "")
        cells = [rank0["weights"], rank0["grads"], rank0["optimizer"], total]
        print(
            f"| {name} | "
            + " | ".join(f"{c / GIB:.2f} GiB" for c in cells)
            + f" | {training_memory_gib(model, shards=shards):.2f} GiB"
            + f" | {max(r['peak'] for r in measured['ranks']) / GIB:.2f} GiB"
            f" | {measured['tokens_per_sec']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
