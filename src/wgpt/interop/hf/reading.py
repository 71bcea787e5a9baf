"""A Hugging Face model directory read: what it holds (``HFDir``), its weights loaded into a wgpt
model that fits its config.json, or a model built from it (eval.py, generate.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.nn as nn

from wgpt.interop.checkpoint import check_fits
from wgpt.interop.hf.config import (
    ARCHITECTURES,
    INDEX_FILE,
    WEIGHTS_FILE,
    WGPT_FILE,
    HFDir,
    shown_value,
)
from wgpt.interop.hf.implied import check_fits_config, implied_config
from wgpt.interop.hf.tokenizer import check_hf_tokenizer, check_hf_vocab
from wgpt.interop.hf.weights import from_hf, pad_vocab, read_weights
from wgpt.models import padded_vocab_size
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


def read_hf_dir(path: str | Path, key: str = "init_from") -> HFDir:
    """A directory as transformers' ``save_pretrained`` (or ``export``) writes it, checked: a
    one-line WgptError when it is missing, not a model directory, or of a kind wgpt cannot load."""
    path = Path(path).expanduser().resolve()
    source = f"{key}={path}"
    if not path.exists():
        raise WgptError(
            f"{source} does not exist: "
            "give a Hugging Face model directory (config.json, model.safetensors), e.g. one export.py wrote"
        )
    if not path.is_dir():
        raise WgptError(
            f"{source} is a file: give the Hugging Face model directory (config.json, model.safetensors) it is part of"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise WgptError(
            f"{source} has no config.json: it is not a Hugging Face model directory "
            "(give one that export.py or save_pretrained wrote)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise WgptError(f"{source}: config.json is not JSON ({e}): the directory is damaged") from None
    if not isinstance(config, dict):
        raise WgptError(f"{source}: config.json holds no model config: the directory is damaged")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise WgptError(
            f"{source} holds a model_type={model_type} model: "
            "wgpt loads gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM) and qwen3 (Qwen3ForCausalLM) only"
        )
    if (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise WgptError(f"{source}: {INDEX_FILE} is damaged (no weight_map)") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = [path / WEIGHTS_FILE]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        pickled = next((p.name for p in path.glob("pytorch_model*.bin")), None)
        if pickled:
            raise WgptError(
                f"{source} holds {pickled}, not {missing.name}: "
                "wgpt reads safetensors only (a .bin is a pickle, which could run code); "
                "convert it where you trust it: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)"
            )
        raise WgptError(f"{source} has no {missing.name}: the directory is incomplete (export it again)")
    wgpt = None
    if (path / WGPT_FILE).is_file():
        try:
            wgpt = json.loads((path / WGPT_FILE).read_text(encoding="utf-8"))
        except ValueError as e:
            raise WgptError(
                f"{source}: {WGPT_FILE} is not JSON ({e}): the directory is damaged (export it again)"
            ) from None
    return HFDir(path, key, config, model_type, files, wgpt)


def load_hf_weights(model: nn.Module, path: str | Path, tokenizer=None, key: str = "init_from") -> HFDir:
    """Load a transformers directory's weights into ``model`` (``train.py init_from=<dir>``):
    checked to fit its config (one line naming the ``model.*`` values the directory implies), and
    ``tokenizer``'s ids (when given). A vocabulary smaller than the model's (HF GPT-2's 50,257
    against r50k's padded 50,304) is padded, each new row the mean of the others, and says so."""

    d = read_hf_dir(path, key)
    implied = check_fits_config(d, model.config)
    check_hf_vocab(d, model.config["vocab_size"], tokenizer)
    if tokenizer is not None:
        check_hf_tokenizer(d, tokenizer)
    state = from_hf(read_weights(d), implied, d.family, d.source)
    state = pad_vocab(state, model.config["vocab_size"], implied["tie_embeddings"], d.source)
    check_fits(model, state, d.source)
    model.load_state_dict(state)
    changed = [
        f"{k}={shown_value(implied[k])} there, {shown_value(model.config[k])} here"
        for k in ("norm_eps", "rope_theta", "max_seq_len")
        if k in implied and implied[k] != model.config[k] and not (k == "rope_theta" and implied["pos"] == "learned")
    ]
    if changed:
        log.info("%s: kept this model's %s", d.source, "; ".join(changed))
    return d


def model_from_hf_dir(path: str | Path, tokenizer=None, key: str = "ckpt_path") -> tuple[nn.Module, HFDir]:
    """The wgpt model of a transformers directory, with its weights, in eval mode: a wgpt
    export's own class and config, else the config its config.json implies; the vocabulary
    padded for ``tokenizer`` (when given)."""
    import importlib

    d = read_hf_dir(path, key)
    model_class, config = implied_config(d)
    if d.wgpt is not None and isinstance(d.wgpt.get("model_config"), dict):
        model_class, config = d.wgpt.get("model_class", model_class), dict(d.wgpt["model_config"])
        check_fits_config(d, config)
    if tokenizer is not None:
        config["vocab_size"] = max(config["vocab_size"], padded_vocab_size(len(tokenizer)))
    if not isinstance(model_class, str) or not model_class.startswith("wgpt.models."):
        raise WgptError(f"{d.source}: {WGPT_FILE} names model class {model_class!r}, not one of wgpt.models")
    module_name, _, class_name = model_class.rpartition(".")
    try:
        model = getattr(importlib.import_module(module_name), class_name)(**config)
    except (TypeError, ValueError) as e:
        raise WgptError(f"{d.source}: its config does not build a wgpt model ({e})") from None
    load_hf_weights(model, d.path, tokenizer, key)
    return model.eval(), d
