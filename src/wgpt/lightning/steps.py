"""An optimizer step's micro-batches as one of Lightning's batches (``DatasetLightningWrapper``'s
``micro_batches``): what ``ModelLightningWrapper`` needs to run them itself. Lightning's own
accumulation runs its loop, ~10 module hooks and every callback's batch hooks once per
micro-batch (~0.4 ms of host time each, bench/host_cost.py); this runs them once per step."""

from __future__ import annotations

import lightning as L
import torch

from wgpt.util.errors import WgptError


def check_step_batches(trainer: L.Trainer) -> None:
    """Refuse, before training, what would make micro-batches run in one training step go wrong."""
    if trainer.accumulate_grad_batches != 1:
        raise WgptError(
            f"the datamodule loads {trainer.datamodule.micro_batches} micro-batches per step and Lightning "
            f"accumulates {trainer.accumulate_grad_batches} batches too: set one of them to 1"
        )
    if getattr(trainer.strategy.model, "static_graph", False):
        # Its reducer counts the gradient hooks of every backward in its first step, and then waits for them.
        raise WgptError("DDP's static_graph=True cannot take several backward passes per step: leave it off")


def backward_locally(module: L.LightningModule, loss: torch.Tensor) -> None:
    """The backward of a step's micro-batch other than its last, from inside the training step, as
    Lightning would make it (the precision plugin's loss scaling, the backward hooks), with the
    gradients summed on this rank: DDP arms its gradient hooks only after its forward, inside which
    the training step runs; FSDP2 reduce-scatters each micro-batch's gradients into its shards (kept
    sharded: stopping that would hold a full fp32 gradient on every rank). Autocast, on for the
    training step, is off as it is for Lightning's own backward."""
    with torch.autocast(module.device.type, enabled=False):
        module.trainer.strategy.backward(loss, None)


def count_batches_as(checkpoint: dict, per_batch: int) -> None:
    """Lightning's count of training batches in ``checkpoint`` made in batches of ``per_batch``
    micro-batches (``micro_batches_per_batch``, 1 in checkpoints from before it was saved): a
    checkpoint of Lightning's own accumulation counted micro-batches, and a run resumed from it in
    batches of steps must not think its epoch further along. Each counter keeps its distance to
    ``processed`` (Lightning tells where a step was interrupted by those distances); the total is
    the checkpoint's optimizer steps."""
    saved = checkpoint.get("micro_batches_per_batch", 1)
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if saved == per_batch or not progress:
        return
    for name in ("total", "current"):
        counts = progress.get(name, {})
        if "processed" not in counts:
            continue
        old = counts["processed"]
        new = checkpoint["global_step"] if name == "total" else -(-old * saved // per_batch)
        for counter, count in counts.items():
            counts[counter] = max(0, new - (old - count))
