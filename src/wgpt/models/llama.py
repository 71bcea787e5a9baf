"""Llama 3 (Meta, 2024): RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, no biases.

Shapes: B batch, T sequence length, C = d_embed, H query heads, K key/value heads,
D = C // H head size, F MLP hidden size, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wgpt.models.gpt import _init_weights
from wgpt.models.attention import causal_attention
from wgpt.models.kv_cache import KVCache


def rotary_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair: two (max_seq_len, D // 2) tables."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each consecutive pair of x (B, heads, T, D) by its position's angle."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, heads, T, D/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, d_embed: int, n_heads: int, n_kv_heads: int, dropout: float, sdpa: bool = True):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_embed // n_heads
        self.dropout, self.sdpa = dropout, sdpa
        self.wq = nn.Linear(d_embed, n_heads * self.head_dim, bias=False)
        self.wkv = nn.Linear(d_embed, 2 * n_kv_heads * self.head_dim, bias=False)
        self.proj = nn.Linear(n_heads * self.head_dim, d_embed, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = self.wkv(x).view(B, T, 2 * self.n_kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)  # (B, K, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.sdpa)
        else:  # decoding: the cache keeps K heads only, rotated, as GQA needs no more
            y = cache.attend(layer, q, k, v, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, d_embed: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_embed, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, d_embed, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, F) -> (B, T, C)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(
        self, d_embed: int, n_heads: int, n_kv_heads: int, hidden: int, dropout: float, norm_eps: float, sdpa: bool
    ):
        super().__init__()
        self.attn_norm = nn.RMSNorm(d_embed, eps=norm_eps)
        self.attn = Attention(d_embed, n_heads, n_kv_heads, dropout, sdpa)
        self.mlp_norm = nn.RMSNorm(d_embed, eps=norm_eps)
        self.mlp = SwiGLU(d_embed, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def mlp_hidden_size(d_embed: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Llama's SwiGLU width: 2/3 of 4 * d_embed (same parameters as a 4x GELU MLP), rounded up."""
    hidden = int(2 * 4 * d_embed / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


class Llama(nn.Module):
    """Llama 3. Defaults are GPT-2 small's shape (12 layers, 768 wide, 1024 context) with 4 KV
    heads and, as in Llama 3 8B, an untied output layer (153M parameters; 114M tied)."""

    def __init__(
        self,
        vocab_size: int = 50304,
        d_embed: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        n_kv_heads: int = 4,
        max_seq_len: int = 1024,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        rope_theta: float = 500000.0,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        sdpa: bool = True,
        name: str = "llama3",
    ):
        super().__init__()
        if d_embed % n_heads:
            raise ValueError(f"d_embed={d_embed} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
        hidden = mlp_hidden_size(d_embed, multiple_of, ffn_dim_multiplier)
        self.config = dict(
            name=name, vocab_size=vocab_size, d_embed=d_embed, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv_heads, max_seq_len=max_seq_len, multiple_of=multiple_of,
            ffn_dim_multiplier=ffn_dim_multiplier, rope_theta=rope_theta, norm_eps=norm_eps,
            dropout=dropout, tie_embeddings=tie_embeddings, sdpa=sdpa,
        )  # fmt: skip
        self.max_seq_len = max_seq_len
        self.tok_embeddings = nn.Embedding(vocab_size, d_embed)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_embed, n_heads, n_kv_heads, hidden, dropout, norm_eps, sdpa) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_embed, eps=norm_eps)
        self.lm_head = nn.Linear(d_embed, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        # Buffers, not parameters: they follow .to(device) but are rebuilt, not checkpointed.
        cos, sin = rotary_tables(d_embed // n_heads, max_seq_len, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(_init_weights)
        for name_, p in self.named_parameters():
            if name_.endswith("proj.weight"):  # residual projections scaled by depth, as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, V). With a cache (see ``new_cache``), the
        tokens continue the sequence it holds: they take positions cache.pos.. and are added to it."""
        B, T = input.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D/2)
        x = self.drop(self.tok_embeddings(input))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty KVCache for ``batch_size`` sequences of up to ``max_len`` (max_seq_len) tokens,
        on the model's device and in its dtype unless given. It stores the n_kv_heads heads only."""
        weight = self.lm_head.weight
        attn = self.blocks[0].attn
        return KVCache(
            len(self.blocks), batch_size, attn.n_kv_heads, max_len or self.max_seq_len, attn.head_dim,
            device=device or weight.device, dtype=dtype or weight.dtype,
        )  # fmt: skip
