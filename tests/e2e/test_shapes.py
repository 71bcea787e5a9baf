"""python -m wgpt.shapes: the modules of any model, built as train.py builds it, with the shapes one
forward pass on the meta device gives them (the CPU for a model that cannot run there)."""

import os
import re
import textwrap

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import ROOT, run_cli

PLAIN = {"NO_COLOR": "", "FORCE_COLOR": "", "TTY_COMPATIBLE": ""}  # a pipe: no colour, no wrapping


def shapes(tmp_path, *overrides: str):
    """Run the CLI with a data dir of its own: nothing may be read or written there."""
    result = run_cli(
        "-m", "wgpt.tools.shapes", *overrides, f"paths.data_dir={tmp_path / 'data'}", env=PLAIN, timeout=120
    )
    assert not (tmp_path / "data").exists()
    return result


def modules(stdout: str) -> dict[str, str]:
    """Each tree line by its module's dotted path (``blocks.0.attn.wq``), without the tree's guides."""
    lines, path = {}, []
    for line in stdout.splitlines()[2:]:  # after the top line and the root
        guides = re.match(r"^[│├└─ ]*", line).group()
        depth = len(guides) // 4 - 1
        name = line[len(guides) :].split(" ")[0]
        if name == "call":  # a call of the module above
            continue
        path[depth:] = [name]
        lines[".".join(path)] = line[len(guides) :]
    return lines


def parameter_count(*overrides: str) -> int:
    """The parameters of the model train.py would build for these overrides (r50k's padded vocabulary)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with torch.device("meta"):
        model = instantiate(cfg.model, vocab_size=50304)
    return sum(p.numel() for p in model.parameters())


def test_gpt2_tiny_tree_with_shapes_and_parameters(tmp_path):
    overrides = ["model=gpt2-tiny", "model.n_layers=2", "data.batch_size=2", "data.seq_len=16"]
    result = shapes(tmp_path, *overrides)
    assert result.returncode == 0, result.stderr
    top, root = result.stdout.splitlines()[:2]
    assert top.startswith(f"Model gpt2-tiny (wgpt.models.GPT): {parameter_count(*overrides):,} parameters")
    assert "input (2, 16) int64 token ids" in top and "vocab_size 50,304; run on meta" in top  # no dropout: not shown
    assert root.startswith("model GPT  (2, 16) int64 → (2, 16, 50304)")
    lines = modules(result.stdout)
    assert lines["wte"] == "wte Embedding  (2, 16) int64 → (2, 16, 192)  9,658,368 params"
    assert lines["wpe"] == "wpe Embedding  (16,) int64 → (16, 192)  24,576 params"
    assert [name for name in lines if re.fullmatch(r"blocks\.\d+", name)] == ["blocks.0", "blocks.1"]
    assert lines["blocks.1"].startswith("1 Block  x=(2, 16, 192), layer=1 → (2, 16, 192)")  # arguments by name
    assert lines["blocks.0.attn.wkv"] == "wkv Linear  (2, 16, 192) → (2, 16, 384)  74,112 params"
    assert lines["blocks.0.mlp.fc"] == "fc Linear  (2, 16, 192) → (2, 16, 768)  148,224 params"
    assert lines["blocks.0.dropout"] == "dropout Dropout  (2, 16, 192) → (2, 16, 192)  ×2"  # both branches
    assert lines["lm_head"] == "lm_head Linear  (2, 16, 192) → (2, 16, 50304)  weight tied to wte.weight"


def test_llama3_tiny_with_a_bpe_vocabulary_and_dropout_trains_nothing(tmp_path):
    bpe = ["tokenizer=bpe", "tokenizer.vocab_size=4096"]
    dropout = ["model.dropout=0.1", "model.dropout_resid=0"]  # each place its own, else dropout's
    result = shapes(tmp_path, "model=llama3-tiny", *bpe, *dropout, "data.batch_size=2", "data.seq_len=16")
    assert result.returncode == 0, result.stderr
    assert "vocab_size 4,096; dropout embed 0.1, attn 0.1, resid 0; run on meta" in result.stdout.splitlines()[0]
    lines = modules(result.stdout)
    assert [name for name in lines if re.fullmatch(r"blocks\.\d+", name)] == [f"blocks.{i}" for i in range(6)]
    assert lines["wte"] == "wte Embedding  (2, 16) int64 → (2, 16, 192)  786,432 params"
    assert lines["blocks.5"].startswith("5 Block  x=(2, 16, 192), rope=((16, 16), (16, 16)), layer=5 → (2, 16, 192)")
    assert lines["blocks.0.attn.wkv"].startswith("wkv Linear  (2, 16, 192) → (2, 16, 128)")  # 2 key/value heads of 32
    assert lines["blocks.0.mlp.act"] == "act SiLU  (2, 16, 512) → (2, 16, 512)"
    assert lines["lm_head"] == "lm_head Linear  (2, 16, 192) → (2, 16, 4096)  weight tied to wte.weight"


# A model added from outside: tests/test_add_model.py's Bigram, and a variant that reads token
# values in forward (so it cannot run on the meta device) and calls one layer on two shapes.
MODEL_SOURCE = '''
"""Bigram language models, written by tests/test_shapes.py (deleted after the test)."""

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


class CheckedBigram(Bigram):
    def __init__(self, vocab_size: int, d_embed: int = 16, max_seq_len: int = 32, name: str = "bigram"):
        super().__init__(vocab_size, d_embed, max_seq_len, name)
        self.mix = nn.Linear(d_embed, d_embed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input >= self.config["vocab_size"]).any():  # reads values: not on the meta device
            raise ValueError("token id out of range")
        x = self.embed(input)
        x = self.mix(x) + self.mix(x.mean(dim=1, keepdim=True))  # one layer, called on two shapes
        return self.lm_head(x)
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


def test_a_model_added_from_outside(tmp_path):
    module = f"_test_shapes_bigram_{os.getpid()}"
    model_file = ROOT / "src" / "wgpt" / "models" / f"{module}.py"
    config_file = ROOT / "conf" / "model" / f"{module}.yaml"
    try:
        model_file.write_text(textwrap.dedent(MODEL_SOURCE).lstrip())
        config_file.write_text(CONFIG_SOURCE.format(module=module).lstrip())

        result = shapes(tmp_path, f"model={module}", "data.seq_len=8")
        assert result.returncode == 0, result.stderr
        top, root = result.stdout.splitlines()[:2]
        # 2 x 50,304 x 16 + bias
        assert top.startswith(f"Model {module} (wgpt.models.{module}.Bigram): 1,660,032 parameters")
        assert "input (4, 8) int64 token ids" in top and top.endswith("run on meta")
        assert root == "model Bigram  (4, 8) int64 → (4, 8, 50304)  1,660,032 in all"
        assert modules(result.stdout) == {
            "embed": "embed Embedding  (4, 8) int64 → (4, 8, 16)  804,864 params",
            "lm_head": "lm_head Linear  (4, 8, 16) → (4, 8, 50304)  855,168 params",
        }

        checked_target = f"model._target_=wgpt.models.{module}.CheckedBigram"
        checked = shapes(tmp_path, f"model={module}", checked_target, "data.batch_size=2")
        assert checked.returncode == 0, checked.stderr
        top = checked.stdout.splitlines()[0]
        assert "input (2, 32) int64" in top and "run on cpu (not on meta: " in top
        assert checked.stdout.splitlines()[-3:] == [  # called on two shapes: a line per call
            "└── mix Linear  272 params",
            "    ├── call 1: (2, 32, 16) → (2, 32, 16)",
            "    └── call 2: (2, 1, 16) → (2, 1, 16)",
        ]
    finally:
        model_file.unlink(missing_ok=True)
        config_file.unlink(missing_ok=True)
        for compiled in (model_file.parent / "__pycache__").glob(f"{module}.*"):
            compiled.unlink(missing_ok=True)
    assert not model_file.exists() and not config_file.exists()


def test_bad_input_is_one_line_and_exit_status_1(tmp_path):
    cases = {
        ("model=nope",): "model=nope is not an option",
        ("model.n_heads=5",): "d_embed=192 is not divisible by n_heads=5",
        ("data.seq_len=999",): "data.seq_len=999 exceeds model.max_seq_len=128",
        ("model.nheads=2",): "model.nheads is not a config key (did you mean model.n_heads?)",
        ("model=gpt2-tiny", "hello"): "'hello' is not an override",
    }
    for args, message in cases.items():
        result = shapes(tmp_path, *args)
        assert result.returncode == 1 and result.stdout == "", (args, result.stdout)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, result.stderr
