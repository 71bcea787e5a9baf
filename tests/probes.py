"""A callback that records, from inside a real train.py run, which fast paths are in effect."""

import json
from pathlib import Path

import lightning as L
import torch
from torch._dynamo.utils import counters


def _grad_norm(module: L.LightningModule) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() if grads else 0.0


class FastPathProbe(L.Callback):
    """Writes ``path`` (JSON) at the end of training: per optimizer step the learning rate, the
    gradient norm before and after clipping; the batches seen; the optimizer's settings; the
    output layer's dtype and autocast state; the attention setting; compile's graphs."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.facts = {"lr": [], "norm_before_clip": [], "norm_after_clip": [], "batches": 0}

    def on_fit_start(self, trainer, pl_module):
        def record_autocast(module, args, output):  # inside the training step
            self.facts["autocast"] = torch.is_autocast_enabled("cpu") and str(torch.get_autocast_dtype("cpu"))

        # Training scores the final norm's output inside the loss (no lm_head call): hook the norm.
        pl_module.model.final_norm.register_forward_hook(record_autocast)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before Lightning clips
        self.facts["norm_before_clip"].append(_grad_norm(pl_module))
        self.facts["lr"].append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.facts["batches"] += len(batch[0]) if batch[0].dim() == 3 else 1  # micro-batches: a step's come as one
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # gradients of this step, clipped
            self.facts["norm_after_clip"].append(_grad_norm(pl_module))

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        model = pl_module.model
        with torch.no_grad(), trainer.precision_plugin.forward_context():  # the training step's precision
            logits = model(torch.zeros(1, 4, dtype=torch.long, device=pl_module.device))
        self.facts.update(
            logits_dtype=str(logits.dtype),
            steps=trainer.global_step,
            fused=bool(optimizer.defaults.get("fused")),
            decay_groups=[
                {"weight_decay": g["weight_decay"], "dims": sorted({p.dim() for p in g["params"]})}
                for g in optimizer.param_groups
            ],
            sdpa=[m.sdpa for m in model.modules() if hasattr(m, "sdpa")],
            compiled=hasattr(pl_module._loss_fn, "_torchdynamo_orig_callable"),  # model and loss as one function
            compiled_graphs=counters["stats"]["unique_graphs"],
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
        self.path.write_text(json.dumps(self.facts))


class FirstBatch(L.Callback):
    """Writes ``path`` (JSON) as training starts: a fingerprint of the initial weights (each
    tensor's sum) and the first batch's input token ids."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and not self.path.exists():
            weights = [p.detach().double().sum().item() for p in pl_module.parameters()]
            self.path.write_text(json.dumps({"weights": weights, "inputs": batch[0].tolist()}))


class ValidationWindows(L.Callback):
    """Writes ``path`` with ``.rank<k>.json`` added (JSON), at the end of the first validation
    (sanity check included): the input windows that validation counted (the rows each
    ``validation_step`` says it counted) and the validation loss. Then ends the run: it is there
    for its validation."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.windows: list[list[int]] = []
        self.done = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.done:
            self.windows += batch[0][: outputs["rows"]].tolist()

    def on_validation_end(self, trainer, pl_module):
        if not self.done:
            self.done = True
            facts = {"windows": self.windows, "val_loss": float(trainer.callback_metrics["val_loss"])}
            self.path.with_suffix(f".rank{trainer.global_rank}.json").write_text(json.dumps(facts))
            trainer.should_stop = True
