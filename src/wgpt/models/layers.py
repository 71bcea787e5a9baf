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


class CosineNorm(nn.Module):
    """x / ||x|| times one learned scale, initialized to sqrt(C) (templateGPT's CosineNorm): at the
    start it equals RMSNorm without gains, x / rms(x) (with eps added to the sum of squares, where
    RMSNorm adds it to their mean); where RMSNorm learns a gain per feature, this learns one for
    all. ``affine`` false: the scale stays sqrt(C). (B, T, C) -> (B, T, C)."""

    def __init__(self, d_embed: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps, self.d_embed = eps, d_embed
        # Shape (1,), not a 0-d tensor: FSDP shards parameters along their first dimension.
        self.scale = nn.Parameter(torch.full((1,), math.sqrt(d_embed))) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # the sum of squares in float32, as RMSNorm's
        unit = xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + self.eps)
        scale = self.scale if self.scale is not None else math.sqrt(self.d_embed)
        return (unit * scale).to(x.dtype)


def make_norm(norm: Norm, d_embed: int, eps: float, bias: bool, affine: bool = True) -> nn.Module:
    """``affine`` false: no learned gain (nor LayerNorm's bias)."""
    if norm == "layernorm":
        return nn.LayerNorm(d_embed, eps=eps, elementwise_affine=affine, bias=bias and affine)
    if norm == "cosinenorm":
        return CosineNorm(d_embed, eps, affine)
    # RMSNorm scales only: it centres nothing, so it has no bias to learn.
    return nn.RMSNorm(d_embed, eps=eps, elementwise_affine=affine)


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
