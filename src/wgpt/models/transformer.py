"""A decoder-only transformer whose architecture is set by keyword knobs: GPT-2 and Llama 3 are
two settings of it (gpt.py, llama.py), and every mix of the two is a config override away.

Every block is pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). The knobs:

    norm            layernorm (GPT-2; with bias when ``bias``) | rmsnorm (Llama; no bias) |
                    cosinenorm (x / ||x|| times one learned scale, layers.CosineNorm)
    norm_affine     the norms' learned gains (and LayerNorm's bias); false: none
    qk_norm         queries and keys normalized per head by the model's norm (gains over the head
                    dimension, shared by the heads) before the rotation and the product (OLMo 2, Qwen3)
    activation      gelu (tanh approximation, as GPT-2) | silu | relu | relu2 (squared ReLU)
    gated           false: proj(act(fc(x))), 4 x d_embed wide (GPT-2)
                    true:  proj(act(gate(x)) * up(x)), a GLU (SwiGLU with silu, as Llama), 2/3 of
                           that width (the same parameters) times ffn_dim_multiplier, rounded up
                           to a multiple of multiple_of
    pos             learned (an embedding per position added to the tokens', GPT-2) |
                    rotary (queries and keys rotated by position, Llama; base rope_theta)
    n_kv_heads      key/value heads, shared by n_heads / n_kv_heads query heads each (grouped-query
                    attention); None: one per query head (multi-head attention, GPT-2)
    bias            biases in every linear layer and LayerNorm (GPT-2) or none (Llama)
    dropout         probability on the embeddings, attention weights and both residual branches
    dropout_embed, dropout_attn, dropout_resid
                    each place's own probability where set (None: ``dropout``'s)
    tie_embeddings  the output layer reuses the token embedding matrix (GPT-2) or has its own
    zero_init       the output projections of attention and MLP start at zero (each block starts
                    as the identity; modded-nanogpt), instead of GPT-2's depth-scaled init
    parallel_block  x + attn(norm(x)) + mlp(norm(x)), one norm for both (GPT-J, PaLM), instead of
                    the two residual steps above
    logit_softcap   logits squashed as cap * tanh(logits / cap) (Gemma 2), in forward() and the loss
    z_loss          weight of PaLM's auxiliary loss log(Z)^2 (Z: the softmax's normalizer), added
                    in training mode only (validation reports the cross-entropy alone)
    attn_window     a query sees the latest attn_window positions only, itself included (sliding
                    window attention; Mistral, Gemma 2); None: every earlier position
    window_pattern  which layers are windowed: a string over the layers, repeated when shorter
                    (S: windowed, L: full, e.g. SSSL); None: every layer. The last layer is not
                    forced full: end the pattern in L for that
    document_mask   attention never crosses an end-of-text token (``eot_id``, which closes its own
                    document): packed documents do not see each other (masks.py)
    document_positions
                    rotary positions restart at 0 at every document (document_mask only)
    eot_id          the end-of-text id document masking looks for; train.py sets it from the
                    tokenizer where it is None
    sdpa            PyTorch's fused attention kernels, or the attention written out (attention.py)

Shapes: B batch, T sequence length, C = d_embed, H query heads, K key/value heads (K divides H),
D = C // H head size, F MLP hidden size, V vocab.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from wgpt.models.attention import Attention, uses_flex
from wgpt.models.knobs import Activation, ModelConfigError, Norm, Positions, check_knobs, place_dropout  # noqa: F401  (re-exported)
from wgpt.models.kv_cache import KVCache
from wgpt.models.layers import MLP, GatedMLP, make_norm, mlp_hidden_size  # noqa: F401  (GatedMLP: re-exported)
from wgpt.models.loss import LossTerms, linear_loss_terms, softcapped
from wgpt.models.masks import AttentionMasks, document_ids, positions_in_documents, windows_by_layer
from wgpt.models.rotary import rotary_tables


class Block(nn.Module):
    def __init__(
        self,
        d_embed: int,
        n_heads: int,
        n_kv_heads: int,
        hidden: int,
        norm: Norm,
        norm_eps: float,
        norm_affine: bool,
        activation: Activation,
        gated: bool,
        bias: bool,
        attn_dropout: float,
        resid_dropout: float,
        sdpa: bool,
        parallel: bool = False,
        qk_norm: bool = False,
        window: int | None = None,
    ):
        super().__init__()
        self.parallel = parallel
        self.attn_norm = make_norm(norm, d_embed, norm_eps, bias, norm_affine)
        head_norm = partial(make_norm, norm, eps=norm_eps, bias=False, affine=norm_affine) if qk_norm else None
        self.attn = Attention(d_embed, n_heads, n_kv_heads, bias, attn_dropout, sdpa, head_norm, window)
        # Parallel: attn_norm feeds both branches, and there is no mlp_norm (a parameter without a
        # gradient would fail DDP's check that every parameter gets one).
        self.mlp_norm = None if parallel else make_norm(norm, d_embed, norm_eps, bias, norm_affine)
        self.mlp = (GatedMLP if gated else MLP)(d_embed, hidden, activation, bias)
        self.dropout = nn.Dropout(resid_dropout)  # on each branch, before it joins the residual stream

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        masks: AttentionMasks | None = None,
    ) -> torch.Tensor:
        if self.parallel:  # GPT-J, PaLM: both branches read one normalized input, added together
            h = self.attn_norm(x)
            return x + self.dropout(self.attn(h, rope, cache, layer, masks)) + self.dropout(self.mlp(h))
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, cache, layer, masks))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """A decoder-only language model; see the module docstring for what each knob does.

    Defaults are GPT-2 small's shape and architecture. ``config`` holds every constructor
    argument, so ``type(model)(**model.config)`` builds the same architecture again (checkpoints
    store it). Bad knobs raise a ModelConfigError before any weight is allocated.

    A subclass is a setting of these knobs: it declares no argument, only ``DEFAULTS`` (knob:
    value, added to those of the classes it derives from), and its constructor is this one with
    those defaults (its signature shows them, so config checks, ``python -m wgpt.shapes`` and IDEs
    see the subclass's own defaults). A subclass with its own ``__init__`` sets no ``DEFAULTS``.
    """

    DEFAULTS: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "DEFAULTS" not in vars(cls):
            return
        if "__init__" in vars(cls):
            raise TypeError(f"{cls.__name__} sets DEFAULTS and its own __init__: give its defaults in one of them")
        defaults: dict[str, Any] = {}
        for base in reversed(cls.__mro__):  # a subclass of GPT starts from GPT's defaults
            defaults.update(vars(base).get("DEFAULTS", {}))
        signature = inspect.signature(Transformer.__init__)
        unknown = set(defaults) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{cls.__name__}.DEFAULTS sets {sorted(unknown)}, which are not Transformer knobs")
        signature = signature.replace(
            parameters=[p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()]
        )

        def __init__(self, **knobs):
            Transformer.__init__(self, **{**defaults, **knobs})

        __init__.__signature__ = signature
        __init__.__annotations__ = Transformer.__init__.__annotations__  # for the config checks' type hints
        __init__.__doc__ = f"{cls.__name__}: the Transformer with {cls.__name__}.DEFAULTS."
        __init__.__module__, __init__.__qualname__ = cls.__module__, f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__

    def __init__(
        self,
        *,
        vocab_size: int = 50304,
        d_embed: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        n_kv_heads: int | None = None,
        max_seq_len: int = 1024,
        norm: Norm = "layernorm",
        norm_eps: float = 1e-5,
        norm_affine: bool = True,
        qk_norm: bool = False,
        activation: Activation = "gelu",
        gated: bool = False,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        pos: Positions = "learned",
        rope_theta: float = 10000.0,
        bias: bool = True,
        dropout: float = 0.0,
        dropout_embed: float | None = None,
        dropout_attn: float | None = None,
        dropout_resid: float | None = None,
        tie_embeddings: bool = True,
        zero_init: bool = False,
        parallel_block: bool = False,
        logit_softcap: float | None = None,
        z_loss: float | None = None,
        attn_window: int | None = None,
        window_pattern: str | None = None,
        document_mask: bool = False,
        document_positions: bool = False,
        eot_id: int | None = None,
        sdpa: bool = True,
        name: str = "transformer",
    ):
        super().__init__()
        self.config = dict(
            name=name,
            vocab_size=vocab_size,
            d_embed=d_embed,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            max_seq_len=max_seq_len,
            norm=norm,
            norm_eps=norm_eps,
            norm_affine=norm_affine,
            qk_norm=qk_norm,
            activation=activation,
            gated=gated,
            multiple_of=multiple_of,
            ffn_dim_multiplier=ffn_dim_multiplier,
            pos=pos,
            rope_theta=rope_theta,
            bias=bias,
            dropout=dropout,
            dropout_embed=dropout_embed,
            dropout_attn=dropout_attn,
            dropout_resid=dropout_resid,
            tie_embeddings=tie_embeddings,
            zero_init=zero_init,
            parallel_block=parallel_block,
            logit_softcap=logit_softcap,
            z_loss=z_loss,
            attn_window=attn_window,
            window_pattern=window_pattern,
            document_mask=document_mask,
            document_positions=document_positions,
            eot_id=eot_id,
            sdpa=sdpa,
        )
        check_knobs(self.config)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        hidden = mlp_hidden_size(d_embed, gated, multiple_of, ffn_dim_multiplier)
        self.max_seq_len = max_seq_len
        self.rotary = pos == "rotary"
        self.logit_softcap, self.z_loss = logit_softcap, z_loss
        # Document masking's end-of-text id, None without it; positions restart per document where set.
        self.eot_id = eot_id if document_mask else None
        self.document_positions = document_positions
        self.masked = document_mask or attn_window is not None  # attention is more than causal

        self.wte = nn.Embedding(vocab_size, d_embed)
        if self.rotary:
            # Buffers, not parameters: they follow .to(device) but are rebuilt, not checkpointed.
            cos, sin = rotary_tables(d_embed // n_heads, max_seq_len, rope_theta)  # (max_seq_len, D/2) each
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.wpe = nn.Embedding(max_seq_len, d_embed)
        self.drop = nn.Dropout(place_dropout(self.config, "embed"))
        self.blocks = nn.ModuleList(
            Block(
                d_embed,
                n_heads,
                n_kv_heads,
                hidden,
                norm,
                norm_eps,
                norm_affine,
                activation,
                gated,
                bias,
                place_dropout(self.config, "attn"),
                place_dropout(self.config, "resid"),
                sdpa,
                parallel_block,
                qk_norm,
                window,
            )
            for window in windows_by_layer(n_layers, attn_window, window_pattern)
        )
        self.layer_windows = tuple(block.attn.window for block in self.blocks)
        self.final_norm = make_norm(norm, d_embed, norm_eps, bias, norm_affine)
        self.lm_head = nn.Linear(d_embed, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix embeds tokens and scores them

        self.apply(_init_weights)
        for name_, p in self.named_parameters():
            if name_.endswith("proj.weight"):  # the projections into the residual stream
                if zero_init:
                    nn.init.zeros_(p)
                else:  # GPT-2: scaled by depth
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, V), soft-capped where ``logit_softcap`` is set.
        With a cache (see ``new_cache``), the tokens continue the sequence it holds: they take
        positions cache.pos.. and are added to it."""
        return softcapped(self.lm_head(self.hidden_states(input, cache)), self.logit_softcap)  # (B, T, V)

    def loss(self, input: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the next-token predictions for ``input`` (B, T) against ``targets`` (B, T),
        without the (B, T, V) logits in memory (see loss.py): what training and evaluation call.
        In training mode, with ``z_loss`` set, its term is added."""
        return self.loss_terms(input, targets, reduction).objective

    def loss_terms(self, input: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> LossTerms:
        """``loss`` with the cross-entropy and the z-loss term apart, for logging."""
        hidden = self.hidden_states(input).flatten(0, 1)  # (B*T, C)
        z_loss = self.z_loss if self.training else None  # a training objective, like dropout
        return linear_loss_terms(hidden, self.lm_head.weight, targets.flatten(), reduction, self.logit_softcap, z_loss)

    def hidden_states(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> the final norm's output (B, T, C), what the output layer scores."""
        B, T = input.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}")
        if cache is not None:  # before any of its state changes
            cache.check_room(T)
        x = self.wte(input)  # (B, T, C)
        masks = self.attention_masks(input, cache) if self.masked else None
        rope = None
        if self.rotary and self.document_positions:  # each token's position in its own document
            doc_start = None if cache is None else cache.doc_start
            positions, next_start = positions_in_documents(input, self.eot_id, start, doc_start)  # (B, T)
            if cache is not None:
                cache.doc_start = next_start
            rope = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, D/2) each
        elif self.rotary:
            rope = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D/2) each
        else:
            x = x + self.wpe(torch.arange(start, start + T, device=input.device))  # (T, C), every row alike
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, masks)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)

    def attention_masks(self, input: torch.Tensor, cache: KVCache | None = None) -> AttentionMasks:
        """The masks of a forward pass over ``input`` (B, T), shared by its layers; with a cache,
        the new tokens' documents are added to it."""
        start, T = (0 if cache is None else cache.pos), input.size(1)
        attn = self.blocks[0].attn
        dropout = attn.dropout if self.training else 0.0
        kinds = dict(
            windows=self.layer_windows, flex=uses_flex(input.device, attn.sdpa, dropout, cache is None, attn.head_dim)
        )
        if self.eot_id is None:  # windows only
            return AttentionMasks(start, T, input.device, **kinds)
        if cache is None:
            docs = document_ids(input, self.eot_id)  # (B, T)
            return AttentionMasks(0, T, input.device, docs, docs, **kinds)
        docs = document_ids(input, self.eot_id, first=cache.next_document)
        cache.documents[:, start : start + T] = docs
        cache.next_document = docs[:, -1] + (input[:, -1] == self.eot_id).int()
        return AttentionMasks(start, T, input.device, docs, cache.documents[:, : start + T], **kinds)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty KVCache for ``batch_size`` sequences of up to ``max_len`` (max_seq_len) tokens,
        on the model's device and in its dtype unless given. It stores the n_kv_heads heads only."""
        weight = self.lm_head.weight
        attn = self.blocks[0].attn
        return KVCache(
            len(self.blocks),
            batch_size,
            attn.n_kv_heads,
            max_len or self.max_seq_len,
            attn.head_dim,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
