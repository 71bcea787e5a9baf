"""GPT-2 (Radford et al., 2019): learned positions, pre-LayerNorm blocks, a GELU MLP 4x wide,
multi-head attention, biases, tied embeddings.

GPT-2 is one setting of the configurable Transformer (transformer.py): this class only fixes
its defaults. Every knob can still be changed: ``GPT(norm="rmsnorm", pos="rotary")``, or
``python train.py model=gpt2-tiny model.norm=rmsnorm model.pos=rotary``.
"""

from __future__ import annotations

from wgpt.models.transformer import Activation, Norm, Positions, Transformer


class GPT(Transformer):
    """GPT-2. Defaults are GPT-2 small (124M parameters with the padded 50,304 vocabulary)."""

    def __init__(
        self,
        *,
        vocab_size: int = 50304,  # GPT-2's 50,257 tokens, padded to a multiple of 64
        d_embed: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        n_kv_heads: int | None = None,  # a key/value head per query head
        max_seq_len: int = 1024,
        norm: Norm = "layernorm",
        norm_eps: float = 1e-5,
        activation: Activation = "gelu",
        gated: bool = False,  # proj(gelu(fc(x))), 4 x d_embed wide
        multiple_of: int = 256,  # multiple_of and ffn_dim_multiplier size gated MLPs only
        ffn_dim_multiplier: float | None = None,
        pos: Positions = "learned",
        rope_theta: float = 10000.0,  # pos="rotary" only
        bias: bool = True,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        sdpa: bool = True,
        name: str = "gpt2",
    ):
        super().__init__(
            vocab_size=vocab_size, d_embed=d_embed, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
            max_seq_len=max_seq_len, norm=norm, norm_eps=norm_eps, activation=activation, gated=gated,
            multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier, pos=pos, rope_theta=rope_theta,
            bias=bias, dropout=dropout, tie_embeddings=tie_embeddings, sdpa=sdpa, name=name,
        )  # fmt: skip
