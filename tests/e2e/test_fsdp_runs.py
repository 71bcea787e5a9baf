"""Sharded training (trainer.strategy=fsdp: FSDP2 through Lightning's ModelParallelStrategy) in real
2-process CPU runs on gloo: it trains, checkpoints, resumes exactly after a SIGKILL, saves on
Ctrl-C, and its checkpoints load on one device. Plus compiled sharded blocks (torch.compile runs
the C++ compiler), grad_norm over two ranks' shards, and bad settings through train.py.
In-process checks: tests/unit/test_fsdp.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, killed_at, run_cli, train_killable

# Two blocks (FSDP shards each), dropout on (activation checkpointing must replay its masks).
TINY = [
    "model.d_embed=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.dropout=0.1",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=8",
    "trainer.val_every_n_steps=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "callbacks.recent.every_n_train_steps=4",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=fsdp",
    "trainer.activation_checkpointing=true",
]


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
    killed = killed_at(6, *TINY, *paths(out, data_dir), "start_datetime=2020-01-01_00-00-01")
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    first = out / "gpt2-tiny" / "2020-01-01_00-00-01" / "checkpoints" / "recent.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == 4

    resumed = train_killable(*TINY, *paths(out, data_dir), "resume=auto")  # the killed launch's overrides
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = out / "gpt2-tiny" / "2020-01-01_00-00-01"  # the unfinished run, continued in its own dir
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
    ddp = [a for a in TINY if not a.startswith(("trainer.strategy", "trainer.max_steps"))] + [
        "trainer.strategy=ddp",
        "trainer.max_steps=10",
    ]
    continued = run_cli("train.py", *ddp, f"ckpt_path={ckpt}", *paths(tmp_path / "ddp", data_dir))
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert f"Resuming from {ckpt} (step 8)" in continued.stderr + continued.stdout


def test_ctrl_c_stops_every_sharded_rank_at_one_step_and_saves_recent(tmp_path, data_dir):
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "callbacks.recent"))]
    process = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            *args,
            "trainer.max_steps=100000",
            "trainer.log_every_n_steps=1",
            "callbacks.recent.every_n_train_steps=100000",
            *paths(tmp_path, data_dir),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
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


def test_compiled_sharded_blocks_are_whole_graphs_that_match_eager(tmp_path):
    """compile=true under FSDP compiles each block's forward (with its activation checkpointing)
    as one graph, fullgraph: no break at FSDP's hooks, none at the attention masks (windows and
    documents). Loss and gradients match eager sharding, with soft-capped logits and a z-loss
    (``loss_terms``, an entry method FSDP gathers the weights for)."""
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    from torch.distributed.device_mesh import init_device_mesh

    from wgpt.models import Llama
    from wgpt.models.loss import next_token_loss
    from wgpt.parallel.sharding import checkpoint_activations, compile_blocks, shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        knobs = dict(attn_window=5, document_mask=True, eot_id=7, logit_softcap=5.0, z_loss=1e-3)
        shape = dict(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, multiple_of=16)
        eager = Llama(**shape, **knobs)
        compiled = Llama(**eager.config)
        compiled.load_state_dict(eager.state_dict())
        checkpoint_activations(compiled.blocks)
        compile_blocks(compiled.blocks)
        x = torch.randint(8, 128, (2, 16))
        x[:, 6] = 7  # two documents
        losses = []
        counters.clear()
        for model in (eager, compiled):
            shard(model, mesh, "32-true")
            terms = next_token_loss(model, x, x, terms=True)
            terms.objective.backward()
            assert terms.z_loss > 0
            losses.append(terms.objective.detach())
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # both blocks, one graph
        torch.testing.assert_close(losses[1], losses[0])
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(b.grad.full_tensor(), a.grad.full_tensor(), msg=name)
        assert [n for n, _ in eager.named_parameters()] == [n for n, _ in compiled.named_parameters()]
    finally:
        dist.destroy_process_group()


def sharded_grad_norm(rank: int, rendezvous: str) -> None:
    """Rank ``rank`` of 2 (gloo): the grad_norm of FSDP2-sharded gradients, each rank's from half the
    batch, against that of the same model unsharded on the whole batch; then clipping by it."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from wgpt.lightning.grad_norm import grad_norm
    from wgpt.models import GPT
    from wgpt.parallel.sharding import shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights and batch on both ranks
        whole = GPT(vocab_size=128, d_embed=16, n_layers=2, n_heads=2, max_seq_len=8)
        sharded = copy.deepcopy(whole)
        shard(sharded, init_device_mesh("cpu", (2,)), "32-true")
        x = torch.randint(0, 128, (4, 8))
        whole.loss(x, x).backward()
        half = x[2 * rank : 2 * rank + 2]
        sharded.loss(half, half).backward()  # FSDP2 averages the two halves' gradients into the shards
        expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in whole.parameters()]))
        measured = grad_norm(torch.optim.AdamW(sharded.parameters()), None)
        torch.testing.assert_close(measured, expected, rtol=1e-5, atol=0)
        # Clipped by it (as wgpt.lightning.grad_norm.clip_gradients clips): the unsharded clip.
        torch.nn.utils.clip_grads_with_norm_(sharded.parameters(), 0.1, measured)
        torch.nn.utils.clip_grad_norm_(whole.parameters(), 0.1)
        for (name, a), b in zip(sharded.named_parameters(), whole.parameters()):
            torch.testing.assert_close(a.grad.full_tensor(), b.grad, rtol=1e-4, atol=1e-7, msg=name)
    finally:
        dist.destroy_process_group()


def test_grad_norm_of_sharded_gradients_is_the_unsharded_norm_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(sharded_grad_norm, args=(str(tmp_path / "rendezvous"),), nprocs=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["trainer.strategy=fsdp", "optim=muon"],
            "torch.optim.Muon orthogonalizes whole weight matrices, which trainer.strategy=fsdp splits",
        ),
        (
            ["trainer.strategy=fsdp", "trainer.precision=64-true"],
            "trainer.precision=64-true is not supported with trainer.strategy=fsdp",
        ),
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


@pytest.mark.gpu
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
