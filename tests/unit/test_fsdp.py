"""Sharded training (trainer.strategy=fsdp: FSDP2 through Lightning's ModelParallelStrategy) in real
2-process CPU runs on gloo: it trains, checkpoints, resumes exactly after a SIGKILL, saves on
Ctrl-C, and its checkpoints load on one device. Plus activation checkpointing and the memory bar."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli

# Two blocks (FSDP shards each), dropout on (activation checkpointing must replay its masks).
TINY = [
    "model.d_embed=32", "model.n_layers=2", "model.n_heads=2", "model.dropout=0.1", "data.batch_size=4",
    "data.num_workers=0", "trainer.max_steps=8", "trainer.val_every_n_steps=4", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "callbacks.recent.every_n_train_steps=4", "trainer.accelerator=cpu",
    "trainer.devices=2", "trainer.strategy=fsdp", "trainer.activation_checkpointing=true",
]  # fmt: skip
TESTS_ON_PATH = {"PYTHONPATH": str(ROOT / "tests")}


def paths(out: Path, data_dir: Path) -> list[str]:
    return [f"paths.output_root={out}", f"paths.data_dir={data_dir}"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_sharded_run_killed_mid_training_resumes_to_the_same_weights(tmp_path, data_dir):
    """SIGKILL at step 6 (recent saved at 4), resume=auto to step 8: the weights and optimizer state
    of an uninterrupted run, and checkpoints in the format a DDP run writes, which eval.py and
    generate.py read on one device and a DDP run continues."""
    full = run_cli("train.py", *TINY, *paths(tmp_path / "full", data_dir), "start_datetime=2020-01-01_00-00-00")
    assert full.returncode == 0, full.stderr[-3000:]
    full_dir = tmp_path / "full" / "gpt2-tiny" / "2020-01-01_00-00-00"
    log = (full_dir / "train.log").read_text()
    assert "FSDP2 (Lightning's ModelParallelStrategy): every block sharded over 2 rank(s)" in log

    out = tmp_path / "crash"
    with open(tmp_path / "killed.log", "w") as output:  # not pipes: orphaned ranks would hold them open
        killed = subprocess.run(
            [sys.executable, "train.py", *TINY, *paths(out, data_dir), "+callbacks.kill._target_=record_batches.KillAt",
             "+callbacks.kill.step=6", "start_datetime=2020-01-01_00-00-01"],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **TESTS_ON_PATH}, stdout=output, stderr=output, timeout=300,
        )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    first = out / "gpt2-tiny" / "2020-01-01_00-00-01" / "checkpoints" / "recent.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == 4

    resumed = run_cli("train.py", *TINY, *paths(out, data_dir), "resume=auto", "start_datetime=2020-01-01_00-00-02")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = out / "gpt2-tiny" / "2020-01-01_00-00-02"
    assert json.loads((second / "summary.json").read_text())["status"] == "completed"

    a = torch.load(full_dir / "checkpoints" / "recent.ckpt", weights_only=True)
    b = torch.load(second / "checkpoints" / "recent.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # Full tensors, not shards: the embedding has all its rows.
    assert a["state_dict"]["model.wte.weight"].shape == (50304, 32)
    # The optimizer state numbered as optimizer.state_dict() numbers it: by parameter group.
    (state,) = b["optimizer_states"]
    numbered = [i for group in state["param_groups"] for i in group["params"]]
    assert numbered == list(range(len(numbered))) and set(state["state"]) == set(numbered)
    (full_state,) = a["optimizer_states"]
    assert all(torch.equal(full_state["state"][i]["exp_avg"], state["state"][i]["exp_avg"]) for i in numbered)

    # best-*.safetensors is written from the gathered best checkpoint: whole tensors.
    from wgpt.interop.sources import load_model_source

    best = torch.load(full_dir / "checkpoints" / "best-2020-01-01_00-00-00.ckpt", weights_only=True)
    loaded = load_model_source(full_dir / "checkpoints" / "best-2020-01-01_00-00-00.safetensors")
    assert loaded.global_step == best["global_step"] == 8
    assert all(torch.equal(t, best["state_dict"][f"model.{name}"]) for name, t in loaded.model.state_dict().items())

    # The gathered checkpoint is read on one device by eval.py and generate.py, and continues under DDP.
    ckpt = full_dir / "checkpoints" / "recent.ckpt"
    evaluated = run_cli("eval.py", f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}", "max_batches=2", "batch_size=4")
    assert evaluated.returncode == 0 and "shakespeare" in evaluated.stdout, evaluated.stderr[-3000:]
    generated = run_cli("generate.py", f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=5")
    assert generated.returncode == 0 and generated.stdout.strip().startswith("ROMEO:"), generated.stderr[-3000:]
    ddp = [a for a in TINY if not a.startswith(("trainer.strategy", "trainer.max_steps"))] + ["trainer.strategy=ddp", "trainer.max_steps=10"]
    continued = run_cli("train.py", *ddp, f"ckpt_path={ckpt}", *paths(tmp_path / "ddp", data_dir))
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert f"Resuming from {ckpt} (step 8)" in continued.stderr + continued.stdout


def test_ctrl_c_stops_every_sharded_rank_at_one_step_and_saves_recent(tmp_path, data_dir):
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "callbacks.recent"))]
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, "trainer.max_steps=100000", "trainer.log_every_n_steps=1",
         "callbacks.recent.every_n_train_steps=100000", *paths(tmp_path, data_dir)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        for line in process.stdout:
            if "step 3 | epoch" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGINT)  # rank 0 only, as the other rank ignores Ctrl-C
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    (path,) = tmp_path.glob("gpt2-tiny/*/checkpoints/recent.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    assert 3 <= checkpoint["global_step"] < 100000
    assert f"Stopped at step {checkpoint['global_step']}: saved" in output
    assert process.returncode == 128 + signal.SIGTERM
    summary = json.loads((path.parents[1] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] == checkpoint["global_step"]


def test_activation_checkpointing_changes_memory_not_results():
    """The same loss and gradients with blocks recomputed in the backward; names unchanged."""
    from wgpt.models import GPT
    from wgpt.parallel.sharding import checkpoint_activations

    torch.manual_seed(0)
    plain = GPT(vocab_size=128, d_embed=32, n_layers=2, n_heads=2, max_seq_len=16, dropout=0.1)
    recomputed = GPT(**plain.config)
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_activations(recomputed.blocks)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in recomputed.named_parameters()]
    x = torch.randint(0, 128, (2, 16))
    losses = []
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks, which the recomputation must replay
        loss = model.loss(x, x)
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(plain.parameters(), recomputed.parameters()))


def test_compiled_sharded_blocks_are_whole_graphs_that_match_eager(tmp_path):
    """compile=true under FSDP compiles each block's forward (with its activation checkpointing)
    as one graph, fullgraph: no break at FSDP's hooks. Loss and gradients match eager sharding."""
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    from torch.distributed.device_mesh import init_device_mesh

    from wgpt.models import Llama
    from wgpt.parallel.sharding import checkpoint_activations, compile_blocks, shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        eager = Llama(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, multiple_of=16)
        compiled = Llama(**eager.config)
        compiled.load_state_dict(eager.state_dict())
        checkpoint_activations(compiled.blocks)
        compile_blocks(compiled.blocks)
        x = torch.randint(0, 128, (2, 16))
        losses = []
        counters.clear()
        for model in (eager, compiled):
            shard(model, mesh, "32-true")
            loss = model.loss(x, x)
            loss.backward()
            losses.append(loss.detach())
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # both blocks, one graph
        torch.testing.assert_close(losses[1], losses[0])
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(b.grad.full_tensor(), a.grad.full_tensor(), msg=name)
        assert [n for n, _ in eager.named_parameters()] == [n for n, _ in compiled.named_parameters()]
    finally:
        dist.destroy_process_group()


def test_sharded_blocks_get_float32_rotary_tables_and_validation_runs_under_no_grad(tmp_path):
    """bf16 sharding casts the weights, not a block's inputs: the rotary tables stay float32. And
    sharded runs validate under no_grad: Lightning would use inference_mode on NCCL, under which
    FSDP2's first forward breaks (the sanity check comes first); validation then training works."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from wgpt.core.trainer import resolve_hardware
    from wgpt.models import Llama
    from wgpt.parallel.sharding import shard

    model = Llama(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, multiple_of=16)
    args = resolve_hardware({"accelerator": "cpu", "devices": 2, "strategy": "fsdp", "precision": "bf16-mixed"}, model)
    assert args["inference_mode"] is False
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        shard(model, init_device_mesh("cpu", (1,)), "bf16-mixed")
        seen = []
        model.blocks[0].register_forward_pre_hook(lambda block, args: seen.append([a.dtype for a in args[1]]))
        x = torch.randint(0, 128, (2, 16))
        with torch.no_grad():
            model.loss(x, x)
        model.loss(x, x).backward()
        assert seen == [[torch.float32, torch.float32]] * 2  # cos and sin, in both passes
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_sharded_memory_is_a_share_of_the_model_and_picks_enough_gpus(monkeypatch):
    """Under FSDP each GPU needs 16 B/param over the GPU count plus what is gathered (bf16 weights and
    gradients of the embeddings and of two blocks), so a model too big for one GPU is given as many
    as it needs (NVML answers are stubbed: no GPU here)."""
    from wgpt.core import devices as devices
    from wgpt.util.errors import WgptError
    from wgpt.models import Llama

    with torch.device("meta"):
        model = Llama(vocab_size=50304, d_embed=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.5, tie_embeddings=True)
    whole = devices.training_memory_gib(model)
    assert 15.9 < whole < 16.2  # 1.08B parameters x 16 B
    embeddings, block = 50304 * 2048 + 2048, 60.8e6  # the tied embedding and the final norm; one block
    assert devices.training_memory_gib(model, shards=4) == pytest.approx(whole / 4 + 4 * (embeddings + 2 * block) / 2**30, rel=0.01)

    monkeypatch.setattr(devices, "free_gpu_memory", lambda: {0: 10.0, 1: 10.0, 2: 10.0, 3: 3.0})
    assert devices.get_best_devices(model, max_gpus=4, sharded=True) == [0, 1, 2]  # 3 x ~6.2 GiB fits, 4 would not
    with pytest.raises(WgptError, match=r"no GPU has 16\.0 GiB free .*shard it with trainer.strategy=fsdp"):
        devices.get_best_devices(model, max_gpus=4)
    with pytest.raises(WgptError, match=r"GPU 3 has 3\.0 GiB free, but this model needs ~4\.8 GiB per GPU sharded over 4"):
        devices.check_fits_devices(model, [0, 1, 2, 3], sharded=True)


def test_activation_checkpointing_or_sharding_a_model_without_blocks_is_one_line():
    import torch.nn as nn

    from wgpt.util.errors import WgptError
    from wgpt.lightning.module import ModelLightningWrapper

    class Bigram(nn.Module):  # no `blocks`: nothing to recompute or shard block by block
        def __init__(self):
            super().__init__()
            self.config = {"name": "bigram", "vocab_size": 64}
            self.table = nn.Embedding(64, 64)

        def forward(self, input):
            return self.table(input)

    with pytest.raises(WgptError, match=r"^trainer.activation_checkpointing=true recomputes the model's blocks, but model "
                       r"bigram \(.*Bigram\) has no `blocks`"):  # fmt: skip
        ModelLightningWrapper(Bigram(), activation_checkpointing=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["trainer.strategy=fsdp", "optim=muon"], "torch.optim.Muon orthogonalizes whole weight matrices, which trainer.strategy=fsdp splits"),
        (["trainer.strategy=fsdp", "trainer.precision=64-true"], "trainer.precision=64-true is not supported with trainer.strategy=fsdp"),
        (["trainer.activation_checkpointing=yes"], "trainer.activation_checkpointing=yes is not true or false"),
    ],
    ids=["muon", "precision", "not-a-bool"],
)
def test_bad_sharding_settings_are_one_line(tmp_path, data_dir, args, message):
    result = run_cli("train.py", "trainer.accelerator=cpu", *args, *paths(tmp_path, data_dir))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: {lines[0].removeprefix('Error: ')}"] and message in lines[0], result.stderr[-2000:]
    assert not list(tmp_path.glob("gpt2-tiny/*"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_a_sharded_compiled_run_with_activation_checkpointing_trains_and_resumes(tmp_path, data_dir):
    """What gloo cannot show: NCCL, bf16 gathers, Lightning's validation context on NCCL (the sanity
    check's forward comes first) and compiled blocks, on one GPU, then a resume from its checkpoint."""
    args = [a for a in TINY if not a.startswith(("trainer.accelerator", "trainer.devices"))]
    gpu = ["trainer.accelerator=gpu", "trainer.devices=1", "compile=true", "trainer.num_sanity_val_steps=2"]
    result = run_cli("train.py", *args, *gpu, *paths(tmp_path, data_dir), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "gpt2-tiny").iterdir()
    log = (run_dir / "train.log").read_text()
    assert "every block sharded over 1 rank(s)" in log and "each block compiles" in log
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 8
    more = [a for a in args if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=10"]
    resumed = run_cli("train.py", *more, *gpu, f"ckpt_path={ckpt}", *paths(tmp_path / "resumed", data_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {ckpt} (step 8)" in resumed.stderr + resumed.stdout
