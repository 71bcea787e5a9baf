"""What a forward pass of a transformer shows inside, measured on one batch: the RMS of the
residual stream after each block, each attention layer's mean entropy and largest pre-softmax
score, and the largest output logit. The run's diagnostics (wgpt.core.diagnostics) call
``probe_forward`` every so many steps; nothing here logs, and nothing runs unless called.

Shapes: B batch, H heads, T queries, S keys, C d_embed, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wgpt.models.attention import Attention
from wgpt.models.loss import next_token_loss, softcapped

# Output logits are scored this many (row x vocabulary) entries at a time: never a whole (B, T, V).
LOGIT_CHUNK = 1 << 24


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy, in nats, of the attention rows of ``weights`` (..., S), each a distribution
    over the keys (0 where masked). A row spread evenly over n keys has log(n); one on a single key, 0."""
    return torch.special.entr(weights.float()).sum(-1).mean()


def largest_logit(hidden: torch.Tensor, weight: torch.Tensor, cap: float | None = None) -> torch.Tensor:
    """The largest entry of ``hidden`` (..., C) @ ``weight`` (V, C)^T, soft-capped by ``cap`` as
    the model caps its logits (a monotone map: the cap of the largest), a few rows at a time."""
    rows = hidden.reshape(-1, hidden.size(-1))
    chunk = max(1, LOGIT_CHUNK // weight.size(0))
    largest = torch.stack([(part @ weight.to(part.dtype).T).amax() for part in rows.split(chunk)]).amax()
    return softcapped(largest.float(), cap)


def probe_forward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward pass of ``model`` over ``inputs`` (B, T), as training runs it (its loss against
    ``targets``), measured on the device without a sync. Call it under ``torch.no_grad()``, in
    eval mode. Returns what the model has of:

    - ``residual_rms`` (n_blocks,): sqrt(mean(x^2)) of each of ``model.blocks``' outputs;
    - ``attn_entropy``, ``attn_max_logit`` (n_blocks,): each block's ``attn`` (an Attention),
      whose weights are written out for this pass: mean entropy of its rows (nats) and its
      largest pre-softmax score q.k / sqrt(D);
    - ``max_logit`` (): the largest output logit (from ``final_norm`` and ``lm_head``, scored in
      chunks), else the largest entry of ``model(inputs)``.

    Under FSDP2 call it on every rank: each block's parameters are gathered as in training."""
    blocks = list(getattr(model, "blocks", None) or [])
    residual: dict[int, torch.Tensor] = {}
    entropy: dict[int, torch.Tensor] = {}
    max_score: dict[int, torch.Tensor] = {}
    largest: list[torch.Tensor] = []
    hooks, probed = [], []

    def watch_block(i: int):
        def hook(module, args, output):
            residual[i] = output.float().pow(2).mean().sqrt()

        return hook

    def watch_attention(i: int):
        def probe(scores: torch.Tensor, weights: torch.Tensor) -> None:
            entropy[i], max_score[i] = attention_entropy(weights), scores.amax().float()

        return probe

    head, final_norm = getattr(model, "lm_head", None), getattr(model, "final_norm", None)
    scored = isinstance(head, nn.Linear) and isinstance(final_norm, nn.Module)

    def watch_final_norm(module, args, output):
        # Here, inside the forward: under FSDP2 the output layer's weight is gathered only now.
        largest.append(largest_logit(output, head.weight, getattr(model, "logit_softcap", None)))

    try:
        for i, block in enumerate(blocks):
            hooks.append(block.register_forward_hook(watch_block(i)))
            attn = getattr(block, "attn", None)
            if isinstance(attn, Attention):
                attn.probe = watch_attention(i)
                probed.append(attn)
        if scored:
            hooks.append(final_norm.register_forward_hook(watch_final_norm))
            next_token_loss(model, inputs, targets)
        else:
            largest.append(model(inputs).amax().float())
    finally:
        for hook in hooks:
            hook.remove()
        for attn in probed:
            del attn.probe  # back to the class default, None
    found = {"residual_rms": residual, "attn_entropy": entropy, "attn_max_logit": max_score}
    stats = {name: torch.stack([v[i] for i in sorted(v)]) for name, v in found.items() if v}
    if largest:
        stats["max_logit"] = largest[-1]
    return stats
