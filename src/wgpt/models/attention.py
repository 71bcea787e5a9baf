"""Causal self-attention over whole sequences, shared by the models.

Shapes: B batch, H query heads, K key/value heads (K divides H), T sequence length, D head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Up to this length, in bfloat16 on a CPU, the written-out product trains faster than the fused
# kernel: forward + backward of (8, 6, 128, 32) took 3.7 ms against 10.3 ms, at 256 13.8 against
# 15.0 (2-core EPYC with AVX512-BF16, torch 2.13); from 512 on the fused kernel wins.
CPU_BF16_WRITTEN_OUT_MAX_LEN = 256


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0, sdpa: bool = True
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal mask) v for q (B, H, T, D) and k, v (B, K, T, D) -> (B, H, T, D).

    ``sdpa`` uses PyTorch's fused scaled_dot_product_attention: flash or memory-efficient kernels
    on GPUs, a fused kernel on CPUs, never the (T, T) matrix in memory; but for short bfloat16
    sequences on a CPU the written-out product, which is faster there. ``sdpa=False`` always writes
    the product out, the reference to check against or the place to try a new attention.
    """
    gqa = k.size(1) != q.size(1)  # each K/V head serves H/K query heads
    short_cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(2) <= CPU_BF16_WRITTEN_OUT_MAX_LEN
    if sdpa and not short_cpu_bf16:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
    if gqa:
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))  # (B, H, T, D)
    T = q.size(2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return F.dropout(weights, dropout) @ v  # dropout is given as 0 outside training
