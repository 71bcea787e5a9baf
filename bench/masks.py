"""What attention masks (model.attn_window, model.document_mask) cost, on whatever device this
machine has (a CUDA GPU, else the CPU). Two parts:

    python bench/masks.py train      # train.py's tokens/s with each mask against none (quick start shape)
    python bench/masks.py kernels    # the attention kernels alone, forward + backward, per mask and path
    python bench/masks.py kernels --batch 16 --heads 12 --seq 1024 --head-dim 64   # a GPT-2 small layer

``train`` runs ``python train.py model=gpt2-tiny`` (or --model) for 2 x --window steps per setting,
settings alternating over --repeats rounds (a drift of a shared machine hits all of a round), and
reads the tokens/s of the second window. ``kernels`` times each way wgpt can run a masked
attention (attention.py): SDPA with a boolean mask, the written-out product, and on CUDA the
compiled block-sparse FlexAttention; plain causal SDPA is the reference. Documents are cut at
random with a mean length of --doc-len tokens; the window is --window-len.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

from harness import TRAIN_ONLY, fmt, last, median, train_py, window_overrides

SETTINGS = {
    "none": [],
    "attn_window=32": ["model.attn_window=32"],
    "attn_window=32, SSSL": ["model.attn_window=32", "model.window_pattern=SSSL"],
    "document_mask": ["model.document_mask=true"],
    "document_mask + attn_window=32": ["model.document_mask=true", "model.attn_window=32"],
}


def train(args) -> None:
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for round_ in range(args.repeats):
        for name, overrides in SETTINGS.items():
            rows = train_py(f"model={args.model}", *TRAIN_ONLY, *window_overrides(args.window), *overrides)
            runs[name].append(last(rows, "tokens_per_sec"))
            print(f"round {round_ + 1}: {name}: {runs[name][-1]:,.0f} tokens/s", file=sys.stderr)
    base = median(runs["none"])
    print(f"| {args.model}: model.* | train.py tokens/s, median (runs) | against none |")
    print("|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {fmt(values)} | {median(values) / base:.2f}x |")


def kernels(args) -> None:
    import torch

    from wgpt.models.attention import causal_attention, written_out_attention
    from wgpt.models.masks import AttentionMasks, flex_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32, torch.bfloat16]
    B, H, T, D = args.batch, args.heads, args.seq, args.head_dim
    g = torch.Generator().manual_seed(0)
    cuts = torch.rand(B, T, generator=g) < 1.0 / args.doc_len
    docs = cuts.int().cumsum(1).to(device)

    def timed(fn, q, k, v) -> float:
        def step():
            for t in (q, k, v):
                t.grad = None
            fn(q, k, v).sum().backward()

        for _ in range(3):
            step()
        times = []
        for _ in range(args.steps):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    print(f"| mask | path | {device}, dtype | ms (fwd + bwd of ({B}, {H}, {T}, {D})) |")
    print("|---|---|---|---|")
    for dtype in dtypes:
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        base = timed(lambda q, k, v: causal_attention(q, k, v), q, k, v)
        print(f"| none (causal) | SDPA is_causal | {dtype} | {base:.2f} |")
        for name, window, masked_docs in (
            (f"window {args.window_len}", args.window_len, None),
            (f"documents (mean {args.doc_len})", None, docs),
        ):
            masks = AttentionMasks(0, T, device, masked_docs, masked_docs)
            allowed = masks.dense(window)
            paths = {
                "SDPA bool mask": partial(torch.nn.functional.scaled_dot_product_attention, attn_mask=allowed),
                "written out": partial(written_out_attention, allowed=allowed),
            }
            if device == "cuda":
                paths["FlexAttention (compiled)"] = partial(flex_attention, block_mask=masks.block(window))
            for path, fn in paths.items():
                print(f"| {name} | {path} | {dtype} | {timed(fn, q, k, v):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["train", "kernels"])
    parser.add_argument("--model", default="gpt2-tiny")
    parser.add_argument("--window", type=int, default=40, help="train: optimizer steps per measured window")
    parser.add_argument("--repeats", type=int, default=2, help="train: rounds over the settings")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--window-len", type=int, default=32)
    parser.add_argument("--doc-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="kernels: timed steps per path")
    args = parser.parse_args()
    train(args) if args.part == "train" else kernels(args)


if __name__ == "__main__":
    main()
