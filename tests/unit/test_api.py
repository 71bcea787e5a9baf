"""The Python API (wgpt.load_config, load_model_from_config): what a notebook calls, in this process.
The cheap import and load_run on a real run: tests/e2e/test_api_cli.py."""

import pytest
import torch

import wgpt
from wgpt.util.errors import WgptError


def test_load_config_composes_the_training_config_with_overrides():
    cfg = wgpt.load_config("llama3-tiny", overrides=["model.n_layers=2", "optim.lr=1e-3"])
    assert cfg.model.name == "llama3-tiny" and cfg.model.n_layers == 2 and cfg.optim.lr == 1e-3
    assert cfg.data.batch_size == 8 and "hydra" not in cfg  # the preset's settings, no Hydra internals
    for overrides, message in [
        (["model.n_layer=2"], "model.n_layer is not a config key (did you mean model.n_layers?)"),
        (["optim.lr=0"], "optim.lr=0 is out of range: give a learning rate above 0"),
        ("optim.lr=1", "overrides='optim.lr=1' is one string: give a list"),
    ]:
        with pytest.raises(WgptError) as error:
            wgpt.load_config("gpt2-tiny", overrides=overrides)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(WgptError, match="model=gpt3 is not an option: choose one of gpt2, gpt2-medium"):
        wgpt.load_config("gpt3")


def test_load_model_from_config_builds_the_model_train_py_starts_from():
    cfg = wgpt.load_config("gpt2-tiny", overrides=["model.n_layers=1", "model.d_embed=48"])
    state = torch.get_rng_state()
    a, b = wgpt.load_model_from_config(cfg), wgpt.load_model_from_config(cfg)
    assert torch.equal(torch.get_rng_state(), state)  # seeded by cfg.seed without touching the caller's stream
    assert type(a).__name__ == "GPT" and a.config["vocab_size"] == 50304 and a.config["d_embed"] == 48
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    cfg.tokenizer = {"_target_": "wgpt.data.tokenizer.ByteLevelBPE", "vocab_size": 1000}
    assert wgpt.load_model_from_config(cfg).config["vocab_size"] == 1024
    cfg.model.n_heads = 5
    with pytest.raises(WgptError, match="d_embed=48 is not divisible by n_heads=5"):
        wgpt.load_model_from_config(cfg)
