"""GPT-2 (Radford et al., 2019): learned positions, pre-LayerNorm blocks, GELU MLP, tied embeddings.

Shapes: B batch, T sequence length, C = d_embed, H heads, D = C // H head size, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wgpt.models.attention import causal_attention
from wgpt.models.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, d_embed: int, n_heads: int, dropout: float, bias: bool, sdpa: bool = True):
        super().__init__()
        self.n_heads, self.dropout, self.sdpa = n_heads, dropout, sdpa
        self.qkv = nn.Linear(d_embed, 3 * d_embed, bias=bias)
        self.proj = nn.Linear(d_embed, d_embed, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.sdpa)
        else:  # decoding: attend to this layer's cached keys and values too
            y = cache.attend(layer, q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_embed: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_embed, 4 * d_embed, bias=bias)
        self.proj = nn.Linear(4 * d_embed, d_embed, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, d_embed: int, n_heads: int, dropout: float, bias: bool, sdpa: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_embed, bias=bias)
        self.attn = CausalSelfAttention(d_embed, n_heads, dropout, bias, sdpa)
        self.ln_2 = nn.LayerNorm(d_embed, bias=bias)
        self.mlp = MLP(d_embed, dropout, bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2. Defaults are GPT-2 small (124M parameters with the padded 50,304 vocabulary)."""

    def __init__(
        self,
        vocab_size: int = 50304,
        d_embed: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        max_seq_len: int = 1024,
        dropout: float = 0.0,
        bias: bool = True,
        sdpa: bool = True,
        name: str = "gpt2",
    ):
        super().__init__()
        if d_embed % n_heads:
            raise ValueError(f"d_embed={d_embed} is not divisible by n_heads={n_heads}")
        self.config = dict(
            name=name, vocab_size=vocab_size, d_embed=d_embed, n_layers=n_layers, n_heads=n_heads,
            max_seq_len=max_seq_len, dropout=dropout, bias=bias, sdpa=sdpa,
        )  # fmt: skip
        self.max_seq_len = max_seq_len
        self.wte = nn.Embedding(vocab_size, d_embed)
        self.wpe = nn.Embedding(max_seq_len, d_embed)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_embed, n_heads, dropout, bias, sdpa) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_embed, bias=bias)
        self.lm_head = nn.Linear(d_embed, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds tokens and scores them

        self.apply(_init_weights)
        for name_, p in self.named_parameters():
            if name_.endswith("proj.weight"):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, V). With a cache (see ``new_cache``), the
        tokens continue the sequence it holds: they take positions cache.pos.. and are added to it."""
        B, T = input.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}")
        pos = torch.arange(start, start + T, device=input.device)
        x = self.drop(self.wte(input) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty KVCache for ``batch_size`` sequences of up to ``max_len`` (max_seq_len) tokens,
        on the model's device and in its dtype unless given."""
        weight = self.lm_head.weight
        n_heads, d_embed = self.config["n_heads"], self.config["d_embed"]
        return KVCache(
            len(self.blocks), batch_size, n_heads, max_len or self.max_seq_len, d_embed // n_heads,
            device=device or weight.device, dtype=dtype or weight.dtype,
        )  # fmt: skip


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
