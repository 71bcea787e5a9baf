"""Where a model comes from, decided in one place: a run dir, a ``.ckpt`` file, a ``.safetensors``
file or a Hugging Face directory, each loaded as a model and the tokenizer it was trained with."""

from __future__ import annotations

import json
from pathlib import Path

from wgpt.interop.checkpoint import WEIGHTS_SUFFIX, LoadedModel, load_checkpoint, load_weights, model_from_checkpoint
from wgpt.interop.hf.reading import model_from_hf_dir, read_hf_dir
from wgpt.interop.hf.tokenizer import tokenizer_from_hf_dir
from wgpt.tokenizers import tokenizer_from_record
from wgpt.util.errors import WgptError


def find_source(path: str | Path, key: str = "ckpt_path") -> tuple[str, Path]:
    """(kind, path) of a model source: ``hf`` (a Hugging Face model directory), ``weights`` (a
    .safetensors file) or ``checkpoint`` (a .ckpt file); a run dir stands for its checkpoint
    (``run_checkpoint``). One-line WgptErrors for a path that is none of these."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise WgptError(
            f"{key}={path} does not exist: give the path of a .ckpt file (runs keep them in <run dir>/checkpoints/)"
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf", path
        if not (path / "checkpoints").is_dir():
            raise _not_a_model_dir(path, key)
        path = run_checkpoint(path, key)
    return ("weights" if path.suffix == WEIGHTS_SUFFIX else "checkpoint"), path


def load_model_source(path: str | Path, key: str = "ckpt_path") -> LoadedModel:
    """The model and tokenizer at ``path``: a training checkpoint (.ckpt), a weights file
    (.safetensors), a Hugging Face model directory, or a run dir (its newest best checkpoint,
    else its recent one). One-line WgptErrors for anything else."""
    kind, path = find_source(path, key)
    if kind == "hf":
        tokenizer = tokenizer_from_hf_dir(read_hf_dir(path, key))
        model, d = model_from_hf_dir(path, tokenizer, key)
        return LoadedModel(model, tokenizer, path, "hf", (d.wgpt or {}).get("global_step"), None)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if kind == "weights":
        model, tokenizer, step = load_weights(path, key)
        return LoadedModel(model, tokenizer, path, "weights", step, run_dir)
    source = f"{key}={path}"
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, source=source)
    tokenizer = tokenizer_from_record(checkpoint.get("tokenizer"), source=source)  # r50k for older checkpoints
    return LoadedModel(model, tokenizer, path, "checkpoint", checkpoint.get("global_step"), run_dir)


def source_tokenizer(path: str | Path, key: str = "ckpt_path"):
    """The tokenizer of the model at ``path`` (any source ``load_model_source`` reads), without
    reading its weights."""
    kind, path = find_source(path, key)
    if kind == "hf":
        return tokenizer_from_hf_dir(read_hf_dir(path, key))
    source = f"{key}={path}"
    if kind == "weights":
        try:
            record = json.loads(_weights_metadata(path, source).get("wgpt_tokenizer", "null"))
        except ValueError as e:
            raise WgptError(f"{source} is not a readable wgpt weights file ({e})") from None
    else:
        record = load_checkpoint(path, mmap=True).get("tokenizer")  # reads no weights
    return tokenizer_from_record(record, source=source)


def _weights_metadata(path: Path, source: str) -> dict[str, str]:
    """The metadata wgpt writes into a .safetensors file (model class and config, tokenizer)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WgptError(f"{source} is not a readable wgpt weights file ({e})") from None


def _not_a_model_dir(path: Path, key: str) -> WgptError:
    return WgptError(
        f"{key}={path} is a directory but neither a run dir (checkpoints/) "
        "nor a Hugging Face model directory (config.json): "
        "give one of those, a .ckpt or a .safetensors file"
    )


def run_checkpoint(run_dir: str | Path, key: str = "ckpt_path") -> Path:
    """The checkpoint that stands for a run: its newest ``best-*.ckpt``, else ``recent.ckpt``, else
    a ``best-*.safetensors``."""
    checkpoints = Path(run_dir) / "checkpoints"
    by_time = lambda pattern: sorted(checkpoints.glob(pattern), key=lambda p: p.stat().st_mtime)  # noqa: E731
    candidates = [*by_time("best-*.ckpt")[-1:], checkpoints / "recent.ckpt", *by_time(f"best-*{WEIGHTS_SUFFIX}")[-1:]]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise WgptError(
            f"{key}={run_dir} is a run dir without checkpoints (checkpoints/ holds no best-*.ckpt or recent.ckpt): "
            "it stopped before its first save"
        )
    return found


def peek_model(path: str | Path, key: str = "ckpt_path") -> tuple[str, dict] | None:
    """(model class, model config) of the checkpoint or weights file ``load_model_source`` would
    read, without reading its weights; None for a Hugging Face directory or what is not found
    (``load_model_source`` says what is wrong with it)."""
    try:
        kind, path = find_source(path, key)
        if kind == "weights":
            metadata = _weights_metadata(path, f"{key}={path}")
            return metadata.get("wgpt_model_class", ""), json.loads(metadata["wgpt_model_config"])
    except (WgptError, KeyError, ValueError):
        return None
    if kind == "hf":
        return None
    checkpoint = load_checkpoint(path, mmap=True)
    config = checkpoint.get("model_config")
    model_class = str(checkpoint.get("model_class") or "wgpt.models.transformer.Transformer")
    return model_class, config if isinstance(config, dict) else {}
