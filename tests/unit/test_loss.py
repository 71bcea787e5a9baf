"""The output layer's loss without whole-batch logits (wgpt.models.loss) equals the plain one,
values and gradients, eager in chunks. Compiled with the model: tests/e2e/test_loss_compiled.py."""

import pytest
import torch
import torch.nn.functional as F

import wgpt.models.loss as loss_module
from wgpt.models import GPT, Llama
from wgpt.models.loss import linear_cross_entropy, next_token_loss

from helpers_loss import TINY


def reference(hidden, weight, targets, reduction):
    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction=reduction)


def loss_and_grads(fn, hidden, weight, targets, reduction, autocast=False):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(hidden, weight, targets, reduction)
    (loss * 3.0).backward()  # a scale on the way back, as gradient accumulation applies
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rows_per_chunk", [7, 1000])  # many uneven chunks, and one
def test_chunked_equals_plain_in_float32(monkeypatch, reduction, rows_per_chunk):
    torch.manual_seed(0)
    N, C, V = 50, 16, 96
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", rows_per_chunk * V)
    hidden, weight, targets = torch.randn(N, C), torch.randn(V, C) * 0.3, torch.randint(0, V, (N,))
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction)
    want = loss_and_grads(reference, hidden, weight, targets, reduction)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_follows_autocast_bf16(monkeypatch):
    torch.manual_seed(0)
    N, C, V = 64, 32, 128
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 10 * V)
    hidden, weight, targets = torch.randn(N, C), torch.randn(V, C) * 0.3, torch.randint(0, V, (N,))
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, "mean", autocast=True)
    want = loss_and_grads(reference, hidden, weight, targets, "mean", autocast=True)
    exact = loss_and_grads(reference, hidden, weight, targets, "mean")
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype  # gradients in the parameters' dtype
    for g, w, e in zip(got, want, exact):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)  # bf16 matmuls, as autocast's
        assert not torch.equal(g, e)  # the matmuls really ran in bf16


def test_no_gradients_are_made_without_grad():
    hidden, weight, targets = torch.randn(10, 8), torch.randn(40, 8, requires_grad=True), torch.randint(0, 40, (10,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, "sum")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(hidden, weight.detach(), targets, "sum"))


@pytest.mark.parametrize("model_class", [GPT, Llama])
def test_model_loss_equals_cross_entropy_of_its_logits(model_class):
    torch.manual_seed(0)
    model = model_class(**TINY)
    x, y = torch.randint(0, 320, (3, 16)), torch.randint(0, 320, (3, 16))
    want = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = next_token_loss(model, x, y)
    got.backward()
    torch.testing.assert_close(got, want)
    for name, p in model.named_parameters():  # the tied embedding gets both of its gradients
        torch.testing.assert_close(p.grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_models_without_a_loss_method_get_cross_entropy_of_their_logits():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(50, 50)

        def forward(self, input):
            return self.table(input)

    model, x, y = Bigram(), torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(
        next_token_loss(model, x, y, "sum"), F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
    )


def largest_tensor_bytes(fn) -> int:
    """The largest tensor any op makes while ``fn`` runs (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.bytes = max(Largest.bytes, t.numel() * t.element_size())
            return out

    with Largest():
        fn()
    return Largest.bytes


def test_eager_loss_never_holds_the_whole_batch_of_logits(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 16 * 1000)  # 16 rows of a 1,000-token vocabulary
    N, C, V = 256, 32, 1000
    hidden = torch.randn(N, C, requires_grad=True)
    weight, targets = torch.randn(V, C, requires_grad=True), torch.randint(0, V, (N,))
    chunked = largest_tensor_bytes(lambda: linear_cross_entropy(hidden, weight, targets).backward())
    plain = largest_tensor_bytes(lambda: reference(hidden, weight, targets, "mean").backward())
    assert plain >= N * V * 4  # the float32 logits of every row
    assert chunked <= V * C * 4  # the weight's gradient is now the largest: 16 rows of logits are smaller


def capped_reference(hidden, weight, targets, reduction, cap, z_loss):
    logits = (hidden @ weight.T).float()
    logits = logits if cap is None else cap * torch.tanh(logits / cap)
    loss = F.cross_entropy(logits, targets, reduction=reduction)
    if z_loss:
        z = z_loss * logits.logsumexp(-1).square()
        loss = loss + (z.mean() if reduction == "mean" else z.sum())
    return loss


@pytest.mark.parametrize("cap, z_loss", [(2.0, None), (None, 0.1), (1.5, 0.05)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_capped_chunked_loss_and_z_loss_equal_the_plain_formulas(monkeypatch, cap, z_loss, reduction):
    torch.manual_seed(0)
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 96)  # several uneven chunks
    hidden, weight, targets = torch.randn(50, 16), torch.randn(96, 16), torch.randint(0, 96, (50,))

    def chunked(h, w, t, r):
        return linear_cross_entropy(h, w, t, r, softcap=cap, z_loss=z_loss)

    got = loss_and_grads(chunked, hidden, weight, targets, reduction)
    want = loss_and_grads(
        lambda h, w, t, r: capped_reference(h, w, t, r, cap, z_loss), hidden, weight, targets, reduction
    )
    for g, w in zip(got, want):  # float32 sums of a different order: 1e-4
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], reference(hidden, weight, targets, reduction))  # the knobs did something


def test_capped_chunked_loss_passes_a_float64_gradient_check():
    torch.manual_seed(0)
    hidden = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (9,))
    # float32 softmax inside: a tolerance to match, on float64 inputs.
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, targets, "mean", softcap=1.5, z_loss=0.1),
        (hidden, weight),
        eps=1e-3,
        atol=1e-3,
        rtol=1e-3,
    )


def test_capped_loss_is_the_cross_entropy_of_the_models_capped_logits():
    torch.manual_seed(0)
    model = GPT(**TINY, logit_softcap=3.0, z_loss=1e-2)
    x, y = torch.randint(0, 320, (3, 16)), torch.randint(0, 320, (3, 16))
    logits = model(x)
    assert logits.abs().max() < 3.0
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    terms = model.loss_terms(x, y)  # training mode: the z-loss term is added
    torch.testing.assert_close(terms.cross_entropy, ce.detach())
    z = 1e-2 * logits.flatten(0, 1).float().logsumexp(-1).square().mean()
    torch.testing.assert_close(terms.z_loss, z.detach())
    torch.testing.assert_close(terms.objective, (ce + z).detach())
    model.eval()  # evaluation reports the cross-entropy alone
    torch.testing.assert_close(next_token_loss(model, x, y), ce.detach())
