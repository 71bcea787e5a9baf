import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import ROOT
from wgpt.models import GPT, Llama
from wgpt.models.llama import apply_rotary, rotary_tables
from wgpt.train import padded_vocab_size


def model_config(name: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"model={name}"]).model


def build(name: str):
    return instantiate(model_config(name), vocab_size=padded_vocab_size(50259))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def test_vocab_is_padded_to_a_multiple_of_64():
    assert padded_vocab_size(50259) == 50304
    assert padded_vocab_size(64) == 64 and padded_vocab_size(65) == 128


def test_gpt2_has_124M_parameters():
    gpt2 = build("gpt2")
    assert gpt2.lm_head.weight is gpt2.wte.weight
    assert n_params(gpt2) == 124_475_904  # nanoGPT's figure for the 50,304 vocabulary
    assert abs(n_params(gpt2) - 124e6) / 124e6 < 0.005


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
    llama = build("llama3")
    assert 100e6 < n_params(llama) < 130e6
    attn = llama.blocks[0].attn
    assert (attn.n_heads, attn.n_kv_heads) == (12, 4)
    assert attn.wkv.out_features == 2 * 4 * 64  # keys and values for 4 heads of size 64
    assert llama.blocks[0].mlp.proj.in_features == 2048
    assert not any(name.endswith("bias") for name, _ in llama.named_parameters())


@pytest.mark.parametrize("cls", [GPT, Llama])
def test_logits_never_see_future_tokens(cls):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = cls(**kwargs, **({"n_kv_heads": 2} if cls is Llama else {})).eval()
    tokens = torch.randint(0, 128, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 128
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt2_uses_learned_positions_layernorm_and_tied_embeddings():
    model = GPT(vocab_size=128, d_embed=32, n_layers=1, n_heads=4, max_seq_len=16)
    assert model.wpe.weight.shape == (16, 32)
    assert isinstance(model.ln_f, torch.nn.LayerNorm)
    assert model.lm_head.weight is model.wte.weight


def test_rotary_matches_complex_rotation():
    cos, sin = rotary_tables(head_dim=8, max_seq_len=16, theta=10000.0)
    q = torch.randn(1, 2, 16, 8)
    angles = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))
    expected = torch.view_as_real(torch.view_as_complex(q.reshape(1, 2, 16, 4, 2)) * angles).flatten(-2)
    torch.testing.assert_close(apply_rotary(q, cos, sin), expected)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="d_embed=30 is not divisible by n_heads=4"):
        GPT(d_embed=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=3 does not divide n_heads=4"):
        Llama(d_embed=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        GPT(vocab_size=64, d_embed=16, n_layers=1, n_heads=2, max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long))
