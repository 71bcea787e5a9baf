"""The loss compiled together with the model (torch.compile, which runs the C++ compiler) equals the
eager one, values and gradients. The eager loss: tests/unit/test_loss.py."""

import torch

from wgpt.models import GPT
from wgpt.models.loss import next_token_loss

from helpers_loss import TINY


def test_compiled_loss_and_gradients_equal_eager():
    """compile=true compiles model and loss as one graph: same loss and gradients as eager."""
    torch.manual_seed(0)
    model = GPT(**TINY)
    x, y = torch.randint(0, 320, (2, 16)), torch.randint(0, 320, (2, 16))
    compiled = torch.compile(next_token_loss, dynamic=False)
    results = []
    for fn in (next_token_loss, compiled):
        model.zero_grad()
        loss = fn(model, x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert [n for n, _ in model.named_parameters()][0] == "wte.weight"  # weights keep their names
