"""GPT-2 (Radford et al., 2019): learned positions, pre-LayerNorm blocks, a GELU MLP 4x wide,
multi-head attention, biases, tied embeddings.

GPT-2 is one setting of the configurable Transformer (transformer.py): this class only sets its
defaults, and every knob can still be changed: ``GPT(norm="rmsnorm", pos="rotary")``, or
``python train.py model=gpt2-tiny model.norm=rmsnorm model.pos=rotary``.
"""

from __future__ import annotations

from wgpt.models.transformer import Transformer


class GPT(Transformer):
    """GPT-2. Defaults are GPT-2 small (124M parameters with the padded 50,304 vocabulary)."""

    DEFAULTS = dict(
        vocab_size=50304,  # GPT-2's 50,257 tokens, padded to a multiple of 64
        d_embed=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=None,  # a key/value head per query head
        max_seq_len=1024,
        norm="layernorm",
        activation="gelu",
        gated=False,  # proj(gelu(fc(x))), 4 x d_embed wide
        pos="learned",
        bias=True,
        tie_embeddings=True,
        name="gpt2",
    )
