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
import signal
import threading
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.checkpoint import checkpoint

from wgpt.errors import WgptError

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


def shard(model: nn.Module, mesh, precision: str, entry_methods: tuple[str, ...] = ("loss",)) -> None:
    """``fully_shard`` each block, then the rest of the model (embeddings, final norm, output layer).

    bf16 precisions gather parameters and compute in bf16 and reduce gradients in float32
    (torchtitan's policy); the sharded parameters and the optimizer state stay float32.
    ``entry_methods``: methods other than ``forward`` that training calls on the model (our
    ``loss``), which must gather the root's parameters as ``forward`` does.
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


def check_sharded_precision(precision: str) -> None:
    """float16 needs a sharded gradient scaler that Lightning's mixed precision does not give FSDP2."""
    if precision not in SHARDED_PRECISIONS:
        raise WgptError(
            f"trainer.precision={precision} is not supported with trainer.strategy=fsdp: "
            "use bf16-mixed (GPUs since Ampere, most recent CPUs) or 32-true"
        )


def fsdp_strategy() -> "ShardedStrategy":
    """FSDP over every rank of the run: one data-parallel group, no tensor parallelism."""
    return ShardedStrategy()


def is_sharded(strategy: Any) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


class ShardedStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` writing the checkpoint format DDP runs write.

    Checkpoints are gathered into one file on rank 0 (``recent.ckpt``, ``best-*.ckpt``), so eval.py
    and generate.py read them on one device and a run may continue under another strategy. Two
    things differ from Lightning's own: the optimizer state numbers its parameters as
    ``optimizer.state_dict()`` does (in parameter-group order; Lightning numbers them in the
    module's parameter order, which a DDP run would misread without an error), and loading reads
    the file with ``weights_only=True`` (``wgpt.checkpoint.load_checkpoint``).
    """

    def __init__(self):
        super().__init__(save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        # Plain FSDP: every rank of every node in one data-parallel group (Lightning's "auto" would
        # make the ranks of a node a tensor-parallel group), known once the devices are.
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optimizer = optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(self.model, optimizer, options=options)  # keyed by name, rank 0 only
        return _keyed_by_position(state) if self.global_rank == 0 else {}

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        from wgpt.checkpoint import load_checkpoint

        path = self.broadcast(str(checkpoint_path))
        checkpoint = load_checkpoint(path, mmap=True)  # every rank maps the file; nothing is copied
        strict = self.lightning_module.strict_loading
        options = StateDictOptions(full_state_dict=True, strict=strict)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        names = {id(p): name for name, p in self.model.named_parameters()}
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            set_optimizer_state_dict(self.model, optimizer, _keyed_by_name(state, optimizer, names), options=options)
        return checkpoint  # the loops', callbacks' and schedulers' states, which Lightning restores itself


def _keyed_by_position(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state as ``optimizer.state_dict()`` keys it: parameter i is the i-th of
    the parameter groups in order."""
    ids = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return {
        "state": {ids[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def _keyed_by_name(state: dict[str, Any], optimizer, names: dict[int, str]) -> dict[str, Any]:
    """The inverse of ``_keyed_by_position`` for this run's ``optimizer`` (its groups name the
    parameters in the order the checkpoint numbered them; the layout check made sure they match)."""
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


class ShardedStop(Callback):
    """Ctrl-C and SIGTERM under FSDP: every rank stops after the same optimizer step and saves
    ``recent.ckpt``.

    A sharded checkpoint is gathered from every rank, so no rank can save alone (rank 0 does under
    DDP). Lightning's own SIGTERM handling raises on a rank that got the signal at the end of its
    batch, unsynchronized, which under FSDP leaves the other ranks waiting in a collective forever.
    So here the signals only raise a flag, and after each optimizer step the ranks agree on it
    (one all-reduce of one number, any rank's signal stopping all; acted on one step later, so
    that the host never waits for the GPU): Ctrl-C, which only rank 0
    handles (wgpt.train), and SIGTERM, which a scheduler sends to every rank. A second Ctrl-C
    stops at once, unsaved.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._vote: tuple[torch.Tensor, Any] | None = None  # the latest step's (result, its copy's event)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if not self.requested:
                what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                log.info("%s: every rank stops after the next optimizer step and saves recent.ckpt%s", what,
                         " (Ctrl-C again: stop now, unsaved)" if signum == signal.SIGINT else "")  # fmt: skip
            self.requested = True

        signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
        self._previous = {s: signal.signal(s, request) for s in signals}  # over Lightning's SIGTERM handler

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():  # only between optimizer steps
            return
        # The ranks vote after each step and act on the previous step's result, which a GPU has
        # long delivered by now: reading this step's would make the host wait for the step to
        # finish, and stop it from queueing the next one meanwhile.
        if self._vote is not None:
            result, copied = self._vote
            if copied is not None:
                copied.synchronize()
            if result.item():
                raise SIGTERMException()  # on every rank at this step: Lightning's stop, then on_exception
        # A fill on the device: torch.tensor([...], device=...) would copy from the host and wait for the step.
        vote = torch.full((1,), float(self.requested), device=trainer.strategy.root_device)
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
        if vote.device.type == "cuda":
            result = torch.empty(1, pin_memory=True).copy_(vote, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._vote = result, copied
        else:
            self._vote = vote, None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._vote = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.global_step == 0:
            return
        from wgpt.callbacks import RecentCheckpoint

        recent = next((c for c in trainer.callbacks if isinstance(c, RecentCheckpoint)), None)
        if recent is not None:
            path = recent.format_checkpoint_name(recent._monitor_candidates(trainer))
            trainer.save_checkpoint(path)  # collective: every rank is here, after the same step
            if trainer.is_global_zero:
                log.info("Stopped at step %d: saved %s", trainer.global_step, path)
