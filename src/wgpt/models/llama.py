"""Llama 3 (Meta, 2024): RMSNorm, rotary positions, grouped-query attention, a SwiGLU MLP, no biases.

Llama 3 is one setting of the configurable Transformer (transformer.py): this class only sets
its defaults, and every knob can still be changed: ``Llama(pos="learned", n_kv_heads=None)``, or
``python train.py model=llama3-tiny model.gated=false model.activation=gelu``.
"""

from __future__ import annotations

from wgpt.models.transformer import Transformer


class Llama(Transformer):
    """Llama 3. Defaults are GPT-2 small's shape (12 layers, 768 wide, 1024 context) with 4 KV
    heads and, as in Llama 3 8B, an untied output layer (153M parameters; 114M tied)."""

    DEFAULTS = dict(
        vocab_size=50304,
        d_embed=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,  # each key/value head serves 3 query heads
        max_seq_len=1024,
        norm="rmsnorm",
        activation="silu",
        gated=True,  # SwiGLU: proj(silu(gate(x)) * up(x))
        multiple_of=256,  # SwiGLU width: 2/3 x 4 x 768 = 2048, rounded up to a multiple of this
        pos="rotary",
        rope_theta=500000.0,  # Llama 3's rotary base (Llama 2's: 10,000)
        bias=False,
        tie_embeddings=False,
        name="llama3",
    )
