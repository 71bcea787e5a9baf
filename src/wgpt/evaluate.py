"""The Evaluator: loss, perplexity and top-k next-token accuracy of a trained model.

Teacher forcing, as in training: every window of a split is scored at every position, so the
validation loss here equals the one the run logged for the same checkpoint and windows.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from wgpt.checkpoint import load_checkpoint, model_from_checkpoint
from wgpt.errors import WgptError
from wgpt.module import perplexity


class Evaluator:
    """Scores ``model`` on datasets of (input, target) windows; see ``evaluate``."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", top_k: Sequence[int] = (1, 5)):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.top_k = sorted(set(top_k))
        # bf16 autocast where the GPU has it (as training does); fp32 elsewhere.
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()

    @torch.inference_mode()
    def evaluate(self, dataset: Dataset, batch_size: int = 16, max_batches: int | None = None) -> dict[str, float]:
        """``{"loss", "ppl", "top1_acc", "top5_acc", ..., "tokens"}``, token-weighted over the
        first ``max_batches`` batches (all when None)."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=self.device.type == "cuda")
        loss_sum, tokens = 0.0, 0
        correct = {k: 0 for k in self.top_k}
        for i, (inputs, targets) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self._autocast:
                logits = self.model(inputs)  # (B, T, V)
            logits, targets = logits.flatten(0, 1).float(), targets.flatten()  # (B*T, V), (B*T,)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            tokens += targets.numel()
            if self.top_k:
                top = logits.topk(max(self.top_k), dim=-1).indices  # (B*T, k), best first
                hits = top == targets[:, None]
                for k in self.top_k:
                    correct[k] += hits[:, :k].any(dim=-1).sum().item()
        if tokens == 0:
            return {"loss": math.nan, "ppl": math.nan, **{f"top{k}_acc": math.nan for k in self.top_k}, "tokens": 0}
        loss = loss_sum / tokens
        return {"loss": loss, "ppl": perplexity(loss), **{f"top{k}_acc": correct[k] / tokens for k in self.top_k}, "tokens": tokens}


def format_results(results: dict[str, dict[str, dict[str, float]]], top_k: Sequence[int]) -> str:
    """A plain-text table: one row per (dataset, split)."""
    columns = ["dataset", "split", "loss", "ppl", *(f"top{k}_acc" for k in sorted(top_k)), "tokens"]
    rows = [columns]
    for dataset, splits in results.items():
        for split, m in splits.items():
            rows.append([dataset, split, f"{m['loss']:.4f}", f"{m['ppl']:.2f}", *(f"{m[f'top{k}_acc']:.4f}" for k in sorted(top_k)), str(m["tokens"])])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def save_results(path: Path, record: dict[str, Any]) -> None:
    """Write (temp + rename) the evaluation record as JSON."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**record, "date": datetime.now().isoformat(timespec="seconds")}, indent=2) + "\n")
    os.replace(tmp, path)


def evaluation_data(cfg: DictConfig, run_dir: Path, checkpoint: dict) -> DictConfig:
    """The data config to score on: ``cfg.data`` if given, else the one the checkpoint's run
    trained on (its ``.hydra/config.yaml``), resolved with this machine's paths."""
    saved_path = run_dir / ".hydra" / "config.yaml"
    saved = OmegaConf.load(saved_path) if saved_path.is_file() else OmegaConf.create()
    if cfg.get("data") is None and "data" not in saved:
        raise WgptError(f"no data= given and the checkpoint's run config {saved_path} is missing: name the data, e.g. data=shakespeare")
    root = OmegaConf.merge(saved, {"paths": cfg.paths, "seed": cfg.seed, "model": checkpoint["model_config"]})
    if cfg.get("data") is not None:
        root.data = cfg.data
    return OmegaConf.create(OmegaConf.to_container(root.data, resolve=True))


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """eval.py: score ``cfg.ckpt_path`` on ``cfg.splits`` of each dataset; print a table and
    save it as ``eval-<checkpoint name>.json`` in the checkpoint's run dir."""
    bad_splits = [s for s in cfg.splits if s not in ("validation", "test", "train")]
    if bad_splits:
        raise WgptError(f"splits={list(cfg.splits)} names {bad_splits[0]!r}: use validation, test or train")
    if any(int(k) < 1 for k in cfg.top_k):
        raise WgptError(f"top_k={list(cfg.top_k)}: every k must be at least 1")
    if (cfg.batch_size is not None and cfg.batch_size < 1) or (cfg.max_batches is not None and cfg.max_batches < 1):
        raise WgptError(f"batch_size={cfg.batch_size}, max_batches={cfg.max_batches}: both must be at least 1")
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    checkpoint = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(checkpoint, source=f"ckpt_path={ckpt_path}")
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    data = evaluation_data(cfg, run_dir, checkpoint)
    batch_size = cfg.batch_size or data.batch_size
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    evaluator = Evaluator(model, device, top_k=list(cfg.top_k))
    results = {
        name: {split: evaluator.evaluate(splits[split], batch_size, cfg.max_batches) for split in cfg.splits}
        for name, splits in datamodule.splits.items()
    }
    out = run_dir / f"eval-{ckpt_path.stem}.json"
    record = {
        "checkpoint": str(ckpt_path), "global_step": checkpoint.get("global_step"), "model": checkpoint["model_config"],
        "batch_size": batch_size, "max_batches": cfg.max_batches, "results": results,
    }  # fmt: skip
    save_results(out, record)
    print(f"{checkpoint['model_config'].get('name', 'model')} at step {checkpoint.get('global_step')} ({ckpt_path}):")
    print(format_results(results, evaluator.top_k))
    print(f"Saved {out}")
    return record
