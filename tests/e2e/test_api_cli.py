"""The Python API with other processes: `import wgpt` stays cheap in a fresh interpreter, and
load_run reads conftest's real gpt2-tiny run. In-process checks: tests/unit/test_api.py."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import wgpt
from wgpt.interop.checkpoint import load_checkpoint, model_from_checkpoint, write_weights_beside
from wgpt.util.errors import WgptError

from conftest import ROOT


def test_importing_wgpt_stays_cheap():
    # train.py imports wgpt before Hydra composes: the API loads on first use, not then.
    code = "import sys, wgpt; print(sorted(m for m in ('torch', 'lightning', 'hydra', 'wgpt.api') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"
    assert wgpt.__all__ == ["load_config", "load_model_from_config", "load_run"]
    with pytest.raises(AttributeError, match="no attribute 'load_modle'"):
        wgpt.load_modle  # noqa: B018  (the attribute access is the test)


def test_load_run_gives_model_tokenizer_and_config_of_a_run(gpt2_tiny_run, tmp_path):
    _, run_dir = gpt2_tiny_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    model, tokenizer, cfg = wgpt.load_run(run)
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    reference = model_from_checkpoint(load_checkpoint(best))
    assert not model.training and tokenizer.name == "r50k" and cfg.model.name == "gpt2-tiny"
    assert cfg.trainer.max_steps == 8  # the run's own config, overrides included
    # Its own start time and dir, not the clock's or Hydra's at loading time.
    assert best.name == f"best-{cfg.start_datetime}.ckpt" and cfg.paths.output_dir == str(run)
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
