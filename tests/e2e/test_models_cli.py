"""Architecture knobs from the command line: a real train.py run, its checkpoint rebuilt with every
knob. The knobs themselves: tests/unit/test_models.py."""

import torch.nn as nn

from wgpt.interop.checkpoint import load_checkpoint, model_from_checkpoint
from wgpt.models.transformer import GatedMLP
from wgpt.tools.generate import generate

from conftest import FAST, paths, run_cli
from helpers_models import override


def test_knobs_from_the_command_line_train_and_round_trip_through_the_checkpoint(tmp_path, data_dir):
    flips = dict(norm="rmsnorm", pos="rotary", n_kv_heads=1, gated=True, activation="silu")
    knobs = [override(k, v) for k, v in flips.items()]
    result = run_cli("train.py", "model=gpt2-tiny", *knobs, *FAST, "trainer.max_steps=2", *paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    (ckpt,) = (tmp_path / "outputs" / "gpt2-tiny").glob("*/checkpoints/recent.ckpt")
    checkpoint = load_checkpoint(ckpt)
    assert checkpoint["model_class"] == "wgpt.models.gpt.GPT"
    model = model_from_checkpoint(checkpoint)
    assert {key: model.config[key] for key in flips} == flips
    assert isinstance(model.final_norm, nn.RMSNorm) and isinstance(model.blocks[0].mlp, GatedMLP)
    assert model.blocks[0].attn.wkv.out_features == 2 * 1 * 16
    prompts = [[464, 3290], [40]]
    assert generate(model, prompts, 4, temperature=0.0) == generate(model, prompts, 4, temperature=0.0, use_cache=False)
