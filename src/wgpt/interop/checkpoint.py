"""Reading checkpoints safely: tensors and plain containers only, never code; models rebuilt from them.

This module reads and writes the first two of the three kinds of file that hold a model wgpt
can rebuild with its tokenizer: training checkpoints (``.ckpt``, written by ``SafeCheckpointIO``)
and the weights-only ``.safetensors`` a run writes beside its best checkpoint (``save_weights``).
Hugging Face model directories are ``wgpt.interop.hf.reading``'s; ``wgpt.interop.sources`` tells
the kinds apart (a run dir stands for its best checkpoint).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wgpt.tokenizers import tokenizer_from_record
from wgpt.util.errors import WgptError
from wgpt.util.files import keep_copy, written_atomically

log = logging.getLogger("wgpt")

MODEL_PACKAGE = "wgpt.models."  # a checkpoint may only name a model class from here


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: a checkpoint holding anything but tensors and plain
    containers (a pickled object, i.e. code that would run on loading) is refused, unrun."""
    path = Path(path)
    if path.is_dir():
        hint = "; to start a new run from its weights, give init_from=<dir>" if (path / "config.json").is_file() else ""
        raise WgptError(
            f"ckpt_path={path} is a directory: "
            f"give the path of a .ckpt file (runs keep them in <run dir>/checkpoints/){hint}"
        )
    if not path.is_file():
        raise WgptError(
            f"ckpt_path={path} does not exist: give the path of a .ckpt file (runs keep them in <run dir>/checkpoints/)"
        )
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else would fail obscurely
        raise WgptError(
            f"ckpt_path={path} is not a checkpoint (not the zip archive torch.save writes): "
            "was it cut short, or is it another file?"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or ["unsupported pickled object"])[0]
        raise WgptError(
            f"ckpt_path={path} holds more than tensors and plain containers, so loading it could run code: "
            f"refused ({first.rstrip('.')}). Only load checkpoints you trust and made with wgpt"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WgptError(f"ckpt_path={path} is not a readable checkpoint ({first}): was it cut short?") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WgptError(f"ckpt_path={path} is not a wgpt training checkpoint (it has no state_dict)")
    return checkpoint


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own weights out of a Lightning checkpoint (keys without the ``model.`` prefix)."""
    return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """A one-line WgptError naming the first weight that the model and ``state`` disagree on."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise WgptError(
                f"{source} has no weight {name}, which this model needs: it was made for another architecture"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise WgptError(
                f"{source} does not fit this model: {name} is {list(state[name].shape)} there and "
                f"{list(tensor.shape)} here; use the model config it was trained with"
            )
    extra = next((name for name in state if name not in expected), None)
    if extra is not None:
        raise WgptError(f"{source} has a weight {extra} that this model lacks: it was made for another architecture")


def model_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> nn.Module:
    """The model a training checkpoint was made for, with its weights, in eval mode."""
    target = checkpoint.get("model_class")
    if target is None and isinstance(checkpoint.get("model_config"), dict):  # made before wgpt stored it
        target = "wgpt.models.llama.Llama" if "n_kv_heads" in checkpoint["model_config"] else "wgpt.models.gpt.GPT"
    if not isinstance(target, str) or not target.startswith(MODEL_PACKAGE):
        raise WgptError(f"{source} does not name a model class from {MODEL_PACKAGE}* (model_class={target!r})")
    module_name, _, class_name = target.rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class(**checkpoint["model_config"])
    state = model_state(checkpoint)
    check_fits(model, state, source)
    model.load_state_dict(state)
    return model.eval()


# Weights-only files: what a run keeps of its best checkpoint for use elsewhere.

WEIGHTS_SUFFIX = ".safetensors"


def weights_path(ckpt_path: str | Path) -> Path:
    """Where the weights of a checkpoint go: beside it, ``best-<start>.ckpt`` -> ``best-<start>.safetensors``."""
    return Path(ckpt_path).with_suffix(WEIGHTS_SUFFIX)


def save_weights(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """The model weights of a training checkpoint as safetensors (temp-then-rename), with what
    rebuilds the model as metadata strings: ``wgpt_model_class``, ``wgpt_model_config`` and
    ``wgpt_tokenizer`` (JSON), ``wgpt_global_step``. A tensor that several names share (tied
    embeddings) is stored once, under its first name; ``wgpt_aliases`` maps the others to it."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model_state(checkpoint).items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if key in seen:  # safetensors refuses shared memory: one copy, the rest by name
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.contiguous()
    metadata = {
        "format": "pt",  # what transformers' and safetensors' readers expect of PyTorch tensors
        "wgpt_model_class": str(checkpoint.get("model_class")),
        "wgpt_model_config": json.dumps(checkpoint.get("model_config")),
        "wgpt_tokenizer": json.dumps(checkpoint.get("tokenizer")),
        "wgpt_global_step": str(checkpoint.get("global_step")),
        "wgpt_aliases": json.dumps(aliases),
    }
    with written_atomically(path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        readable_as_usual(tmp)
    return path


def readable_as_usual(path: Path) -> None:
    """The permissions the umask gives new files: safetensors writes its files owner-only (0600),
    unlike the checkpoints beside them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_weights_beside(ckpt_path: str | Path) -> Path:
    """``save_weights`` of the checkpoint file at ``ckpt_path``, beside it. Read from the file (not
    from live parameters, which FSDP shards across ranks), memory-mapped: its optimizer state is
    never read."""
    return save_weights(load_checkpoint(ckpt_path, mmap=True), weights_path(ckpt_path))


def load_weights(path: str | Path, key: str = "ckpt_path"):
    """(model in eval mode, tokenizer, global step) of a ``save_weights`` file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path, source = Path(path), f"{key}={path}"
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise WgptError(f"{source} is not a readable safetensors file ({e}): was it cut short?") from None
    if "wgpt_model_config" not in metadata:
        raise WgptError(
            f"{source} is not a wgpt weights file (no wgpt_model_config metadata): "
            "give a run's best-<start>.safetensors, a .ckpt or a Hugging Face directory"
        )
    try:
        config = json.loads(metadata["wgpt_model_config"])
        record = json.loads(metadata.get("wgpt_tokenizer", "null"))
        aliases = json.loads(metadata.get("wgpt_aliases", "{}"))
    except ValueError as e:
        raise WgptError(f"{source}: its wgpt metadata is damaged ({e})") from None
    for alias, name in aliases.items():
        state[alias] = state[name]
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "model_class": metadata.get("wgpt_model_class"),
        "model_config": config,
    }
    model = model_from_checkpoint(checkpoint, source=source)
    tokenizer = tokenizer_from_record(record, source=source)
    step = metadata.get("wgpt_global_step")
    return model, tokenizer, int(step) if step and step.isdigit() else None


# Any of the above, by path.


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    tokenizer: Any  # a wgpt tokenizer (TokenizerBase)
    path: Path  # the file or directory read
    kind: str  # "checkpoint", "weights" or "hf"
    global_step: int | None
    run_dir: Path | None  # the run that made it (its .hydra/config.yaml), when there is one


def weights_finite(state_dict: Mapping[str, Any]) -> bool:
    """Whether every floating-point tensor of ``state_dict`` is free of NaN and inf (a host read per device)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in state_dict.values():
        if torch.is_tensor(t) and t.is_floating_point():
            by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it into place, so a kill mid-save
    never leaves a torn ``recent.ckpt`` (the previous one stays readable); reads with
    ``weights_only=True``, so a checkpoint can never run code. Weights with a NaN or inf are
    never written: the file already there stays."""

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")

    def __init__(self):
        super().__init__()
        # Files whose replaced version stays as <name>-previous.ckpt (RecentCheckpoint's keep_previous),
        # and the step of each one's latest write here.
        self.keep_previous: set[Path] = set()
        self._written_steps: dict[Path, Any] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> bool:
        """Writes ``checkpoint`` to ``path``; returns whether it did (not for non-finite weights)."""
        path, step = Path(path), checkpoint.get("global_step")
        if not weights_finite(checkpoint.get("state_dict", {})):  # one host read per save
            log.error("step %s: the weights hold NaN or inf: %s not written (the one there is kept)", step, path)
            return False
        # The file replaced stays beside it (a hard link), unless it is of this very step (a second
        # save at the end): a run stopped by the guard keeps two states from before its trouble.
        if path.resolve() in self.keep_previous and path.is_file() and self._written_steps.get(path) != step:
            keep_copy(path, path.with_name(f"{path.stem}-previous{path.suffix}"))
        self._written_steps[path] = step
        # a power cut keeps one whole file too (durable: fsynced before and after the rename)
        with written_atomically(path, durable=True) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        return True
