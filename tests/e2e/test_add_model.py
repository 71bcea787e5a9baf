"""Adding an architecture is one file under src/wgpt/models/ plus one YAML under conf/model/:
a new model written here, with no other edit, trains through the real train.py, checkpoints,
and is scored by eval.py and sampled by generate.py from its checkpoint."""

import json
import os
import re
import textwrap

import torch

from conftest import ROOT, paths, read_metrics, run_cli

# A bigram model: the next token's logits depend on the current token only. It has the minimal
# contract of wgpt.models' docstring and nothing more (no KV cache, no Transformer parts).
MODEL_SOURCE = '''
"""A bigram language model, written by tests/test_add_model.py (deleted after the test)."""

import torch
import torch.nn as nn


class Bigram(nn.Module):
    def __init__(self, vocab_size: int, d_embed: int = 16, max_seq_len: int = 32, name: str = "bigram"):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, d_embed=d_embed, max_seq_len=max_seq_len, name=name)
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.lm_head = nn.Linear(d_embed, vocab_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.lm_head(self.embed(input))
'''

CONFIG_SOURCE = """
# @package _global_
model:
  _target_: wgpt.models.{module}.Bigram
  name: {module}
  d_embed: 16
  max_seq_len: 32
data:
  batch_size: 4
"""


def test_a_new_model_file_and_yaml_train_evaluate_and_generate(tmp_path, data_dir):
    module = f"_test_bigram_{os.getpid()}"
    model_file = ROOT / "src" / "wgpt" / "models" / f"{module}.py"
    config_file = ROOT / "conf" / "model" / f"{module}.yaml"
    try:
        model_file.write_text(textwrap.dedent(MODEL_SOURCE).lstrip())
        config_file.write_text(CONFIG_SOURCE.format(module=module).lstrip())

        result = run_cli(
            "train.py",
            f"model={module}",
            "trainer.max_steps=1",
            "trainer.val_every_n_steps=1",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "data.num_workers=0",
            "trainer.accelerator=cpu",
            *paths(tmp_path, data_dir),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (run_dir,) = (tmp_path / "outputs" / module).iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["global_step"] == 1
        assert any(row["train_loss"] for row in read_metrics(run_dir))
        assert f"Model {module}: 1.66M parameters" in (run_dir / "train.log").read_text()  # 2 x 50,304 x 16 + bias

        ckpt = run_dir / "checkpoints" / "recent.ckpt"
        checkpoint = torch.load(ckpt, weights_only=True)
        assert checkpoint["model_class"] == f"wgpt.models.{module}.Bigram" and checkpoint["global_step"] == 1
        assert set(checkpoint["state_dict"]) == {"model.embed.weight", "model.lm_head.weight", "model.lm_head.bias"}

        scored = run_cli(
            "eval.py",
            f"ckpt_path={ckpt}",
            "max_batches=2",
            "splits=[validation]",
            f"paths.data_dir={data_dir}",
            "device=cpu",
        )
        assert scored.returncode == 0, scored.stderr[-3000:]
        saved = json.loads((run_dir / "eval-recent.json").read_text())
        assert saved["model"]["name"] == module
        assert saved["results"]["shakespeare"]["validation"]["tokens"] == 2 * 4 * 32  # 2 batches of 4 x 32 tokens

        # No KV cache in this model: generate.py (kv_cache=true by default) recomputes the sequence.
        sampled = run_cli("generate.py", f"ckpt_path={ckpt}", "prompt=To be", "max_new_tokens=5", "device=cpu")
        assert sampled.returncode == 0, sampled.stderr[-3000:]
        assert sampled.stdout.startswith("To be") and re.search(r"generated \d+ tokens .*kv_cache=off", sampled.stderr)

        # Muon needs 2-D hidden weights: this model has only an embedding and an output layer.
        refused = run_cli(
            "train.py",
            f"model={module}",
            "optim=muon",
            "trainer.accelerator=cpu",
            f"paths.output_root={tmp_path / 'muon'}",
            f"paths.data_dir={data_dir}",
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert (
            refused.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "Error: optim.param_groups.hidden_matrices matches no parameter of this model (kinds ['hidden_matrix']"
            )
        )
        assert not any((tmp_path / "muon").rglob("*.*"))  # nothing written
    finally:
        model_file.unlink(missing_ok=True)
        config_file.unlink(missing_ok=True)
        for compiled in (model_file.parent / "__pycache__").glob(f"{module}.*"):
            compiled.unlink(missing_ok=True)
    assert not model_file.exists() and not config_file.exists()
