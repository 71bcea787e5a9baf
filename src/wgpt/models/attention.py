"""Self-attention: the ``Attention`` layer and the kernels it runs, causal or masked (masks.py).

Shapes: B batch, H query heads, K key/value heads (K divides H), T sequence length (queries),
S keys (T, or more with a KV cache), D head size, C = d_embed.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wgpt.models.kv_cache import KVCache
from wgpt.models.masks import AttentionMasks, flex_attention
from wgpt.models.rotary import apply_rotary

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
    if sdpa and not _short_cpu_bf16(q):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=_gqa(q, k))
    T = q.size(2)
    return written_out_attention(q, k, v, torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), dropout)


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masks: AttentionMasks,
    window: int | None,
    dropout: float = 0.0,
    sdpa: bool = True,
) -> torch.Tensor:
    """Attention of q (B, H, T, D) to k, v (B, K, S, D) where ``masks`` allows it for ``window``.

    FlexAttention, compiled and block-sparse, where ``masks.flex`` (``uses_flex``); else
    scaled_dot_product_attention with a boolean mask (``sdpa``); but the written-out product for
    short bfloat16 sequences on a CPU, as ``causal_attention``."""
    if masks.is_causal(window):
        return causal_attention(q, k, v, dropout, sdpa)
    if masks.flex:  # autocast leaves norms' outputs in float32; FlexAttention wants one dtype
        return flex_attention(q.to(v.dtype), k.to(v.dtype), v, masks.block(window))
    if sdpa and not _short_cpu_bf16(q):
        mask = masks.dense(window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=_gqa(q, k))
    return written_out_attention(q, k, v, masks.dense(window), dropout)


def uses_flex(device: torch.device, sdpa: bool, dropout: float, whole: bool, head_dim: int) -> bool:
    """Whether masked attention runs as FlexAttention: with ``sdpa``, on CUDA, without attention
    dropout (FlexAttention has none), over ``whole`` sequences (not a KV cache's), with heads of 16
    features or more (its kernels' minimum in torch 2.13). Never on CPUs, where FlexAttention has
    no backward (torch 2.13)."""
    return sdpa and device.type == "cuda" and dropout == 0.0 and whole and head_dim >= 16


# What a probe of the attention weights is given: the masked scores (-inf where not allowed) and
# the weights, both (B, H, T, S) (wgpt.models.probes).
AttentionProbe = Callable[[torch.Tensor, torch.Tensor], None]


def written_out_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    dropout: float = 0.0,
    probe: AttentionProbe | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D), where ``allowed`` (T, S), or broadcasting to (B, H, T, S)) v, with
    the (B, H, T, S) scores in memory: q (B, H, T, D), k, v (B, K, S, D) -> (B, H, T, D).
    ``probe(scores, weights)`` is shown the masked pre-softmax scores and the weights."""
    if _gqa(q, k):
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))  # (B, H, S, D)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~allowed, float("-inf"))  # (B, H, T, S)
    weights = scores.softmax(dim=-1)
    if probe is not None:
        probe(scores, weights)
    return F.dropout(weights, dropout) @ v  # dropout is given as 0 outside training


def _gqa(q: torch.Tensor, k: torch.Tensor) -> bool:
    return k.size(1) != q.size(1)  # each K/V head serves H/K query heads


def _short_cpu_bf16(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(2) <= CPU_BF16_WRITTEN_OUT_MAX_LEN


class Attention(nn.Module):
    """Causal self-attention with H query and K key/value heads (K = H: multi-head attention),
    over the latest ``window`` positions only where set (None: all earlier ones).

    ``probe``, None but while wgpt.models.probes measures the attention: the weights are then
    written out (whatever ``sdpa`` says) and shown to it."""

    probe: AttentionProbe | None = None  # a class default: set on an instance only while probed

    def __init__(
        self,
        d_embed: int,
        n_heads: int,
        n_kv_heads: int,
        bias: bool,
        dropout: float,
        sdpa: bool,
        qk_norm: Callable[[int], nn.Module] | None = None,
        window: int | None = None,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_embed // n_heads
        self.dropout, self.sdpa, self.window = dropout, sdpa, window
        self.wq = nn.Linear(d_embed, n_heads * self.head_dim, bias=bias)
        self.wkv = nn.Linear(d_embed, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_heads * self.head_dim, d_embed, bias=bias)
        # QK-norm: a norm over each head's D features (its gains shared by the heads), made by ``qk_norm(D)``.
        self.q_norm = qk_norm(self.head_dim) if qk_norm else None
        self.k_norm = qk_norm(self.head_dim) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        masks: AttentionMasks | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``rope``: cos, sin (T, D/2), or (B, T, D/2) with positions per
        row; ``masks``: where attention is more than causal (windows, documents)."""
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        kv = self.wkv(x).view(B, T, 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, 2K, T, D)
        k, v = kv.chunk(2, dim=1)  # (B, K, T, D) each
        if self.q_norm is not None:  # before the rotation, which keeps their norms
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # rotary: positions enter here, as rotations of queries and keys
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        dropout = self.dropout if self.training else 0.0
        if cache is not None:  # the cache keeps the K heads only (rotated), as attention needs no more
            k, v = cache.store(layer, k, v)  # (B, K, S, D): every position so far
        if self.probe is not None and cache is None:  # measured: the weights written out, as masks allow
            causal = masks is None or masks.is_causal(self.window)
            allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if causal else masks.dense(self.window)
            y = written_out_attention(q, k, v, allowed, dropout, self.probe)
        elif masks is not None and not masks.is_causal(self.window):
            y = masked_attention(q, k, v, masks, self.window, dropout, self.sdpa)
        elif cache is not None:
            y = cache.attend(q, k, v)
        else:
            y = causal_attention(q, k, v, dropout, self.sdpa)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # heads side by side again
