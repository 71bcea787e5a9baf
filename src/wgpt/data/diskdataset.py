"""Token bins on disk: ``generate_bin`` writes them, ``DiskDataset`` reads windows from them.

A dataset ``<name>`` lives in ``<data_dir>/<name>/tokenized/<split>.bin`` (raw token ids, no
header) beside ``<split>.json`` (its sidecar: dtype, token count, tokenizer identity, ...).
The sidecar is written last, so a bin without one is unfinished and is never read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from wgpt.data.tokenizer import Tokenizer, tokenizer_fingerprint
from wgpt.errors import WgptError


def default_data_dir() -> Path:
    """``$WGPT_DATA_DIR``, else ``$WGPT_ROOT/data`` (train.py sets it), else ``~/.cache/wgpt/data``.

    Runs launched by train.py pass ``paths.data_dir`` explicitly; this is for library use.
    """
    if "WGPT_DATA_DIR" in os.environ:
        return Path(os.environ["WGPT_DATA_DIR"])
    if "WGPT_ROOT" in os.environ:
        return Path(os.environ["WGPT_ROOT"]) / "data"
    return Path.home() / ".cache" / "wgpt" / "data"


def bin_path(dataset_name: str, split: str, data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / dataset_name / "tokenized" / f"{split}.bin"


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

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_suffix(".json")

    @classmethod
    def read(cls, path: Path) -> "BinInfo | None":
        sidecar = cls.sidecar(path)
        if not (path.exists() and sidecar.exists()):
            return None
        return cls(**json.loads(sidecar.read_text()))

    def write(self, path: Path) -> None:
        _atomic_write_text(self.sidecar(path), json.dumps(asdict(self), indent=2) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate_bin(
    dataset_name: str,
    split: str,
    data: Iterable[dict[str, Any]],
    tokenizer: Tokenizer,
    data_dir: str | Path | None = None,
    text_field: str = "text",
    batch_size: int = 1024,
    source: str = "",
) -> BinInfo:
    """Tokenize ``data`` (a Hugging Face dataset, streaming or not) into ``<split>.bin``.

    Documents are tokenized a batch at a time on all cores and appended to a temporary file,
    each followed by ``<|end_of_text|>``; memory stays bounded by one batch. The bin is renamed
    into place only once complete, and its sidecar after it, so an interrupted run leaves
    nothing that looks finished. Empty or non-text records are skipped and counted.
    """
    path = bin_path(dataset_name, split, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(len(tokenizer))
    threads = os.cpu_count() or 1
    num_tokens = num_documents = skipped = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        for batch in _batches(data, batch_size):
            texts = [doc.get(text_field) if isinstance(doc, dict) else None for doc in batch]
            good = [t for t in texts if isinstance(t, str) and t.strip()]
            skipped += len(texts) - len(good)
            if not good:
                continue
            encoded = tokenizer.encode(good, eos=True, num_threads=threads)
            chunk = np.concatenate([np.asarray(ids, dtype=dtype) for ids in encoded])
            out.write(chunk.tobytes())
            num_tokens += chunk.size
            num_documents += len(good)
        out.flush()
        os.fsync(out.fileno())
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
    )
    info.write(path)
    return info


def _batches(data: Iterable[dict[str, Any]], batch_size: int) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in data:
        batch.append(doc)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    """Sliding windows of ``seq_len + 1`` tokens over a memory-mapped bin.

    Item ``i`` is ``(input, target)``: the window starting at token ``order[i] * stride``,
    with ``stride = seq_len * stride_ratio``; a last window shorter than that is dropped.
    Opening is O(1) in the bin's size; each DataLoader worker maps the file itself.
    """

    def __init__(
        self,
        dataset_name: str,
        split: str,
        seq_len: int,
        stride_ratio: float = 0.5,
        data_dir: str | Path | None = None,
        tokenizer: str | None = None,
    ):
        if not 0 < stride_ratio <= 1:
            raise WgptError(f"stride_ratio={stride_ratio} must be in (0, 1]: set data.stride_ratio")
        self.dataset_name, self.split, self.seq_len = dataset_name, split, seq_len
        self.stride = max(1, int(seq_len * stride_ratio))
        self.path = bin_path(dataset_name, split, data_dir)
        self.info = check_bin(self.path, tokenizer or tokenizer_fingerprint())
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
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return self.num_windows

    def shuffle_indices(self, seed: int | None = None) -> None:
        """Visit windows in a random order (reproducible for a given seed)."""
        index_dtype = np.int32 if self.num_windows < 2**31 else np.int64
        self.order = np.random.default_rng(seed).permutation(self.num_windows).astype(index_dtype, copy=False)

    @property
    def tokens(self) -> np.memmap:
        if self._tokens is None:  # opened lazily so that every worker process maps its own
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.info.num_tokens,))
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.num_windows <= idx < self.num_windows:
            raise IndexError(f"window {idx} out of range for {self.num_windows} windows")
        window = int(self.order[idx] if self.order is not None else idx % self.num_windows)
        start = window * self.stride
        chunk = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]
