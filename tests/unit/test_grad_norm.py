"""grad_norm, the global gradient norm of each optimizer step before clipping: logged to metrics.csv
and the step line, and the norm clipping uses (wgpt.lightning.grad_norm). The 2-rank FSDP2 check:
tests/e2e/test_fsdp_runs.py."""

import csv
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from wgpt.core.callbacks import SpeedMonitor
from wgpt.lightning.grad_norm import grad_norm
from wgpt.models import GPT

from helpers_fit import datamodule, tiny_module, toy_bins, trainer


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """helpers_fit's toy bins, made once for this module."""
    return toy_bins(tmp_path_factory.mktemp("toy"))


def norm(grads: list[torch.Tensor]) -> float:
    """By hand: the L2 norm of every gradient entry as one vector."""
    return torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()


class GradsBeforeClipping(L.Callback):
    """Each step's gradients as the module's on_before_optimizer_step sees them: Lightning calls the
    callbacks' hook first, then the module's, then clips."""

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append([p.grad.clone() for p in pl_module.parameters()])


@pytest.mark.parametrize(
    "algorithm, clip, micro_batches",
    [("norm", 0.01, 1), ("norm", 0.01, 2), ("value", 1e-4, 1), (None, None, 1)],
)
def test_grad_norm_is_logged_before_clipping_and_clipping_still_clips(
    toy_dir, tmp_path, caplog, algorithm, clip, micro_batches
):
    module, seen = tiny_module(), GradsBeforeClipping()
    fit = trainer(
        max_steps=4,
        log_every_n_steps=2,  # steps 2 and 4 logged, 1 and 3 not
        limit_val_batches=0,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        logger=CSVLogger(tmp_path),
        callbacks=[seen, SpeedMonitor()],
    )
    with caplog.at_level(logging.INFO, logger="wgpt"):
        fit.fit(module, datamodule=datamodule(toy_dir, micro_batches=micro_batches))
    before = [norm(grads) for grads in seen.steps]
    assert len(before) == 4
    if clip:
        assert all(b > 10 * clip for b in before)  # clipping acts on every step

    with open(Path(fit.logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["train_loss"]]
    assert [int(row["step"]) for row in rows] == [1, 3]  # Lightning's step: optimizer steps 2 and 4
    assert [float(row["grad_norm"]) for row in rows] == pytest.approx(before[1::2], rel=1e-5)
    assert module.last_grad_norm.item() == pytest.approx(before[-1], rel=1e-5)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2 | epoch")]
    shown = f"| train_loss {float(rows[0]['train_loss']):.4f} | grad_norm {float(rows[0]['grad_norm']):.4g} | lr "
    assert shown in line

    # The last step's gradients as the optimizer stepped with them (nothing zeroes them after it).
    after = [p.grad for p in module.parameters()]
    if algorithm == "norm":
        assert norm(after) == pytest.approx(clip, rel=1e-4)
        assert all(
            torch.allclose(a, b * clip / before[-1], rtol=1e-4, atol=1e-12) for a, b in zip(after, seen.steps[-1])
        )
    elif algorithm == "value":
        assert max(a.abs().max().item() for a in after) == pytest.approx(clip)
        assert all(torch.equal(a, b.clamp(-clip, clip)) for a, b in zip(after, seen.steps[-1]))
    else:
        assert all(torch.equal(a, b) for a, b in zip(after, seen.steps[-1]))


def loss_backward(scale: torch.Tensor | float = 1.0) -> tuple[GPT, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(vocab_size=64, d_embed=16, n_layers=1, n_heads=2, max_seq_len=8)
    x = torch.randint(0, 64, (2, 8))
    loss = model.loss(x, x)
    (loss * scale).backward()
    return model, torch.linalg.vector_norm(torch.cat([p.grad.flatten() / scale for p in model.parameters()]))


def test_grad_norm_of_float16_gradients_an_optimizer_unscales_itself_is_unscaled():
    """Lightning unscales float16 gradients before on_before_optimizer_step, except for an
    optimizer that unscales them in its own step (fused AdamW): those are still scaled there."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler)
    model, expected = loss_backward(scaler.scale(torch.ones(())))
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    assert fused._step_supports_amp_scaling
    assert grad_norm(fused, plugin).item() == pytest.approx(expected.item(), rel=1e-5)
    # An optimizer Lightning unscaled for: its gradients are taken as they are.
    plain = torch.optim.AdamW(model.parameters(), foreach=False)
    assert grad_norm(plain, plugin).item() == pytest.approx(2.0**10 * expected.item(), rel=1e-5)


def test_sharded_grad_norm_is_a_plain_tensor_and_clips_dtensor_gradients(tmp_path):
    """FSDP2 gradients are DTensor shards: the norm comes back reduced (a plain tensor, the
    unsharded norm), and clipping by it scales the shards. One rank here; two: tests/e2e."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from wgpt.parallel.sharding import shard

    plain, expected = loss_backward()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = GPT(**plain.config)
        shard(model, init_device_mesh("cpu", (1,)), "32-true")
        x = torch.randint(0, 64, (2, 8))
        model.loss(x, x).backward()
        assert all(isinstance(p.grad, DTensor) for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters())
        measured = grad_norm(optimizer, None)
        assert not isinstance(measured, DTensor) and measured.item() == pytest.approx(expected.item(), rel=1e-5)
        # As clip_gradients clips by it: the plain tensor scales each DTensor shard.
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), 0.5 * measured.item(), measured)
        assert grad_norm(optimizer, None).item() == pytest.approx(0.5 * expected.item(), rel=1e-4)
    finally:
        dist.destroy_process_group()
