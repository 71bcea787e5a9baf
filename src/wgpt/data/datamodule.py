"""DatasetLightningWrapper: prepared token bins -> train/validation/test DataLoaders."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wgpt.data.diskdataset import BinInfo, DiskDataset, bin_path
from wgpt.data.pdbsampler import PDBSampler, StepBatches
from wgpt.data.prepare import discard, ensure_prepared, unprepared_reason
from wgpt.data.sources import check_source, process_command, too_small_fix
from wgpt.data.splits import SPLITS, get_splits
from wgpt.data.tokenizer import R50k
from wgpt.tokenizers.base import TokenizerBase
from wgpt.util.errors import WgptError


class DatasetLightningWrapper(L.LightningDataModule):
    """Serves one or several prepared datasets (``get_splits`` of each) to Lightning.

    Args:
        datasets: ``{name: load}``. ``load()`` returns the train/validation/test splits (see
            ``wgpt.data.sources``) that ``prepare_data`` tokenizes into bins. ``load=None``
            marks a dataset that must already be prepared.
        seq_len: tokens per training window.
        batch_size: windows per batch on each device.
        sampler: a partial ``PDBSampler`` (from config) completed here with the train splits,
            the batch size and this process's rank and world size.
        auto_prepare: prepare missing or stale bins on first use (once per node); when false,
            stop and print the ``process.py`` command that prepares them.
        path: the corpus location of file-based sources (``data.path``), which they read
            through interpolation; the datamodule itself does not use it.
        weights: ``{name: weight}`` mixture weights for the training batches; None draws
            each dataset in proportion to its size.
        micro_batches: batches of ``batch_size`` per optimizer step (train.py sets it from
            ``trainer.accumulate_grad_batches``, and Lightning's own accumulation stays at 1): above
            1, each training batch is a step's ``(micro_batches, batch_size, seq_len + 1)`` windows,
            which ``ModelLightningWrapper.training_step`` runs a micro-batch at a time.
        tokenizer: the tokenizer of the bins, or a spec of the ``tokenizer`` group (``R50k``,
            ``ByteLevelBPE``) that ``tokenizer`` loads, training it first where it may (``auto_prepare``).
            None: r50k.

    The seed's ``DatasetLightningWrapper(splits, ...)`` took ready-made splits; under Hydra it
    takes the dataset recipes and builds the splits in ``setup``, after ``prepare_data``. The
    seed's per-epoch reshuffle lives in the sampler's ``set_epoch``.
    """

    def __init__(
        self,
        datasets: Mapping[str, Callable | None],
        seq_len: int,
        batch_size: int = 32,
        num_workers: int = 4,
        stride_ratio: float = 0.5,
        data_dir: str | Path | None = None,
        sampler: Callable[..., PDBSampler] | None = None,
        auto_prepare: bool = True,
        path: str | None = None,
        weights: Mapping[str, float] | None = None,
        tokenizer=None,
        micro_batches: int = 1,
    ):
        super().__init__()
        if not datasets:
            raise WgptError("data.datasets is empty: name at least one dataset")
        self.datasets = dict(datasets)
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.micro_batches = micro_batches
        self.stride_ratio, self.data_dir = stride_ratio, data_dir
        self.sampler = sampler or PDBSampler
        self.auto_prepare, self.path = auto_prepare, path
        if weights is not None and set(weights) != set(self.datasets):
            raise WgptError(f"data.weights names {sorted(weights)}, but the datasets are {sorted(self.datasets)}")
        if weights is not None:
            bad = {
                name: w
                for name, w in weights.items()
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0
            }
            if bad or not any(weights.values()):
                shown = "{" + ",".join(f"{k}:{v}" for k, v in weights.items()) + "}"
                example = "{" + ",".join(f"{k}:1" for k in weights) + "}"
                raise WgptError(
                    f"data.weights={shown} must be numbers of 0 or more, at least one above 0: "
                    f"e.g. data.weights={example}"
                )
        self.weights = [weights[name] for name in self.datasets] if weights is not None else None
        self.splits: dict[str, dict[str, DiskDataset]] = {}
        tokenizer = R50k() if tokenizer is None else tokenizer
        self._tokenizer_spec, self._tokenizer = (tokenizer, None) if hasattr(tokenizer, "load") else (None, tokenizer)

    @property
    def tokenizer(self) -> TokenizerBase:
        """The tokenizer of the bins, loaded on first use; a BPE not trained yet is trained then
        (from its dataset's train split) when ``auto_prepare`` allows, else a WgptError says how."""
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_spec.load(self.datasets, self.data_dir, train=self.auto_prepare)
        return self._tokenizer

    def check_ready(self) -> None:
        """Raise now what ``prepare_data`` and ``setup`` would raise later, before the run starts:
        a dataset that is not prepared and may not be, bins that are damaged or too short for
        ``seq_len``, a local corpus path with no files, or too few documents, to prepare.

        A dataset that may prepare itself (``auto_prepare``) is prepared here, where its every
        error still counts as bad input: a run refused for it leaves no run dir, and no bins that
        it made (``prepare_data`` then finds them ready). Cheap where the data is prepared (it
        reads sidecars and opens bins)."""
        made: list[Path] = []
        try:
            for name, load in self.datasets.items():
                if self._unready(name, load) is not None:
                    check_source(load)
                    ensure_prepared(name, load, self.data_dir, tokenizer=self.tokenizer, made=made)
                self._check_windows(name, load)
        except BaseException:
            discard(made)
            raise

    def _check_windows(self, name: str, load: Callable | None) -> None:
        """Every split of ``name`` intact and at least one window long (``get_splits``' checks),
        with what to do about a split that is too short."""
        infos = {split: BinInfo.read(bin_path(name, split, self.data_dir, self.tokenizer.name)) for split in SPLITS}
        short = {
            split: info.num_tokens
            for split, info in infos.items()
            if info is not None and info.num_tokens <= self.seq_len
        }
        if short:
            split = min(short, key=short.get)  # what suffices for the shortest suffices for all
            raise WgptError(
                f"dataset '{name}' is too small for windows of data.seq_len={self.seq_len} tokens: its {split} split "
                f"holds {short[split]} tokens, a window takes {self.seq_len + 1}: "
                f"{too_small_fix(load, name, split, short[split], self.seq_len + 1)}"
            )
        get_splits(name, self.seq_len, self.stride_ratio, self.data_dir, self.tokenizer)

    def prepare_data(self) -> None:
        for name, load in self.datasets.items():
            if self._unready(name, load) is not None:
                ensure_prepared(name, load, self.data_dir, tokenizer=self.tokenizer)

    def _unready(self, name: str, load: Callable | None) -> str | None:
        """Why ``name`` needs preparing (None if it is ready); a WgptError if it may not be prepared here."""
        reason = unprepared_reason(name, load, self.data_dir, self.tokenizer)
        if reason is not None and not (self.auto_prepare and load is not None):
            raise WgptError(f"dataset '{name}' is not ready ({reason}): prepare it with `{process_command()}`")
        return reason

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {
                name: get_splits(name, self.seq_len, self.stride_ratio, self.data_dir, self.tokenizer)
                for name in self.datasets
            }

    @property
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _on_gpu(self) -> bool:
        """Whether the batches go to a CUDA device: the trainer's, or any GPU when used without one.
        (Pinning memory starts CUDA: a CPU run on a GPU machine must not.)"""
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(
        self, datasets: list[DiskDataset], loader_class: type[WindowLoader] | None = None, **kwargs
    ) -> WindowLoader:
        return (loader_class or WindowLoader)(
            WindowBatches(datasets),
            pin=self._on_gpu(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Each new iterator draws a worker seed from this generator; from torch's global one
            # it would shift dropout's random stream, and a resumed run would train differently.
            generator=torch.Generator(),
            **kwargs,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # A batch of these loaders is one (B, T + 1) int32 tensor of windows (WindowLoader), or a
        # training step's (k, B, T + 1): on the device now, its inputs and targets are views one
        # token apart, in the int64 a loss takes.
        windows = batch.long()
        return windows[..., :-1], windows[..., 1:]

    def train_dataloader(self) -> DataLoader:
        train = [splits["train"] for splits in self.splits.values()]
        sampler = self._train_sampler()
        if self.micro_batches > 1:
            # One batch per optimizer step: Lightning's loop costs ~0.4 ms of host time per batch
            # (bench/host_cost.py), a large share of a small model's step on a GPU.
            sampler = StepBatches(sampler, self.micro_batches)
        return self._loader(
            train,
            ResumableDataLoader,
            batch_sampler=sampler,
            epoch=lambda: self.trainer.current_epoch if self.trainer is not None else sampler.epoch,
            steps_done=self._steps_done,
        )

    def step_windows(self, epoch: int, first: int, count: int) -> dict[str, list[int]]:
        """The windows (indices into each dataset's train split) of this rank's sampler batches
        ``first`` .. ``first + count - 1`` of ``epoch``, by dataset: recomputed, as the order is a
        function of the seed and the epoch (a skipped step's batch, named in train.log)."""
        sampler = self._train_sampler()
        sampler.set_epoch(epoch)
        starts = np.cumsum([0, *(len(splits["train"]) for splits in self.splits.values())])
        windows: dict[str, list[int]] = {}
        for i, batch in enumerate(sampler):
            if i >= first + count:
                break
            for index in batch if i >= first else ():
                d = int(np.searchsorted(starts, index, side="right")) - 1
                windows.setdefault(list(self.splits)[d], []).append(index - int(starts[d]))
        return windows

    def _train_sampler(self):
        """This rank's batch sampler over the train splits (``sampler``, PDBSampler by default)."""
        train = [splits["train"] for splits in self.splits.values()]
        world_size, rank = self._world
        extra = {"weights": self.weights} if self.weights is not None else {}
        return self.sampler(datasets=train, batch_size=self.batch_size, world_size=world_size, rank=rank, **extra)

    def _steps_done(self) -> int:
        """Training batches of the current epoch already taken by the loop (not merely prefetched)."""
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        world_size, rank = self._world
        loaders = []
        for splits in self.splits.values():
            dataset = splits[split]
            # Sharded in order under DDP; Lightning's own sampler injection is off (our batch sampler).
            # DistributedSampler pads the ranks to equal shares by repeating the first windows: a
            # rank without a batch, or with one fewer, would leave the others waiting in a
            # collective (FSDP gathers weights in every forward; the epoch end all-reduces). The
            # module counts only each rank's own windows (own_rows), so every window counts once.
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
            loaders.append(self._loader([dataset], batch_size=self.batch_size, sampler=sampler))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")


def own_rows(loader) -> int | None:
    """How many of an evaluation loader's windows are this rank's own: DistributedSampler (no
    shuffle) pads every rank to an equal share with the first windows again, after each rank's own,
    so the rows past this count are another rank's windows. None: every row counts (one process,
    or a sampler of another kind)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle and not sampler.drop_last:
        return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
    return None


class WindowBatches(Dataset):
    """``datasets`` (DiskDatasets of one ``seq_len``) end to end, read a batch at a time: torch's
    DataLoader hands ``__getitems__`` a whole batch's indices, and it returns their windows as one
    (batch, seq_len + 1) int32 array (``DiskDataset.windows``)."""

    def __init__(self, datasets: Sequence[DiskDataset]):
        self.datasets = list(datasets)
        self.starts = np.cumsum([0, *(len(d) for d in self.datasets)]).tolist()  # the index each begins at

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitems__(self, indices: Sequence[int] | Sequence[Sequence[int]]) -> np.ndarray:
        if indices and isinstance(indices[0], (list, tuple)):  # a step's micro-batches (StepBatches)
            sizes = {len(batch) for batch in indices}
            if len(sizes) > 1:
                raise WgptError(f"the sampler's batches of one step differ in size ({sorted(sizes)}): stack equal ones")
            flat = self.__getitems__([i for batch in indices for i in batch])
            return flat.reshape(len(indices), -1, flat.shape[-1])  # (k, B, T + 1)
        # A PDBSampler batch comes from one dataset; a sequential one may straddle two.
        parts, begin = [], 0
        while begin < len(indices):
            d = bisect.bisect_right(self.starts, indices[begin]) - 1
            end = begin + 1
            while end < len(indices) and self.starts[d] <= indices[end] < self.starts[d + 1]:
                end += 1
            parts.append(self.datasets[d].windows([i - self.starts[d] for i in indices[begin:end]]))
            begin = end
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.__getitems__([idx])[0]


def as_array(batch: np.ndarray) -> np.ndarray:
    """The DataLoader's collate function: ``__getitems__`` made the batch already."""
    return batch


class WindowLoader(DataLoader):
    """Yields each batch as one (batch, seq_len + 1) int32 tensor of token windows: inputs are
    ``[:, :-1]``, targets ``[:, 1:]`` (``DatasetLightningWrapper.on_after_batch_transfer`` splits
    them on the device, after one copy of a quarter of two int64 tensors' bytes).

    Workers send numpy arrays, which cross their pipe as bytes: tensors would each pass a
    shared-memory file descriptor, ~3x the main process's time per batch (bench/host_cost.py).
    ``pin``: page-locked, so that the copy to a GPU does not wait for the GPU's queued work."""

    def __init__(self, dataset: WindowBatches, *args, pin: bool = False, **kwargs):
        super().__init__(dataset, *args, collate_fn=as_array, **kwargs)
        self.pin = pin

    def __iter__(self):
        for batch in super().__iter__():
            windows = torch.from_numpy(batch)
            yield windows.pin_memory() if self.pin else windows


class ResumableDataLoader(WindowLoader):
    """A DataLoader that keeps its batch sampler in step with the trainer and in its checkpoints.

    Each new iterator (one per epoch) first sets the sampler's epoch to the trainer's:
    Lightning calls ``set_epoch`` on a DataLoader's sampler but never on its batch sampler.
    Lightning saves ``state_dict()`` of a train loader that has one and passes it back to
    ``load_state_dict`` on resume; a sampler inside a plain DataLoader is never asked. The
    position is the count of batches the training loop has processed, not the count drawn
    from the sampler, which runs ahead by the workers' and Lightning's prefetching.
    """

    def __init__(self, *args, epoch: Callable[[], int], steps_done: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch, self._steps_done = epoch, steps_done
        self._restored = False
        self._epoch_offset = 0  # sampler epoch - trainer epoch, nonzero only after some restores

    def __iter__(self):
        # The first iterator after a restore continues from the saved position. (Lightning
        # creates it before its own epoch counter has caught up with a checkpoint saved on an
        # epoch's last batch, so the trainer's epoch cannot be trusted at that moment.)
        if not self._restored:
            self.batch_sampler.set_epoch(self._epoch() + self._epoch_offset)
        self._restored = False
        return super().__iter__()

    def state_dict(self) -> dict:
        return {**self.batch_sampler.state_dict(self._steps_done()), "trainer_epoch": self._epoch()}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)
        self._restored = True
        # A checkpoint written when training ended early counts, for Lightning, as a finished
        # epoch: the resumed trainer is an epoch ahead of the data, which finishes its epoch first.
        self._epoch_offset = min(0, self.batch_sampler.epoch - state.get("trainer_epoch", self.batch_sampler.epoch))
