"""Modules of earlier releases still import under their old names (wgpt.MOVED): run dirs saved
before the layers name them in their ``_target_``s, and scripts import them."""

from __future__ import annotations

import importlib

import pytest

import wgpt


@pytest.mark.parametrize("old", sorted(wgpt.MOVED))
def test_every_old_module_and_moved_name_resolves(old):
    home, names = wgpt.MOVED[old]
    module = importlib.import_module(old)
    assert module.__name__ == old and not (importlib.util.find_spec(old).origin or "").endswith(".py")  # no file left
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


def test_a_real_module_wins_over_an_old_name():
    assert not set(wgpt.MOVED) & {"wgpt.data.tokenizer", "wgpt.optim", "wgpt.api"}
