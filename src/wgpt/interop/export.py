"""``export.py``: any model source (a run's checkpoint, a ``.safetensors``) written as a Hugging
Face directory that ``transformers`` loads (GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM): weights,
config.json, generation_config.json and the tokenizer files, replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wgpt.interop.checkpoint import readable_as_usual
from wgpt.interop.hf.config import ARCHITECTURES, WEIGHTS_FILE, WGPT_FILE, architecture, generation_config, hf_config
from wgpt.interop.hf.tokenizer import tokenizer_files
from wgpt.interop.hf.weights import to_hf
from wgpt.interop.sources import load_model_source, peek_model
from wgpt.util.errors import WgptError
from wgpt.util.files import replaced_atomically


def export(
    source: str | Path, out: str | Path, overwrite: bool = False, key: str = "ckpt_path", dtype: str | None = None
) -> Path:
    """export.py: the model at ``source`` (a .ckpt, a .safetensors beside it, a run dir, or an
    export) written to the directory ``out`` for transformers, temp-then-rename; its floating-point
    weights cast to ``dtype`` ("bfloat16", "float16", "float32"; None: as stored).

    ``out`` may be missing, empty, or a previous wgpt export (it has wgpt.json), which is
    replaced; anything else only with ``overwrite=True``, and never a directory that holds the
    source or the current directory."""
    from safetensors.torch import save_file

    out = Path(out).expanduser().resolve()
    source_path = Path(source).expanduser().resolve()
    _check_out(out, source_path, overwrite)  # before the (slow) load
    peeked = peek_model(source_path, key)
    if peeked is not None and {"pos", "norm"} <= set(peeked[1]):
        architecture(peeked[1], peeked[0])  # a knob without an equivalent: refused before the weights are read
    loaded = load_model_source(source_path, key=key)
    model_class = f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}"
    config = dict(loaded.model.config)
    family = architecture(config, model_class)
    tokenizer = loaded.tokenizer
    weights = to_hf(loaded.model.state_dict(), config, family)
    if dtype is not None:
        weights = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in weights.items()}
    dtype = str(weights["lm_head.weight" if "lm_head.weight" in weights else next(iter(weights))].dtype).removeprefix(
        "torch."
    )
    files = {
        "config.json": json.dumps(hf_config(config, family, tokenizer, dtype), indent=2) + "\n",
        "generation_config.json": json.dumps(generation_config(config, tokenizer), indent=2) + "\n",
        **tokenizer_files(tokenizer, config["max_seq_len"]),
        WGPT_FILE: json.dumps(
            {
                "format": "wgpt-export",
                "version": 1,
                "architecture": ARCHITECTURES[family],
                "model_class": model_class,
                "model_config": config,
                "tokenizer": tokenizer.record(),
                "source": str(source_path),
                "global_step": loaded.global_step,
            },
            indent=2,
        )
        + "\n",
    }
    with replaced_atomically(out) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        readable_as_usual(tmp / WEIGHTS_FILE)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    size = (out / WEIGHTS_FILE).stat().st_size
    n_params = sum(v.numel() for v in weights.values())
    print(
        f"Exported {config.get('name', 'model')} (step {loaded.global_step}, {n_params / 1e6:.2f}M parameters, "
        f"vocab_size {config['vocab_size']}, tokenizer {tokenizer.name}) as {ARCHITECTURES[family]} to {out} "
        f"({size / 2**20:.1f} MiB): load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return out


def is_export(path: Path) -> bool:
    return (path / WGPT_FILE).is_file() and (path / "config.json").is_file()


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WgptError(f"out={out} is a file: give a directory to export into")
    if out == source or out in source.parents:
        raise WgptError(f"out={out} holds the model being exported ({source}): export into another directory")
    if out == Path.cwd() or out in Path.cwd().parents:
        raise WgptError(f"out={out} holds the current directory: export into a directory of its own")
    if out.is_dir() and any(out.iterdir()) and not is_export(out) and not overwrite:
        raise WgptError(
            f"out={out} exists and is not a wgpt export (no {WGPT_FILE}): give a new or empty directory, "
            "or overwrite=true to replace it and everything in it"
        )
