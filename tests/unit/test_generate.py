"""KV-cached decoding, the sampler's filters and generate(), in this process. generate.py end to end:
tests/e2e/test_generate_cli.py."""

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from wgpt.models import GPT, Llama
from wgpt.tokenizers.bpe import BPETokenizer, train_bpe
from wgpt.tools.generate import generate, generate_from_config, generation_settings, sample_next
from wgpt.util.errors import WgptError

from conftest import ROOT

V = 128


PROMPTS = [[5, 17, 3], [9, 1, 40, 2, 77, 8, 30], [64]]  # different lengths, batched


def tiny(cls):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=V, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64)
    model = cls(**kwargs, **({"n_kv_heads": 2, "multiple_of": 16} if cls is Llama else {})).eval()
    # Larger weights than the init: an untrained tied model near init mostly repeats its input,
    # which would let a broken cache pass; these give varied, position-dependent tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("cls", [GPT, Llama])
def test_cached_incremental_logits_match_a_full_forward(cls):
    model = tiny(cls)
    tokens = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(3)
    with torch.no_grad():
        full = model(tokens)
        # A prefill (causal), a 3-token chunk at position 5 (explicit mask), then one at a time.
        steps = [model(tokens[:, :5], cache), model(tokens[:, 5:8], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.pos == 20
    # Llama's cache keeps only its 2 key/value heads, not one per query head.
    assert cache.k.shape == (2, 3, 2 if cls is Llama else 4, 64, 8)


@pytest.mark.parametrize("cls", [GPT, Llama])
def test_a_full_cache_refuses_more_positions(cls):
    model = tiny(cls)
    cache = model.new_cache(1, max_len=4)
    model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.zeros(1, 2, dtype=torch.long), cache)


@pytest.mark.parametrize("cls", [GPT, Llama])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=40, top_p=0.95)])
def test_cached_and_uncached_decoding_give_the_same_tokens(cls, sampling):
    model = tiny(cls)
    cached = generate(model, PROMPTS, 12, **sampling, generator=torch.Generator().manual_seed(3))
    uncached = generate(model, PROMPTS, 12, **sampling, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert cached == uncached
    assert [len(row) for row in cached] == [12, 12, 12]  # no eos given: every row runs its budget
    assert len(set(cached[0])) > 3  # varied output, not one token repeated


@pytest.mark.parametrize("cls", [GPT, Llama])
def test_batched_prompts_decode_as_if_alone(cls):
    model = tiny(cls)
    batched = generate(model, PROMPTS, 10, temperature=0.0)
    alone = [generate(model, [p], 10, temperature=0.0)[0] for p in PROMPTS]
    assert batched == alone


def test_sampling_differs_from_greedy_and_follows_the_seed():
    model = tiny(GPT)
    greedy = generate(model, PROMPTS, 12, temperature=0.0)
    a = generate(model, PROMPTS, 12, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = generate(model, PROMPTS, 12, temperature=1.0, generator=torch.Generator().manual_seed(0))
    c = generate(model, PROMPTS, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a == b and a != c and a != greedy


# The sampler's filters, on hand-made logits: probabilities 0.5, 0.3, 0.15, 0.05.
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def drawn(n: int = 4000, **filters) -> set[int]:
    logits = PROBS.log().expand(n, 4)
    return set(sample_next(logits, 1.0, **filters, generator=torch.Generator().manual_seed(0)).tolist())


def test_no_filter_draws_every_token():
    assert drawn() == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "filters, kept",
    [
        (dict(top_k=2), {0, 1}),
        (dict(top_k=1), {0}),
        (dict(top_p=0.7), {0, 1}),  # 0.5 < 0.7, 0.5 + 0.3 reaches it
        (dict(top_p=0.85), {0, 1, 2}),
        (dict(top_p=1.0), {0, 1, 2, 3}),
        (dict(min_p=0.4), {0, 1}),  # threshold 0.4 x 0.5 = 0.2
        (dict(min_p=0.2), {0, 1, 2}),  # threshold 0.1
        (dict(min_p=0.0), {0, 1, 2, 3}),
        (dict(top_k=3, min_p=0.4), {0, 1}),
    ],
)
def test_each_filter_keeps_what_it_says(filters, kept):
    assert drawn(**filters) == kept


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    logits = torch.randn(64, V, generator=torch.Generator().manual_seed(0))
    greedy = sample_next(logits, 0.0)
    assert torch.equal(greedy, logits.argmax(-1))
    for filters in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        assert torch.equal(sample_next(logits, 1.5, **filters, generator=torch.Generator().manual_seed(0)), greedy)
    assert not torch.equal(sample_next(logits, 1.5, generator=torch.Generator().manual_seed(0)), greedy)


class Counter(nn.Module):
    """A fake model whose next token is always the last one + 1 (mod 16); counts its calls."""

    max_seq_len = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # generate() takes the device from it
        self.calls = 0

    def new_cache(self, batch_size, max_len=None):
        return None  # the next token depends on the last one only

    def forward(self, input, cache=None):
        self.calls += 1
        return torch.nn.functional.one_hot((input + 1) % 16, 16).float() * 10  # (B, T, 16)


def test_a_row_stops_at_eos_which_is_left_out_and_eos_in_a_prompt_does_not_stop_it():
    model = Counter()
    out = generate(model, [[3], [1, 6, 2], [14]], 10, temperature=0.0, eos_token_id=6)
    assert out == [[4, 5], [3, 4, 5], [15, 0, 1, 2, 3, 4, 5]]
    # Positions 1..10 at most; it stops after position 8, where the last row's eos was drawn.
    assert model.calls == 8


def test_an_empty_prompt_starts_from_eos():
    out = generate(Counter(), [[], [9]], 4, temperature=0.0, eos_token_id=6)
    assert out == [[7, 8, 9, 10], [10, 11, 12, 13]]
    with pytest.raises(WgptError, match="empty prompt needs an eos_token_id"):
        generate(Counter(), [[]], 4)


def test_a_request_longer_than_the_context_is_refused_before_any_work():
    model = Counter()
    with pytest.raises(WgptError) as e:
        generate(model, [[1] * 10, [1] * 60], 10)
    message = str(e.value)
    assert message == (
        "a prompt of 60 tokens + max_new_tokens=10 = 70 tokens exceeds the model's max_seq_len=64: "
        "lower max_new_tokens to at most 4 or shorten the prompt"
    )
    assert model.calls == 0
    with pytest.raises(WgptError, match="shorten the prompt to under 64 tokens"):
        generate(model, [[1] * 64], 1)


@pytest.mark.parametrize(
    "key, value",
    [
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("min_p", 2),
        ("top_k", 0),
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.5),
        ("temperature", "hot"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(key, value):
    cfg = OmegaConf.load(ROOT / "conf/generate.yaml")
    cfg.ckpt_path = "x.ckpt"
    cfg[key] = value
    with pytest.raises(WgptError, match=f"^{key}={value} ") as e:
        generation_settings(cfg)
    assert "\n" not in str(e.value)


def test_prompt_is_a_string_or_a_list():
    cfg = OmegaConf.load(ROOT / "conf/generate.yaml")
    assert generation_settings(cfg)["prompts"] == [""]
    cfg.prompt = ["To be", "Once upon"]
    settings = generation_settings(cfg)
    assert settings["prompts"] == ["To be", "Once upon"]
    assert settings == dict(
        prompts=["To be", "Once upon"], max_new_tokens=100, temperature=0.8, top_k=None, top_p=None, min_p=None
    )


def test_generate_decodes_with_the_checkpoints_tokenizer(tmp_path, capsys):
    # A model of a 300-token BPE's padded vocabulary, saved as training saves it (weights,
    # model class and config, the tokenizer's record): r50k ids would not even fit its embedding.
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20
    tokenizer = BPETokenizer(train_bpe([text], 300), "bpe300")
    torch.manual_seed(0)
    model = GPT(vocab_size=320, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64).eval()
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "model_class": "wgpt.models.gpt.GPT",
        "model_config": model.config,
        "tokenizer": tokenizer.record(),
    }
    torch.save(checkpoint, tmp_path / "bpe.ckpt")
    cfg = OmegaConf.load(ROOT / "conf/generate.yaml")
    cfg.update(ckpt_path=str(tmp_path / "bpe.ckpt"), prompt="To be, or", max_new_tokens=12, temperature=0, device="cpu")

    (text_out,) = generate_from_config(cfg)
    prompt = tokenizer.encode("To be, or")
    assert max(prompt) >= 259  # merged tokens: the prompt was encoded by the BPE, not byte by byte
    eos = tokenizer.eos_token_id
    (new,) = generate(model, [prompt], 12, temperature=0, eos_token_id=eos, vocab_size=len(tokenizer))
    assert text_out == "To be, or" + tokenizer.decode(new) and text_out in capsys.readouterr().out

    # A record that does not rebuild the tokenizer it names is refused in one line.
    checkpoint["tokenizer"] = {**checkpoint["tokenizer"], "fingerprint": "bpe300-0000000000000000"}
    torch.save(checkpoint, tmp_path / "bpe.ckpt")
    with pytest.raises(WgptError) as error:
        generate_from_config(cfg)
    assert "records tokenizer bpe300-0000000000000000" in str(error.value) and "\n" not in str(error.value)
