"""A model knob is declared once, in the Transformer's signature: GPT and Llama only set defaults,
every preset lists every knob (the presets are the knobs' documentation), and the Hugging Face
table says how each crosses to transformers. A new knob fails here until it is in all of them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from wgpt.interop.hf.config import KNOBS_IN_HF
from wgpt.models import GPT, Llama, Transformer

ROOT = Path(__file__).resolve().parents[2]
KNOBS = list(inspect.signature(Transformer).parameters)
PRESETS = sorted((ROOT / "conf" / "model").glob("*.yaml"))


def test_gpt_and_llama_declare_no_knob_of_their_own():
    for cls in (GPT, Llama):
        assert (
            cls.__init__.__doc__ == f"{cls.__name__}: the Transformer with {cls.__name__}.DEFAULTS."
        )  # made, not written
        assert set(cls.DEFAULTS) <= set(KNOBS)
        signature = inspect.signature(cls)
        assert list(signature.parameters) == KNOBS  # every knob, in the Transformer's order
        for name, value in cls.DEFAULTS.items():
            assert signature.parameters[name].default == value


def test_a_subclass_builds_with_its_defaults_and_takes_any_knob():
    with torch.device("meta"):
        model = Llama(d_embed=64, n_layers=1, n_heads=4, vocab_size=128, pos="learned")
    assert model.config["norm"] == "rmsnorm" and model.config["pos"] == "learned" and model.config["n_kv_heads"] == 4
    assert type(model)(**model.config).config == model.config  # checkpoints rebuild models this way
    with pytest.raises(TypeError):
        Llama(n_layer=2)  # a misspelled knob is refused, as by the Transformer


def test_a_subclass_of_a_preset_class_starts_from_its_defaults():
    class SmallLlama(Llama):
        DEFAULTS = dict(n_layers=2, d_embed=64, n_heads=4, n_kv_heads=2)

    assert inspect.signature(SmallLlama).parameters["norm"].default == "rmsnorm"  # Llama's
    with torch.device("meta"):
        model = SmallLlama(vocab_size=128)
    assert model.config["norm"] == "rmsnorm" and model.config["n_layers"] == 2 and model.config["name"] == "llama3"


def test_defaults_and_an_own_init_are_refused_together():
    with pytest.raises(TypeError, match="DEFAULTS and its own __init__"):

        class Both(GPT):
            DEFAULTS = {"n_layers": 2}

            def __init__(self, **knobs):
                super().__init__(**knobs)


def test_defaults_naming_no_knob_are_refused():
    with pytest.raises(TypeError, match="n_layer"):

        class Broken(Transformer):
            DEFAULTS = {"n_layer": 2}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_lists_every_knob(preset):
    model = yaml.safe_load(preset.read_text())["model"]
    missing = [k for k in KNOBS if k != "vocab_size" and k not in model]  # vocab_size: the tokenizer's
    assert not missing, f"{preset.name} does not list {missing}: add each with its value and a comment"


def test_the_hugging_face_table_places_every_knob():
    assert set(KNOBS_IN_HF) == set(KNOBS), (
        f"wgpt.interop.hf.config.KNOBS_IN_HF misses {sorted(set(KNOBS) - set(KNOBS_IN_HF))} "
        f"and has unknown {sorted(set(KNOBS_IN_HF) - set(KNOBS))}"
    )
