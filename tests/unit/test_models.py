"""The configurable Transformer and its two presets: sizes, each architecture knob on every preset,
mixed settings (training, causality, cached decoding), and knobs that cannot be built. Knobs through
train.py and a checkpoint: tests/e2e/test_models_cli.py."""

import functools
import inspect
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from wgpt.models import GPT, Llama, Transformer, padded_vocab_size
from wgpt.models.layers import CosineNorm, ReLU2
from wgpt.models.rotary import apply_rotary, rotary_tables
from wgpt.models.transformer import GatedMLP, ModelConfigError
from wgpt.tools.generate import generate
from wgpt.util.errors import WgptError

from conftest import ROOT
from helpers_models import override

PRESETS = ["gpt2-tiny", "gpt2", "llama3-tiny", "llama3"]


SMALL = dict(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, max_seq_len=16)


def model_config(name: str, *overrides: str):
    """conf/model/<name>.yaml's model config, composed as train.py does, with command-line overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"model={name}", *overrides]).model


@functools.cache
def preset_config(name: str):
    return model_config(name)  # composing takes a while: once per preset


def build(name: str, **knobs):
    cfg = OmegaConf.merge(preset_config(name), knobs)
    return instantiate(cfg, vocab_size=padded_vocab_size(50259))


def build_on_meta(name: str, **knobs):
    """The preset's modules, with knobs changed, and no memory for their weights."""
    with torch.device("meta"):
        return build(name, **knobs)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def norms(model) -> list[nn.Module]:
    return [m for block in model.blocks for m in (block.attn_norm, block.mlp_norm)] + [model.final_norm]


def test_vocab_is_padded_to_a_multiple_of_64():
    assert padded_vocab_size(50259) == 50304
    assert padded_vocab_size(64) == 64 and padded_vocab_size(65) == 128


def test_gpt2_has_124M_parameters():
    gpt2 = build("gpt2")
    assert gpt2.lm_head.weight is gpt2.wte.weight
    assert n_params(gpt2) == 124_475_904  # nanoGPT's figure for the 50,304 vocabulary
    assert abs(n_params(gpt2) - 124e6) / 124e6 < 0.005


def test_preset_sizes_and_class_defaults_are_unchanged():
    # The figures of the separate GPT and Llama classes this one Transformer replaced.
    assert n_params(build_on_meta("gpt2-tiny")) == 12_352_512  # 2.7M + the 9.7M tied embedding
    assert n_params(build_on_meta("llama3-tiny")) == 12_020_160
    assert n_params(build_on_meta("llama3")) == 114_150_144
    with torch.device("meta"):
        assert n_params(GPT()) == 124_475_904
        assert n_params(Llama()) == 152_783_616  # untied by default, as Llama 3 8B


@pytest.mark.parametrize("name", ["gpt2", "llama3"])
def test_full_size_models_train_one_step_on_cpu(name):
    torch.manual_seed(0)
    model = build(name)
    tokens = torch.randint(0, 50259, (1, 33))
    logits = model(tokens[:, :-1])
    assert logits.shape == (1, 32, 50304)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(50304)) < 0.5  # initialized near uniform
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad
    assert F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()) < loss


def test_llama3_is_gpt2_sized_with_grouped_query_attention():
    llama = build_on_meta("llama3")
    attn = llama.blocks[0].attn
    assert (attn.n_heads, attn.n_kv_heads) == (12, 4)
    assert attn.wkv.out_features == 2 * 4 * 64  # keys and values for 4 heads of size 64
    assert llama.blocks[0].mlp.proj.in_features == 2048
    assert not any(name.endswith("bias") for name, _ in llama.named_parameters())


def test_gpt2_uses_learned_positions_layernorm_and_tied_embeddings():
    model = GPT(**SMALL)
    assert model.wpe.weight.shape == (16, 32)
    assert all(isinstance(m, nn.LayerNorm) for m in norms(model))
    assert model.lm_head.weight is model.wte.weight


def test_the_presets_list_every_knob():
    knobs = set(inspect.signature(Transformer).parameters) - {"vocab_size"}
    for name in PRESETS:
        assert set(preset_config(name)) - {"_target_"} == knobs, name


@pytest.mark.parametrize("cls", [GPT, Llama])
def test_gpt_and_llama_take_every_knob_and_pass_it_on(cls):
    assert list(inspect.signature(cls).parameters) == list(inspect.signature(Transformer).parameters)
    # Each value differs from Transformer's default: a knob not passed on would show that default.
    knobs = dict(
        vocab_size=64,
        d_embed=24,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        max_seq_len=8,
        norm="rmsnorm",
        norm_eps=1e-3,
        norm_affine=False,
        qk_norm=True,
        activation="silu",
        gated=True,
        multiple_of=8,
        ffn_dim_multiplier=1.5,
        pos="rotary",
        rope_theta=123.0,
        bias=False,
        dropout=0.25,
        dropout_embed=0.1,
        dropout_attn=0.2,
        dropout_resid=0.3,
        tie_embeddings=False,
        zero_init=True,
        parallel_block=True,
        logit_softcap=30.0,
        z_loss=1e-4,
        attn_window=4,
        window_pattern="SL",
        document_mask=True,
        document_positions=True,
        eot_id=3,
        sdpa=False,
        name="x",
    )
    defaults = {k: p.default for k, p in inspect.signature(Transformer).parameters.items()}
    assert all(knobs[k] != defaults[k] for k in defaults)
    with torch.device("meta"):
        assert cls(**knobs).config == knobs


# Every knob flipped from the preset's value.
FLIP_GPT2 = dict(
    norm="rmsnorm",
    norm_affine=False,
    qk_norm=True,
    activation="silu",
    gated=True,
    pos="rotary",
    n_kv_heads=2,
    bias=False,
    dropout=0.1,
    dropout_embed=0.2,
    dropout_attn=0.3,
    dropout_resid=0.4,
    tie_embeddings=False,
    zero_init=True,
    parallel_block=True,
    logit_softcap=30.0,
    z_loss=1e-4,
    attn_window=64,
    window_pattern="SL",
    document_mask=True,
    document_positions=True,
    eot_id=3,
    sdpa=False,
)


FLIP_LLAMA = dict(
    norm="layernorm",
    norm_affine=False,
    qk_norm=True,
    activation="relu",
    gated=False,
    pos="learned",
    n_kv_heads=None,
    bias=True,
    dropout=0.1,
    dropout_embed=0.2,
    dropout_attn=0.3,
    dropout_resid=0.4,
    tie_embeddings=False,
    zero_init=True,
    parallel_block=True,
    logit_softcap=30.0,
    z_loss=1e-4,
    attn_window=64,
    window_pattern="LSSS",
    document_mask=True,
    eot_id=3,  # not document_positions: it needs rotary positions, which this flips off
    sdpa=False,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_knob_is_a_command_line_override_on_every_preset(preset):
    flips = FLIP_GPT2 if preset.startswith("gpt2") else FLIP_LLAMA
    assert all(preset_config(preset)[key] != value for key, value in flips.items())
    with torch.device("meta"):
        model = instantiate(model_config(preset, *(override(k, v) for k, v in flips.items())), vocab_size=64)
    assert {key: model.config[key] for key in flips} == flips
    assert type(model.final_norm) is (nn.RMSNorm if flips["norm"] == "rmsnorm" else nn.LayerNorm)
    assert hasattr(model, "wpe") is (flips["pos"] == "learned")


# --- Each knob, on every preset: the override reaches the built module. ---


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "norm, kind", [("layernorm", nn.LayerNorm), ("rmsnorm", nn.RMSNorm), ("cosinenorm", CosineNorm)]
)
def test_norm_knob(preset, norm, kind):
    model = build_on_meta(preset, norm=norm, norm_eps=1e-6)
    assert all(type(m) is kind and m.eps == 1e-6 for m in norms(model))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "activation, kind", [("gelu", nn.GELU), ("silu", nn.SiLU), ("relu", nn.ReLU), ("relu2", ReLU2)]
)
def test_activation_knob(preset, activation, kind):
    model = build_on_meta(preset, activation=activation)
    assert all(type(block.mlp.act) is kind for block in model.blocks)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("gated", [False, True])
def test_gated_knob(preset, gated):
    cfg = preset_config(preset)
    model = build_on_meta(preset, gated=gated)
    C = cfg.d_embed
    mlp = model.blocks[0].mlp
    if gated:  # Llama's width: 2/3 of 4 C, rounded up to a multiple of multiple_of
        hidden = cfg.multiple_of * math.ceil(int(8 * C / 3) / cfg.multiple_of)
        assert isinstance(mlp, GatedMLP) and mlp.gate_up.weight.shape == (2 * hidden, C) and not hasattr(mlp, "fc")
    else:  # GPT-2's: 4 C
        hidden = 4 * C
        assert mlp.fc.weight.shape == (hidden, C) and not hasattr(mlp, "gate_up")
    assert mlp.proj.weight.shape == (C, hidden)


def test_gated_width_follows_multiple_of_and_ffn_dim_multiplier():
    model = build_on_meta("gpt2-tiny", gated=True, multiple_of=64)
    assert model.blocks[0].mlp.proj.in_features == 512  # 2/3 x 4 x 192
    model = build_on_meta("gpt2-tiny", gated=True, multiple_of=100, ffn_dim_multiplier=1.3)
    assert model.blocks[0].mlp.proj.in_features == 700  # 1.3 x 512 = 665, rounded up


@pytest.mark.parametrize("preset", PRESETS)
def test_pos_knob(preset):
    cfg = preset_config(preset)
    D = cfg.d_embed // cfg.n_heads
    learned = build_on_meta(preset, pos="learned")
    assert learned.wpe.weight.shape == (cfg.max_seq_len, cfg.d_embed) and not hasattr(learned, "rope_cos")
    rotary = build_on_meta(preset, pos="rotary")
    assert not hasattr(rotary, "wpe") and rotary.rope_cos.shape == rotary.rope_sin.shape == (cfg.max_seq_len, D // 2)
    assert not any(k.startswith("rope") for k in rotary.state_dict())  # rebuilt, never checkpointed


def test_rope_theta_sets_the_rotary_tables():
    model = GPT(**SMALL, pos="rotary", rope_theta=1000.0)
    cos, sin = rotary_tables(8, 16, 1000.0)
    torch.testing.assert_close((model.rope_cos, model.rope_sin), (cos, sin))
    assert not torch.allclose(GPT(**SMALL, pos="rotary").rope_sin, sin)  # the default base differs


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_kv_heads", [1, 2, None])
def test_n_kv_heads_knob(preset, n_kv_heads):
    cfg = preset_config(preset)
    model = build_on_meta(preset, n_kv_heads=n_kv_heads)
    K, D = n_kv_heads or cfg.n_heads, cfg.d_embed // cfg.n_heads
    assert all(block.attn.wkv.weight.shape == (2 * K * D, cfg.d_embed) for block in model.blocks)
    assert model.blocks[0].attn.wq.weight.shape == (cfg.d_embed, cfg.d_embed)
    assert model.new_cache(1).k.shape == (cfg.n_layers, 1, K, cfg.max_seq_len, D)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("bias", [False, True])
def test_bias_knob(preset, bias):
    model = build_on_meta(preset, bias=bias, norm="layernorm")
    linears = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5 * len(model.blocks)  # wq, wkv, proj; fc or gate_up, proj
    assert all((m.bias is not None) is bias for m in linears)
    assert all((m.bias is not None) is bias for m in norms(model))
    assert model.lm_head.bias is None  # never: it would only learn the unigram frequencies


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dropout_knob(preset, dropout):
    model = build_on_meta(preset, dropout=dropout)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 + len(model.blocks)  # embeddings, and each block's residual branches
    assert all(m.p == dropout for m in drops)
    assert all(block.attn.dropout == dropout for block in model.blocks)  # attention weights


def test_dropout_by_place_overrides_the_one_value_where_set():
    model = GPT(**SMALL, dropout=0.1, dropout_attn=0.3, dropout_resid=0.0)
    assert model.drop.p == 0.1  # dropout_embed unset: dropout's
    assert all(b.attn.dropout == 0.3 and b.dropout.p == 0.0 for b in model.blocks)
    with pytest.raises(ModelConfigError, match=r"dropout_embed=1\.5 is not a probability in \[0, 1\), or null"):
        GPT(**SMALL, dropout_embed=1.5)


def test_a_parallel_block_adds_both_branches_of_one_norm_and_has_no_other():
    torch.manual_seed(0)
    model = GPT(**SMALL, parallel_block=True).eval()
    block = model.blocks[0]
    assert block.mlp_norm is None and not any("mlp_norm" in n for n, _ in model.named_parameters())
    x = torch.randn(2, 8, SMALL["d_embed"])
    with torch.no_grad():
        h = block.attn_norm(x)
        torch.testing.assert_close(block(x), x + block.attn(h) + block.mlp(h))


def test_cosinenorm_starts_as_rmsnorm_without_gains_and_learns_one_scale():
    x = torch.randn(2, 5, 32)
    norm = CosineNorm(32, eps=1e-12)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (32,), eps=1e-12 / 32))
    torch.testing.assert_close(norm(x).norm(dim=-1), torch.full((2, 5), 32**0.5))  # the length it claims: its scale
    assert [p.shape for p in norm.parameters()] == [torch.Size([1])]
    assert not list(CosineNorm(32, 1e-6, affine=False).parameters())


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "cosinenorm"])
def test_norm_affine_false_leaves_the_norms_without_parameters(norm):
    model = GPT(**SMALL, norm=norm, norm_affine=False)
    assert not [n for n, _ in model.named_parameters() if "norm" in n]
    assert [n for n, _ in GPT(**SMALL, norm=norm).named_parameters() if "norm" in n]


@torch.no_grad()
def test_qk_norm_normalizes_each_heads_queries_and_keys_before_the_rotation():
    model = Llama(**SMALL, qk_norm=True, n_kv_heads=2, norm_eps=1e-12).eval()
    attn = model.blocks[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (SMALL["d_embed"] // SMALL["n_heads"],)
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, args, out: seen.setdefault("q", out))
    model(torch.randint(0, 128, (2, 8)))
    torch.testing.assert_close(seen["q"].pow(2).mean(-1), torch.ones(2, 4, 8), rtol=1e-3, atol=1e-3)  # unit RMS
    assert GPT(**SMALL).blocks[0].attn.q_norm is None  # off by default


def test_relu2_is_squared_relu():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    torch.testing.assert_close(ReLU2()(x), torch.tensor([0.0, 0.0, 0.0, 0.25, 9.0]))


@torch.no_grad()
def test_zero_init_starts_every_block_as_the_identity():
    model = GPT(**SMALL, zero_init=True).eval()
    projections = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    assert len(projections) == 2 * SMALL["n_layers"] and all(not p.any() for p in projections)
    tokens = torch.randint(0, 128, (2, 8))
    embedded = model.wte(tokens) + model.wpe(torch.arange(8))
    torch.testing.assert_close(model.hidden_states(tokens), model.final_norm(embedded))
    assert GPT(**SMALL).blocks[0].attn.proj.weight.any()  # off by default


def test_zero_init_projections_move_after_one_step_and_the_model_learns():
    torch.manual_seed(0)
    model = GPT(**SMALL, zero_init=True)
    projections = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 128, (8, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(51):
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 0:  # the zeros get gradients through the residual stream, so they move at once
            assert all(p.any() for p in projections)
    assert losses[50] < losses[0] - 0.5


def test_dropout_acts_in_training_only():
    model = GPT(**SMALL, dropout=0.2)
    x = torch.randint(0, 128, (2, 16))
    torch.manual_seed(0)
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("tie", [False, True])
def test_tie_embeddings_knob(preset, tie):
    model = build_on_meta(preset, tie_embeddings=tie)
    assert (model.lm_head.weight is model.wte.weight) is tie
    untied = build_on_meta(preset, tie_embeddings=False)
    assert n_params(untied) - n_params(model) == (0 if not tie else model.wte.weight.numel())


def test_each_knob_changes_what_the_model_computes():
    # Same weights, one knob flipped: the outputs differ, so the knob is used, not only stored.
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    reference = GPT(**SMALL).eval()
    for knob in [dict(activation="relu"), dict(activation="silu"), dict(norm="rmsnorm", bias=False)]:
        model = GPT(**SMALL, **knob).eval()
        model.load_state_dict({k: v for k, v in reference.state_dict().items() if k in model.state_dict()})
        assert not torch.allclose(model(x), reference(x), atol=1e-4), knob


@torch.no_grad()
def test_both_position_schemes_tell_the_order_of_earlier_tokens():
    # Without positions, one causal attention layer is blind to the order of earlier tokens:
    # swapping two leaves the last position's logits as they were. Each scheme must change them.
    tokens, swapped = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[2, 1, 3, 4, 5]])
    torch.manual_seed(0)
    for pos in ("learned", "rotary"):
        model = GPT(**{**SMALL, "n_layers": 1}, pos=pos).eval()
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)  # larger than the init, for differences well above round-off
        assert not torch.allclose(model(tokens)[:, -1], model(swapped)[:, -1], atol=1e-3), pos
    model.rope_cos.fill_(1.0)  # the control: rotary tables of angle 0, so no positions at all
    model.rope_sin.zero_()
    torch.testing.assert_close(model(tokens)[:, -1], model(swapped)[:, -1])


# --- Mixed settings: they train, stay causal, and decode with the cache. ---

MIXES = [
    # The README's example: GPT-2 with Llama's parts.
    (GPT, dict(norm="rmsnorm", pos="rotary", n_kv_heads=2, gated=True, activation="silu", multiple_of=16)),
    # Llama with GPT-2's parts, dropout and an untied head.
    (
        Llama,
        dict(
            norm="layernorm",
            pos="learned",
            n_kv_heads=None,
            gated=False,
            activation="relu",
            bias=True,
            dropout=0.1,
            tie_embeddings=False,
        ),
    ),
    (Llama, dict(n_kv_heads=1, activation="gelu", sdpa=False, multiple_of=16)),  # GeGLU, multi-query
    (GPT, dict(activation="relu2", dropout_attn=0.1, dropout_resid=0.05)),  # squared ReLU, dropout by place
    (Llama, dict(activation="relu2", multiple_of=16, dropout_embed=0.1)),  # gated squared ReLU
    (GPT, dict(parallel_block=True, dropout=0.1)),  # GPT-J's block
    (GPT, dict(norm="cosinenorm", pos="rotary")),
    (Llama, dict(norm_affine=False, multiple_of=16)),  # RMSNorm without gains
    (Llama, dict(qk_norm=True, n_kv_heads=2, multiple_of=16)),  # QK-norm before the rotation, grouped heads
    (GPT, dict(qk_norm=True, norm="cosinenorm")),
    (Llama, dict(parallel_block=True, n_kv_heads=1, multiple_of=16)),  # PaLM's, multi-query
    (GPT, dict(logit_softcap=5.0, attn_window=6, window_pattern="SL")),  # capped, local-global
    (Llama, dict(document_mask=True, document_positions=True, eot_id=7, attn_window=5, multiple_of=16, z_loss=1e-3)),
    (GPT, dict(document_mask=True, eot_id=7, sdpa=False, n_kv_heads=2)),
]


@pytest.mark.parametrize("cls, knobs", MIXES)
def test_mixed_settings_train(cls, knobs):
    torch.manual_seed(0)
    model = cls(**SMALL, **knobs)
    tokens = torch.randint(0, 128, (4, 17))
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(128)) < 0.5
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad()
        step_loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        step_loss.backward()
    assert step_loss < loss - 0.1


@pytest.mark.parametrize(
    "cls, knobs", [(GPT, {}), (Llama, {"n_kv_heads": 2}), (GPT, {"pos": "rotary"}), (Llama, {"pos": "learned"})]
)
def test_logits_never_see_future_tokens(cls, knobs):
    torch.manual_seed(0)
    model = cls(**SMALL, **knobs).eval()
    tokens = torch.randint(0, 128, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 128
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("cls, knobs", MIXES + [(GPT, {"n_kv_heads": 1}), (Llama, {"pos": "learned"})])
def test_cached_decoding_matches_a_full_forward_for_mixed_settings(cls, knobs):
    torch.manual_seed(0)
    model = cls(**{**SMALL, "max_seq_len": 32}, **knobs).eval()
    with torch.no_grad():  # larger weights than the init: varied, position-dependent logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    tokens = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(tokens)
        steps = [model(tokens[:, :5], cache), model(tokens[:, 5:8], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.k.shape[2] == (knobs.get("n_kv_heads") or 4)  # the cache keeps the key/value heads only
    prompts = [[5, 17, 3], [9, 1, 40, 2, 77, 8]]
    assert generate(model, prompts, 8, temperature=0.0) == generate(model, prompts, 8, temperature=0.0, use_cache=False)


def test_rotary_matches_complex_rotation():
    cos, sin = rotary_tables(head_dim=8, max_seq_len=16, theta=10000.0)
    q = torch.randn(1, 2, 16, 8)
    angles = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))
    expected = torch.view_as_real(torch.view_as_complex(q.reshape(1, 2, 16, 4, 2)) * angles).flatten(-2)
    torch.testing.assert_close(apply_rotary(q, cos, sin), expected)


# --- Construction on the meta device, and knobs that cannot be built. ---


def test_config_rebuilds_the_same_architecture_on_the_meta_device():
    model = GPT(**SMALL, **MIXES[0][1])
    with torch.device("meta"):
        copy = type(model)(**model.config)
    assert copy.config == model.config and all(p.is_meta for p in copy.parameters())
    assert {k: v.shape for k, v in copy.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert OmegaConf.create(model.config)  # plain values only: checkpoints store it with weights_only


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="d_embed=30 is not divisible by n_heads=4"):
        GPT(d_embed=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=3 does not divide n_heads=4"):
        Llama(d_embed=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        GPT(vocab_size=64, d_embed=16, n_layers=1, n_heads=2, max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "knobs, message",
    [
        (dict(norm="batchnorm"), "norm='batchnorm' is not one of layernorm, rmsnorm, cosinenorm"),
        (dict(activation="tanh"), "activation='tanh' is not one of gelu, silu, relu, relu2"),
        (dict(pos="alibi"), "pos='alibi' is not one of learned, rotary"),
        (dict(gated="yes"), "gated='yes' is not true or false"),
        (dict(tie_embeddings=1), "tie_embeddings=1 is not true or false"),
        (dict(dropout=1.0), "dropout=1.0 is not a probability in [0, 1): 0.0 turns dropout off"),
        (dict(n_kv_heads=0), "n_kv_heads=0 is not a positive integer"),
        (dict(n_layers=2.5), "n_layers=2.5 is not a positive integer"),
        (dict(rope_theta=-1.0), "rope_theta=-1.0 is not a number > 0"),
        (
            dict(ffn_dim_multiplier=1.3),
            "ffn_dim_multiplier=1.3 sizes gated MLPs only (a plain one is 4 x d_embed): "
            "set gated=true or ffn_dim_multiplier=null",
        ),
        (
            dict(d_embed=36, n_heads=12, pos="rotary"),
            "pos='rotary' rotates pairs of features, but the head size "
            "d_embed/n_heads = 36/12 = 3 is odd: change d_embed or n_heads, "
            "or use pos=learned",
        ),
    ],
)
def test_bad_knobs_are_one_line_errors_before_any_weight_exists(knobs, message):
    registered = []
    hook = torch.nn.modules.module.register_module_parameter_registration_hook(lambda *args: registered.append(args))
    try:
        with pytest.raises(ModelConfigError) as e:
            GPT(**knobs)
    finally:
        hook.remove()
    assert str(e.value) == message
    assert isinstance(e.value, WgptError) and isinstance(e.value, ValueError)
    assert registered == []  # raised before the first parameter was made
