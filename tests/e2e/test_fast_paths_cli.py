"""Each fast path is really on when configured (and off when not), and a run with it still learns.

Two real train.py runs with every switch flipped one way or the other, plus one compiled run;
a probe callback (tests/probes.py) reports from inside each. In-process checks: tests/unit/test_fast_paths.py.
"""

import csv
import json
import math

import pytest
import torch

from wgpt.optim.scheduler import warmup_cosine

from conftest import ROOT, run_cli

TINY = [  # tests of CPU behaviour: pinned to the CPU, also on a GPU machine
    "trainer.accelerator=cpu",
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "optim.lr=1e-2",
    "trainer.max_steps=8",
    "trainer.val_every_n_steps=8",
    "trainer.limit_val_batches=4",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "+callbacks.probe._target_=probes.FastPathProbe",
]


FAST = [  # every switch on, clipping tight enough to act
    "+optim.fused=true",
    "trainer.gradient_clip_val=0.05",
    "model.sdpa=true",
    "trainer.accumulate_grad_batches=2",
    "optim/scheduler=warmup_cosine",
    "optim.scheduler.warmup_steps=3",
    "trainer.precision=bf16-mixed",
]


PLAIN = [  # every switch off
    "+optim.fused=false",
    "~optim.param_groups.vectors",
    "trainer.gradient_clip_val=null",
    "model.sdpa=false",
    "trainer.accumulate_grad_batches=1",
    "trainer.precision=32-true",
]


def train(tmp_path, data_dir, *overrides):
    out = tmp_path / "outputs"
    result = run_cli(
        "train.py",
        *TINY,
        *overrides,
        f"paths.output_root={out}",
        f"paths.data_dir={data_dir}",
        f"+callbacks.probe.path={tmp_path / 'probe.json'}",
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (out / "gpt2-tiny").iterdir()
    with open(run_dir / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]]
    return json.loads((tmp_path / "probe.json").read_text()), losses


@pytest.fixture(scope="module", params=["fast", "plain"])
def run(request, tmp_path_factory, data_dir):
    overrides = FAST if request.param == "fast" else PLAIN
    facts, losses = train(tmp_path_factory.mktemp(request.param), data_dir, *overrides)
    assert losses[-1] < losses[0] - 0.5, losses  # it learns, whichever paths are on
    return request.param, facts


def test_fused_adamw(run):
    kind, facts = run
    assert facts["fused"] is (kind == "fast")


def test_weight_decay_on_matrices_only(run):
    kind, facts = run
    if kind == "fast":
        assert facts["decay_groups"] == [{"weight_decay": 0.1, "dims": [2]}, {"weight_decay": 0.0, "dims": [1]}]
    else:
        assert facts["decay_groups"] == [{"weight_decay": 0.1, "dims": [1, 2]}]


def test_gradient_clipping(run):
    kind, facts = run
    before, after = facts["norm_before_clip"], facts["norm_after_clip"]
    assert len(before) == len(after) == facts["steps"] == 8
    if kind == "fast":  # clipped to 0.05 whenever above
        assert all(b > 0.05 for b in before) and all(a == pytest.approx(0.05, rel=1e-3) for a in after)
    else:
        assert after == pytest.approx(before, rel=1e-6)


def test_gradient_accumulation(run):
    kind, facts = run
    assert facts["batches"] == facts["steps"] * (2 if kind == "fast" else 1)


def test_sdpa_switch_reaches_every_attention(run):
    kind, facts = run
    assert facts["sdpa"] == [kind == "fast"]  # one layer


def test_bf16_autocast_on_cpu(run):
    kind, facts = run
    if kind == "fast":
        assert facts["autocast"] == "torch.bfloat16" and facts["logits_dtype"] == "torch.bfloat16"
    else:
        assert facts["autocast"] is False and facts["logits_dtype"] == "torch.float32"


def test_warmup_cosine_schedule(run):
    kind, facts = run
    if kind == "fast":  # 8 steps: 3 of linear warmup, then cosine to 10% of lr
        assert facts["lr"] == pytest.approx([1e-2 * warmup_cosine(s, 8, warmup_steps=3) for s in range(8)], rel=1e-6)
        assert facts["lr"][2] == pytest.approx(1e-2) and facts["lr"][-1] > 1e-3
    else:  # one-cycle: starts at lr / 25
        assert facts["lr"][0] == pytest.approx(1e-2 / 25, rel=1e-6)


def test_compile_auto_is_off_on_a_cpu(run):
    kind, facts = run
    assert facts["compiled"] is False and facts["compiled_graphs"] == 0


def test_compile_uses_the_compiled_model_and_loss(tmp_path, data_dir):
    facts, losses = train(tmp_path, data_dir, "compile=true", "trainer.max_steps=6")
    assert facts["compiled"] and facts["compiled_graphs"] >= 2  # training, and validation (no grad, summed)
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trains_in_bf16_with_tf32(tmp_path, data_dir):
    facts, losses = train(tmp_path, data_dir, "trainer.accelerator=gpu", "trainer.devices=1")
    if torch.cuda.is_bf16_supported():
        assert facts["autocast"] is False  # the probe reads the CPU's autocast state; CUDA's is separate
        assert facts["logits_dtype"] == "torch.bfloat16"
    if torch.cuda.get_device_capability()[0] >= 8:
        assert facts["float32_matmul_precision"] == "high"
    assert losses[-1] < losses[0] and all(map(math.isfinite, losses))
