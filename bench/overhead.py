"""Lightning's cost: training tokens/s of train.py vs a plain PyTorch loop doing the same work.

    python bench/overhead.py                       # gpt2-tiny and llama3-tiny, 3 repeats each
    python bench/overhead.py --models gpt2-tiny --repeats 5 --window 40

The plain loop is what one would write by hand (nanoGPT style): the same model class and config,
the same seed and initial weights, the same batches (wgpt's datamodule and PDBSampler, same
workers), the same AdamW (fused, decay on matrices), schedule, gradient clipping and precision,
and the same allocator setting. Each measures its second ``window`` steps; runs alternate
between the two, and the table gives medians. The loss at the last step is printed for both:
equal losses show the two did the same work. The loader alone (its batches, no model) is timed
too, to show it is never the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from harness import ROOT, TRAIN_ONLY, fmt, last, median, train_py, window_overrides


def plain_loop(model_name: str, window: int, extra: list[str]) -> dict:
    """Train with a hand-written loop; returns tokens/s over steps window+1..2*window and the last loss."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    import wgpt.launch  # noqa: F401  (the config's resolvers)
    from wgpt.data.tokenizer import Tokenizer
    from wgpt.devices import cpu_precision, reuse_freed_host_memory
    from wgpt.train import padded_vocab_size

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", *extra])
    unmirrored = {
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches != 1, "compile": cfg.compile,
        "optim.fused": cfg.optim.fused is False, "optim.decay_matrices_only": not cfg.optim.decay_matrices_only,
    }  # fmt: skip
    if any(unmirrored.values()):
        raise SystemExit(f"the plain loop does not mirror {[k for k, v in unmirrored.items() if v]}: leave them at their defaults")
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = instantiate(cfg.model, vocab_size=padded_vocab_size(len(Tokenizer())))
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()

    steps = 2 * window
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=True,
    )  # fmt: skip
    schedule = instantiate(cfg.optim.scheduler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, steps if s else 1))  # as the module
    precision = cfg.trainer.precision
    if precision == "auto" or precision in ("16", "16-mixed", "16-true"):  # as wgpt.devices.resolve_hardware on a CPU
        precision = cpu_precision()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    clip = cfg.trainer.gradient_clip_val

    def loss_of(x, y):  # its (B, T, V) logits are freed on return, as in a training_step
        with autocast:
            logits = model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    model.train()
    for step, (x, y) in enumerate(loader, start=1):
        loss = loss_of(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step == window:  # the measured steps start: as SpeedMonitor's logging step W
            start = time.perf_counter()
        if step == steps:
            break
    return {"tokens_per_sec": window * x.numel() / (time.perf_counter() - start), "loss": loss.item()}


def loader_alone(model_name: str, batches: int, extra: list[str]) -> float:
    """Tokens/s of the training DataLoader by itself (workers included, first batch excluded)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import wgpt.launch  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", *extra])
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    x, _ = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(iterator)
    return batches * x.numel() / (time.perf_counter() - start)


def in_subprocess(kind: str, model_name: str, window: int, extra: list[str]) -> dict:
    """A fresh process for each measurement, as train.py gets."""
    result = subprocess.run(
        [sys.executable, __file__, f"--_{kind}", model_name, "--window", str(window), "--extra", json.dumps(extra)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{kind} loop failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-tiny", "llama3-tiny"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=30, help="measured steps, after as many warm-up steps")
    parser.add_argument("--extra", default="[]", help="JSON list of extra overrides for both (e.g. precision)")
    parser.add_argument("--_plain", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--_loader", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = json.loads(args.extra)
    if args._plain:
        print(json.dumps(plain_loop(args._plain, args.window, extra)))
        return
    if args._loader:
        print(json.dumps({"tokens_per_sec": loader_alone(args._loader, 200, extra)}))
        return

    print("| model | train.py tokens/s | plain loop tokens/s | ratio | loss at last step (train.py / plain) | loader alone tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        lightning, plain, losses = [], [], []
        for repeat in range(args.repeats):
            for kind in (("train.py", "plain") if repeat % 2 == 0 else ("plain", "train.py")):
                if kind == "plain":
                    result = in_subprocess("plain", model_name, args.window, extra)
                    plain.append(result["tokens_per_sec"])
                    losses.append(("plain", result["loss"]))
                else:
                    rows = train_py(f"model={model_name}", *TRAIN_ONLY, *window_overrides(args.window), *extra)
                    lightning.append(last(rows, "tokens_per_sec"))
                    losses.append(("train.py", last(rows, "train_loss")))
            print(f"  {model_name} repeat {repeat + 1}: train.py {lightning[-1]:,.0f}, plain {plain[-1]:,.0f} tokens/s", file=sys.stderr)
        loader = in_subprocess("loader", model_name, args.window, extra)["tokens_per_sec"]
        loss_of = {kind: value for kind, value in losses}
        print(
            f"| {model_name} | {fmt(lightning)} | {fmt(plain)} | {median(lightning) / median(plain):.3f} "
            f"| {loss_of['train.py']:.4f} / {loss_of['plain']:.4f} | {loader:,.0f} ({loader / median(lightning):.0f}x) |"
        )


if __name__ == "__main__":
    main()
