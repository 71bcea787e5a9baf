"""Llama 3 (Meta, 2024): RMSNorm, rotary positions, grouped-query attention, a SwiGLU MLP, no biases.

Llama 3 is one setting of the configurable Transformer (transformer.py): this class only fixes
its defaults. Every knob can still be changed: ``Llama(pos="learned", n_kv_heads=None)``, or
``python train.py model=llama3-tiny model.gated=false model.activation=gelu``.
"""

from __future__ import annotations

from wgpt.models.transformer import Activation, Norm, Positions, Transformer


class Llama(Transformer):
    """Llama 3. Defaults are GPT-2 small's shape (12 layers, 768 wide, 1024 context) with 4 KV
    heads and, as in Llama 3 8B, an untied output layer (153M parameters; 114M tied)."""

    def __init__(
        self,
        *,
        vocab_size: int = 50304,
        d_embed: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        n_kv_heads: int | None = 4,  # each key/value head serves 3 query heads
        max_seq_len: int = 1024,
        norm: Norm = "rmsnorm",
        norm_eps: float = 1e-5,
        activation: Activation = "silu",
        gated: bool = True,  # SwiGLU: proj(silu(gate(x)) * up(x))
        multiple_of: int = 256,  # SwiGLU width: 2/3 x 4 x 768 = 2048, rounded up to a multiple of this
        ffn_dim_multiplier: float | None = None,
        pos: Positions = "rotary",
        rope_theta: float = 500000.0,  # Llama 3's rotary base (Llama 2's: 10,000)
        bias: bool = False,
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        sdpa: bool = True,
        name: str = "llama3",
    ):
        super().__init__(
            vocab_size=vocab_size, d_embed=d_embed, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
            max_seq_len=max_seq_len, norm=norm, norm_eps=norm_eps, activation=activation, gated=gated,
            multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier, pos=pos, rope_theta=rope_theta,
            bias=bias, dropout=dropout, tie_embeddings=tie_embeddings, sdpa=sdpa, name=name,
        )  # fmt: skip
