"""Modules of earlier releases still import under their old names (wgpt.MOVED): run dirs saved
before the layers name them in their ``_target_``s, and scripts import them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import wgpt


@pytest.mark.parametrize("old", sorted(wgpt.MOVED))
def test_every_old_module_and_moved_name_resolves(old):
    home, names = wgpt.MOVED[old]
    module = importlib.import_module(old)
    src = Path(wgpt.__file__).parents[1]
    assert module.__name__ == old and not (src / old.replace(".", "/")).with_suffix(".py").exists()  # no file left
    importlib.import_module(home)
    for name, new_home in names.items():
        assert getattr(module, name) is getattr(importlib.import_module(new_home), name)


def test_an_old_module_reads_through_to_its_new_home():
    from wgpt.errors import WgptError
    from wgpt.lightning.module import ModelLightningWrapper as moved
    from wgpt.module import ModelLightningWrapper
    from wgpt.util.errors import WgptError as error

    assert ModelLightningWrapper is moved and WgptError is error
    with pytest.raises(AttributeError):
        importlib.import_module("wgpt.module").NoSuchName  # noqa: B018


def test_a_real_module_wins_over_an_old_name(monkeypatch):
    """The finder comes after every real one: an old name that is a module again is that module."""
    monkeypatch.setitem(wgpt.MOVED, "wgpt.api", ("wgpt.core.train", {}))
    api = importlib.reload(importlib.import_module("wgpt.api"))
    assert api.__file__.endswith("wgpt/api.py") and callable(api.load_run)  # the file, not the alias


def test_names_a_kept_module_had_still_import():
    from wgpt.data.tokenizer import RANKS_SHA256, Tokenizer, TokenizerBase, tokenizer_from_record  # noqa: F401
    from wgpt.tokenizers.base import TokenizerBase as base

    assert TokenizerBase is base and len(RANKS_SHA256) == 64
