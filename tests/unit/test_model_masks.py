"""Attention masks beyond causality (attn_window, window_pattern, document_mask, document_positions)
and the output knobs (logit_softcap, z_loss): each does what it says, in training, the KV cache and
generation, and bad values are one line each."""

import pytest
import torch

from wgpt.models import GPT, Llama
from wgpt.models.attention import causal_attention, masked_attention, written_out_attention
from wgpt.models.knobs import ModelConfigError
from wgpt.models.masks import AttentionMasks, document_ids, positions_in_documents, windows_by_layer
from wgpt.tools.generate import generate

SMALL = dict(vocab_size=128, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64)
EOT = 7


def qkv(B=2, H=4, K=2, T=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, T, D, generator=g),
        torch.randn(B, K, T, D, generator=g),
        torch.randn(B, K, T, D, generator=g),
    )


def tokens_without_eot(B=2, T=24, seed=1):
    t = torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(seed))
    return torch.where(t == EOT, EOT + 1, t)


def test_windows_by_layer_repeat_the_pattern_and_leave_the_last_layer_as_it_says():
    assert windows_by_layer(4, None, None) == [None] * 4
    assert windows_by_layer(3, 8, None) == [8, 8, 8]
    assert windows_by_layer(6, 8, "SSL") == [8, 8, None, 8, 8, None]
    assert windows_by_layer(5, 8, "SL") == [8, None, 8, None, 8]  # not forced full


def test_document_ids_and_positions_restart_after_each_end_of_text():
    input = torch.tensor([[1, 7, 2, 3, 7, 7, 4], [7, 1, 1, 1, 1, 1, 1]])
    assert document_ids(input, 7).tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
    positions, next_start = positions_in_documents(input, 7, 0)
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0, 0], [0, 0, 1, 2, 3, 4, 5]]
    assert next_start.tolist() == [6, 1]
    # In two pieces, carried over as a KV cache carries them: the same.
    first, carried = positions_in_documents(input[:, :3], 7, 0)
    rest, _ = positions_in_documents(input[:, 3:], 7, 3, carried)
    assert torch.cat([first, rest], 1).tolist() == positions.tolist()


@pytest.mark.parametrize("sdpa", [True, False])
def test_a_window_as_long_as_the_sequence_is_full_attention_exactly(sdpa):
    q, k, v = qkv()
    T = q.size(2)
    docs = torch.zeros(2, T, dtype=torch.int32)  # one document: a mask that is really built and applied
    got = masked_attention(q, k, v, AttentionMasks(0, T, "cpu", docs, docs), T, sdpa=sdpa)
    torch.testing.assert_close(got, causal_attention(q, k, v, sdpa=sdpa))
    model = GPT(**SMALL).eval()
    windowed = GPT(**SMALL, attn_window=SMALL["max_seq_len"]).eval()
    windowed.load_state_dict(model.state_dict())
    x = tokens_without_eot()
    assert torch.equal(windowed(x), model(x))


@pytest.mark.parametrize("sdpa", [True, False])
def test_a_window_of_one_attends_only_to_itself(sdpa):
    q, k, v = qkv()
    got = masked_attention(q, k, v, AttentionMasks(0, q.size(2), "cpu"), 1, sdpa=sdpa)
    torch.testing.assert_close(got, v.repeat_interleave(2, dim=1))  # each query's own value, whole
    # In the model: a token's logits do not depend on any other token (learned positions, no mixing).
    model = GPT(**SMALL, attn_window=1).eval()
    x = tokens_without_eot()
    changed = x.clone()
    changed[:, ::2] = (changed[:, ::2] + 1) % 128
    torch.testing.assert_close(model(x)[:, 1::2], model(changed)[:, 1::2])


def test_windowed_layers_see_exactly_the_latest_window_positions():
    q, k, v = qkv(T=10)
    allowed = AttentionMasks(0, 10, "cpu").dense(3)[0, 0]  # (T, T)
    assert allowed.sum(1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    assert allowed[9].nonzero().flatten().tolist() == [7, 8, 9]
    want = written_out_attention(q, k, v, allowed)
    torch.testing.assert_close(masked_attention(q, k, v, AttentionMasks(0, 10, "cpu"), 3), want)


def test_a_window_changes_the_model_only_past_its_length():
    torch.manual_seed(0)
    full = Llama(**SMALL, multiple_of=16).eval()
    windowed = Llama(**SMALL, multiple_of=16, attn_window=5, window_pattern="SL").eval()
    windowed.load_state_dict(full.state_dict())
    x = tokens_without_eot()
    a, b = full(x), windowed(x)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # nothing lies beyond the window yet
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("cls, knobs", [(GPT, {}), (Llama, {"multiple_of": 16, "n_kv_heads": 2})])
def test_a_document_mask_over_one_document_is_causal_attention(cls, knobs):
    torch.manual_seed(0)
    plain = cls(**SMALL, **knobs).eval()
    masked = cls(**SMALL, **knobs, document_mask=True, eot_id=EOT).eval()
    masked.load_state_dict(plain.state_dict())
    x = tokens_without_eot()
    torch.testing.assert_close(masked(x), plain(x))


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("positions", [False, True])
def test_a_later_document_never_sees_an_earlier_one(sdpa, positions):
    torch.manual_seed(0)
    model = Llama(**SMALL, multiple_of=16, document_mask=True, document_positions=positions, eot_id=EOT, sdpa=sdpa)
    model.eval()
    x = tokens_without_eot()
    x[:, 9] = EOT  # documents 0..9 (closed by its end-of-text) and 10..
    changed = x.clone()
    changed[:, :9] = (changed[:, :9] + 3) % 128
    changed[:, :9][changed[:, :9] == EOT] = 1
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, 10:], b[:, 10:])
    assert not torch.allclose(a[:, :10], b[:, :10])
    if positions:  # restarted positions: the second document scores as if it stood alone
        torch.testing.assert_close(a[:, 10:], model(x[:, 10:]), rtol=1e-5, atol=1e-5)
    else:  # the positions still count from the window's start
        assert not torch.allclose(a[:, 10:], model(x[:, 10:]))


def test_flex_attention_computes_the_same_masks():
    # FlexAttention runs on CUDA only (compiled); its eager reference runs forward on a CPU, which
    # checks the block mask: the same keys as the boolean one.
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = qkv(T=40)
    docs = torch.tensor([[0] * 15 + [1] * 25, [0] * 3 + [1] * 30 + [2] * 7], dtype=torch.int32)
    masks = AttentionMasks(0, 40, "cpu", docs, docs)
    for window in (None, 6):
        with torch.no_grad():
            got = flex_attention(q, k, v, block_mask=masks.block(window), enable_gqa=True)
        torch.testing.assert_close(got, written_out_attention(q, k, v, masks.dense(window)), rtol=1e-5, atol=1e-5)


def test_the_cache_generates_as_recomputation_with_every_knob_on():
    torch.manual_seed(0)
    model = Llama(
        **{**SMALL, "n_layers": 3},
        multiple_of=16,
        n_kv_heads=2,
        norm="cosinenorm",
        qk_norm=True,
        activation="relu2",
        parallel_block=True,
        zero_init=False,
        logit_softcap=4.0,
        z_loss=1e-4,
        attn_window=4,
        window_pattern="SSL",
        document_mask=True,
        document_positions=True,
        eot_id=EOT,
    ).eval()
    with torch.no_grad():  # larger weights than the init: varied, position-dependent logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    prompts = [[5, 17, 3, 7, 9, 1, 40, 2], [9, 1, 40, 2, 77, 8, 7, 7, 3, 4]]  # longer than the window, 2-3 documents
    cached = generate(model, prompts, 12, temperature=0.0)
    assert cached == generate(model, prompts, 12, temperature=0.0, use_cache=False)
    tokens = torch.tensor([prompts[1] + [7, 11, 12, 7, 13, 14, 15, 16, 17, 18]])
    cache = model.new_cache(1)
    with torch.no_grad():
        steps = [model(tokens[:, :6], cache), model(tokens[:, 6:9], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(9, tokens.size(1))]
        torch.testing.assert_close(torch.cat(steps, 1), model(tokens), rtol=1e-4, atol=1e-4)


def test_capped_logits_never_exceed_the_cap():
    model = GPT(**SMALL, logit_softcap=2.0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)
        logits = model(tokens_without_eot())
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9  # reached, never passed


@pytest.mark.parametrize(
    "knobs, message",
    [
        (dict(attn_window=0), "attn_window=0 is not a positive integer"),
        (dict(attn_window=-4), "attn_window=-4 is not a positive integer"),
        (
            dict(attn_window=8, window_pattern="SSLX"),
            "window_pattern='SSLX' is not a string of S (windowed) and L (full) layers, e.g. SSSL",
        ),
        (
            dict(window_pattern="SL"),
            "window_pattern='SL' chooses windowed layers, but attn_window is null: set it",
        ),
        (dict(logit_softcap=0.0), "logit_softcap=0.0 is not a number > 0 (e.g. 30.0), or null for no cap"),
        (dict(logit_softcap=-30), "logit_softcap=-30 is not a number > 0 (e.g. 30.0), or null for no cap"),
        (dict(z_loss=-1e-4), "z_loss=-0.0001 is not a weight >= 0 (PaLM's: 1e-4), or null for none"),
        (dict(norm="batchnorm"), "norm='batchnorm' is not one of layernorm, rmsnorm, cosinenorm"),
        (dict(activation="tanh"), "activation='tanh' is not one of gelu, silu, relu, relu2"),
        (
            dict(document_positions=True, pos="rotary"),
            "document_positions=true restarts positions at document borders: set document_mask=true",
        ),
        (
            dict(document_positions=True, document_mask=True, eot_id=EOT),
            "document_positions=true restarts rotary positions, but pos='learned': set pos=rotary",
        ),
        (
            dict(document_mask=True),
            "document_mask=true needs the end-of-text id: eot_id is null (train.py sets it from the tokenizer)",
        ),
        (dict(document_mask=True, eot_id=128), "eot_id=128 is not below vocab_size=128"),
    ],
)
def test_bad_mask_and_output_knobs_are_one_line_errors(knobs, message):
    with pytest.raises(ModelConfigError) as e:
        GPT(**{**SMALL, **knobs})
    assert str(e.value) == message


def test_shapes_headline_names_the_attention_and_output_knobs_that_are_on():
    from wgpt.tools.shapes import variant_note

    assert variant_note(GPT(**SMALL)) == ""
    model = Llama(
        **SMALL, multiple_of=16, attn_window=8, window_pattern="SL", document_mask=True, eot_id=EOT, z_loss=1e-4
    )
    assert variant_note(model) == "; attn_window 8, window_pattern SL, document_mask (eot_id 7), z_loss 0.0001"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flex_attention_trains_as_the_written_out_masks_on_cuda():
    torch.manual_seed(0)
    # Heads of 16 features, FlexAttention's smallest (attention.uses_flex); grouped key/value heads.
    knobs = dict(SMALL, n_heads=4, d_embed=64, n_kv_heads=2, multiple_of=16, attn_window=5, window_pattern="SL")
    knobs.update(document_mask=True, eot_id=EOT)
    flex, reference = Llama(**knobs).cuda(), Llama(**knobs, sdpa=False).cuda()
    reference.load_state_dict(flex.state_dict())
    x = tokens_without_eot(T=40).cuda()
    x[:, 17] = EOT
    y = torch.roll(x, -1, dims=1)
    losses = []
    for model in (flex, reference):
        loss = model.loss(x, y)
        loss.backward()
        losses.append(loss.detach())
    assert flex.attention_masks(x).flex  # the path under test
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(flex.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_a_full_cache_says_so_before_its_document_state_changes():
    model = GPT(**SMALL, document_mask=True, eot_id=EOT).eval()
    cache = model.new_cache(1, max_len=10)
    with torch.no_grad():
        model(tokens_without_eot(B=1, T=8), cache)
        with pytest.raises(ValueError, match="the cache holds 10 positions: no room for 4 more after 8"):
            model(torch.full((1, 4), EOT), cache)
    assert cache.pos == 8 and cache.next_document.tolist() == [0]


def test_build_model_gives_document_masking_the_tokenizers_end_of_text_id():
    from omegaconf import OmegaConf

    from wgpt.models.build import build_model, build_on_meta

    cfg = OmegaConf.create({"_target_": "wgpt.models.GPT", **SMALL, "document_mask": True, "eot_id": None})
    assert build_model(cfg, 128, eot_id=5).config["eot_id"] == 5
    del cfg["eot_id"]  # a config from before the knob: the same
    assert build_on_meta(cfg, 128, eot_id=5).config["eot_id"] == 5
    cfg.document_mask = False  # without the mask nothing is filled in: configs stay as they were
    assert build_model(cfg, 128, eot_id=5).config["eot_id"] is None
