"""LayerDiagnostics, the callbacks group's look inside the model every ``every_n_steps`` optimizer
steps: per block and kind of parameter the gradient norm (before clipping), the weight norm and
the update-to-weight ratio of the step; per block the RMS of the residual stream, each attention
layer's entropy and largest pre-softmax score, and the largest output logit. Into
``diagnostics.csv`` in the run dir (and TensorBoard, W&B where configured); never metrics.csv.
What each number means and what a healthy run shows: docs/diagnostics.md."""

from __future__ import annotations

import csv
import logging
import math
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn as nn
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.distributed.tensor import DTensor

from wgpt.lightning.grad_norm import amp_scale
from wgpt.models.probes import probe_forward
from wgpt.optim import parameter_kinds
from wgpt.util.checks import Range
from wgpt.util.files import atomic_write_text

log = logging.getLogger("wgpt")

FILE = "diagnostics.csv"
COLUMNS = ["step", "block", "kind", "metric", "value"]
BLOCK_PARAMETER = re.compile(r"(?:^|\.)blocks\.(\d+)\.([^.]+)")  # blocks.<i>.<submodule>...


def parameter_group(name: str, kind: str) -> tuple[str, str]:
    """(block, kind) of the parameter ``name`` (of ``wgpt.optim.parameter_kinds`` ``kind``): in a
    block, ``attn`` or ``mlp`` for its submodule's weights and biases, ``norm`` for the rest (its
    norms' gains); outside the blocks block "" and ``embedding``, ``output`` (an untied output
    layer) or ``norm`` (the final norm's vectors)."""
    match = BLOCK_PARAMETER.search(name)
    if match:
        sub = match.group(2)
        return match.group(1), sub if sub in ("attn", "mlp") else "norm"
    return "", {"vector": "norm", "hidden_matrix": "other"}.get(kind, kind)


def label(block: str, kind: str) -> str:
    """One name for a (block, kind): ``block3.attn``, ``block3`` (the block itself), ``embedding``."""
    return ".".join(filter(None, [f"block{block}" if block != "" else "", kind]))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: its shard of a DTensor (FSDP2), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def squares(tensors: list[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """(n,) float32: the sum of squares of each tensor's local part (0 for None), on the device."""
    zero = torch.zeros((), device=device)
    return torch.stack([zero if t is None else square(local(t)) for t in tensors])


def square(t: torch.Tensor) -> torch.Tensor:
    """The sum of squares of ``t``'s entries, in float32."""
    return torch.linalg.vector_norm(t, dtype=torch.float32) ** 2


def replicas(t: torch.Tensor) -> int:
    """On how many ranks each entry of ``t`` is held: a DTensor's replicated mesh dimensions (1 when
    FSDP2 shards it over a 1-D mesh)."""
    if not isinstance(t, DTensor):
        return 1
    mesh = t.device_mesh
    return math.prod(mesh.size(i) for i, placement in enumerate(t.placements) if placement.is_replicate())


class ParameterGroups:
    """The model's trainable parameters in (block, kind) groups, with what it takes to sum their
    squares over the ranks: under FSDP2 each rank holds a shard of every parameter, so squares
    of the local parts are summed by group, then all-reduced once (``reduce``)."""

    def __init__(self, model: nn.Module):
        kinds = parameter_kinds(model)
        groups: dict[tuple[str, str], int] = {}
        self.params, index = [], []
        for name, p in model.named_parameters():
            if name in kinds:
                index.append(groups.setdefault(parameter_group(name, kinds[name]), len(groups)))
                self.params.append(p)
        self.labels = list(groups)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.index = torch.tensor(index, dtype=torch.long, device=device)
        # Entries held on several ranks are counted once: each rank adds its share.
        self.share = torch.tensor([1.0 / replicas(p) for p in self.params], device=device)
        sharded = next((p for p in self.params if isinstance(p, DTensor)), None)
        mesh = sharded.device_mesh if sharded is not None else None
        self.group = None if mesh is None else (mesh.get_group() if mesh.ndim == 1 else dist.group.WORLD)

    def sums(self, per_parameter: torch.Tensor) -> torch.Tensor:
        """(groups,) this rank's share of each group's sum of ``per_parameter`` squares."""
        out = torch.zeros(len(self.labels), device=per_parameter.device)
        return out.index_add_(0, self.index, per_parameter * self.share)

    def reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """Sums of every rank's shares: the values of the unsharded parameters (a no-op unsharded)."""
        if self.group is not None:
            dist.all_reduce(sums, group=self.group)
        return sums


def kept_rows(path: Path, step: int) -> None:
    """Rows of ``path`` up to optimizer step ``step``, the rest dropped (a run continued from a
    checkpoint of ``step`` trains the later steps again), as metrics.csv is kept; a row torn by a
    kill goes too. The file is rewritten atomically."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if _step(row) is not None and _step(row) <= step]
    lines = [",".join(COLUMNS)] + [",".join(row.get(c) or "" for c in COLUMNS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _step(row: dict) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


class LayerDiagnostics(Callback):
    """Every ``every_n_steps`` optimizer steps (None: 4 x ``trainer.log_every_n_steps``), the
    numbers of the module docstring, into ``<dirpath>/diagnostics.csv`` (rank 0; one row per
    step, block, kind and metric) and the run's other loggers (``diagnostics/<metric>/<label>``).

    On those steps only: the gradient and weight norms are read before the optimizer step (before
    clipping), the weights copied (one transient copy of this rank's parameters) and compared
    after it; then one extra no-grad forward in eval mode over ``rows`` fixed sequences (the first
    rows of the first diagnosed step's batch, kept in checkpoints) measures the activations, with
    torch's RNG state put back after it. On every rank (FSDP2 gathers each block for it); the
    values come to the host once, at the end. Other steps cost an integer check per hook.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: Annotated[int, Range(1)] | None = None,
        rows: Annotated[int, Range(1)] = 4,
    ):
        self.path = Path(dirpath) / FILE
        self.every_n_steps, self.rows = every_n_steps, rows
        self._every = 1 << 62  # set by setup
        self._groups: ParameterGroups | None = None
        self._before: list[torch.Tensor] | None = None  # the parameters before the step diagnosed
        self._sums: torch.Tensor | None = None  # its (gradient, weight) squares by group, this rank's shares
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # (inputs, targets) of the extra forward

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._every = self.every_n_steps or 4 * (trainer.log_every_n_steps or 50)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # a run continued in its dir: the steps after its checkpoint go
            kept_rows(self.path, trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if (trainer.global_step + 1) % self._every or self._before is not None:
            return
        # The parameters as the optimizer steps them, found afresh: FSDP2 swaps a module's sharded
        # parameters for unsharded ones around its forward (the sanity validation's included) and
        # frees those afterwards, so references kept from an earlier moment may hold no data.
        groups = self._groups = ParameterGroups(getattr(pl_module, "model", pl_module))
        device = pl_module.device
        grads = squares([p.grad for p in groups.params], device)
        scale = amp_scale(optimizer, trainer.precision_plugin)  # fused float16 gradients are still scaled
        if scale is not None:
            grads = grads / scale.float() ** 2
        self._sums = torch.cat([groups.sums(grads), groups.sums(squares(groups.params, device))])
        self._before = [local(p).detach().clone() for p in groups.params]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._before is None:
            return
        groups, before = self._groups, self._before
        self._before = None
        # One difference at a time: the copy is the only memory held beyond a parameter's size.
        updates = torch.stack([square(local(p).detach() - b) for p, b in zip(groups.params, before)])
        del before
        norms = groups.reduce(torch.cat([self._sums, groups.sums(updates)])).sqrt()
        if self._fixed is None:
            inputs, targets = batch
            T = inputs.size(-1)
            self._fixed = (inputs.reshape(-1, T)[: self.rows].clone(), targets.reshape(-1, T)[: self.rows].clone())
        stats = self._forward(trainer, pl_module)
        values = torch.cat([norms, *(v.reshape(-1).float() for v in stats.values())]).tolist()  # the one sync
        if trainer.is_global_zero:
            self._write(trainer, self._rows(trainer.global_step, values, list(stats.items())))

    def _forward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """``probe_forward`` over the fixed rows, in eval mode, eager, in the run's precision,
        leaving the RNG state and each module's mode as they were."""
        model = getattr(pl_module, "model", pl_module)
        device = pl_module.device
        inputs, targets = (t.to(device) for t in self._fixed)
        modes = {m: m.training for m in model.modules()}
        forked = [device] if device.type == "cuda" else []
        precision = getattr(trainer.precision_plugin, "forward_context", nullcontext)
        try:
            with torch.random.fork_rng(devices=forked), torch.no_grad(), torch.compiler.set_stance("force_eager"):
                model.eval()
                with precision():
                    return probe_forward(model, inputs, targets)
        finally:
            for m, training in modes.items():
                m.training = training

    def _rows(self, step: int, values: list[float], stats: list[tuple[str, torch.Tensor]]) -> list[list]:
        """The CSV rows of ``values``: (gradient, weight, update) norms by group, then ``stats``."""
        labels, n = self._groups.labels, len(self._groups.labels)
        rows = []
        for g, (block, kind) in enumerate(labels):
            grad, weight, update = values[g], values[n + g], values[2 * n + g]
            ratio = update / weight if weight > 0 else math.nan
            rows += [[step, block, kind, "grad_norm", grad], [step, block, kind, "weight_norm", weight]]
            rows.append([step, block, kind, "update_ratio", ratio])
        at = 3 * n
        for name, tensor in stats:
            kind = "attn" if name.startswith("attn_") else "output" if name == "max_logit" else ""
            for i in range(tensor.numel()):
                rows.append([step, str(i) if tensor.dim() else "", kind, name, values[at + i]])
            at += tensor.numel()
        return rows

    def _write(self, trainer: L.Trainer, rows: list[list]) -> None:
        # Appended and flushed per diagnosed step, the header once: a kill loses at most this step's rows.
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(COLUMNS)
            writer.writerows([*row[:4], f"{row[4]:.6g}"] for row in rows)
        others = [logger for logger in trainer.loggers if not isinstance(logger, CSVLogger)]
        if others:
            metrics = {f"diagnostics/{row[3]}/{label(row[1], row[2])}": row[4] for row in rows}
            for logger in others:  # at Lightning's step numbers, those of train_loss in the same charts
                logger.log_metrics(metrics, step=rows[0][0] - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"inputs": self._fixed[0].cpu(), "targets": self._fixed[1].cpu()} if self._fixed is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "inputs" in state_dict:
            self._fixed = (state_dict["inputs"], state_dict["targets"])
