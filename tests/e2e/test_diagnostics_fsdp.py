"""Layer diagnostics under FSDP2 over 2 CPU processes (gloo): the norms by block and kind of the
sharded gradients, weights and updates equal those of the same model unsharded, on every rank,
and the extra forward measures the same activations. In-process checks: tests/unit/test_diagnostics.py."""

import torch


def sharded_diagnostics(rank: int, rendezvous: str) -> None:
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from wgpt.core.diagnostics import ParameterGroups, local, square, squares
    from wgpt.models import GPT
    from wgpt.models.probes import probe_forward
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

        cpu = torch.device("cpu")
        groups, plain = ParameterGroups(sharded), ParameterGroups(whole)
        assert groups.labels == plain.labels and all(isinstance(p, DTensor) for p in groups.params)

        def norms(g: ParameterGroups, tensors) -> torch.Tensor:
            return g.reduce(g.sums(squares(tensors, cpu))).sqrt()

        grads = norms(groups, [p.grad for p in groups.params])
        torch.testing.assert_close(grads, norms(plain, [p.grad for p in plain.params]), rtol=1e-5, atol=0)
        torch.testing.assert_close(norms(groups, groups.params), norms(plain, plain.params), rtol=1e-5, atol=0)
        before = [local(p).detach().clone() for p in groups.params]
        plain_before = [p.detach().clone() for p in plain.params]
        torch.optim.SGD(sharded.parameters(), lr=0.1).step()
        torch.optim.SGD(whole.parameters(), lr=0.1).step()
        update = groups.reduce(groups.sums(torch.stack([square(local(p) - b) for p, b in zip(groups.params, before)])))
        expected = plain.sums(torch.stack([square(p.detach() - b) for p, b in zip(plain.params, plain_before)]))
        torch.testing.assert_close(update.sqrt(), expected.sqrt(), rtol=1e-4, atol=1e-8)

        # The extra forward, run on every rank as the callback runs it: the unsharded model's values.
        with torch.no_grad():
            got, want = probe_forward(sharded.eval(), x, x), probe_forward(whole.eval(), x, x)
        assert set(got) == set(want) == {"residual_rms", "attn_entropy", "attn_max_logit", "max_logit"}
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()


def test_sharded_norms_and_activations_equal_the_unsharded_ones_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(sharded_diagnostics, args=(str(tmp_path / "rendezvous"),), nprocs=2)
