"""Lightning's cost: train.py against a plain PyTorch loop doing the same work, side by side:
tokens/s, MFU and peak memory, on whatever device this machine has (a CUDA GPU, else the CPU).

    python bench/overhead.py                                   # gpt2-tiny and llama3-tiny, 7 repeats each
    python bench/overhead.py --models gpt2-tiny --repeats 5 --window 40
    python bench/overhead.py --models gpt2 llama3 --window 20  # on a GPU: the presets' 16 x 4, compile auto (on)
    python bench/overhead.py --accumulate 4 --compile true --precision bf16-mixed --batch-size 8
    python bench/overhead.py --models gpt2-tiny --shape tiny --accumulate 4 --window 100  # a small model

The plain loop is what one would write by hand (nanoGPT style) and takes every choice from the
same composed config as train.py: the model class and config, seed and initial weights; the
device and precision as train.py resolves them (``trainer_arguments``); compile as train.py
decides it (``compile_choice``: model and loss compiled as one function); the same batches
(wgpt's datamodule and PDBSampler, same workers, pinned memory and non-blocking copies on a
GPU); gradient accumulation (loss / N, one backward per micro-batch, a step every N); fused AdamW
with decay on matrices, the schedule over the same length, gradient clipping; TF32 and the
allocator setting. Each run measures its second ``window`` optimizer steps; runs alternate
between the two (``--repeats`` pairs), and the table gives medians, the ratio as the median of
each pair's own ratio with their range (a drift of a shared machine hits both runs of a pair).
Peak memory is what training held: allocated GPU memory on a GPU, the process's peak RSS on a
CPU. The loss at the last step (mean over its micro-batches) is printed for both: equal losses
show the two did the same work. The loader alone (its batches, no model) is timed too, to show
it is never the bottleneck. ``--shape`` adds a bench-only shape (``SHAPES``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from harness import ROOT, TRAIN_ONLY, fmt, last, median, train_py, window_overrides

# Bench-only shapes (not model presets), added to --extra with --shape: where a GPU step takes a
# few milliseconds and the runner's own cost per micro-batch shows.
SHAPES = {
    # 2 layers x 64, a 512-token BPE, 4 x 64 tokens
    "tiny": [
        "model.n_layers=2",
        "model.d_embed=64",
        "model.n_heads=2",
        "model.max_seq_len=64",
        "tokenizer=bpe",
        "tokenizer.vocab_size=512",
        "data.batch_size=4",
        "trainer.precision=32-true",
    ],
    # 1 layer x 16, the smallest BPE (256 bytes + 3 specials), 1 x 16 tokens: almost nothing but the runner
    "empty": [
        "model.n_layers=1",
        "model.d_embed=16",
        "model.n_heads=2",
        "model.max_seq_len=16",
        "data.seq_len=16",
        "tokenizer=bpe",
        "tokenizer.vocab_size=259",
        "data.batch_size=1",
        "trainer.precision=32-true",
    ],
}


def compose(model_name: str, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import wgpt.core.launch  # noqa: F401  (the config's resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[f"model={model_name}", *extra])


def plain_loop(model_name: str, window: int, extra: list[str], on_window=None) -> dict:
    """Train with a hand-written loop; returns tokens/s, MFU and peak memory over optimizer steps
    window+1..2*window, and the last step's loss. ``on_window()`` is called as those steps start
    and as they end (host_cost.py reads its clocks there)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.fabric.utilities.throughput import measure_flops

    from wgpt.core.callbacks import peak_memory_gib
    from wgpt.core.devices import compute_dtype, enable_tf32, largest_matmul, peak_flops, reuse_freed_host_memory
    from wgpt.core.train import compile_choice
    from wgpt.core.trainer import trainer_arguments
    from wgpt.data.tokenizer import tokenizer_spec
    from wgpt.models import padded_vocab_size
    from wgpt.models.build import build_model
    from wgpt.models.loss import next_token_loss

    cfg = compose(model_name, extra)
    from omegaconf import OmegaConf

    default_groups = {"vectors": {"kinds": ["vector"], "weight_decay": 0.0}}
    unmirrored = {
        "optim._target_": cfg.optim._target_ != "torch.optim.AdamW",
        "optim.fused": cfg.optim.get("fused") is False,
        "optim.param_groups": OmegaConf.to_container(cfg.optim.param_groups) != default_groups,
    }
    if any(unmirrored.values()):
        raise SystemExit(
            f"the plain loop does not mirror {[k for k, v in unmirrored.items() if v]}: leave them at their defaults"
        )
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = instantiate(cfg.data, tokenizer=tokenizer_spec(cfg))  # the run's tokenizer (tokenizer=bpe trains one)
    model = build_model(cfg.model, padded_vocab_size(len(data.tokenizer)), data.tokenizer.eos_token_id)
    hardware = trainer_arguments(cfg.trainer, model)  # device and precision, as train.py resolves them
    on_gpu = hardware.get("accelerator") in ("gpu", "cuda")
    device = torch.device("cuda", hardware["devices"][0]) if on_gpu else torch.device("cpu")
    precision = str(hardware["precision"])
    if precision not in ("bf16-mixed", "32-true", "32"):
        raise SystemExit(f"the plain loop mirrors precision bf16-mixed and 32-true, not {precision}")
    enable_tf32(cfg.tf32)
    compile = compile_choice(cfg.compile, hardware)
    model.to(device)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()

    accumulate = cfg.trainer.accumulate_grad_batches
    steps = 2 * window
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        fused=True,
    )
    schedule = instantiate(cfg.optim.scheduler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, steps if s else 1))  # as the module
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    clip = cfg.trainer.gradient_clip_val
    loss_of = torch.compile(next_token_loss, dynamic=False) if compile else next_token_loss

    def batches():
        while True:  # epochs, as many as the steps need
            yield from loader

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    step, micro, step_losses = 0, 0, []
    for windows in batches():  # (B, T + 1) int32: inputs and targets, one token apart
        windows = windows.to(device, non_blocking=True).long()
        x, y = windows[:, :-1], windows[:, 1:]
        with autocast:
            loss = loss_of(model, x, y)
        (loss / accumulate).backward()
        step_losses.append(loss.detach())
        micro += 1
        if micro % accumulate:
            continue
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == window:  # the measured steps start: as SpeedMonitor's logging step W
            sync()
            start = time.perf_counter()
            if on_window:
                on_window()
        if step == steps:
            if on_window:
                on_window()
            break
        step_losses = []
    sync()
    seconds = time.perf_counter() - start
    micro_batches = window * accumulate
    with torch.device("meta"):  # FLOPs as the module counts them for SpeedMonitor's MFU
        meta = type(model)(**model.config)
        input = torch.zeros(x.shape, dtype=torch.long)
        flops = measure_flops(
            meta,
            lambda: meta(input),
            lambda logits: torch.nn.functional.cross_entropy(logits.flatten(0, 1), input.flatten()),
        )
    peak = peak_flops(device, compute_dtype(precision), largest_matmul(model, x.numel()))
    return {
        "tokens_per_sec": micro_batches * x.numel() / seconds,
        "mfu": flops * micro_batches / seconds / peak if peak else float("nan"),
        "peak_memory_gib": peak_memory_gib(device),
        "loss": torch.stack(step_losses).mean().item(),
        "device": torch.cuda.get_device_name(device) if on_gpu else "CPU",
        "precision": precision,
        "compile": compile,
        "accumulate": accumulate,
        "micro_batch": list(x.shape),
    }


def loader_alone(model_name: str, batches: int, extra: list[str]) -> float:
    """Tokens/s of the training DataLoader by itself (workers included, first batch excluded), with
    the run's tokenizer: run first, it trains a BPE the config names, outside every measured run."""
    from hydra.utils import instantiate

    from wgpt.data.tokenizer import tokenizer_spec

    cfg = compose(model_name, extra)
    data = instantiate(cfg.data, tokenizer=tokenizer_spec(cfg))
    data.prepare_data()
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    windows = next(iterator)  # (B, T + 1)
    start = time.perf_counter()
    for _ in range(batches):
        windows = next(iterator)
    return batches * windows[:, 1:].numel() / (time.perf_counter() - start)


def in_subprocess(kind: str, model_name: str, window: int, extra: list[str]) -> dict:
    """A fresh process for each measurement, as train.py gets."""
    result = subprocess.run(
        [sys.executable, __file__, f"--_{kind}", model_name, "--window", str(window), "--extra", json.dumps(extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{kind} loop failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-tiny", "llama3-tiny"])
    parser.add_argument("--repeats", type=int, default=7, help="alternating pairs (train.py, plain loop)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a bench-only shape (SHAPES) on top of the model")
    parser.add_argument("--window", type=int, default=30, help="measured optimizer steps, after as many warm-up steps")
    parser.add_argument("--accumulate", type=int, help="trainer.accumulate_grad_batches (default: the preset's)")
    parser.add_argument("--compile", choices=["auto", "true", "false"], help="compile (default: the config's, auto)")
    parser.add_argument("--precision", help="trainer.precision (default: the config's, auto)")
    parser.add_argument("--batch-size", type=int, help="data.batch_size, the micro-batch (default: the preset's)")
    parser.add_argument("--extra", default="[]", help="JSON list of more overrides for both")
    parser.add_argument("--_plain", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--_loader", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = [*SHAPES.get(args.shape, []), *json.loads(args.extra)]
    if args._plain:
        print(json.dumps(plain_loop(args._plain, args.window, extra)))
        return
    if args._loader:
        print(json.dumps({"tokens_per_sec": loader_alone(args._loader, 100, extra)}))
        return
    for flag, key in (
        ("accumulate", "trainer.accumulate_grad_batches"),
        ("compile", "compile"),
        ("precision", "trainer.precision"),
        ("batch_size", "data.batch_size"),
    ):
        if getattr(args, flag) is not None:
            extra.append(f"{key}={getattr(args, flag)}")

    print(
        "| model | device, precision, compile | micro-batch x accumulation | train.py tokens/s | plain loop tokens/s "
        "| ratio (median of pairs, min-max) | MFU (train.py / plain) | peak memory GiB (train.py / plain) "
        "| loss at last step (train.py / plain) "
        "| loader alone tokens/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        lightning, plain, rows_of, plains = [], [], [], []
        # First, alone: it prepares the data (and trains a BPE the config names) outside every
        # measured run, whose peak memory would otherwise hold the tokenizer's training.
        loader = in_subprocess("loader", model_name, args.window, extra)["tokens_per_sec"]
        for repeat in range(args.repeats):
            for kind in ("train.py", "plain") if repeat % 2 == 0 else ("plain", "train.py"):
                if kind == "plain":
                    result = in_subprocess("plain", model_name, args.window, extra)
                    plain.append(result["tokens_per_sec"])
                    plains.append(result)
                else:
                    rows = train_py(f"model={model_name}", *TRAIN_ONLY, *window_overrides(args.window), *extra)
                    lightning.append(last(rows, "tokens_per_sec"))
                    rows_of.append(rows)
            print(
                f"  {model_name} repeat {repeat + 1}: train.py {lightning[-1]:,.0f}, plain {plain[-1]:,.0f} tokens/s",
                file=sys.stderr,
            )
        pairs = [a / b for a, b in zip(lightning, plain)]  # each repeat's own ratio: drifts of the machine cancel
        rows, p = rows_of[-1], plains[-1]
        mfu = median([last(r, "mfu") for r in rows_of]), median([q["mfu"] for q in plains])
        memory = max(last(r, "peak_memory_gib") for r in rows_of), max(q["peak_memory_gib"] for q in plains)
        (B, T) = p["micro_batch"]
        print(
            f"| {model_name} | {p['device']}, {p['precision']}, compile {'on' if p['compile'] else 'off'} "
            f"| {B} x {T} x {p['accumulate']} | {fmt(lightning)} | {fmt(plain)} "
            f"| {median(pairs):.3f} ({min(pairs):.3f}-{max(pairs):.3f}) "
            f"| {mfu[0]:.1%} / {mfu[1]:.1%} | {memory[0]:.2f} / {memory[1]:.2f} "
            f"| {last(rows, 'train_loss'):.4f} / {p['loss']:.4f} | {loader:,.0f} ({loader / median(lightning):.0f}x) |"
        )


if __name__ == "__main__":
    main()
