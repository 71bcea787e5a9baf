"""wgpt: a Hydra-composed LLM pre-training runner on PyTorch Lightning (see README.md).

The package is layered (docs/development.md, "Layout"): ``util`` at the bottom, then ``models`` and
``tokenizers``, ``data``, ``optim`` and ``parallel``, ``lightning``, ``interop``, ``core`` (the run
machinery), ``api`` and ``tools``; each imports only from below (tests/unit/test_layers.py).

The Python API (``wgpt.api``) is imported on first use, so ``import wgpt`` stays cheap (train.py
imports it before Hydra composes): ``wgpt.load_config``, ``wgpt.load_model_from_config``,
``wgpt.load_run``.

Modules of earlier releases still import under their old names (``wgpt.module``,
``wgpt.callbacks``, ``python -m wgpt.plot``, ...): run dirs saved before the layers name them in
their ``_target_``s, and scripts import them. ``MOVED`` says where each went.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

API = ("load_config", "load_model_from_config", "load_run")
__all__ = list(API)

# old module: (where it went, {name: where that name went instead})
MOVED: dict[str, tuple[str, dict[str, str]]] = {
    "wgpt.errors": (
        "wgpt.core.report",
        {
            "WgptError": "wgpt.util.errors",
        },
    ),
    "wgpt.validate": (
        "wgpt.core.validate",
        {
            "WGPT_TRAINER_KEYS": "wgpt.core.trainer",
            "SET_BY_WGPT": "wgpt.core.trainer",
            "WGPT_TRAINER_VALUES": "wgpt.core.trainer",
            "check_trainer": "wgpt.core.trainer",
            "check_number": "wgpt.util.checks",
            "check_readable": "wgpt.util.checks",
            "check_targets": "wgpt.util.checks",
            "check_arguments": "wgpt.util.checks",
            "check_type": "wgpt.util.checks",
            "matches": "wgpt.util.checks",
            "describe_type": "wgpt.util.checks",
            "tokenizer_spec": "wgpt.data.tokenizer",
            "build_model": "wgpt.models.build",
            "build_on_meta": "wgpt.models.build",
        },
    ),
    "wgpt.data.bpe": (
        "wgpt.tokenizers.bpe",
        {
            "ByteLevelBPE": "wgpt.data.tokenizer",
        },
    ),
    "wgpt.schedules": ("wgpt.optim.scheduler", {}),
    "wgpt.sharding": (
        "wgpt.parallel.sharding",
        {
            "check_sharded_precision": "wgpt.core.strategy",
            "fsdp_strategy": "wgpt.core.strategy",
            "ShardedStrategy": "wgpt.core.strategy",
            "ShardedStop": "wgpt.core.callbacks",
        },
    ),
    "wgpt.module": (
        "wgpt.lightning.module",
        {
            "perplexity": "wgpt.lightning.metrics",
            "bits_per_byte": "wgpt.lightning.metrics",
            "token_bytes_table": "wgpt.lightning.metrics",
        },
    ),
    "wgpt.checkpoint": (
        "wgpt.interop.checkpoint",
        {
            "load_model_source": "wgpt.interop.sources",
            "source_tokenizer": "wgpt.interop.sources",
            "run_checkpoint": "wgpt.interop.sources",
            "peek_model": "wgpt.interop.sources",
        },
    ),
    "wgpt.hf": (
        "wgpt.interop.hf.config",
        {
            "implied_config": "wgpt.interop.hf.implied",
            "check_fits_config": "wgpt.interop.hf.implied",
            "to_hf": "wgpt.interop.hf.weights",
            "from_hf": "wgpt.interop.hf.weights",
            "read_weights": "wgpt.interop.hf.weights",
            "pad_vocab": "wgpt.interop.hf.weights",
            "tokenizer_files": "wgpt.interop.hf.tokenizer",
            "tokenizer_json": "wgpt.interop.hf.tokenizer",
            "check_hf_vocab": "wgpt.interop.hf.tokenizer",
            "check_hf_tokenizer": "wgpt.interop.hf.tokenizer",
            "ordinary_vocab": "wgpt.interop.hf.tokenizer",
            "tokenizer_from_hf_dir": "wgpt.interop.hf.tokenizer",
            "export": "wgpt.interop.export",
            "is_export": "wgpt.interop.export",
            "read_hf_dir": "wgpt.interop.hf.reading",
            "load_hf_weights": "wgpt.interop.hf.reading",
            "model_from_hf_dir": "wgpt.interop.hf.reading",
            "check_init_from": "wgpt.interop.hf.init_from",
            "check_init_tokenizer": "wgpt.interop.hf.init_from",
            "start_from": "wgpt.interop.hf.init_from",
        },
    ),
    "wgpt.launch": ("wgpt.core.launch", {}),
    "wgpt.config": ("wgpt.core.compose", {}),
    "wgpt.devices": (
        "wgpt.core.devices",
        {
            "resolve_hardware": "wgpt.core.trainer",
        },
    ),
    "wgpt.callbacks": (
        "wgpt.core.callbacks",
        {
            "SafeCheckpointIO": "wgpt.interop.checkpoint",
        },
    ),
    "wgpt.console": (
        "wgpt.core.console",
        {
            "batches_this_epoch": "wgpt.core.progress",
            "SHOWN_METRICS": "wgpt.core.progress",
            "ProgressBar": "wgpt.core.progress",
        },
    ),
    "wgpt.loggers": ("wgpt.core.logger", {}),
    "wgpt.sweep": (
        "wgpt.core.sweep",
        {
            "SUMMARY": "wgpt.core.summary",
            "FINISHED": "wgpt.core.summary",
            "write_run_summary": "wgpt.core.summary",
            "read_run_summary": "wgpt.core.summary",
            "SweepCheck": "wgpt.core.sweep_check",
            "record_sweep": "wgpt.core.sweep_check",
            "check_sweep": "wgpt.core.sweep_check",
            "planned_jobs": "wgpt.core.sweep_check",
            "check_job": "wgpt.core.sweep_check",
            "check_resume": "wgpt.core.sweep_resume",
            "finished_job": "wgpt.core.sweep_resume",
            "resume_arguments": "wgpt.core.sweep_resume",
        },
    ),
    "wgpt.train": (
        "wgpt.core.train",
        {
            "trainer_arguments": "wgpt.core.trainer",
            "checkpoint_to_resume": "wgpt.core.resume",
            "chosen_checkpoint": "wgpt.core.resume",
            "own_checkpoint": "wgpt.core.resume",
            "check_same_tokenizer": "wgpt.core.resume",
        },
    ),
    "wgpt.evaluate": ("wgpt.tools.evaluate", {}),
    "wgpt.generation": ("wgpt.tools.generate", {}),
    "wgpt.tokens": ("wgpt.tools.tokens", {}),
    "wgpt.shapes": ("wgpt.tools.shapes", {}),
    "wgpt.compare": ("wgpt.tools.compare", {}),  # not moved: the short name of a tool, as python -m runs it
    "wgpt.plot": (
        "wgpt.tools.plot",
        {
            "NOISE": "wgpt.tools.runs",
            "SWEEP_DIR": "wgpt.tools.runs",
            "Run": "wgpt.tools.runs",
            "find_runs": "wgpt.tools.runs",
            "read_overrides": "wgpt.tools.runs",
            "read_metrics": "wgpt.tools.runs",
            "tokens_per_step": "wgpt.tools.runs",
            "load_runs": "wgpt.tools.runs",
            "run_labels": "wgpt.tools.runs",
        },
    ),
}


def __getattr__(name: str):
    if name in API:
        from wgpt import api  # on first use: torch loads with it

        return getattr(api, name)
    raise AttributeError(f"module 'wgpt' has no attribute {name!r}")


class _Moved(types.ModuleType):
    """An old module name: each attribute is read from the module it moved to."""

    def __getattr__(self, name: str):
        home, names = MOVED[self.__name__]
        return getattr(importlib.import_module(names.get(name, home)), name)

    def __dir__(self) -> list[str]:
        home, names = MOVED[self.__name__]
        return sorted({*dir(importlib.import_module(home)), *names})


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names in MOVED (after every real module: a real one wins)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        home = importlib.util.find_spec(MOVED[fullname][0])  # its file: `python -m` shows it in sys.argv[0]
        return importlib.machinery.ModuleSpec(fullname, self, origin=home.origin if home else None)

    def create_module(self, spec):
        return _Moved(spec.name)

    def exec_module(self, module) -> None:
        pass

    def get_code(self, fullname):  # `python -m wgpt.plot` runs the module it moved to
        home = importlib.util.find_spec(MOVED[fullname][0])
        return home.loader.get_code(home.name)


if not any(type(f).__name__ == _MovedFinder.__name__ for f in sys.meta_path):  # once, reloads included
    sys.meta_path.append(_MovedFinder())
