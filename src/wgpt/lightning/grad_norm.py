"""The global gradient norm of an optimizer step, before clipping, and clipping: ``ModelLightningWrapper``
logs the norm as ``grad_norm`` and clips by it, so clipping by norm reads the gradients once, not twice."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy, SingleDeviceStrategy
from torch.distributed.tensor import DTensor


def measures_grad_norm(strategy) -> bool:
    """Whether each rank's ``param.grad`` add up to the global norm: whole gradients (one device;
    DDP, all-reduced by the backward) or DTensor shards (FSDP2, Lightning's ModelParallelStrategy).
    Lightning's FSDP1 keeps flat shards with no global view and DeepSpeed keeps the gradients in
    its engine: there the norm would be a part's, so none is measured."""
    whole = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, DeepSpeedStrategy)
    return whole or isinstance(strategy, ModelParallelStrategy)


def step_parameters(optimizer) -> list[torch.nn.Parameter]:
    """The parameters ``optimizer`` steps: those Lightning clips (its precision plugin's ``main_params``)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def grad_norm(optimizer, precision_plugin) -> torch.Tensor:
    """The L2 norm of all the gradients ``optimizer`` is about to step with, as one vector, left on
    the device (no sync). Called from ``on_before_optimizer_step``, where Lightning has not clipped
    them yet and has unscaled float16 gradients, except for an optimizer that unscales them in its
    own ``step`` (fused AdamW): there the scale is divided out here. Sharded (FSDP2), each rank
    holds a DTensor shard of each gradient; the norm is reduced over the ranks, so every rank gets
    that of the unsharded gradients."""
    grads = [p.grad for p in step_parameters(optimizer) if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):  # a partial norm of this rank's shards
        norm = norm.full_tensor()
    scale = amp_scale(optimizer, precision_plugin)
    return norm if scale is None else norm / scale


def amp_scale(optimizer, precision_plugin) -> torch.Tensor | None:
    """The float16 loss scale still in ``optimizer``'s gradients at ``on_before_optimizer_step``,
    on the device: that of an optimizer that unscales them in its own ``step`` (fused AdamW) under
    a scaler; None where Lightning has unscaled them already, or nothing scales them."""
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        # The scale as a device tensor: the public get_scale() reads it into Python, a sync per step.
        return scaler._get_scale_async()
    return None


def clip_gradients(
    module: L.LightningModule, optimizer, clip_val: float | None, algorithm: str | None, norm: torch.Tensor | None
) -> None:
    """``ModelLightningWrapper.configure_gradient_clipping``: clips by ``norm``, the step's
    ``grad_norm``, where it was measured; else as Lightning clips, save for fused optimizers in
    bf16. ``algorithm``: ``norm`` (None) or ``value``."""
    unscales_itself = getattr(optimizer, "_step_supports_amp_scaling", False)
    plugin = module.trainer.precision_plugin
    scaled = unscales_itself and getattr(plugin, "scaler", None) is not None  # float16 gradients not unscaled yet
    if clip_val and algorithm != "value" and norm is not None and not scaled:
        # Scaled by max_norm / norm where that is below 1, as clip_grad_norm_ does, without
        # measuring the norm again: one pass over the gradients, not two.
        torch.nn.utils.clip_grads_with_norm_(step_parameters(optimizer), clip_val, norm)
        return
    # Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales in
    # step() (fused AdamW), even in bf16, which has no scaler: clip those here. (In float16 it
    # refuses rightly: those gradients are still scaled.)
    if clip_val and unscales_itself and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(module.parameters(), clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip_val)
        return
    module.clip_gradients(optimizer, clip_val, algorithm)
