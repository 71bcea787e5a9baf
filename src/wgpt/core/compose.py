"""The training config composed outside ``@hydra.main``, for the tools that read it
(``python -m wgpt.tokens``, ``python -m wgpt.shapes``): overrides as train.py takes them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

import wgpt.core.launch  # noqa: F401  (registers the resolvers conf/train.yaml uses)
from wgpt.core.report import one_line_config_errors
from wgpt.util.errors import WgptError

# A Hydra override (key=value, +key=value, ++key=value, ~key=value, group/option=value).
OVERRIDE = re.compile(r"^(?:\+\+|\+|~)?[\w./@-]+=")


def repo_root() -> Path:
    """The checkout whose conf/ to compose: $WGPT_ROOT (as train.py sets it), else the one holding this package."""
    return Path(os.environ.get("WGPT_ROOT") or Path(__file__).resolve().parents[3])


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml composed with ``overrides`` as train.py would (unresolved); Hydra's errors
    (unknown option or key, unparsable override) end the program with one line. Call it inside
    ``one_line_errors``, which reports a checkout without conf/."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    root = repo_root()
    conf_dir = root / "conf"
    if not (conf_dir / "train.yaml").is_file():  # wgpt installed without its checkout
        raise WgptError(f"no conf/train.yaml under {root}: run this from a wgpt checkout, or set WGPT_ROOT to one")
    os.environ.setdefault("WGPT_ROOT", str(root))  # conf/paths: root_dir (paths.data_dir follows it)
    with one_line_config_errors(conf_dir, overrides):
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    # As under train.py's @hydra.main: messages that name a command to run (`python process.py
    # data=... tokenizer=...`) read the choices and overrides made here.
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, words of the text): ``key=value`` arguments are overrides, wherever they are,
    up to a ``--``; everything after it is text (for text that looks like an override)."""
    overrides, words = [], []
    for i, arg in enumerate(argv):
        if arg == "--":
            return overrides, words + list(argv[i + 1 :])
        (overrides if OVERRIDE.match(arg) else words).append(arg)
    return overrides, words
