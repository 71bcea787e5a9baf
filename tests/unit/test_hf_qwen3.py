"""Qwen3 export and import on configs alone: attention windows (attn_window, window_pattern) to and
from Qwen3's layer_types, and the knobs no transformers class can express. The weights and logits of
Qwen3 exports and imports: tests/unit/test_hf.py (its SHAPES, and transformers' own Qwen3)."""

from pathlib import Path

import pytest
import torch

from wgpt.interop.hf.config import QWEN3, HFDir, architecture
from wgpt.interop.hf.implied import check_fits_config
from wgpt.interop.hf.windows import qwen3_windows, window_knobs
from wgpt.models import GPT, Llama
from wgpt.util.errors import WgptError

from helpers_hf import tiny

transformers = pytest.importorskip("transformers")  # the dev extra installs it

S, F = "sliding_attention", "full_attention"


@pytest.mark.parametrize(
    "window, pattern, layer_types, back",
    [
        (None, None, [F, F, F, F], {}),
        (16, None, [S, S, S, S], dict(attn_window=16, window_pattern=None)),
        (16, "SSL", [S, S, F, S], dict(attn_window=16, window_pattern="SSL")),
        (16, "LSLS", [F, S, F, S], dict(attn_window=16, window_pattern="LS")),  # the shortest pattern back
        (16, "L", [F, F, F, F], {}),  # a window on no layer is none
    ],
)
def test_windows_cross_to_qwen3s_layer_types_and_back(window, pattern, layer_types, back):
    windows = qwen3_windows(dict(n_layers=4, attn_window=window, window_pattern=pattern))
    hf = transformers.Qwen3Config(num_hidden_layers=4, **windows).to_dict()  # as transformers reads and saves it
    assert hf["layer_types"] == layer_types and hf["sliding_window"] == (window if S in layer_types else None)
    assert window_knobs(hf, "init_from=x") == back


def test_a_qwen3_config_without_layer_types_is_windowed_from_max_window_layers_on():
    # As transformers before layer_types wrote it (Qwen3Config's rule still reads it so).
    old = dict(num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert transformers.Qwen3Config(**old).layer_types == [F, F, S, S]
    assert window_knobs(old, "init_from=x") == dict(attn_window=8, window_pattern="LLSS")
    assert window_knobs({**old, "use_sliding_window": False}, "init_from=x") == {}  # sliding_window unused then
    with pytest.raises(WgptError, match=r"^init_from=x: config.json has layer_types entry chunked_attention, which"):
        window_knobs({**old, "layer_types": [F, "chunked_attention", S, S]}, "init_from=x")


def test_transformers_windows_are_wgpts():
    """Key j is visible to query i iff 0 <= i - j < sliding_window: the rule of wgpt's attn_window."""
    torch.manual_seed(0)
    windows = qwen3_windows(dict(n_layers=1, attn_window=4, window_pattern=None))
    shape = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2)
    config = transformers.Qwen3Config(**shape, num_hidden_layers=1, head_dim=8, **windows)
    model = transformers.Qwen3ForCausalLM(config).eval()
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[0, 3] = (tokens[0, 3] + 1) % 50
    with torch.no_grad():
        moved = (model(tokens).logits - model(changed).logits).abs().amax(-1)[0]
    assert (moved[3:7] > 0).all() and (moved[7:] == 0).all()  # seen by queries 3..6 only


@pytest.fixture(scope="module")
def qwen3_config():
    return tiny(Llama, 320, qk_norm=True, multiple_of=16).config


@pytest.mark.parametrize(
    "cls, knobs, message",
    [
        (Llama, dict(attn_window=16), "model.attn_window=16 has no LlamaForCausalLM (rotary positions) equivalent"),
        (GPT, dict(attn_window=16), "model.attn_window=16 has no GPT2LMHeadModel (learned positions) equivalent"),
        (Llama, dict(logit_softcap=30.0), "model.logit_softcap=30.0 has no LlamaForCausalLM (rotary positions) "),
        (Llama, dict(qk_norm=True, logit_softcap=15.0), "model.logit_softcap=15.0 has no Qwen3ForCausalLM ("),
        (GPT, dict(document_positions=True), "model.document_positions=true has no GPT2LMHeadModel (learned "),
        (Llama, dict(qk_norm=True, norm="layernorm"), "model.norm=layernorm has no Qwen3ForCausalLM (rotary "),
    ],
)
def test_newer_knobs_without_an_equivalent_are_refused_in_one_line(cls, knobs, message):
    config = {**tiny(cls, 320).config, **knobs}  # a config from a Transformer with these knobs
    with pytest.raises(WgptError) as error:
        architecture(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_windows_z_loss_and_document_masks_export(qwen3_config):
    assert architecture({**qwen3_config, "attn_window": 16, "window_pattern": "SL"}) == QWEN3
    llama = tiny(Llama, 320).config
    assert architecture({**llama, "z_loss": 1e-4, "document_mask": True, "attn_window": 16, "window_pattern": "L"})


def test_init_from_compares_windows_layer_by_layer_and_leaves_document_mask_to_the_run(qwen3_config):
    hf = dict(
        model_type=QWEN3,
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        intermediate_size=96,
        max_position_embeddings=64,
        **qwen3_windows(dict(n_layers=2, attn_window=16, window_pattern="SL")),
    )
    d = HFDir(Path("/q"), "init_from", hf, QWEN3, [], {"model_config": {**qwen3_config, "document_mask": True}})
    ours = {**qwen3_config, "attn_window": 16, "document_mask": True}
    for pattern in ("SL", "SLSL"):  # the same layers
        assert check_fits_config(d, {**ours, "window_pattern": pattern})["qk_norm"]
    with pytest.raises(WgptError, match=r"\(window_pattern=null\) does not fit: its config.json implies model.wi"):
        check_fits_config(d, ours)
    # How the run packs documents is its own choice: a model trained with or without the mask starts it.
    assert check_fits_config(d, {**ours, "window_pattern": "SL", "document_mask": False})["qk_norm"]
