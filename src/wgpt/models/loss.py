"""Next-token cross-entropy, with the output layer folded in so that the whole batch's float32
logits never exist at once.

The logits of a batch are large: 16 x 1024 tokens x 50,304 classes is 3.3 GB in float32, more
than the rest of GPT-2 small's activations. ``linear_cross_entropy`` takes the hidden states
before the output layer instead of logits:

- compiled (torch.compile traces it as part of the model's graph), it is the plain
  ``cross_entropy(linear(h, W).float())``: the compiler fuses the upcast into the softmax, so no
  float32 logits are stored;
- eager (CPU runs, compile off), it goes through the rows a chunk at a time, computing each
  chunk's loss and its gradients with respect to ``h`` and ``W`` at once, so only one chunk's
  logits are ever alive. The matmuls are the same ones autograd would run; nothing is recomputed.

Shapes: N rows (batch x sequence), C hidden size, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Logits held at once by the eager path: 2^26 float32 values (256 MiB), ~1,300 rows of a
# 50k vocabulary. Large enough that each chunk's matmuls keep a GPU busy.
CHUNK_ELEMENTS = 2**26


def next_token_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of ``model``'s next-token predictions for ``inputs`` (B, T) against ``targets``
    (B, T): the model's own ``loss(inputs, targets, reduction)`` where it has one (wgpt's
    transformers: without whole-batch logits), else cross-entropy over ``model(inputs)``."""
    if hasattr(model, "loss"):
        return model.loss(inputs, targets, reduction)
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` in float32 for hidden (N, C), weight (V, C),
    targets (N,) int64, reduction "mean" or "sum"; the matmuls run in autocast's dtype when it is on."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not 'mean' or 'sum'")
    if torch.compiler.is_compiling():
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction=reduction)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, reduction, dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients a chunk of rows at a time, in the forward pass; backward only scales them.

    The gradients are made unscaled (softmax - one_hot) and scaled once, in backward, by the
    mean's 1/N and the incoming gradient together: on the small (N, C) and (V, C) results rather
    than on every chunk's (n, V) logits. Every pass over the logits runs row by row in a fused
    kernel (log_softmax) or is one elementwise pass; nothing else touches them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, reduction, dtype):
        N, V = hidden.size(0), weight.size(0)
        rows = max(1, CHUNK_ELEMENTS // V)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):  # the casts are made here, once
            h, w = hidden.to(dtype), weight.to(dtype)
            losses, grad_hidden, grad_weight = [], [], None
            for start in range(0, N, rows):
                h_chunk, t_chunk = h[start : start + rows], targets[start : start + rows]  # (n, C), (n,)
                log_probs = torch.log_softmax((h_chunk @ w.T).float(), dim=-1)  # (n, V)
                losses.append(-log_probs.gather(1, t_chunk[:, None]).sum())
                if not wants_grad:
                    continue
                grad = log_probs.exp_()  # d loss_i / d logits_i = softmax - one_hot(target), in place
                grad[torch.arange(grad.size(0), device=grad.device), t_chunk] -= 1.0
                grad = grad.to(dtype)
                grad_hidden.append(grad @ w)  # (n, C)
                chunk_grad_weight = grad.T @ h_chunk  # (V, C)
                if grad_weight is None:
                    grad_weight = chunk_grad_weight.float()
                else:
                    grad_weight += chunk_grad_weight
        loss = torch.stack(losses).sum() if len(losses) > 1 else losses[0]
        ctx.scale = 1.0 / N if reduction == "mean" else 1.0
        ctx.dtypes = hidden.dtype, weight.dtype
        if wants_grad:
            ctx.save_for_backward(torch.cat(grad_hidden) if len(grad_hidden) > 1 else grad_hidden[0], grad_weight)
        return loss * ctx.scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss * ctx.scale  # a 0-d tensor: no sync
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = (grad_hidden * scale).to(hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * scale).to(weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None
