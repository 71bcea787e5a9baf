"""The Evaluator: loss, perplexity, bits per byte and top-k next-token accuracy of a trained model.

Teacher forcing, as in training: every window of a split is scored at every position, so the
validation loss and bits per byte here equal the ``val_loss`` and ``val_bpb`` the run logged for
the same checkpoint and windows.
"""

from __future__ import annotations

import json
import math
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

from wgpt.data.tokenizer import R50k
from wgpt.interop.sources import load_model_source
from wgpt.lightning.metrics import bits_per_byte, perplexity, token_bytes_table
from wgpt.tokenizers.base import TokenizerBase
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text
from wgpt.util.tables import text_table


class Evaluator:
    """Scores ``model`` on datasets of (input, target) windows made by ``tokenizer`` (None: the
    default r50k), which gives the bytes each target spells; see ``evaluate``."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        top_k: Sequence[int] = (1, 5),
        tokenizer: TokenizerBase | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.top_k = sorted(set(top_k))
        self.tokenizer = tokenizer if tokenizer is not None else R50k().load()
        vocab_size = getattr(model, "config", {}).get("vocab_size") or 0
        self._token_bytes = token_bytes_table(self.tokenizer, vocab_size).to(self.device)  # (V,)
        # bf16 autocast where the GPU has it (as training does); fp32 elsewhere.
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()

    @torch.inference_mode()
    def evaluate(self, dataset: Dataset, batch_size: int = 16, max_batches: int | None = None) -> dict[str, float]:
        """``{"loss", "ppl", "bpb", "top1_acc", "top5_acc", ..., "tokens"}``, token-weighted over
        the first ``max_batches`` batches (all when None). ``bpb``, bits per byte: the summed loss
        over every target (end-of-text included) / ln 2 / the UTF-8 bytes the targets spell."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=self.device.type == "cuda")
        loss_sum, tokens, num_bytes = 0.0, 0, 0
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
            num_bytes += int(self._token_bytes[targets].sum())
            if self.top_k:
                top = logits.topk(max(self.top_k), dim=-1).indices  # (B*T, k), best first
                hits = top == targets[:, None]
                for k in self.top_k:
                    correct[k] += hits[:, :k].any(dim=-1).sum().item()
        if tokens == 0:
            nan = {"loss": math.nan, "ppl": math.nan, "bpb": math.nan, **{f"top{k}_acc": math.nan for k in self.top_k}}
            return {**nan, "tokens": 0}
        loss = loss_sum / tokens
        accuracy = {f"top{k}_acc": correct[k] / tokens for k in self.top_k}
        bpb = bits_per_byte(loss_sum, num_bytes)
        return {"loss": loss, "ppl": perplexity(loss), "bpb": bpb, **accuracy, "tokens": tokens}


def format_results(results: dict[str, dict[str, dict[str, float]]], top_k: Sequence[int]) -> str:
    """A plain-text table: one row per (dataset, split)."""
    columns = ["dataset", "split", "loss", "ppl", "bpb", *(f"top{k}_acc" for k in sorted(top_k)), "tokens"]
    rows = [columns]
    for dataset, splits in results.items():
        for split, m in splits.items():
            rows.append(
                [
                    dataset,
                    split,
                    f"{m['loss']:.4f}",
                    f"{m['ppl']:.2f}",
                    f"{m['bpb']:.4f}",
                    *(f"{m[f'top{k}_acc']:.4f}" for k in sorted(top_k)),
                    str(m["tokens"]),
                ]
            )
    return text_table(rows, rule=False)


def save_results(path: Path, record: dict[str, Any]) -> None:
    """Write (temp + rename) the evaluation record as JSON."""
    atomic_write_text(
        path, json.dumps({**record, "date": datetime.now().isoformat(timespec="seconds")}, indent=2) + "\n"
    )


def evaluation_data(cfg: DictConfig, run_dir: Path | None, model_config: dict) -> DictConfig:
    """The data config to score on: ``cfg.data`` if given, else the one the checkpoint's run
    trained on (its ``.hydra/config.yaml``), resolved with this machine's paths. ``run_dir`` is
    None for a Hugging Face directory, which has no run config."""
    saved_path = run_dir / ".hydra" / "config.yaml" if run_dir is not None else None
    saved = OmegaConf.load(saved_path) if saved_path is not None and saved_path.is_file() else OmegaConf.create()
    if cfg.get("data") is None and "data" not in saved:
        if saved_path is None:
            raise WgptError(
                f"no data= given and ckpt_path={cfg.ckpt_path} is a Hugging Face directory, "
                "which holds no run config: name the data, e.g. data=shakespeare"
            )
        raise WgptError(
            f"no data= given and the checkpoint's run config {saved_path} is missing: "
            "name the data, e.g. data=shakespeare"
        )
    root = OmegaConf.merge(saved, {"paths": cfg.paths, "seed": cfg.seed, "model": model_config})
    if cfg.get("data") is not None:
        root.data = cfg.data
    return OmegaConf.create(OmegaConf.to_container(root.data, resolve=True))


def check_vocab(model: nn.Module, tokenizer: TokenizerBase, source: str) -> None:
    """A one-line WgptError when the model has fewer output rows than the tokenizer has ids."""
    vocab_size = getattr(model, "config", {}).get("vocab_size")
    if isinstance(vocab_size, int) and vocab_size < len(tokenizer):
        raise WgptError(
            f"{source}: the model's vocab_size={vocab_size} is smaller than its tokenizer {tokenizer.name} "
            f"({len(tokenizer)} tokens), so it cannot score that tokenizer's ids: the checkpoint is damaged "
            "or its tokenizer record was changed"
        )


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """eval.py: score ``cfg.ckpt_path`` (a .ckpt, a .safetensors, a run dir or a Hugging Face
    directory) on ``cfg.splits`` of each dataset; print a table and save it as
    ``eval-<checkpoint name>.json`` in the checkpoint's run dir (``eval-hf.json`` in a Hugging Face
    directory)."""
    bad_splits = [s for s in cfg.splits if s not in ("validation", "test", "train")]
    if bad_splits:
        raise WgptError(f"splits={list(cfg.splits)} names {bad_splits[0]!r}: use validation, test or train")
    if any(int(k) < 1 for k in cfg.top_k):
        raise WgptError(f"top_k={list(cfg.top_k)}: every k must be at least 1")
    if (cfg.batch_size is not None and cfg.batch_size < 1) or (cfg.max_batches is not None and cfg.max_batches < 1):
        raise WgptError(f"batch_size={cfg.batch_size}, max_batches={cfg.max_batches}: both must be at least 1")
    loaded = load_model_source(cfg.ckpt_path)  # a .ckpt, a .safetensors, a run dir or a Hugging Face directory
    model, tokenizer, ckpt_path = loaded.model, loaded.tokenizer, loaded.path
    check_vocab(model, tokenizer, f"ckpt_path={ckpt_path}")
    data = evaluation_data(cfg, loaded.run_dir, model.config)
    batch_size = cfg.batch_size or data.batch_size
    datamodule = instantiate(data, tokenizer=tokenizer)  # the bins of the checkpoint's tokenizer
    datamodule.prepare_data()
    datamodule.setup()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    evaluator = Evaluator(model, device, top_k=list(cfg.top_k), tokenizer=tokenizer)
    results = {
        name: {split: evaluator.evaluate(splits[split], batch_size, cfg.max_batches) for split in cfg.splits}
        for name, splits in datamodule.splits.items()
    }
    # Beside the checkpoint's run (eval-<checkpoint name>.json), or inside the Hugging Face directory.
    out = (loaded.run_dir or ckpt_path) / f"eval-{ckpt_path.stem if loaded.run_dir else 'hf'}.json"
    record = {
        "checkpoint": str(ckpt_path),
        "global_step": loaded.global_step,
        "model": model.config,
        "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint, "vocab_size": len(tokenizer)},
        "batch_size": batch_size,
        "max_batches": cfg.max_batches,
        "results": results,
    }
    save_results(out, record)
    at_step = f" at step {loaded.global_step}" if loaded.global_step is not None else ""
    print(f"{model.config.get('name', 'model')}{at_step} ({ckpt_path}):")
    print(format_results(results, evaluator.top_k))
    print(f"Saved {out}")
    return record
