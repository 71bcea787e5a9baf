"""Next-token cross-entropy, with the output layer folded in so that the whole batch's float32
logits never exist at once; optionally with soft-capped logits and a z-loss.

The logits of a batch are large: 16 x 1024 tokens x 50,304 classes is 3.3 GB in float32, more
than the rest of GPT-2 small's activations. ``linear_cross_entropy`` takes the hidden states
before the output layer instead of logits:

- compiled (torch.compile traces it as part of the model's graph), it is the plain
  ``cross_entropy(linear(h, W).float())``: the compiler fuses the upcast into the softmax, so no
  float32 logits are stored;
- eager (CPU runs, compile off), it goes through the rows a chunk at a time, computing each
  chunk's loss and its gradients with respect to ``h`` and ``W`` at once, so only one chunk's
  logits are ever alive. The matmuls are the same ones autograd would run; nothing is recomputed.

Both take the model's two output knobs: ``softcap`` (logits squashed as cap * tanh(logits / cap),
Gemma 2, modded-nanogpt) and ``z_loss`` (PaLM's auxiliary loss, z_loss * log(Z)^2 per token, Z the
softmax's normalizer: it keeps log Z near 0, so the logits cannot drift upwards together).

Shapes: N rows (batch x sequence), C hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# Logits held at once by the eager path: 2^26 float32 values (256 MiB), ~1,300 rows of a
# 50k vocabulary. Large enough that each chunk's matmuls keep a GPU busy.
CHUNK_ELEMENTS = 2**26


class LossTerms(NamedTuple):
    """``objective``: what training backpropagates, cross_entropy + z_loss; the other two are
    detached, for logging (z_loss: the term added, 0 without the knob)."""

    objective: torch.Tensor
    cross_entropy: torch.Tensor
    z_loss: torch.Tensor


def next_token_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", terms: bool = False
):
    """Cross-entropy of ``model``'s next-token predictions for ``inputs`` (B, T) against ``targets``
    (B, T): the model's own ``loss(inputs, targets, reduction)`` where it has one (wgpt's
    transformers: without whole-batch logits), else cross-entropy over ``model(inputs)``.
    ``terms``: a LossTerms instead (from the model's ``loss_terms`` where it has one)."""
    if terms and hasattr(model, "loss_terms"):
        return model.loss_terms(inputs, targets, reduction)
    if hasattr(model, "loss"):
        loss = model.loss(inputs, targets, reduction)
    else:
        logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)
    return LossTerms(loss, loss.detach(), torch.zeros_like(loss.detach())) if terms else loss


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap), computed in float32 and returned in logits' dtype; the logits as
    they are for cap None."""
    if cap is None:
        return logits
    return (cap * torch.tanh(logits.float() / cap)).to(logits.dtype)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    softcap: float | None = None,
    z_loss: float | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` in float32 for hidden (N, C), weight (V, C),
    targets (N,) int64, reduction "mean" or "sum"; the matmuls run in autocast's dtype when it is
    on. With ``softcap`` the logits are capped first; with ``z_loss`` its term is added."""
    return linear_loss_terms(hidden, weight, targets, reduction, softcap, z_loss).objective


def linear_loss_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    softcap: float | None = None,
    z_loss: float | None = None,
) -> LossTerms:
    """``linear_cross_entropy`` with its terms apart (LossTerms)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not 'mean' or 'sum'")
    if torch.compiler.is_compiling():
        logits = F.linear(hidden, weight).float()  # (N, V)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        cross_entropy = F.cross_entropy(logits, targets, reduction=reduction)
        if not z_loss:
            return LossTerms(cross_entropy, cross_entropy.detach(), torch.zeros_like(cross_entropy.detach()))
        z_term = z_loss * logits.logsumexp(-1).square()
        z_term = z_term.mean() if reduction == "mean" else z_term.sum()
        return LossTerms(cross_entropy + z_term, cross_entropy.detach(), z_term.detach())
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    objective, cross_entropy, z_term = _ChunkedLinearCrossEntropy.apply(
        hidden, weight, targets, reduction, dtype, softcap, z_loss or 0.0
    )
    return LossTerms(objective, cross_entropy, z_term)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients a chunk of rows at a time, in the forward pass; backward only scales them.

    The gradients are made unscaled (softmax - one_hot, plus z-loss's 2 z log(Z) softmax, times
    the soft-cap's 1 - tanh^2) and scaled once, in backward, by the mean's 1/N and the incoming
    gradient together: on the small (N, C) and (V, C) results rather than on every chunk's (n, V)
    logits. Every pass over the logits runs row by row in a fused kernel (log_softmax) or is one
    elementwise pass. Outputs: the objective (differentiable), then the cross-entropy and the
    z-loss term alone (not differentiable: for logging)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, reduction, dtype, softcap, z_loss):
        N, V = hidden.size(0), weight.size(0)
        rows = max(1, CHUNK_ELEMENTS // V)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):  # the casts are made here, once
            h, w = hidden.to(dtype), weight.to(dtype)
            losses, z_sums, grad_hidden, grad_weight = [], [], [], None
            for start in range(0, N, rows):
                h_chunk, t_chunk = h[start : start + rows], targets[start : start + rows]  # (n, C), (n,)
                logits = (h_chunk @ w.T).float()  # (n, V)
                if softcap is None and not z_loss:  # the plain loss: one fused kernel
                    log_probs = torch.log_softmax(logits, dim=-1)  # (n, V)
                else:  # two (n, V) buffers at most: the capped tanh (for backward) and the log-probs
                    if softcap is not None:
                        capped = torch.tanh(logits.div_(softcap))  # kept for the gradient's 1 - tanh^2
                        logits = capped * softcap
                    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
                    log_probs = logits.sub_(log_z)  # (n, V), in place
                del logits
                losses.append(-log_probs.gather(1, t_chunk[:, None]).sum())
                if z_loss:
                    z_sums.append(log_z.square().sum())
                if not wants_grad:
                    continue
                grad = log_probs.exp_()  # d loss_i / d logits_i = softmax - one_hot(target), in place
                if z_loss:  # d (z log(Z)^2) / d logits = 2 z log(Z) softmax
                    grad.mul_(1.0 + 2.0 * z_loss * log_z)
                grad[torch.arange(grad.size(0), device=grad.device), t_chunk] -= 1.0
                if softcap is not None:  # through cap * tanh(s / cap): times 1 - tanh^2
                    grad.mul_(1.0 - capped.square_())
                grad = grad.to(dtype)
                grad_hidden.append(grad @ w)  # (n, C)
                chunk_grad_weight = grad.T @ h_chunk  # (V, C)
                if grad_weight is None:
                    grad_weight = chunk_grad_weight.float()
                else:
                    grad_weight += chunk_grad_weight
        scale = 1.0 / N if reduction == "mean" else 1.0
        cross_entropy = (torch.stack(losses).sum() if len(losses) > 1 else losses[0]) * scale
        z_term = z_loss * torch.stack(z_sums).sum() * scale if z_loss else torch.zeros_like(cross_entropy)
        ctx.scale = scale
        ctx.dtypes = hidden.dtype, weight.dtype
        if wants_grad:
            ctx.save_for_backward(torch.cat(grad_hidden) if len(grad_hidden) > 1 else grad_hidden[0], grad_weight)
        ctx.mark_non_differentiable(cross_entropy, z_term)
        return cross_entropy + z_term, cross_entropy, z_term

    @staticmethod
    def backward(ctx, grad_loss, _grad_cross_entropy, _grad_z):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss * ctx.scale  # a 0-d tensor: no sync
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = (grad_hidden * scale).to(hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * scale).to(weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None, None, None
