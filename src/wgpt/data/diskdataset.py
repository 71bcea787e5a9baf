"""Token bins on disk: ``generate_bin`` writes them, ``DiskDataset`` reads windows from them.

A dataset ``<name>`` lives in ``<data_dir>/<name>/tokenized/<split>.bin`` (raw token ids, no
header) beside ``<split>.json`` (its sidecar: dtype, token count, tokenizer identity, ...);
bins of a tokenizer other than the default r50k go to ``tokenized-<tokenizer name>/`` instead.
The sidecar is written last, so a bin without one is unfinished and is never read.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from wgpt.tokenizers.base import TokenizerBase
from wgpt.tokenizers.r50k import R50K, tokenizer_fingerprint
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text


def default_data_dir() -> Path:
    """``$WGPT_DATA_DIR``, else ``$WGPT_ROOT/data`` (train.py sets it), else ``~/.cache/wgpt/data``.

    Runs launched by train.py pass ``paths.data_dir`` explicitly; this is for library use.
    """
    if "WGPT_DATA_DIR" in os.environ:
        return Path(os.environ["WGPT_DATA_DIR"])
    if "WGPT_ROOT" in os.environ:
        return Path(os.environ["WGPT_ROOT"]) / "data"
    return Path.home() / ".cache" / "wgpt" / "data"


def bin_path(dataset_name: str, split: str, data_dir: str | Path | None = None, tokenizer: str = R50K) -> Path:
    """Where the bin of ``split`` made by the tokenizer named ``tokenizer`` lives."""
    folder = "tokenized" if tokenizer == R50K else f"tokenized-{tokenizer}"
    return Path(data_dir or default_data_dir()) / dataset_name / folder / f"{split}.bin"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


@dataclass
class BinInfo:
    """The sidecar of a bin: enough to refuse a truncated or foreign bin before training."""

    dataset: str
    split: str
    dtype: str
    num_tokens: int
    num_documents: int
    skipped_documents: int
    tokenizer: str
    vocab_size: int
    source: str = ""
    max_docs: int | None = None  # set when the split was cut short on purpose
    max_tokens: int | None = None

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_suffix(".json")

    @classmethod
    def read(cls, path: Path) -> "BinInfo | None":
        sidecar = cls.sidecar(path)
        if not (path.exists() and sidecar.exists()):
            return None
        try:
            return cls(**json.loads(sidecar.read_text()))
        except (ValueError, TypeError) as e:
            raise WgptError(f"{sidecar} is damaged ({e}): delete {path.parent} and prepare again") from None

    def write(self, path: Path) -> None:
        atomic_write_text(self.sidecar(path), json.dumps(asdict(self), indent=2) + "\n")


def generate_bin(
    dataset_name: str,
    split: str,
    data: Iterable,
    tokenizer: TokenizerBase,
    data_dir: str | Path | None = None,
    batch_size: int = 512,
    source: str = "",
    max_docs: int | None = None,
    max_tokens: int | None = None,
) -> BinInfo:
    """Tokenize ``data`` (a Hugging Face dataset with a ``text`` column, streaming or not, or any
    iterable of ``{"text": ...}`` records) into ``<data_dir>/<dataset_name>/tokenized/<split>.bin``.

    Batches of documents are tokenized on all usable cores while the next batch is read, each document
    followed by ``<|end_of_text|>``, and appended to a temporary file: memory holds a few
    batches, whatever the corpus size. The bin is renamed into place only once complete, then
    its sidecar, so an interrupted run leaves nothing that looks finished. Empty or non-text
    records are skipped and counted. ``max_docs``/``max_tokens`` cut the split short.
    """
    path = bin_path(dataset_name, split, data_dir, tokenizer.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(len(tokenizer))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    num_tokens = num_documents = skipped = 0
    tmp = path.with_name(path.name + ".tmp")

    with open(tmp, "wb") as out, ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()  # (future token array, documents in it), in corpus order
        submitted = 0

        def write_oldest() -> None:
            nonlocal num_tokens, num_documents
            future, docs = pending.popleft()
            chunk = future.result().astype(dtype, copy=False)
            if max_tokens is not None and chunk.size > max_tokens - num_tokens:
                chunk = chunk[: max(0, max_tokens - num_tokens)]
                # Documents wholly or partly kept: those whose end-of-text made it, plus a cut one.
                docs = int(np.count_nonzero(chunk == tokenizer.eos_token_id)) + int(
                    chunk.size > 0 and chunk[-1] != tokenizer.eos_token_id
                )
            if chunk.size:
                out.write(chunk.tobytes())
                num_tokens += chunk.size
                num_documents += docs

        for texts in text_batches(data, batch_size):
            good = [t for t in texts if isinstance(t, str) and t.strip()]
            skipped += len(texts) - len(good)
            if max_docs is not None:
                good = good[: max_docs - submitted]
            if good:
                pending.append((pool.submit(tokenizer.encode_documents, good), len(good)))  # tokenizers release the GIL
                submitted += len(good)
            while len(pending) > threads + 1 or (pending and pending[0][0].done()):
                write_oldest()
            if (max_docs is not None and submitted >= max_docs) or (
                max_tokens is not None and num_tokens >= max_tokens
            ):
                break
        while pending:
            write_oldest()
        out.flush()
        os.fsync(out.fileno())
    BinInfo.sidecar(path).unlink(missing_ok=True)  # the old sidecar must never describe the new bin
    os.replace(tmp, path)
    info = BinInfo(
        dataset=dataset_name,
        split=split,
        dtype=dtype.name,
        num_tokens=num_tokens,
        num_documents=num_documents,
        skipped_documents=skipped,
        tokenizer=tokenizer.fingerprint,
        vocab_size=len(tokenizer),
        source=source,
        max_docs=max_docs,
        max_tokens=max_tokens,
    )
    info.write(path)
    return info


def text_batches(data: Iterable, batch_size: int) -> Iterator[list]:
    """Lists of ``text`` values: column batches from a Hugging Face dataset, else grouped records."""
    if hasattr(data, "iter") and hasattr(data, "column_names"):
        for batch in data.iter(batch_size=batch_size):
            yield batch["text"]
        return
    texts: list = []
    for record in data:
        texts.append(record.get("text") if isinstance(record, dict) else None)
        if len(texts) == batch_size:
            yield texts
            texts = []
    if texts:
        yield texts


def check_bin(path: Path, tokenizer: str) -> BinInfo:
    """The sidecar of a finished, intact bin made by ``tokenizer``; a WgptError otherwise."""
    info = BinInfo.read(path)
    if info is None:
        raise WgptError(f"no finished bin at {path}: prepare the dataset '{path.parent.parent.name}' first")
    if info.tokenizer != tokenizer:
        raise WgptError(
            f"{path} was tokenized with {info.tokenizer}, not {tokenizer}: delete {path.parent} and prepare again"
        )
    size, expected = path.stat().st_size, info.num_tokens * np.dtype(info.dtype).itemsize
    if size != expected:
        raise WgptError(
            f"{path} is {size} bytes but its sidecar says {expected} (truncated or overwritten): "
            f"delete {path.parent} and prepare again"
        )
    return info


class DiskDataset(torch.utils.data.Dataset):
    """Sliding windows of ``seq_len + 1`` tokens over a bin on disk.

    Item ``i`` is ``(input, target)``: the window starting at token ``order[i] * stride``,
    with ``stride = seq_len * stride_ratio``; a last window shorter than that is dropped.
    Opening is O(1) in the bin's size and nothing of it is loaded: each window is one
    positioned read (``os.preadv``), and each DataLoader worker opens the file itself.
    ``tokens`` maps the whole bin with ``np.memmap`` for inspection; training does not use it,
    because a mapping keeps every page it ever touched resident in the process, so random
    windows over a large bin would grow its memory towards the bin's size.
    """

    def __init__(
        self,
        dataset_name: str,
        split: str,
        seq_len: int,
        stride_ratio: float = 0.5,
        data_dir: str | Path | None = None,
        tokenizer: TokenizerBase | None = None,
    ):
        if not 0 < stride_ratio <= 1:
            raise WgptError(f"stride_ratio={stride_ratio} must be in (0, 1]: set data.stride_ratio")
        self.dataset_name, self.split, self.seq_len = dataset_name, split, seq_len
        self.stride = max(1, int(seq_len * stride_ratio))
        # Only the tokenizer's name and fingerprint are kept: each DataLoader worker copies self.
        name, fingerprint = (
            (tokenizer.name, tokenizer.fingerprint) if tokenizer is not None else (R50K, tokenizer_fingerprint())
        )
        self.path = bin_path(dataset_name, split, data_dir, name)
        self.info = check_bin(self.path, fingerprint)
        if self.info.num_tokens < seq_len + 1:
            raise WgptError(
                f"{self.path} holds {self.info.num_tokens} tokens, fewer than one window of seq_len+1="
                f"{seq_len + 1}: lower data.seq_len or add data to the '{split}' split of '{dataset_name}'"
            )
        self.dtype = np.dtype(self.info.dtype)
        self.num_windows = (self.info.num_tokens - seq_len - 1) // self.stride + 1
        # The seed builds an index array here; file order needs none, so one exists only once
        # shuffled (a compact int32 permutation unless there are 2**31 windows or more).
        self.order: np.ndarray | None = None
        self._window_bytes = (seq_len + 1) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.num_windows

    def shuffle_indices(self, seed: int | None = None) -> None:
        """Visit windows in a random order (reproducible for a given seed)."""
        index_dtype = np.int32 if self.num_windows < 2**31 else np.int64
        self.order = np.random.default_rng(seed).permutation(self.num_windows).astype(index_dtype, copy=False)

    @property
    def tokens(self) -> np.memmap:
        """The whole bin, memory-mapped read-only."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.info.num_tokens,))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a worker process opens its own descriptor

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = np.empty(self.seq_len + 1, dtype=self.dtype)
        self._read(idx, window)
        chunk = torch.from_numpy(window.astype(np.int64))
        return chunk[:-1], chunk[1:]

    def windows(self, indices: Sequence[int]) -> np.ndarray:
        """Windows ``indices`` as one (len(indices), seq_len + 1) int32 array: each row a sample's
        inputs (``[:-1]``) and targets (``[1:]``). A loader worker sends a batch this way: a numpy
        array crosses the worker's pipe as bytes, where each tensor would pass a shared-memory file
        descriptor (bench/host_cost.py: docs/performance.md, "Host cost per micro-batch")."""
        rows = np.empty((len(indices), self.seq_len + 1), dtype=self.dtype)
        for idx, row in zip(indices, rows):
            self._read(idx, row)
        return rows.astype(np.int32)  # token ids < vocab size < 2**31

    def _read(self, idx: int, out: np.ndarray) -> None:
        """Window ``idx`` into ``out`` (seq_len + 1 tokens of the bin's dtype): one positioned read."""
        if not -self.num_windows <= idx < self.num_windows:
            raise IndexError(f"window {idx} out of range for {self.num_windows} windows")
        window = int(self.order[idx] if self.order is not None else idx % self.num_windows)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        if os.preadv(self._fd, [out], window * self.stride * self.dtype.itemsize) != self._window_bytes:
            raise WgptError(f"{self.path} is shorter than its sidecar says (changed on disk?): prepare it again")
