"""ModelLightningWrapper: next-token training of any wgpt model under Lightning."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Callable

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import measure_flops

from wgpt.data.datamodule import own_rows
from wgpt.data.tokenizer import R50k
from wgpt.lightning.grad_norm import clip_gradients, grad_norm, measures_grad_norm
from wgpt.lightning.guard import StepGuard
from wgpt.lightning.metrics import bits_per_byte, perplexity, token_bytes_table
from wgpt.lightning.steps import backward_locally, check_step_batches, count_batches_as
from wgpt.models.loss import next_token_loss
from wgpt.optim import OptimizerFactory, default_optimizer, parameter_kinds
from wgpt.optim.scheduler import one_cycle
from wgpt.parallel.sharding import checkpoint_activations, compile_blocks, is_sharded, model_blocks, shard
from wgpt.tokenizers.base import TokenizerBase
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


class ModelLightningWrapper(L.LightningModule):
    """Trains ``model`` (token ids -> logits) with cross-entropy, an optimizer and a learning-rate
    schedule (``scheduler(step, total_steps)`` -> factor of each group's learning rate; the seed's
    one-cycle by default). ``optimizer`` builds the optimizer from the model (``wgpt.optim``, from
    the ``optim`` config); None: AdamW at ``learning_rate``, norm gains and biases not decayed.
    ``fused``: fused kernels where the optimizer and the device have them (None), or forced.

    ``compile`` compiles the model and the loss as one graph (token ids to loss; the model itself
    is left as it is, so checkpoints keep its weight names): faster steps and no float32 logits.
    Sharded, it compiles each block instead (``wgpt.parallel.sharding.compile_blocks``).
    ``activation_checkpointing`` recomputes each of ``model.blocks`` in the backward pass instead
    of storing its activations. Under ``trainer.strategy=fsdp`` (Lightning's ModelParallelStrategy)
    ``configure_model`` shards the model block by block (``wgpt.parallel.sharding``); a Trainer
    built outside train.py then needs ``wgpt.core.callbacks.ShardedStop`` among its callbacks
    (``build_callbacks(..., sharded=True)`` adds it), or Ctrl-C and SIGTERM cannot stop the ranks
    together.

    Logs ``train_loss``, the mean over an optimizer step's micro-batches, and ``grad_norm``, the
    step's global gradient norm before clipping (``last_grad_norm``, measured every step on the
    device), at the steps written (every ``log_every_n_steps``, and the last); nothing is logged
    or synced per micro-batch. ``val_loss``,
    ``val_ppl`` and ``val_bpb`` per validation (and ``val_loss/<dataset>``, ``val_bpb/<dataset>`` when
    several datasets are served), keeps the best metrics seen so far (by ``val_loss``) and stores
    them, with the model config and the tokenizer's ``record()``, in every checkpoint.

    ``val_bpb`` is bits per byte: the summed validation loss (nats, over every target token,
    end-of-text predictions included) / ln 2 / the UTF-8 bytes the target tokens spell
    (``tokenizer.token_bytes()``; None: the default r50k tokenizer). Unlike ``val_loss`` it
    compares across tokenizers.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        learning_rate: float = 3e-4,
        fused: bool | None = None,
        scheduler: Callable[[int, int], float] = one_cycle,
        dataset_names: list[str] | None = None,
        start_datetime: str | None = None,
        compile: bool = False,
        tokenizer: TokenizerBase | None = None,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.model = model
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:  # before any weight moves: a model without blocks fails at once
            model_blocks(model, "trainer.activation_checkpointing=true recomputes the model's blocks")
        self._configured = False
        self._compile = compile
        self._z_loss = bool(getattr(model, "config", {}).get("z_loss"))  # its term is logged as train_z_loss
        # dynamic=False: a graph per batch shape (training, validation), not one slower general graph.
        self._loss_fn = torch.compile(next_token_loss, dynamic=False) if compile else next_token_loss
        # Kept apart from the module: FSDP may wrap or shard it, and these must stay readable.
        self.model_class, self.model_config = type(model), dict(model.config)
        # Kinds by name, as the model was built: FSDP may have flattened the parameters by then.
        self._kinds = parameter_kinds(model)
        self.optimizer_factory = optimizer or default_optimizer(learning_rate)
        self.fused = fused
        self.scheduler = scheduler
        self.dataset_names = list(dataset_names or [])
        self.start_datetime = start_datetime or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.tokenizer = tokenizer if tokenizer is not None else R50k().load()
        # Bytes per target id, for val_bpb: a buffer follows the module's device; non-persistent,
        # so never in a checkpoint's state_dict. Kept out of DDP's buffer broadcast, which would
        # otherwise send it before every forward (each rank builds the same table).
        table = token_bytes_table(self.tokenizer, int(self.model_config.get("vocab_size") or 0))
        self.register_buffer("_token_bytes", table, persistent=False)
        self._ddp_params_and_buffers_to_ignore = ["_token_bytes"]  # read by torch's DistributedDataParallel
        self.best = {"train_loss": math.inf, "val_loss": math.inf, "val_ppl": math.inf, "val_bpb": math.inf, "step": -1}
        self.last_val_loss = self.last_val_bpb = math.nan  # of the latest validation
        self._train_loss_sum = torch.zeros(())  # of optimizer steps since the last validation, for best["train_loss"]
        self._train_loss_count = torch.zeros(())  # of those steps, skipped ones aside
        self._step_losses: list[torch.Tensor] = []  # of the current optimizer step's micro-batches
        self._zeroed = False  # gradients zeroed by training_step for the step under way
        self._measures_grad_norm = False  # whether the strategy's gradients give the global norm (on_fit_start)
        self.last_grad_norm: torch.Tensor | None = None  # of the latest optimizer step, before clipping, on the device
        self.guard: StepGuard | None = None  # skips bad steps (set by wgpt.core.guard.SkipGuard)
        self.last_step_bad: torch.Tensor | None = None  # the guard's verdict on the latest step, on the device
        self._val_sums: dict[int, torch.Tensor] = {}  # dataloader index -> (loss sum, token count, byte count)
        self._val_rows_left: dict[int, int | None] = {}  # dataloader index -> own windows left (validation_step)
        self._total = None  # optimizer steps the run will take, once known
        self._flops: dict[torch.Size, int] = {}  # input shape -> FLOPs of a training micro-batch
        self._input_shape: torch.Size | None = None  # of the latest training micro-batch

    def configure_model(self) -> None:
        # Lightning calls this once per trainer stage (fit, then validate...): apply once.
        if self._configured:
            return
        self._configured = True
        sharded = is_sharded(self.trainer.strategy)
        if self.activation_checkpointing:
            checkpoint_activations(self.model.blocks)
        if sharded and self._compile:
            self._loss_fn = next_token_loss  # FSDP's hooks would break its graph at every block
            compile_blocks(model_blocks(self.model, "compile=true with trainer.strategy=fsdp compiles block by block"))
        if sharded:
            shard(self.model, self.device_mesh["data_parallel"], str(self.trainer.precision))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def _loss(self, batch, reduction: str = "mean") -> torch.Tensor:
        inputs, targets = batch  # (B, T) each
        return self._loss_fn(self.model, inputs, targets, reduction)

    def _train_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The objective of a training micro-batch. What is logged of it stays on the device, without
        a sync, and is averaged once per optimizer step (on_before_optimizer_step): the cross-entropy,
        and with a z-loss (the model's ``z_loss``) the pair (cross-entropy, z-loss term)."""
        if not self._z_loss:
            loss = self._loss_fn(self.model, inputs, targets)
            self._step_losses.append(loss.detach())
            return loss
        terms = self._loss_fn(self.model, inputs, targets, terms=True)
        self._step_losses.append(torch.stack([terms.cross_entropy, terms.z_loss]))
        return terms.objective

    # Set per micro-batch (by Lightning twice for each hook it calls, ~30 times): never a parameter,
    # buffer or submodule, so nn.Module.__setattr__'s checks for those (~1 us a set) are skipped.
    _PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_input_shape"})

    def __setattr__(self, name: str, value) -> None:
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def on_fit_start(self) -> None:
        self._measures_grad_norm = measures_grad_norm(self.trainer.strategy)
        if self._batches_per_step() > 1:
            check_step_batches(self.trainer)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The loss of a micro-batch (inputs and targets (B, T)), or of an optimizer step's k
        micro-batches ((k, B, T) each: ``DatasetLightningWrapper(micro_batches=k)``). Those run one
        at a time, all but the last with their backward here, gradients summed on this rank; the
        last's loss goes back to Lightning, whose backward reduces the sum over the ranks and steps."""
        inputs, targets = batch
        if inputs.dim() == 2:  # one micro-batch; Lightning accumulates, if asked to
            self._input_shape = inputs.shape
            return self._train_loss(inputs, targets)
        k = len(inputs)
        self._input_shape = inputs.shape
        # Lightning zeroes the gradients after this function, before its backward: too late for the
        # backward passes made here. So they are zeroed now, and optimizer_zero_grad skips its turn.
        for optimizer in self.trainer.optimizers:
            optimizer.zero_grad()
        self._zeroed = True
        for i in range(k - 1):
            backward_locally(self, self._train_loss(inputs[i], targets[i]) / k)
        return (
            self._train_loss(inputs[-1], targets[-1]) / k
        )  # the mean over the step's micro-batches, as one batch of k x B would give

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._zeroed:  # by training_step, before this step's first backward
            self._zeroed = False
            return
        optimizer.zero_grad()

    def _batches_per_step(self) -> int:
        """Micro-batches in one of Lightning's training batches (DatasetLightningWrapper's micro_batches)."""
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # attached to no trainer
            return 1
        return getattr(datamodule, "micro_batches", 1) or 1

    def on_before_optimizer_step(self, optimizer) -> None:
        # Every step, not only logged ones: clipping by norm reuses it (configure_gradient_clipping),
        # so with clipping on it costs nothing more; it stays on the device until a logging step.
        if self._measures_grad_norm:
            self.last_grad_norm = grad_norm(optimizer, self.trainer.precision_plugin)
        if self.guard is not None and self.last_grad_norm is not None:
            step = self.global_step + 1
            self.last_step_bad = self.guard.check(self.last_grad_norm, optimizer, self.trainer.precision_plugin, step)
        if not self._step_losses:  # stepped without a training_step of ours (manual use)
            return
        losses, self._step_losses = self._step_losses, []
        step_loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean(0)
        if self._z_loss:  # (cross-entropy, z-loss term)
            step_loss, step_z_loss = step_loss.unbind()
        kept, bad = step_loss, self.last_step_bad  # a skipped step's loss is left out of best["train_loss"]
        if bad is not None:
            kept = torch.where(bad, 0.0, step_loss)
        self._train_loss_sum = self._train_loss_sum.to(step_loss.device) + kept
        self._train_loss_count = self._train_loss_count.to(step_loss.device) + (1.0 if bad is None else (~bad).float())
        # Logged at the steps Lightning writes (and the last), not every step: self.log costs ~0.7 ms
        # of Python. Never prog_bar=True: Lightning turns progress-bar metrics into Python numbers
        # after every batch, a GPU sync per micro-batch; wgpt's bar reads callback_metrics instead.
        trainer, step = self.trainer, self.global_step + 1  # the step about to be taken
        every = trainer.log_every_n_steps
        last = 0 < trainer.max_steps <= step or (
            trainer.is_last_batch
            and trainer.max_epochs is not None
            and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        )
        if every and (step % every == 0 or last):
            self.log("train_loss", step_loss)
            if self._z_loss:
                self.log("train_z_loss", step_z_loss)
            if self.last_grad_norm is not None:
                self.log("grad_norm", self.last_grad_norm)

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of the latest training batch (``training_flops`` of each of its micro-batches):
        Lightning's ThroughputMonitor reads it."""
        shape = self._input_shape
        if shape is None:
            return None
        return shape[0] * self.training_flops(shape[1:]) if len(shape) == 3 else self.training_flops(shape)

    def training_flops(self, shape: torch.Size) -> int:
        """FLOPs of one training micro-batch (forward and backward) of inputs of ``shape`` (B, T),
        counted once per shape on a meta-device copy of the model: SpeedMonitor's MFU reads it."""
        if shape not in self._flops:
            # Asked from inside inference mode (ThroughputMonitor's update); counting needs a backward.
            with torch.device("meta"), torch.inference_mode(False), torch.enable_grad():
                model = self.model_class(**self.model_config)
                input = torch.zeros(shape, dtype=torch.long)
                loss = lambda logits: F.cross_entropy(logits.flatten(0, 1), input.flatten())  # noqa: E731
                self._flops[shape] = measure_flops(model, lambda: model(input), loss)
        return self._flops[shape]

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}
        self._val_rows_left = {}  # dataloader -> this rank's own windows not yet counted; None: all count

    def _sum_dtype(self, device: torch.device) -> torch.dtype:
        # float64 where the device has it: byte and token counts stay exact integers past 2^24.
        return torch.float32 if device.type == "mps" else torch.float64

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, int]:
        """Adds the batch's loss, tokens and bytes to the validation sums, leaving out the rows that
        pad this rank's share (another rank counts those windows: own_rows). Returns the rows
        counted, the first ``rows`` of the batch."""
        if dataloader_idx not in self._val_rows_left:
            loaders = self.trainer.val_dataloaders
            loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
            loader = loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
            self._val_rows_left[dataloader_idx] = own_rows(loader)
        left = self._val_rows_left[dataloader_idx]
        rows = len(batch[0]) if left is None else min(left, len(batch[0]))
        if left is not None:
            self._val_rows_left[dataloader_idx] = left - rows
        # A batch of padding alone still runs its forward (FSDP gathers weights in it, on every
        # rank), on one row, and adds nothing.
        inputs, targets = (t[: max(rows, 1)] for t in batch[:2])
        loss_sum = self._loss((inputs, targets), reduction="sum").detach()
        dtype = self._sum_dtype(loss_sum.device)
        tokens = torch.tensor(float(targets.numel()), device=loss_sum.device, dtype=dtype)
        num_bytes = self._token_bytes[targets].sum()  # on the device: no sync
        row = torch.stack([loss_sum.to(dtype), tokens, num_bytes.to(dtype)]) * (rows > 0)
        self._val_sums[dataloader_idx] = self._val_sums.get(dataloader_idx, 0) + row
        return {"rows": rows}

    def on_validation_epoch_end(self) -> None:
        # One all-reduce of every (loss sum, token count, byte count), per validation set plus the
        # train losses since the last validation: token-weighted means over all ranks. Every rank
        # takes part even with no batches of its own, so none waits forever.
        num_sets = max(len(self.dataset_names), len(self._val_sums), 1)
        dtype = self._sum_dtype(self.device)
        zero = torch.zeros(3, device=self.device, dtype=dtype)
        rows = [self._val_sums.get(i, zero).to(self.device, dtype) for i in range(num_sets)]
        count = self._train_loss_count.to(self.device, dtype)
        train = torch.stack([self._train_loss_sum.to(self.device, dtype), count, torch.zeros_like(count)])
        sums = self.trainer.strategy.reduce(torch.stack([*rows, train]), reduce_op="sum").tolist()
        (*per_set, (train_sum, train_count, _)) = sums
        loss_sum, tokens, num_bytes = (sum(column) for column in zip(*per_set))
        val_loss = loss_sum / max(tokens, 1)
        val_bpb = bits_per_byte(loss_sum, num_bytes)
        # Already equal on every rank; sync_dist only tells Lightning so (its mean changes nothing).
        self.log("val_loss", val_loss, sync_dist=True)
        self.log("val_ppl", perplexity(val_loss), sync_dist=True)
        self.log("val_bpb", val_bpb, sync_dist=True)
        if len(self.dataset_names) > 1:
            for name, (set_loss, set_tokens, set_bytes) in zip(self.dataset_names, per_set):
                self.log(f"val_loss/{name}", set_loss / max(set_tokens, 1), sync_dist=True)
                self.log(f"val_bpb/{name}", bits_per_byte(set_loss, set_bytes), sync_dist=True)
        if self.trainer.sanity_checking:
            return
        self._train_loss_sum, self._train_loss_count = torch.zeros(()), torch.zeros(())
        self.last_val_loss, self.last_val_bpb = val_loss, val_bpb
        if val_loss < self.best["val_loss"]:
            train_loss = train_sum / train_count if train_count else math.nan
            self.best = {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_ppl": perplexity(val_loss),
                "val_bpb": val_bpb,
                "step": self.global_step,
            }
        if self.trainer.is_global_zero:
            log.info(
                "step %d | val_loss %.4f | val_ppl %.2f | val_bpb %.4f | best val_loss %.4f (step %d)",
                self.global_step,
                val_loss,
                perplexity(val_loss),
                val_bpb,
                self.best["val_loss"],
                self.best["step"],
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        # Lightning already stores "epoch" and "global_step" beside these.
        checkpoint["model_class"] = f"{self.model_class.__module__}.{self.model_class.__qualname__}"
        checkpoint["model_config"] = dict(self.model_config)
        checkpoint["best_metrics"] = dict(self.best)
        checkpoint["start_datetime"] = self.start_datetime
        checkpoint["tokenizer"] = self.tokenizer.record()  # eval.py and generate.py rebuild it from this
        # Dropout's random stream: a resumed run draws the masks the uninterrupted one would have.
        # (Data loaders draw from generators of their own, so they never shift it.)
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["micro_batches_per_batch"] = self._batches_per_step()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        count_batches_as(checkpoint, self._batches_per_step())
        best = dict(checkpoint.get("best_metrics", self.best))
        best.setdefault("val_bpb", math.nan)  # a checkpoint made before val_bpb was measured
        self.best = best
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"].cpu())
        if "cuda" in states and self.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"].cpu(), self.device)

    def configure_optimizers(self):
        # A fused AdamW unscales float16 gradients inside step(), after clipping would have seen
        # them still scaled. bf16 and float32 have no scaling, so nothing stands in the way there.
        fp16_clipping = getattr(self.trainer.precision_plugin, "scaler", None) is not None and bool(
            self.trainer.gradient_clip_val
        )
        if self.fused and fp16_clipping:
            raise WgptError(
                "optim.fused=true cannot be combined with float16 (precision 16-mixed) and gradient clipping: "
                "use precision=bf16-mixed, leave optim.fused unset (or false) or set trainer.gradient_clip_val=null"
            )
        fused = self.fused if self.fused is not None else self.device.type in ("cuda", "cpu") and not fp16_clipping
        optimizer = self.optimizer_factory(self.model, fused=fused, kinds=self._kinds)
        schedule = self.scheduler
        # The schedule's length is asked for only from step 1 on. At step 0 Lightning is still
        # setting up; asking then (estimated_stepping_batches) makes it start the train loader
        # before it restores a checkpoint, and a resumed run would replay its epoch's first batches.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule(step, self._total_steps() if step else 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm, self.last_grad_norm)

    def _total_steps(self) -> int:
        if self._total is None:
            self._total = max(1, int(self.trainer.estimated_stepping_batches))
        return self._total
