"""Achieved MFU on this machine for gpt2-tiny and gpt2 (124M), against the measured matmul peak.

    python bench/mfu.py
    python bench/mfu.py --models gpt2 --window 5 --batch-size 4

Each model trains for 2 x window steps through train.py; the table gives the second window's
tokens/s and MFU as the run logged them (SpeedMonitor: FLOPs counted by Lightning's
measure_flops on the real model, forward and backward, attention included). The peak is this
CPU's best float32 matmul rate with the run's threads (wgpt.core.devices.cpu_peak_flops, cached in
~/.cache/wgpt/peak_flops.json). The FLOPs per token are shown beside the 6N + 12·L·T·d
estimate (Kaplan et al.; PaLM's MFU) as a check on the counter.
"""

from __future__ import annotations

import argparse

import torch
from harness import TRAIN_ONLY, last, train_py, window_overrides

# (overrides, window) per model: gpt2 at its full 1024 context, a small batch to keep it minutes.
MODELS = {
    "gpt2-tiny": ["model=gpt2-tiny"],
    "gpt2": ["model=gpt2", "data.batch_size=2", "trainer.accumulate_grad_batches=1"],
}


def estimate_flops_per_token(overrides: list[str]) -> tuple[float, int]:
    """6N + 12·L·T·d (N: non-embedding... here all matmul weights, output layer included), and N."""
    from harness import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import wgpt.core.launch  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with torch.device("meta"):
        model = instantiate(cfg.model, vocab_size=50304)
    # Matmul weights: every Linear (the tied output layer once); embeddings lookups cost no FLOPs.
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    layers, d, seq = cfg.model.n_layers, cfg.model.d_embed, cfg.data.seq_len
    return 6 * n + 12 * layers * seq * d, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--window", type=int, default=None, help="measured steps (default: 20 for tiny, 4 for gpt2)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    from wgpt.core.devices import cpu_peak_flops

    peak = cpu_peak_flops(torch.float32)
    print(f"CPU float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print("| model | params in matmuls | tokens/s | FLOPs/token (counted / 6N+12LTd) | GFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        overrides = list(MODELS[name]) + ([f"data.batch_size={args.batch_size}"] if args.batch_size else [])
        window = args.window or (20 if "tiny" in name else 4)
        rows = train_py(*overrides, *TRAIN_ONLY, *window_overrides(window), "trainer.precision=32-true")
        tokens, flops = last(rows, "tokens_per_sec"), last(rows, "flops_per_sec")
        estimate, n = estimate_flops_per_token(overrides)
        print(
            f"| {name} | {n / 1e6:.1f}M | {tokens:,.0f} | {flops / tokens / 1e6:,.0f}M / {estimate / 1e6:,.0f}M "
            f"| {flops / 1e9:.1f} | {last(rows, 'mfu'):.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
