"""Layer diagnostics (wgpt.core.diagnostics, wgpt.models.probes, python -m wgpt.plot --diagnostics):
the update/weight ratio against a hand computation for SGD and AdamW, attention entropy of uniform
rows, the largest logit, the RNG and modes left alone, rows dropped on resume, the figure and its
bad input. Under 2-rank FSDP: tests/e2e/test_diagnostics_fsdp.py; in a train.py run and with the
sync count: tests/e2e/test_train_cli.py, tests/e2e/test_step_syncs.py."""

import csv
import functools
import math
from types import SimpleNamespace

import lightning as L
import matplotlib.image
import pytest
import torch
from omegaconf import OmegaConf

from wgpt.core.callbacks import build_callbacks
from wgpt.core.diagnostics import COLUMNS, LayerDiagnostics, kept_rows, parameter_group
from wgpt.models import GPT
from wgpt.models.probes import attention_entropy, probe_forward
from wgpt.optim import OptimizerFactory, parameter_kinds
from wgpt.tools.plot import plot_diagnostics
from wgpt.util.errors import WgptError

from conftest import ROOT
from helpers_fit import datamodule, tiny_module, toy_bins, trainer


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return toy_bins(tmp_path_factory.mktemp("toy"))


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ByHand(L.Callback):
    """What the optimizer step is given (no clipping here) and the weights before and after it;
    and the RNG state after the batch, on either side of the diagnostics' hooks."""

    def __init__(self):
        self.grads, self.before, self.after, self.lrs, self.decay, self.rng = {}, {}, {}, {}, {}, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters()}
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        self.decay = {id(p): g.get("weight_decay", 0.0) for g in optimizer.param_groups for p in g["params"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.rng.append(torch.get_rng_state())


def group_norms(model, tensors: dict[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    kinds, sums = parameter_kinds(model), {}
    for name, t in tensors.items():
        if name in kinds:
            key = parameter_group(name, kinds[name])
            sums[key] = sums.get(key, 0.0) + t.double().pow(2).sum().item()
    return {k: math.sqrt(v) for k, v in sums.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_update_ratio_is_the_step_s_own_by_hand(toy_dir, tmp_path, optimizer):
    if optimizer == "sgd":
        factory = OptimizerFactory(functools.partial(torch.optim.SGD, lr=0.5))
    else:
        factory = OptimizerFactory(functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1, eps=1e-8))
    module, seen, after = tiny_module(optimizer=factory), ByHand(), ByHand()
    diagnostics = LayerDiagnostics(tmp_path, every_n_steps=2)
    fit = trainer(max_steps=2, limit_val_batches=0, gradient_clip_val=None, callbacks=[seen, diagnostics, after])
    fit.fit(module, datamodule=datamodule(toy_dir))

    model = module.model
    params = dict(model.named_parameters())
    expected = {}
    for name, g in seen.grads.items():
        p, w = params[name], seen.before[name]
        lr, decay = seen.lrs[id(p)], seen.decay[id(p)]
        if optimizer == "sgd":
            expected[name] = -lr * g
        else:  # the second step: decoupled decay, then the bias-corrected moments after it
            state = fit.optimizers[0].state[p]
            m_hat = state["exp_avg"] / (1 - 0.9**2)
            v_hat = state["exp_avg_sq"] / (1 - 0.999**2)
            expected[name] = -lr * decay * w - lr * m_hat / (v_hat.sqrt() + 1e-8)
        torch.testing.assert_close(seen.after[name] - w, expected[name], rtol=1e-3, atol=1e-7)
    update, weight, grad = (group_norms(model, t) for t in (expected, seen.before, seen.grads))
    rows = read_rows(tmp_path / "diagnostics.csv")
    assert list(rows[0]) == COLUMNS and {row["step"] for row in rows} == {"2"}
    logged = {(r["block"], r["kind"], r["metric"]): float(r["value"]) for r in rows}
    assert set(update) == {("", "embedding"), ("0", "attn"), ("0", "mlp"), ("0", "norm"), ("", "norm")}
    for key in update:
        assert logged[(*key, "grad_norm")] == pytest.approx(grad[key], rel=1e-4)
        assert logged[(*key, "weight_norm")] == pytest.approx(weight[key], rel=1e-4)
        assert logged[(*key, "update_ratio")] == pytest.approx(update[key] / weight[key], rel=1e-3)
    # The extra forward left torch's RNG as it was (the hook after it saw the one before it) and the
    # model in training mode.
    assert torch.equal(seen.rng[-1], after.rng[-1]) and model.training
    assert {r["metric"] for r in rows} >= {"residual_rms", "attn_entropy", "attn_max_logit", "max_logit"}


def test_entropy_of_uniform_causal_attention_is_log_of_the_keys_seen():
    torch.manual_seed(0)
    T = 8
    model = GPT(vocab_size=64, d_embed=16, n_layers=2, n_heads=2, max_seq_len=T).eval()
    with torch.no_grad():
        for block in model.blocks:  # zero queries: every score 0, each row uniform over its t + 1 keys
            block.attn.wq.weight.zero_()
            block.attn.wq.bias.zero_()
    x = torch.randint(0, 64, (3, T))
    with torch.no_grad():
        stats = probe_forward(model, x, x)
        logits = model(x)
    expected = sum(math.log(t + 1) for t in range(T)) / T
    torch.testing.assert_close(stats["attn_entropy"], torch.full((2,), expected))
    torch.testing.assert_close(stats["attn_max_logit"], torch.zeros(2))
    torch.testing.assert_close(stats["max_logit"], logits.max())
    # The probe is gone afterwards: the fused kernel again, the same outputs.
    assert all(block.attn.probe is None for block in model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)
    # Direct: a row over n keys evenly has log(n); one on a single key, 0.
    rows = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(attention_entropy(rows), torch.tensor((math.log(4) + 0.0) / 2))


def test_residual_rms_is_each_block_output_s():
    torch.manual_seed(0)
    model = GPT(vocab_size=64, d_embed=16, n_layers=2, n_heads=2, max_seq_len=8).eval()
    x = torch.randint(0, 64, (2, 8))
    outputs = []
    hooks = [b.register_forward_hook(lambda m, a, out: outputs.append(out)) for b in model.blocks]
    with torch.no_grad():
        stats = probe_forward(model, x, x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(stats["residual_rms"], torch.stack([o.pow(2).mean().sqrt() for o in outputs]))


def test_rows_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "diagnostics.csv"
    path.write_text(
        "step,block,kind,metric,value\n4,0,attn,grad_norm,1\n8,0,attn,grad_norm,2\n12,0,attn,grad_norm,3\n16,0,at"
    )
    kept_rows(path, 8)
    assert [r["step"] for r in read_rows(path)] == ["4", "8"]
    # As the callback does it when a run goes on in its dir from a checkpoint of step 4.
    trainer = SimpleNamespace(is_global_zero=True, global_step=4)
    module = SimpleNamespace(model=GPT(vocab_size=64, d_embed=16, n_layers=1, n_heads=2))
    LayerDiagnostics(tmp_path).on_train_start(trainer, module)
    assert [r["step"] for r in read_rows(path)] == ["4"]
    kept_rows(tmp_path / "missing.csv", 8)  # nothing to keep: no file made
    assert not (tmp_path / "missing.csv").exists()


def test_the_figure_and_its_bad_input(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(WgptError, match=r"no diagnostics.csv: .*pass a run dir trained with the default callbacks"):
        plot_diagnostics([run])
    lines = ["step,block,kind,metric,value"]
    for step in (4, 8):
        for block in ("0", "1"):
            for kind in ("attn", "mlp"):
                lines += [f"{step},{block},{kind},grad_norm,0.{step}", f"{step},{block},{kind},update_ratio,1e-3"]
            lines += [f"{step},{block},,residual_rms,1.5", f"{step},{block},attn,attn_entropy,2.0"]
            lines += [f"{step},{block},attn,attn_max_logit,3.0"]
        lines += [f"{step},,output,max_logit,9.0", f"{step},,embedding,update_ratio,1e-2"]
    (run / "diagnostics.csv").write_text("\n".join(lines) + "\n")
    out = plot_diagnostics([run])
    assert out == run / "diagnostics.png" and matplotlib.image.imread(out).ndim == 3
    with pytest.raises(WgptError, match="--diagnostics draws one run dir, not 2"):
        plot_diagnostics([run, run])


def test_diagnostics_are_on_by_default_and_off_with_null(tmp_path):
    group = OmegaConf.load(ROOT / "conf" / "callbacks" / "default.yaml")
    assert group.diagnostics.every_n_steps is None  # 4 x trainer.log_every_n_steps
    for name in ("recent", "best", "diagnostics"):
        group[name].dirpath = str(tmp_path)
    group.best.start_datetime = "2026-01-01_00-00-00"
    assert any(isinstance(c, LayerDiagnostics) for c in build_callbacks(group))
    group.diagnostics = None
    assert not any(isinstance(c, LayerDiagnostics) for c in build_callbacks(group))
