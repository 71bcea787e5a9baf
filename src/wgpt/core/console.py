"""What a run shows on its terminal besides the progress bar (``wgpt.core.progress``): log lines
in one format, Lightning's included, and the composed config as a tree at start."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from io import StringIO
from pathlib import Path

import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree

from wgpt.util.files import atomic_write_text

log = logging.getLogger("wgpt")

CONFIG_TREE = "config_tree.txt"

# Lightning's advertisements for its cloud products, logged as INFO by every Trainer.
LIGHTNING_TIP = "💡 Tip:"
# Lightning's own code calling a torch API that torch has deprecated: nothing a user can act on.
LIGHTNING_INTERNAL_WARNINGS = [r"`isinstance\(treespec, LeafSpec\)` is deprecated"]


class _LightningLines(logging.Filter):
    """Lightning's lines without its tips, and without its ``[rank: 1]`` prefix (the log format
    tags lines of ranks other than 0 already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            if record.msg.startswith(LIGHTNING_TIP):
                return False
            record.msg = re.sub(r"^\[rank: \d+\] ", "", record.msg)
        return True


class _OneRecordPerWarning(logging.Filter):
    """A warning as a log line without the newline that ends every formatted warning (an empty
    line after each on the console and in train.log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage().rstrip(), ()
        return True


def lightning_through_job_logging() -> None:
    """Lightning's messages printed once, in the run's log format, and kept in train.log.

    Under a Hydra job, hydra.job_logging (conf/train.yaml) sends Lightning's records to the root
    logger's handlers: the console and train.log. But ``import lightning`` comes later (the entry
    points check the config first) and adds a console handler of its own to the ``lightning``
    logger, which would print each message a second time (``INFO: ...`` on stderr). Python
    warnings, Lightning's included, go through logging too, so that train.log keeps them and the
    console shows them tagged with the rank like every other line. ``train`` calls this first
    (each job of a sweep: it changes nothing the second time).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return  # a library use: Lightning's own console output is the user's business
    own_handler = getattr(sys.modules.get("lightning"), "_console", None)
    if own_handler is not None:
        logging.getLogger("lightning").removeHandler(own_handler)
    for name in ("lightning.pytorch", "lightning.fabric"):
        # Where the root logger had no handlers at import (hydra/job_logging=disabled or none),
        # these print on their own: the job's logging config is to decide, as everywhere else.
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler and h.formatter is None]:
            logger.removeHandler(handler)
            logger.propagate = True
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningLines) for f in logger.filters):
            logger.addFilter(_LightningLines())
    for message in LIGHTNING_INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    if logging.getLogger().handlers:  # else (hydra/job_logging=disabled, none) Python prints warnings itself
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        if not any(isinstance(f, _OneRecordPerWarning) for f in warnings_logger.filters):
            warnings_logger.addFilter(_OneRecordPerWarning())


def config_tree(cfg: DictConfig) -> Tree:
    """The config as a tree, a branch per top-level group (model, data, trainer, ...) holding its YAML."""
    tree = Tree("config", style="bold", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, (DictConfig, ListConfig)):
            yaml = OmegaConf.to_yaml(value, resolve=True).rstrip()
            branch = tree.add(Text(str(key), style="bold cyan"))
            branch.add(Syntax(yaml, "yaml", background_color="default", word_wrap=True))
        else:  # seed, compile, ...: a line each
            tree.add(Text(OmegaConf.to_yaml({key: value}).strip()))  # as text: a value may hold [brackets]
    return tree


def print_config_tree(cfg: DictConfig, run_dir: str | Path) -> None:
    """Print the config tree and save it, as plain text, to ``<run dir>/config_tree.txt``."""
    tree = config_tree(cfg)
    # Wide enough that no YAML line wraps where there is no terminal to fit (a pipe, the file).
    width = 8 + max(len(line) for line in OmegaConf.to_yaml(cfg, resolve=True).splitlines())
    console = Console()
    if not console.is_terminal:
        console = Console(width=width)
    console.print(tree)
    text = StringIO()
    Console(file=text, width=width, color_system=None, force_terminal=False).print(tree)
    atomic_write_text(Path(run_dir) / CONFIG_TREE, text.getvalue())  # never a half-written tree


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, those outside the embedding tables); a tied output layer counts once, as embedding."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = list(model.parameters())  # shared (tied) tensors appear once
    total = sum(p.numel() for p in params)
    return total, total - sum(p.numel() for p in params if id(p) in embeddings)
