"""Which keys each query may see beyond causality: a sliding window (``attn_window``: the latest
that many positions, the query's own included) and document borders (``document_mask``: the bins
are documents packed back to back, each closed by end-of-text, and attention stays inside one).

Document ids come from the tokens themselves, on the device (``input == eot``, a running count),
so batches stay (input, target) and every user of the model (training, eval, generation, a KV
cache) gets the same masks from its config. The masks of a forward pass are built once, one per
window size the layers use (``AttentionMasks``), and shared by the layers: never per head or per
layer.

Shapes: B batch, T new tokens (queries), S = start + T keys (with a cache: the cached ones too).
"""

from __future__ import annotations

import functools

import torch


def windows_by_layer(n_layers: int, window: int | None, pattern: str | None) -> list[int | None]:
    """Each layer's window: ``pattern`` over the layers, repeated when shorter (S: ``window``,
    L: full attention, None); every layer windowed where pattern is None. The last layer is not
    forced full: a pattern that wants it full ends in L (SSSL)."""
    if window is None:
        return [None] * n_layers
    pattern = pattern or "S"
    return [window if pattern[i % len(pattern)] == "S" else None for i in range(n_layers)]


def document_ids(input: torch.Tensor, eot_id: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T) int32: the document of each token, counted from ``first`` (B,) (0 where
    None). End-of-text closes its own document: the token after it starts the next one."""
    is_eot = (input == eot_id).int()
    ids = is_eot.cumsum(1, dtype=torch.int32) - is_eot
    return ids if first is None else ids + first[:, None]


def positions_in_documents(
    input: torch.Tensor, eot_id: int, start: int, doc_start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids at positions start.. -> ((B, T) positions counted from each token's document's
    start, (B,) where the document after the last token starts), for rotary positions that
    restart at every document. ``doc_start`` (B,): where the document the first token belongs to
    started, when tokens before ``start`` exist (a KV cache carries it)."""
    B, T = input.shape
    positions = torch.arange(start, start + T, device=input.device).expand(B, T)  # (B, T)
    after_eot = torch.zeros_like(input, dtype=torch.bool)
    after_eot[:, 1:] = input[:, :-1] == eot_id
    starts = torch.where(after_eot, positions, 0)  # a document starts here, or 0 (no news)
    if doc_start is not None:  # the latest start before these tokens
        starts = torch.cat([doc_start[:, None], starts], dim=1)
    starts = starts.cummax(dim=1).values[:, -T:]  # the latest start at or before each token
    next_start = torch.where(input[:, -1] == eot_id, start + T, starts[:, -1])
    return positions - starts, next_start


class AttentionMasks:
    """The keys each of T new queries (positions start..start+T-1) may see among S = start + T
    keys (positions 0..S-1), for any window; ``q_docs`` (B, T) and ``k_docs`` (B, S): document ids,
    or None without document masking. The mask of each of ``windows`` (the layers' windows) is
    built here, before any layer runs, and shared by every layer with that window: a boolean one,
    or with ``flex`` FlexAttention's block mask. (Built inside the first layer that needs it, a
    compiled block would trace twice, once building and once reading it.)"""

    def __init__(
        self,
        start: int,
        T: int,
        device,
        q_docs: torch.Tensor | None = None,
        k_docs: torch.Tensor | None = None,
        windows: tuple[int | None, ...] = (),
        flex: bool = False,
    ):
        self.start, self.T, self.device, self.flex = start, T, device, flex
        self.q_docs, self.k_docs = q_docs, k_docs
        self._dense: dict[int | None, torch.Tensor] = {}
        self._blocks: dict[int | None, object] = {}
        for window in dict.fromkeys(windows):  # each once, in order
            if not self.is_causal(window):
                self.block(window) if flex else self.dense(window)

    def is_causal(self, window: int | None) -> bool:
        """Whether ``window``'s mask is plain causal attention over whole sequences (no cache)."""
        return self.q_docs is None and self.start == 0 and (window is None or window >= self.T)

    def dense(self, window: int | None) -> torch.Tensor:
        """Whether query i may see key j: (1, 1, T, S) bool, or (B, 1, T, S) with documents."""
        if window not in self._dense:
            q = torch.arange(self.start, self.start + self.T, device=self.device)[:, None]  # (T, 1)
            k = torch.arange(self.start + self.T, device=self.device)[None, :]  # (1, S)
            allowed = k <= q
            if window is not None:
                allowed = allowed & (q - k < window)
            allowed = allowed[None, None]  # (1, 1, T, S)
            if self.q_docs is not None:
                allowed = allowed & (self.q_docs[:, None, :, None] == self.k_docs[:, None, None, :])
            self._dense[window] = allowed
        return self._dense[window]

    def block(self, window: int | None):
        """The same mask as FlexAttention's block-sparse BlockMask (whole sequences only, no cache):
        blocks no query of which sees any key are skipped, not computed and masked."""
        if window not in self._blocks:
            from torch.nn.attention.flex_attention import create_block_mask  # lazy: only GPU runs use it

            docs = self.q_docs

            def allowed(b, h, q_idx, kv_idx):
                keep = kv_idx <= q_idx
                if window is not None:
                    keep = keep & (q_idx - kv_idx < window)
                if docs is not None:
                    keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
                return keep

            B = None if docs is None else docs.size(0)
            self._blocks[window] = create_block_mask(allowed, B, None, self.T, self.T, device=self.device)
        return self._blocks[window]


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """FlexAttention of q (B, H, T, D) to k, v (B, K, T, D) under ``block_mask``, compiled: within a
    compiled model as part of its graph, else by a compiled function of its own (eager, it would
    run a slow reference that holds every score)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    fn = flex if torch.compiler.is_compiling() else compiled_flex_attention()
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1))


@functools.cache
def compiled_flex_attention():
    """FlexAttention compiled once per process; shapes that change (a last, smaller batch) make it
    dynamic after the first recompile, not one graph per shape."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex)
