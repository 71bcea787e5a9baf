"""Reading checkpoints safely: tensors and plain containers only, never code; models rebuilt from them."""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from wgpt.errors import WgptError

MODEL_PACKAGE = "wgpt.models."  # a checkpoint may only name a model class from here


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: a checkpoint holding anything but tensors and plain
    containers (a pickled object, i.e. code that would run on loading) is refused, unrun."""
    path = Path(path)
    if not path.is_file():
        raise WgptError(f"ckpt_path={path} does not exist: give the path of a .ckpt file (runs keep them in <run dir>/checkpoints/)")
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else would fail obscurely
        raise WgptError(f"ckpt_path={path} is not a checkpoint (not the zip archive torch.save writes): was it cut short, or is it another file?")
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
            raise WgptError(f"{source} has no weight {name}, which this model needs: it was made for another architecture")
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


def newest_recent(runs_dir: str | Path, exclude: str | Path | None = None) -> Path | None:
    """The most recently written ``*/checkpoints/recent.ckpt`` in ``runs_dir``, skipping the run
    dir ``exclude`` (the run that asks)."""
    candidates = [
        p for p in Path(runs_dir).glob("*/checkpoints/recent.ckpt")
        if exclude is None or p.parent.parent.resolve() != Path(exclude).resolve()
    ]  # fmt: skip
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)
