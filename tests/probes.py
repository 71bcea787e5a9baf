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
        def record_dtype(module, args, output):
            self.facts["logits_dtype"] = str(output.dtype)
            self.facts["autocast"] = torch.is_autocast_enabled("cpu") and str(torch.get_autocast_dtype("cpu"))

        pl_module.model.lm_head.register_forward_hook(record_dtype)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before Lightning clips
        self.facts["norm_before_clip"].append(_grad_norm(pl_module))
        self.facts["lr"].append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.facts["batches"] += 1
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # gradients of this step, clipped
            self.facts["norm_after_clip"].append(_grad_norm(pl_module))

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        model = pl_module.model
        self.facts.update(
            steps=trainer.global_step,
            fused=bool(optimizer.defaults.get("fused")),
            decay_groups=[
                {"weight_decay": g["weight_decay"], "dims": sorted({p.dim() for p in g["params"]})}
                for g in optimizer.param_groups
            ],
            sdpa=[m.sdpa for m in model.modules() if hasattr(m, "sdpa")],
            compiled=getattr(model, "_compiled_call_impl", None) is not None,
            compiled_graphs=counters["stats"]["unique_graphs"],
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
        self.path.write_text(json.dumps(self.facts))
