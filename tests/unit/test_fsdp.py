"""Sharded training (trainer.strategy=fsdp) in this process: activation checkpointing, sharding on a
1-process gloo group, the memory bar, and the refusals. The real 2-process runs and compiled blocks:
tests/e2e/test_fsdp_runs.py."""

import pytest
import torch


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
    from wgpt.models import Llama
    from wgpt.util.errors import WgptError

    with torch.device("meta"):
        model = Llama(
            vocab_size=50304,
            d_embed=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            ffn_dim_multiplier=1.5,
            tie_embeddings=True,
        )
    whole = devices.training_memory_gib(model)
    assert 15.9 < whole < 16.2  # 1.08B parameters x 16 B
    embeddings, block = 50304 * 2048 + 2048, 60.8e6  # the tied embedding and the final norm; one block
    assert devices.training_memory_gib(model, shards=4) == pytest.approx(
        whole / 4 + 4 * (embeddings + 2 * block) / 2**30, rel=0.01
    )

    monkeypatch.setattr(devices, "free_gpu_memory", lambda: {0: 10.0, 1: 10.0, 2: 10.0, 3: 3.0})
    assert devices.get_best_devices(model, max_gpus=4, sharded=True) == [0, 1, 2]  # 3 x ~6.2 GiB fits, 4 would not
    with pytest.raises(WgptError, match=r"no GPU has 16\.0 GiB free .*shard it with trainer.strategy=fsdp"):
        devices.get_best_devices(model, max_gpus=4)
    with pytest.raises(
        WgptError, match=r"GPU 3 has 3\.0 GiB free, but this model needs ~4\.8 GiB per GPU sharded over 4"
    ):
        devices.check_fits_devices(model, [0, 1, 2, 3], sharded=True)


def test_activation_checkpointing_or_sharding_a_model_without_blocks_is_one_line():
    import torch.nn as nn

    from wgpt.lightning.module import ModelLightningWrapper
    from wgpt.util.errors import WgptError

    class Bigram(nn.Module):  # no `blocks`: nothing to recompute or shard block by block
        def __init__(self):
            super().__init__()
            self.config = {"name": "bigram", "vocab_size": 64}
            self.table = nn.Embedding(64, 64)

        def forward(self, input):
            return self.table(input)

    with pytest.raises(
        WgptError,
        match=r"^trainer.activation_checkpointing=true recomputes the model's blocks, but model "
        r"bigram \(.*Bigram\) has no `blocks`",
    ):
        ModelLightningWrapper(Bigram(), activation_checkpointing=True)
