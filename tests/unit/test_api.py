"""The Python API (wgpt.load_config, load_model_from_config, load_run): what a notebook calls."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import wgpt
from conftest import ROOT
from wgpt.interop.checkpoint import load_checkpoint, model_from_checkpoint, write_weights_beside
from wgpt.util.errors import WgptError


def test_importing_wgpt_stays_cheap():
    # train.py imports wgpt before Hydra composes: the API loads on first use, not then.
    code = "import sys, wgpt; print(sorted(m for m in ('torch', 'lightning', 'hydra', 'wgpt.api') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"
    assert wgpt.__all__ == ["load_config", "load_model_from_config", "load_run"]
    with pytest.raises(AttributeError, match="no attribute 'load_modle'"):
        wgpt.load_modle


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


def test_load_run_gives_model_tokenizer_and_config_of_a_run(gpt2_tiny_run, tmp_path):
    _, run_dir = gpt2_tiny_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    model, tokenizer, cfg = wgpt.load_run(run)
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    reference = model_from_checkpoint(load_checkpoint(best))
    assert not model.training and tokenizer.name == "r50k" and cfg.model.name == "gpt2-tiny"
    assert cfg.trainer.max_steps == 8  # the run's own config, overrides included
    tokens = torch.tensor([tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        expected = reference(tokens)
        assert torch.equal(model(tokens), expected)
        # A checkpoint file in the run, and the weights-only file beside the best one, give the same.
        for path in (run / "checkpoints" / "recent.ckpt", write_weights_beside(best)):
            other, _, other_cfg = wgpt.load_run(path)
            assert torch.equal(other(tokens), expected) and other_cfg == cfg
    with pytest.raises(WgptError, match=f"^path={tmp_path / 'nope'} does not exist"):
        wgpt.load_run(tmp_path / "nope")
    json.dumps(dict(model.config))  # plain values
