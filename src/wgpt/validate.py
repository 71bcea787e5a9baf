"""Check a composed training config before any heavy work: no weights allocated, no data read,
no process started. Each mistake is one WgptError naming the key, its bad value and the fix.

The types come from the code, not from a second schema: every ``_target_`` node is checked
against its class's signature (unknown keys, and values against the type hints, Literal
choices included), and the model is built once on the meta device so that its constructor's own
checks (heads dividing the width, ...) run for free. A new model file gets all of this with no
edit here. The keys that no signature types (optim, the trainer's numbers) are in NUMBERS.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import os
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Callable, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from wgpt.errors import WgptError

if typing.TYPE_CHECKING:
    import torch

# wgpt's own trainer keys (translated before lightning.Trainer sees them) and the values it
# accepts beyond Lightning's.
WGPT_TRAINER_KEYS = {"max_devices", "val_every_n_steps", "activation_checkpointing"}
# lightning.Trainer arguments that wgpt sets itself, from other groups.
SET_BY_WGPT = {"logger": "the logger group (logger=...)", "callbacks": "the callbacks group",
               "plugins": "wgpt (its safe checkpoint IO)", "val_check_interval": "trainer.val_every_n_steps"}
WGPT_TRAINER_VALUES = {"precision": {"auto"}, "devices": {"auto"}}
# Keys of a _target_ node that wgpt reads and the target never sees (see wgpt/optim.py).
WGPT_NODE_KEYS = {"optim": ("scheduler", "param_groups")}


def _positive(v) -> bool:
    return v > 0


def _at_least_one(v) -> bool:
    return v >= 1


def _non_negative(v) -> bool:
    return v >= 0


def _steps_or_unlimited(v) -> bool:
    return v == -1 or v >= 1


# Switches that must be true or false (null where noted in their configs): a truthy string
# such as "flase" would otherwise quietly turn them on.
BOOLEANS = ("tf32", "optim.fused", "trainer.activation_checkpointing")

# key: (type, test, what to give instead). Keys absent from the config are skipped.
NUMBERS: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "optim.lr": (float, _positive, "a learning rate above 0, e.g. optim.lr=3e-4"),
    "optim.weight_decay": (float, _non_negative, "0 or more, e.g. 0.1"),
    "optim.eps": (float, _positive, "a small number above 0, e.g. 1e-8"),
    "model.max_seq_len": (int, _at_least_one, "a whole number of tokens, at least 1"),
    "data.batch_size": (int, _at_least_one, "a whole number of sequences per device, at least 1"),
    "data.seq_len": (int, _at_least_one, "a whole number of tokens, at least 1 and at most model.max_seq_len"),
    "data.stride_ratio": (float, lambda v: 0 < v <= 1, "a ratio in (0, 1]: 1 for disjoint windows, 0.5 for half-overlapping"),
    "data.num_workers": (int, _non_negative, "0 (load in the main process) or more worker processes"),
    "trainer.max_steps": (int, _steps_or_unlimited, "-1 (no limit) or a number of optimizer steps, at least 1"),
    "trainer.max_epochs": (int, _steps_or_unlimited, "-1 (no limit) or a number of epochs, at least 1"),
    "trainer.val_every_n_steps": (int, _at_least_one, "a number of optimizer steps, at least 1"),
    "trainer.log_every_n_steps": (int, _non_negative, "a number of optimizer steps (0: no step logging)"),
    "trainer.accumulate_grad_batches": (int, _at_least_one, "a number of batches per optimizer step, at least 1"),
    "trainer.max_devices": (int, _at_least_one, "the most devices `devices: auto` may take, at least 1"),
    "trainer.num_nodes": (int, _at_least_one, "a number of machines, at least 1"),
    "callbacks.recent.every_n_train_steps": (int, _at_least_one, "a number of optimizer steps, at least 1"),
    "seed": (int, lambda v: True, "a whole number"),
    "tokenizer.vocab_size": (int, lambda v: 259 <= v <= 2**20, "a number of tokens from 259 (256 bytes + 3 specials) up, e.g. 4096"),
}


def check_config(cfg: DictConfig, vocab_size: int | None = None) -> torch.nn.Module:
    """Raise a WgptError for the first mistake in a composed training config (unresolved or not).

    Returns the model built on the meta device, for ``vocab_size`` tokens (None: the tokenizer
    config's, padded): its shapes, with no memory behind them."""
    from wgpt.optim import check_optim

    check_values(cfg)
    check_targets(cfg, "")
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    if vocab_size is None:
        from wgpt.models import padded_vocab_size

        vocab_size = padded_vocab_size(tokenizer_spec(cfg).vocab_size)
    model = check_model_builds(cfg.model, vocab_size)
    from wgpt.sharding import FSDP, model_blocks

    if cfg.trainer.get("activation_checkpointing"):
        model_blocks(model, "trainer.activation_checkpointing=true recomputes the model's blocks")
    if cfg.trainer.get("strategy") == FSDP:
        model_blocks(model, "trainer.strategy=fsdp shards the model block by block")
        rules = cfg.optim.get("param_groups") or {}
        targets = [cfg.optim.get("_target_", "")] + [(r.get("optimizer") or {}).get("_target_", "") for r in rules.values() if r]
        muon = next((t for t in targets if "muon" in str(t).lower()), None)
        if muon:
            raise WgptError(
                f"{muon} orthogonalizes whole weight matrices, which trainer.strategy=fsdp splits across ranks: "
                "use optim=adamw (or another elementwise optimizer) with FSDP, or Muon with DDP"
            )
    return model


def tokenizer_spec(cfg: DictConfig):
    """The ``tokenizer`` group instantiated (``R50k``, ``ByteLevelBPE``, ...): cheap, nothing trained
    or loaded. r50k where a config has no tokenizer group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from wgpt.data.tokenizer import R50k

    if cfg.get("tokenizer") is None:
        return R50k()
    try:
        return instantiate(cfg.tokenizer)
    except InstantiationException as e:
        if isinstance(e.__cause__, WgptError):
            raise e.__cause__ from None
        raise WgptError(f"tokenizer: {e.__cause__ or e}: fix the tokenizer.* values (see conf/tokenizer/)") from None


def check_values(cfg: DictConfig) -> None:
    """The checks that need no torch or Lightning (train.py runs them before importing either,
    so that a mistyped value is reported at once): unset values, numbers, paths."""
    missing = sorted(_missing_keys(cfg, ""))
    if missing:
        raise WgptError(f"{missing[0]} is not set (??? in its config): give it, e.g. {missing[0]}=<value>")
    for key, (kind, test, give) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not (value is None and key.startswith("trainer.max_")):
            check_number(key, value, kind, test, give)
    betas = cfg.optim.get("betas")
    if betas is not None and not (isinstance(betas, ListConfig) and len(betas) == 2 and all(_is(float, b) and 0 <= b < 1 for b in betas)):
        raise WgptError(f"optim.betas={betas} must be two numbers in [0, 1): e.g. optim.betas=[0.9,0.95]")
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise WgptError(f"{key}={value} is not true or false: give {key}=true or {key}=false")
    if cfg.get("compile", False) not in (True, False, "auto"):
        raise WgptError(f"compile={cfg.compile} is not one of auto, true, false: auto compiles on CUDA GPUs only")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None:
        check_number("trainer.gradient_clip_val", clip, float, _non_negative, "0 or null (no clipping) or a norm above 0")
    if cfg.get("resume") not in (None, "auto"):
        raise WgptError(f"resume={cfg.resume} is not an option: use resume=auto, or ckpt_path=<file>")
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise WgptError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: "
            "lower data.seq_len or raise model.max_seq_len"
        )
    path = cfg.data.get("path")
    if path is not None:
        check_readable("data.path", Path(str(path)).expanduser(), "point it at a file or directory of your corpus")


_ABSENT = object()


def _missing_keys(node: DictConfig, key: str):
    """The ``???`` keys under ``node``, found without resolving interpolations (that would raise)."""
    for name in node:
        child, full = node._get_node(name), f"{key}.{name}" if key else str(name)
        if child._is_missing():
            yield full
        elif isinstance(child, DictConfig) and not child._is_none():
            yield from _missing_keys(child, full)


def _is(kind: type, value) -> bool:
    if isinstance(value, bool):  # True is an int to Python, not a batch size
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def check_number(key: str, value, kind: type, test: Callable[[Any], bool], give: str) -> None:
    if not _is(kind, value):
        raise WgptError(f"{key}={value} is not {'a whole number' if kind is int else 'a number'}: give {give}")
    if not test(value):
        raise WgptError(f"{key}={value} is out of range: give {give}")


def check_readable(key: str, path: Path, fix: str) -> None:
    if not path.exists():
        raise WgptError(f"{key}={path} does not exist: {fix}")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise WgptError(f"{key}={path} is not readable (permissions): make it readable, or {fix}")


def check_targets(node: DictConfig, key: str) -> None:
    """Check every ``_target_`` node under ``node`` against the signature of what it names."""
    if "_target_" in node:
        check_arguments(node, key)
    for name in node:
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_targets(child, f"{key}.{name}" if key else str(name))


def check_arguments(node: DictConfig, key: str) -> None:
    """Unknown keys and values of the wrong type for the callable that ``node._target_`` names."""
    target = node._target_
    obj = _import(target, key)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(obj)
    own = WGPT_NODE_KEYS.get(key, ())
    for name in node:
        if str(name).startswith("_") or name in own:
            continue
        if name not in params:
            if takes_any:
                continue
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f" (did you mean {key}.{close[0]}?)" if close else f" (it takes: {', '.join(p for p in params if p != 'self')})"
            raise WgptError(f"{key}.{name} is not a setting of {target}{hint}: fix the key in the command or the YAML")
        check_type(f"{key}.{name}", node[name], hints.get(name))


def check_trainer(trainer: DictConfig) -> None:
    """The trainer group: lightning.Trainer's keyword arguments (and wgpt's own), then the devices."""
    import lightning as L
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from wgpt.devices import check_devices

    params = inspect.signature(L.Trainer.__init__).parameters
    hints = _type_hints(L.Trainer.__init__)
    for name in trainer:
        if name in WGPT_TRAINER_KEYS:
            continue
        if name in SET_BY_WGPT:
            raise WgptError(f"trainer.{name} is set by wgpt: use {SET_BY_WGPT[name]} instead")
        if name not in params:
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise WgptError(f"trainer.{name} is not a lightning.Trainer argument{hint}: fix the key or remove it")
        value = trainer[name]
        if not (isinstance(value, str) and value in WGPT_TRAINER_VALUES.get(name, ())):
            check_type(f"trainer.{name}", value, hints.get(name))
    for name, registry in (("accelerator", AcceleratorRegistry), ("strategy", StrategyRegistry)):
        value = trainer.get(name, "auto")
        names = registry.available_accelerators() if name == "accelerator" else registry.available_strategies()
        if isinstance(value, str) and value not in ("auto", "gpu", *names):
            close = difflib.get_close_matches(value, list(names), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise WgptError(f"trainer.{name}={value} is not one Lightning knows: {hint}(choices: auto, {', '.join(sorted(names))})")
    check_devices(str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto"))


def check_type(key: str, value, hint) -> None:
    if hint is None or matches(value, hint):
        return
    choices = _literal_choices(hint)
    if choices:
        choices = list(dict.fromkeys(map(str, choices)))  # Lightning lists 16 and "16"
        raise WgptError(f"{key}={value} is not one of {', '.join(choices)}: pick one")
    raise WgptError(f"{key}={value} is not {describe_type(hint)}: fix the value in the command or the YAML")


def matches(value, hint) -> bool:
    """Whether a config value can be passed where ``hint`` is declared (unknown hints pass)."""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, (typing.TypeVar, str)):
        return True
    if origin in (Union, UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint in (None, NoneType):
        return value is None
    if value is None:
        return False
    if isinstance(value, DictConfig) and "_target_" in value:  # instantiated to whatever is declared
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return _is(hint, value)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (Path, os.PathLike):
        return isinstance(value, (str, Path))
    if base in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        return isinstance(value, (ListConfig, list, tuple))
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, (DictConfig, dict))
    return True  # callables, classes: what they will be is not knowable from a config value


def describe_type(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, UnionType):
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", NoneType: "null"}
    if hint in names:
        return names[hint]
    return f"a {getattr(origin or hint, '__name__', str(hint))}"


def _literal_choices(hint) -> list:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin in (Union, UnionType):
        return [c for h in typing.get_args(hint) for c in _literal_choices(h)]
    return []


def _import(target: str, key: str):
    import logging

    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # it logs the failure over 3 lines before raising
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        return get_object(target)
    except Exception as e:  # ImportError, or Hydra's wrapping of it
        why = " ".join(str(e).split())  # Hydra's message spans lines
        raise WgptError(f"{key}._target_={target} cannot be imported ({why}): fix the module or class path") from None
    finally:
        hydra_log.setLevel(level)


def _type_hints(obj) -> dict:
    """The evaluated type hints of ``obj``'s parameters ({} where they cannot be evaluated)."""
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(function)
    except Exception:  # a forward reference to a name imported only for type checkers
        return {}


def build_model(model_cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """The model of a ``model`` config node, for ``vocab_size`` tokens (the tokenizer's, padded)."""
    from hydra.utils import instantiate

    return instantiate(model_cfg, vocab_size=vocab_size)


def check_model_builds(model_cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """Build the model on the meta device (shapes only, no memory): its constructor's checks run."""
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        with torch.device("meta"):
            return build_model(model_cfg, vocab_size)
    except InstantiationException as e:
        cause = e.__cause__ or e
        name = model_cfg.get("name", model_cfg._target_)
        raise WgptError(f"model {name}: {cause}: change the model.* values (see conf/model/{name}.yaml)") from None
