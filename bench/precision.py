"""fp32 vs bf16-mixed vs torch.compile on this CPU: training tokens/s, and validation loss after
the same number of tokens (speed may not cost quality).

    python bench/precision.py                   # gpt2-tiny, 60 steps each (61k tokens)
    python bench/precision.py --steps 450       # the quick start's budget

Each variant is one ``python train.py model=gpt2-tiny`` run with the same seed, data and
schedule; tokens/s averages the second half of its steps (compilation falls in the first), and
val_loss is the quick start's validation (40 batches) after the last step.
"""

from __future__ import annotations

import argparse

from harness import last, train_py

VARIANTS = {
    "fp32 (32-true)": ["trainer.precision=32-true"],
    "bf16-mixed (autocast)": ["trainer.precision=bf16-mixed"],
    "fp32 + compile": ["trainer.precision=32-true", "compile=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    half = args.steps // 2
    common = [
        f"model={args.model}", f"trainer.max_steps={args.steps}", f"trainer.log_every_n_steps={half}",
        f"trainer.val_every_n_steps={args.steps}", "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "callbacks.recent.every_n_train_steps=1000000",
    ]  # fmt: skip
    print(f"| {args.model}, {args.steps} steps | tokens/s | vs fp32 | MFU | val_loss after {args.steps} steps |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name in args.variants:
        rows = train_py(*common, *VARIANTS[name])
        speed = last(rows, "tokens_per_sec")
        base = base or speed
        print(f"| {name} | {speed:,.0f} | {speed / base:.2f}x | {last(rows, 'mfu'):.1%} | {last(rows, 'val_loss'):.4f} |", flush=True)


if __name__ == "__main__":
    main()
