"""Key/value cache for decoding one token at a time: each step computes keys and values for its
new tokens only and attends to those of all earlier steps, kept here.

Shapes: B batch, T new tokens, L layers, K key/value heads, H query heads, S = max_len, D head size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Preallocated keys and values of every layer, and ``pos``: how many positions they hold,
    which is also the position of the next token fed to the model. With document masking
    (masks.py) the model also keeps here each position's document (``documents``, (B, S)), the
    next token's (``next_document``, (B,)) and where that one started (``doc_start``, (B,))."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        # Allocated once: growing by concatenation would copy the whole cache every step.
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)  # (L, B, K, S, D)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.max_len = max_len
        self.pos = 0
        self.documents = torch.zeros(batch_size, max_len, dtype=torch.int32, device=device)
        self.next_document = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.doc_start = torch.zeros(batch_size, dtype=torch.long, device=device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values k, v (B, K, T, D) of ``layer`` at positions pos..pos+T-1;
        returns those of every position so far, (B, K, pos + T, D) each."""
        start, T = self.pos, k.size(2)
        end = start + T
        self.check_room(T)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def check_room(self, T: int) -> None:
        """A ValueError unless T more positions fit."""
        if self.pos + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: no room for {T} more after {self.pos}")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the new queries q (B, H, T, D) to every position so far, k, v
        (B, K, pos + T, D) as ``store`` returns them: (B, H, T, D)."""
        start, T = self.pos, q.size(2)
        if start == 0:  # a prefill: plain causal attention over the new tokens
            mask, causal = None, True
        elif T == 1:  # one new token: it may see every cached position, so no mask
            mask, causal = None, False
        else:  # new token i (at position start + i) sees positions 0..start + i
            mask, causal = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start), False
        gqa = k.size(1) != q.size(1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)

    def advance(self, T: int) -> None:
        """Called by the model once every layer has stored its T new positions."""
        self.pos += T
