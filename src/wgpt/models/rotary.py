"""Rotary position embedding (Su et al., 2021; RoFormer): each pair of a query's or key's
features is rotated by an angle proportional to its position, so that q . k depends on the
distance between them only. Nothing to learn, and nothing added to the residual stream.

Shapes: B batch, T sequence length, D head size, S = max_seq_len.
"""

from __future__ import annotations

import torch


def rotary_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair: two (S, D // 2) tables."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each consecutive pair of x (B, heads, T, D) by its position's angle; cos, sin (T, D // 2),
    or (B, T, D // 2) where each row has positions of its own (masks.positions_in_documents)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D/2): the same for every head
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, heads, T, D/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)
