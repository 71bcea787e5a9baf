"""Sharded training (FSDP2) and activation checkpointing, applied to a model from outside.

The model code knows nothing of either (torchtitan's split): a model exposes its repeated unit
as ``model.blocks`` (an ``nn.ModuleList``), and this module

- recomputes each block's activations in the backward pass instead of storing them
  (``trainer.activation_checkpointing=true``; any strategy), and
- under ``trainer.strategy=fsdp``, shards every block's parameters, gradients and optimizer
  state across the data-parallel ranks with PyTorch's ``fully_shard`` (FSDP2), through
  Lightning's own ``ModelParallelStrategy``, which calls ``ModelLightningWrapper.configure_model``.

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1): FSDP1 flattens parameters, which breaks
with our bf16 autocast (torch 2.11: "attempting to assign a gradient with dtype BFloat16 to a
tensor with grad_dtype Float"), keeps names only through wrappers, and Lightning runs it on GPUs
only. FSDP2 keeps every parameter a (sharded) tensor under its own name, so the optimizer rules
of ``wgpt.optim`` and the checkpoint format stay as they are; torch.compile traces it, and it
runs on CPUs too (gloo), which is how the test suite checks it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.checkpoint import checkpoint

from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

FSDP = "fsdp"  # trainer.strategy value: FSDP2 over every device of the run
SHARDED_PRECISIONS = {"bf16-mixed": torch.bfloat16, "32-true": None, "32": None, "bf16-true": torch.bfloat16}


def model_blocks(model: nn.Module, why: str) -> nn.ModuleList:
    """The model's repeated units (``model.blocks``), or a one-line error saying what needs them."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise WgptError(
            f"{why}, but model {name} ({type(model).__module__}.{type(model).__qualname__}) has no `blocks` "
            "(an nn.ModuleList of its repeated layers): give the model one, or turn that setting off"
        )
    return blocks


def checkpoint_activations(blocks: nn.ModuleList) -> None:
    """Each block keeps only its input for the backward pass and runs its forward again there.

    Wrapped in place (an instance ``forward``), not with a wrapper module: parameter names, and
    with them checkpoints and the optimizer rules, stay exactly as they were. Without gradients
    (validation, generation) the block runs plainly.
    """
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            # Non-reentrant: works with keyword arguments, autocast and FSDP2's hooks, and is the
            # variant PyTorch recommends.
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def compile_blocks(blocks: nn.ModuleList) -> None:
    """Compile each block's ``forward`` as one graph of its own (torchtitan's way under FSDP).

    FSDP2 gathers and frees a block's parameters in hooks around its ``forward``; compiling the
    whole loss instead breaks the graph at every one of them and runs the loop over blocks eager.
    Compiling ``forward`` leaves the hooks outside the graphs, so ``fullgraph`` holds (an error,
    not a silent fallback, if it ever stops holding). Compiled after ``checkpoint_activations``,
    the recomputation is part of each block's graph. Every block shares one compiled graph (same
    code, same shapes). In place, like ``checkpoint_activations``: parameter names are unchanged.
    ``dynamic=None``: the training shape gets a static graph; a second batch size (validation's
    last batches) one graph with a dynamic batch dimension, where a graph per size would reach
    the recompile limit, an error under ``fullgraph``.
    """
    for block in blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=None)


def shard(model: nn.Module, mesh, precision: str, entry_methods: tuple[str, ...] = ("loss", "loss_terms")) -> None:
    """``fully_shard`` each block, then the rest of the model (embeddings, final norm, output layer).

    bf16 precisions gather parameters and compute in bf16 and reduce gradients in float32
    (torchtitan's policy); the sharded parameters and the optimizer state stay float32.
    ``entry_methods``: methods other than ``forward`` that training calls on the model (our
    ``loss`` and ``loss_terms``), which must gather the root's parameters as ``forward`` does.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    param_dtype = SHARDED_PRECISIONS[precision]
    # cast_forward_inputs=False: a block's inputs include the rotary tables, which must stay float32
    # (bf16 angles lose the positions' precision); the hidden states come in bf16 already.
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None, cast_forward_inputs=False
    )
    blocks = model_blocks(model, "trainer.strategy=fsdp shards the model block by block")
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again first in the backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for name in entry_methods:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def is_sharded(strategy: Any) -> bool:
    return isinstance(strategy, ModelParallelStrategy)
