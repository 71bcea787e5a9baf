"""The Transformer's layers besides attention: norms, activations and the MLPs.

Shapes: B batch, T sequence length, C = d_embed, F MLP hidden size.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn

from wgpt.models.knobs import Activation, Norm


class ReLU2(nn.Module):
    """Squared ReLU, relu(x)^2 (Primer; modded-nanogpt's MLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


ACTIVATIONS = {"gelu": partial(nn.GELU, approximate="tanh"), "silu": nn.SiLU, "relu": nn.ReLU, "relu2": ReLU2}


def make_norm(norm: Norm, d_embed: int, eps: float, bias: bool) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(d_embed, eps=eps, bias=bias)
    return nn.RMSNorm(d_embed, eps=eps)  # scale only: it centres nothing, so it has no bias to learn


def mlp_hidden_size(d_embed: int, gated: bool, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """GPT-2's 4 x d_embed; gated, Llama's 2/3 of that (three matrices, so the same parameters as
    two), times ffn_dim_multiplier, rounded up to a multiple of multiple_of."""
    if not gated:
        return 4 * d_embed
    hidden = int(2 * 4 * d_embed / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


class MLP(nn.Module):
    """proj(act(fc(x))): (B, T, C) -> (B, T, F) -> (B, T, C)."""

    def __init__(self, d_embed: int, hidden: int, activation: Activation, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_embed, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.proj = nn.Linear(hidden, d_embed, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class GatedMLP(nn.Module):
    """A gated linear unit, proj(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu, ReGLU
    with relu. (B, T, C) -> 2 x (B, T, F) -> (B, T, C)."""

    def __init__(self, d_embed: int, hidden: int, activation: Activation, bias: bool):
        super().__init__()
        self.gate_up = nn.Linear(d_embed, 2 * hidden, bias=bias)  # gate and up in one matmul
        self.act = ACTIVATIONS[activation]()
        self.proj = nn.Linear(hidden, d_embed, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(self.act(gate) * up)
