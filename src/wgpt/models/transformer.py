"""A decoder-only transformer whose architecture is set by keyword knobs: GPT-2 and Llama 3 are
two settings of it (gpt.py, llama.py), and every mix of the two is a config override away.

Every block is pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). The knobs:

    norm            layernorm (GPT-2; with bias when ``bias``) | rmsnorm (Llama; no bias)
    activation      gelu (tanh approximation, as GPT-2) | silu | relu
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
    tie_embeddings  the output layer reuses the token embedding matrix (GPT-2) or has its own
    sdpa            PyTorch's fused attention kernels, or the attention written out (attention.py)

Shapes: B batch, T sequence length, C = d_embed, H query heads, K key/value heads (K divides H),
D = C // H head size, F MLP hidden size, V vocab.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Any, Literal, get_args

import torch
import torch.nn as nn

from wgpt.models.attention import causal_attention
from wgpt.models.kv_cache import KVCache
from wgpt.models.loss import linear_cross_entropy
from wgpt.models.rotary import apply_rotary, rotary_tables
from wgpt.util.errors import WgptError

Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "silu", "relu"]
Positions = Literal["learned", "rotary"]

ACTIVATIONS = {"gelu": partial(nn.GELU, approximate="tanh"), "silu": nn.SiLU, "relu": nn.ReLU}


class ModelConfigError(WgptError, ValueError):
    """A knob with a value the model cannot be built with (a ValueError too, like bad shapes)."""


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


class Attention(nn.Module):
    """Causal self-attention with H query and K key/value heads (K = H: multi-head attention)."""

    def __init__(self, d_embed: int, n_heads: int, n_kv_heads: int, bias: bool, dropout: float, sdpa: bool):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_embed // n_heads
        self.dropout, self.sdpa = dropout, sdpa
        self.wq = nn.Linear(d_embed, n_heads * self.head_dim, bias=bias)
        self.wkv = nn.Linear(d_embed, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_heads * self.head_dim, d_embed, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        kv = self.wkv(x).view(B, T, 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, 2K, T, D)
        k, v = kv.chunk(2, dim=1)  # (B, K, T, D) each
        if rope is not None:  # rotary: positions enter here, as rotations of queries and keys
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.sdpa)
        else:  # decoding: the cache keeps the K heads only (rotated), as attention needs no more
            y = cache.attend(layer, q, k, v, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # heads side by side again


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


class Block(nn.Module):
    def __init__(
        self,
        d_embed: int,
        n_heads: int,
        n_kv_heads: int,
        hidden: int,
        norm: Norm,
        norm_eps: float,
        activation: Activation,
        gated: bool,
        bias: bool,
        dropout: float,
        sdpa: bool,
    ):
        super().__init__()
        self.attn_norm = make_norm(norm, d_embed, norm_eps, bias)
        self.attn = Attention(d_embed, n_heads, n_kv_heads, bias, dropout, sdpa)
        self.mlp_norm = make_norm(norm, d_embed, norm_eps, bias)
        self.mlp = (GatedMLP if gated else MLP)(d_embed, hidden, activation, bias)
        self.dropout = nn.Dropout(dropout)  # on each branch, before it joins the residual stream

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, cache, layer))
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
        activation: Activation = "gelu",
        gated: bool = False,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        pos: Positions = "learned",
        rope_theta: float = 10000.0,
        bias: bool = True,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
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
            activation=activation,
            gated=gated,
            multiple_of=multiple_of,
            ffn_dim_multiplier=ffn_dim_multiplier,
            pos=pos,
            rope_theta=rope_theta,
            bias=bias,
            dropout=dropout,
            tie_embeddings=tie_embeddings,
            sdpa=sdpa,
        )
        check_knobs(self.config)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        hidden = mlp_hidden_size(d_embed, gated, multiple_of, ffn_dim_multiplier)
        self.max_seq_len = max_seq_len
        self.rotary = pos == "rotary"

        self.wte = nn.Embedding(vocab_size, d_embed)
        if self.rotary:
            # Buffers, not parameters: they follow .to(device) but are rebuilt, not checkpointed.
            cos, sin = rotary_tables(d_embed // n_heads, max_seq_len, rope_theta)  # (max_seq_len, D/2) each
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.wpe = nn.Embedding(max_seq_len, d_embed)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_embed, n_heads, n_kv_heads, hidden, norm, norm_eps, activation, gated, bias, dropout, sdpa)
            for _ in range(n_layers)
        )
        self.final_norm = make_norm(norm, d_embed, norm_eps, bias)
        self.lm_head = nn.Linear(d_embed, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix embeds tokens and scores them

        self.apply(_init_weights)
        for name_, p in self.named_parameters():
            if name_.endswith("proj.weight"):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, V). With a cache (see ``new_cache``), the
        tokens continue the sequence it holds: they take positions cache.pos.. and are added to it."""
        return self.lm_head(self.hidden_states(input, cache))  # (B, T, V)

    def loss(self, input: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the next-token predictions for ``input`` (B, T) against ``targets`` (B, T),
        without the (B, T, V) logits in memory (see loss.py): what training and evaluation call."""
        hidden = self.hidden_states(input).flatten(0, 1)  # (B*T, C)
        return linear_cross_entropy(hidden, self.lm_head.weight, targets.flatten(), reduction)

    def hidden_states(self, input: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> the final norm's output (B, T, C), what the output layer scores."""
        B, T = input.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}")
        x = self.wte(input)  # (B, T, C)
        rope = None
        if self.rotary:
            rope = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D/2) each
        else:
            x = x + self.wpe(torch.arange(start, start + T, device=input.device))  # (T, C), every row alike
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)

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


def check_knobs(config: dict) -> None:
    """A one-line ModelConfigError for the first knob of a Transformer ``config`` that cannot be built."""
    for key in ("vocab_size", "d_embed", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
        _check_positive_int(key, config[key])
    if config["n_kv_heads"] is not None:
        _check_positive_int("n_kv_heads", config["n_kv_heads"])
    for key, choices in (("norm", Norm), ("activation", Activation), ("pos", Positions)):
        if config[key] not in get_args(choices):
            raise ModelConfigError(f"{key}={config[key]!r} is not one of {', '.join(get_args(choices))}")
    for key in ("gated", "bias", "tie_embeddings", "sdpa"):
        if not isinstance(config[key], bool):
            raise ModelConfigError(f"{key}={config[key]!r} is not true or false")
    if not _is_number(config["dropout"]) or not 0 <= config["dropout"] < 1:
        raise ModelConfigError(f"dropout={config['dropout']!r} is not a probability in [0, 1): 0.0 turns dropout off")
    for key in ("norm_eps", "rope_theta"):
        if not _is_number(config[key]) or config[key] <= 0:
            raise ModelConfigError(f"{key}={config[key]!r} is not a number > 0")
    multiplier = config["ffn_dim_multiplier"]
    if multiplier is not None and (not _is_number(multiplier) or multiplier <= 0):
        raise ModelConfigError(f"ffn_dim_multiplier={multiplier!r} is not a number > 0, or null for 1")
    if multiplier is not None and not config["gated"]:
        raise ModelConfigError(
            f"ffn_dim_multiplier={multiplier} sizes gated MLPs only (a plain one is 4 x d_embed): "
            "set gated=true or ffn_dim_multiplier=null"
        )
    d_embed, n_heads = config["d_embed"], config["n_heads"]
    if d_embed % n_heads:
        raise ModelConfigError(f"d_embed={d_embed} is not divisible by n_heads={n_heads}")
    n_kv_heads = config["n_kv_heads"]
    if n_kv_heads is not None and n_heads % n_kv_heads:
        raise ModelConfigError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
    if config["pos"] == "rotary" and (d_embed // n_heads) % 2:
        raise ModelConfigError(
            f"pos='rotary' rotates pairs of features, but the head size d_embed/n_heads = {d_embed}/{n_heads} "
            f"= {d_embed // n_heads} is odd: change d_embed or n_heads, or use pos=learned"
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{key}={value!r} is not a positive integer")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
