"""ModelLightningWrapper: next-token training of any wgpt model under Lightning."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("wgpt")


class ModelLightningWrapper(L.LightningModule):
    """Trains ``model`` (token ids -> logits) with cross-entropy, AdamW and a OneCycleLR schedule.

    Logs ``train_loss`` every step (written every ``log_every_n_steps``), ``val_loss`` and
    ``val_ppl`` per validation (and ``val_loss/<dataset>`` when several datasets are served),
    keeps the best metrics seen so far and stores them, with the model config, in every
    checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        learning_rate: float,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
        scheduler: dict | None = None,
        dataset_names: list[str] | None = None,
        start_datetime: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.learning_rate, self.weight_decay, self.betas, self.eps = learning_rate, weight_decay, tuple(betas), eps
        self.fused = fused
        self.scheduler = dict(scheduler or {})
        self.dataset_names = list(dataset_names or [])
        self.start_datetime = start_datetime or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.best = {"train_loss": math.inf, "val_loss": math.inf, "val_ppl": math.inf, "step": -1}
        self._train_loss_sum = torch.zeros(())  # since the last validation, for best["train_loss"]
        self._train_loss_count = 0
        self._val_sums: dict[int, torch.Tensor] = {}  # dataloader index -> (loss sum, token count)
        self._last_line = (0, time.perf_counter())  # (step, time) of the last train log line

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def _loss(self, batch, reduction: str = "mean") -> torch.Tensor:
        inputs, targets = batch
        logits = self.model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        self._train_loss_sum = self._train_loss_sum.to(loss.device) + loss.detach()
        self._train_loss_count += 1
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        if step % self.trainer.log_every_n_steps or step == self._last_line[0] or not self.trainer.is_global_zero:
            return
        last_step, last_time = self._last_line
        now = time.perf_counter()
        tokens = (step - last_step) * batch[0].numel() * self.trainer.accumulate_grad_batches * self.trainer.world_size
        log.info(
            "step %d | epoch %d | train_loss %.4f | lr %.2e | %.0f tokens/s",
            step, self.current_epoch, outputs["loss"].item(), self.lr_schedulers().get_last_lr()[0],
            tokens / (now - last_time),
        )  # fmt: skip
        self._last_line = (step, now)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss_sum = self._loss(batch, reduction="sum").detach()
        tokens = torch.tensor(float(batch[1].numel()), device=loss_sum.device)
        self._val_sums[dataloader_idx] = self._val_sums.get(dataloader_idx, 0) + torch.stack([loss_sum, tokens])

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        # (datasets, 2) summed over all ranks: exact token-weighted means, whatever the batch sizes.
        sums = self.trainer.strategy.reduce(torch.stack([self._val_sums[i] for i in sorted(self._val_sums)]), reduce_op="sum")
        val_loss = (sums[:, 0].sum() / sums[:, 1].sum()).item()
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=False)
        self.log("val_ppl", math.exp(val_loss))
        if len(self.dataset_names) > 1:
            for name, (loss_sum, tokens) in zip(self.dataset_names, sums.tolist()):
                self.log(f"val_loss/{name}", loss_sum / tokens)
        if self.trainer.sanity_checking:
            return
        train_loss = (self._train_loss_sum / max(self._train_loss_count, 1)).item()
        self._train_loss_sum, self._train_loss_count = torch.zeros(()), 0
        if val_loss < self.best["val_loss"]:
            self.best = {"train_loss": train_loss, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "step": self.global_step}
        if self.trainer.is_global_zero:
            log.info(
                "step %d | val_loss %.4f | val_ppl %.2f | best val_loss %.4f (step %d)",
                self.global_step, val_loss, math.exp(val_loss), self.best["val_loss"], self.best["step"],
            )  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        # Lightning already stores "epoch" and "global_step" beside these.
        checkpoint["model_config"] = dict(self.model.config)
        checkpoint["best_metrics"] = dict(self.best)
        checkpoint["start_datetime"] = self.start_datetime

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best = dict(checkpoint.get("best_metrics", self.best))

    def configure_optimizers(self):
        # Weight decay on matrices only: decaying gains and biases only hurts.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = self.fused if self.fused is not None else self.device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, eps=self.eps, fused=fused)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.learning_rate,
            total_steps=int(self.trainer.estimated_stepping_batches),
            **{"cycle_momentum": False, **self.scheduler},  # keep the configured betas unless asked
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
