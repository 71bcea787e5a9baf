"""``trainer.strategy=fsdp``: Lightning's ModelParallelStrategy with wgpt's FSDP2 sharding, whose
checkpoints are one gathered file in the DDP format (so eval, generate and DDP read them)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

from wgpt.interop.checkpoint import load_checkpoint
from wgpt.parallel.sharding import SHARDED_PRECISIONS
from wgpt.util.errors import WgptError


def check_sharded_precision(precision: str) -> None:
    """float16 needs a sharded gradient scaler that Lightning's mixed precision does not give FSDP2."""
    if precision not in SHARDED_PRECISIONS:
        raise WgptError(
            f"trainer.precision={precision} is not supported with trainer.strategy=fsdp: "
            "use bf16-mixed (GPUs since Ampere, most recent CPUs) or 32-true"
        )


def runs_step_batches(strategy) -> bool:
    """Whether a step's micro-batches can run in one training step (wgpt.lightning.steps) under a
    resolved ``trainer.strategy``: one device, DDP and wgpt's FSDP2 can; Lightning's FSDP1 and
    DeepSpeed, whose engines expect one backward per forward, keep Lightning's accumulation."""
    if isinstance(strategy, str):
        return not strategy.startswith(("fsdp", "deepspeed"))
    return isinstance(strategy, (DDPStrategy, SingleDeviceStrategy, ShardedStrategy))


def fsdp_strategy() -> "ShardedStrategy":
    """FSDP over every rank of the run: one data-parallel group, no tensor parallelism."""
    return ShardedStrategy()


class ShardedStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` writing the checkpoint format DDP runs write.

    Checkpoints are gathered into one file on rank 0 (``recent.ckpt``, ``best-*.ckpt``), so eval.py
    and generate.py read them on one device and a run may continue under another strategy. Two
    things differ from Lightning's own: the optimizer state numbers its parameters as
    ``optimizer.state_dict()`` does (in parameter-group order; Lightning numbers them in the
    module's parameter order, which a DDP run would misread without an error), and loading reads
    the file with ``weights_only=True`` (``wgpt.interop.checkpoint.load_checkpoint``).
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
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

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
