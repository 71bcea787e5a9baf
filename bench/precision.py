"""fp32 vs bf16-mixed vs torch.compile on this CPU: training tokens/s, and validation loss after
the same number of tokens (speed may not cost quality).

    python bench/precision.py                   # gpt2-tiny, 60 steps each (61k tokens)
    python bench/precision.py --steps 450       # the quick start's budget

Each variant is one ``python train.py model=gpt2-tiny`` run with the same seed, data and
schedule; tokens/s is the rate over the second half of its steps (compilation falls in the
first), and val_loss is the quick start's validation (40 batches) after the last step.
On a CPU without bf16 matmul units (AVX512-BF16 or AMX) bf16 runs many times slower than fp32,
so it trains ``--bf16-steps`` steps and is compared with an fp32 run of as many.
"""

from __future__ import annotations

import argparse

import torch
from harness import last, train_py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--bf16-steps", type=int, default=10, help="bf16's budget on CPUs without bf16 units")
    args = parser.parse_args()
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    bf16_steps = args.steps if native_bf16 else args.bf16_steps
    fp32 = ["trainer.precision=32-true"]
    variants = [("fp32 (32-true)", fp32, args.steps), ("fp32 + compile", [*fp32, "compile=true"], args.steps)]
    if bf16_steps != args.steps:
        variants.append(("fp32 (32-true)", fp32, bf16_steps))
    variants.append(("bf16-mixed (autocast)", ["trainer.precision=bf16-mixed"], bf16_steps))
    print(f"CPU bf16 matmul units: {'yes' if native_bf16 else 'no (AVX512-BF16/AMX absent)'}\n")
    print(f"| {args.model} | steps | tokens/s | vs fp32 | MFU | val_loss after those steps |")
    print("|---|---:|---:|---:|---:|---:|")
    fp32_speed = {}
    for name, overrides, steps in variants:
        rows = train_py(
            f"model={args.model}",
            f"trainer.max_steps={steps}",
            f"trainer.log_every_n_steps={steps // 2}",
            f"trainer.val_every_n_steps={steps}",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "callbacks.recent.every_n_train_steps=1000000",
            *overrides,
        )
        speed = last(rows, "tokens_per_sec")
        fp32_speed.setdefault(steps, speed)
        print(
            f"| {name} | {steps} | {speed:,.0f} | {speed / fp32_speed[steps]:.2f}x | {last(rows, 'mfu'):.1%} "
            f"| {last(rows, 'val_loss'):.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
