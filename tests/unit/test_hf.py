"""Hugging Face export and import (wgpt.interop.hf, wgpt.interop.export) in this process: offline,
transformers models built from local configs, never downloaded. Through export.py, generate.py, eval.py
and train.py: tests/e2e/test_hf_cli.py."""

import json
import logging
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from wgpt.data.tokenizer import R50k
from wgpt.interop.checkpoint import save_weights, write_weights_beside
from wgpt.interop.export import export
from wgpt.interop.hf.init_from import check_init_from, start_from
from wgpt.interop.hf.reading import load_hf_weights, model_from_hf_dir, read_hf_dir
from wgpt.interop.sources import load_model_source
from wgpt.models import GPT, Llama, padded_vocab_size
from wgpt.util.errors import WgptError

from helpers_hf import bpe300, save_checkpoint, tiny

transformers = pytest.importorskip("transformers")  # the dev extra installs it


# Knob settings each transformers class can express (see wgpt.interop.hf.config.architecture).
SHAPES = {
    "gpt2": (GPT, {}),
    "gpt2-relu-untied": (GPT, dict(activation="relu", tie_embeddings=False)),
    "llama-gqa-tied": (Llama, dict(n_kv_heads=2, multiple_of=16, tie_embeddings=True)),
    "llama-mha-bias-gelu-untied": (Llama, dict(n_kv_heads=None, bias=True, activation="gelu", tie_embeddings=False)),
    "gpt2-relu2-dropouts": (GPT, dict(activation="relu2", dropout_attn=0.1, dropout_resid=0.2)),
    "llama-relu2-zero-init": (Llama, dict(activation="relu2", multiple_of=16, zero_init=True)),
    "gpt2-no-norm-gains": (GPT, dict(norm_affine=False)),
    "llama-no-norm-gains": (Llama, dict(norm_affine=False, multiple_of=16)),
    "qwen3-gqa-untied": (Llama, dict(qk_norm=True, n_kv_heads=2, multiple_of=16)),
    "qwen3-no-norm-gains-tied": (Llama, dict(qk_norm=True, norm_affine=False, multiple_of=16, tie_embeddings=True)),
    # Windows of 5 over 40 tokens, every other layer (Qwen3's layer_types): HF's sliding window is ours.
    "qwen3-windows-SL": (Llama, dict(qk_norm=True, multiple_of=16, attn_window=5, window_pattern="SL", z_loss=1e-4)),
}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@pytest.fixture(scope="module")
def bpe():
    return bpe300()


def hf_logits(directory, tokens):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info  # no weight missing, unexpected or mismatched
    with torch.no_grad():
        return model.eval()(tokens).logits


@pytest.mark.parametrize("shape", SHAPES)
def test_an_export_loads_in_transformers_with_the_same_logits_and_imports_back(shape, bpe, tmp_path):
    cls, knobs = SHAPES[shape]
    model = tiny(cls, padded_vocab_size(len(bpe)), **knobs)
    out = export(save_checkpoint(model, tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "wgpt.json",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary dir renamed away
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[shape.split("-")[0]]]
    assert config["vocab_size"] == model.config["vocab_size"] == 320  # padded, as trained

    tokens = torch.randint(0, len(bpe), (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
    theirs = hf_logits(out, tokens)
    print(
        f"{shape}: logits max abs diff {(ours - theirs).abs().max().item():.2e} "
        f"(largest logit {ours.abs().max().item():.1f})"
    )
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    back, _ = model_from_hf_dir(out)
    assert type(back) is cls and back.config == model.config
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_bfloat16_export_halves_the_weights_and_imports_back_rounded(bpe, tmp_path):
    model = tiny(Llama, padded_vocab_size(len(bpe)), n_kv_heads=2, multiple_of=16)
    ckpt = save_checkpoint(model, tmp_path / "m.ckpt", bpe)
    full, half = export(ckpt, tmp_path / "fp32"), export(ckpt, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(full)
    from safetensors.torch import load_file

    weights = load_file(half / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    hf_logits(half, torch.zeros(1, 4, dtype=torch.long))  # transformers loads it: no weight missing or mismatched
    back, _ = model_from_hf_dir(half)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(a.to(torch.bfloat16).float(), b), name


@pytest.mark.parametrize("family", ["gpt2", "gpt2-bare", "llama", "llama-bias", "qwen3"])
def test_transformers_models_import_into_wgpt_with_the_same_logits(family, tmp_path):
    torch.manual_seed(0)
    if family.startswith("gpt2"):
        config = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        hf = transformers.GPT2LMHeadModel(config)
        saved = hf.transformer if family == "gpt2-bare" else hf  # the hub's gpt2 is a bare GPT2Model save
    else:
        bias = dict(attention_bias=True, mlp_bias=True) if family == "llama-bias" else {}
        # Qwen3's head_dim defaults to 128, not hidden_size / num_attention_heads.
        config = (transformers.Qwen3Config if family == "qwen3" else transformers.LlamaConfig)(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_theta=1000.0,
            rms_norm_eps=1e-5,
            head_dim=8,
            **bias,
            tie_word_embeddings=False,
        )
        hf = saved = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    saved.save_pretrained(tmp_path)
    if family == "gpt2-bare":  # and, as in the hub's file, GPT-2's causal masks saved as weights
        from safetensors.torch import load_file, save_file

        weights = load_file(tmp_path / "model.safetensors")
        weights |= {f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(2)}
        save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, _ = model_from_hf_dir(tmp_path)
    tokens = torch.randint(0, 100, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf.eval()(tokens).logits
    print(f"{family}: logits max abs diff {(ours - theirs).abs().max().item():.2e}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    if not family.startswith("gpt2"):  # an MLP width that 8/3 x hidden_size does not give: sized by the knobs
        assert model.blocks[0].mlp.proj.in_features == 72 and model.config["rope_theta"] == 1000.0
    assert model.config["qk_norm"] == (family == "qwen3")


def test_the_exported_tokenizers_encode_and_decode_as_wgpt(bpe, tmp_path):
    from wgpt.data.shakespeare import markdown_to_text, play_files

    play = markdown_to_text(next(iter(play_files().values())).read_text())
    texts = [play, "  two  spaces\n\n\nand 12345 ½ 東京 🤖 naïve\r\n\tdon't WE'LL", ""]
    r50k = R50k().load()
    for tokenizer in (r50k, bpe):
        model = tiny(GPT, padded_vocab_size(len(tokenizer)))
        out = export(save_checkpoint(model, tmp_path / f"{tokenizer.name}.ckpt", tokenizer), tmp_path / tokenizer.name)
        hf = transformers.AutoTokenizer.from_pretrained(out)
        for text in texts:
            ids = tokenizer.encode(text)
            assert hf(text, add_special_tokens=False)["input_ids"] == ids
            assert hf.decode(ids) == text
        assert hf.eos_token_id == tokenizer.eos_token_id and hf.pad_token_id == tokenizer.pad_token_id
        assert len(hf) == len(tokenizer)
    assert len(r50k.encode(play)) > 10_000  # a whole play, every token of it the same


def test_a_directory_without_wgpt_json_is_read_from_its_config_and_tokenizer(bpe, tmp_path):
    # As transformers' save_pretrained would leave it: config.json and tokenizer.json only.
    model = tiny(Llama, padded_vocab_size(len(bpe)), n_kv_heads=2, multiple_of=16, tie_embeddings=True)
    out = export(save_checkpoint(model, tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    (out / "wgpt.json").unlink()
    loaded = load_model_source(out)
    assert loaded.kind == "hf" and loaded.global_step is None and loaded.run_dir is None
    assert loaded.tokenizer.fingerprint == bpe.fingerprint  # the BPE rebuilt from tokenizer.json
    knobs = (
        "d_embed",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "norm",
        "activation",
        "gated",
        "pos",
        "rope_theta",
        "bias",
        "tie_embeddings",
    )
    assert {k: loaded.model.config[k] for k in knobs} == {k: model.config[k] for k in knobs}
    tokens = torch.randint(0, len(bpe), (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens), model(tokens))


def test_a_smaller_vocabulary_is_padded_with_mean_rows_and_says_so(tmp_path, caplog):
    # HF GPT-2's 50,257 rows into r50k's padded 50,304, with GPT-2's tokenizer files (the same ids).
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    hf = transformers.GPT2LMHeadModel(config)
    hf.save_pretrained(tmp_path / "gpt2")
    r50k = R50k().load()
    export(save_checkpoint(tiny(GPT, 50304), tmp_path / "r50k.ckpt", r50k), tmp_path / "r50k")
    shutil.copy(tmp_path / "r50k" / "tokenizer.json", tmp_path / "gpt2")
    model = GPT(vocab_size=50304, d_embed=16, n_layers=1, n_heads=2, max_seq_len=64)
    with caplog.at_level(logging.INFO, logger="wgpt"):
        load_hf_weights(model, tmp_path / "gpt2", r50k)
    assert "50257 vocabulary rows padded to 50304 (ids 50257-50303 start as the mean of the others)" in caplog.text
    wte = hf.transformer.wte.weight.detach()
    assert torch.equal(model.wte.weight[:50257], wte) and model.lm_head.weight is model.wte.weight
    torch.testing.assert_close(model.wte.weight[50257:], wte.mean(0).expand(47, -1))
    # eval.py and generate.py pad the same way: a model for the tokenizer they rebuild from the directory.
    loaded = load_model_source(tmp_path / "gpt2")
    assert loaded.tokenizer.name == "r50k" and loaded.model.config["vocab_size"] == 50304


def test_weights_beside_a_checkpoint_store_tied_embeddings_once_and_rebuild_the_model(bpe, tmp_path):
    model = tiny(Llama, padded_vocab_size(len(bpe)), n_kv_heads=2, multiple_of=16, tie_embeddings=True)
    (tmp_path / "checkpoints").mkdir()
    ckpt = save_checkpoint(model, tmp_path / "checkpoints" / "best-x.ckpt", bpe)
    path = write_weights_beside(ckpt)
    assert path == tmp_path / "checkpoints" / "best-x.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert "lm_head.weight" not in f.keys() and json.loads(f.metadata()["wgpt_aliases"]) == {
            "lm_head.weight": "wte.weight"
        }
        assert json.loads(f.metadata()["wgpt_model_config"]) == model.config
    loaded = load_model_source(path)
    assert loaded.kind == "weights" and loaded.global_step == 7 and loaded.tokenizer.fingerprint == bpe.fingerprint
    assert loaded.model.lm_head.weight is loaded.model.wte.weight
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    # The run dir stands for its best checkpoint.
    assert load_model_source(tmp_path).path == ckpt
    save_weights(torch.load(ckpt, weights_only=True), tmp_path / "again.safetensors")
    assert not list(tmp_path.glob(".*tmp"))


# Bad input: one line, nothing written.


@pytest.mark.parametrize(
    "cls, knobs, message",
    [
        (
            GPT,
            dict(norm="rmsnorm"),
            "model.norm=rmsnorm has no GPT2LMHeadModel (learned positions) equivalent (it has LayerNorm only)",
        ),
        (GPT, dict(n_kv_heads=2), "model.n_kv_heads=2 has no GPT2LMHeadModel (learned positions) equivalent"),
        (GPT, dict(bias=False), "model.bias=false has no GPT2LMHeadModel (learned positions) equivalent"),
        (GPT, dict(gated=True), "model.gated=true has no GPT2LMHeadModel (learned positions) equivalent"),
        (Llama, dict(gated=False), "model.gated=false has no LlamaForCausalLM (rotary positions) equivalent"),
        (Llama, dict(norm="layernorm"), "model.norm=layernorm has no LlamaForCausalLM (rotary positions) equivalent"),
        (GPT, dict(qk_norm=True), "model.qk_norm=true has no GPT2LMHeadModel (learned positions) equivalent (it does"),
        (Llama, dict(qk_norm=True, bias=True), "model.bias=true has no Qwen3ForCausalLM (rotary positions, qk_norm) "),
        (
            Llama,
            dict(norm="cosinenorm"),
            "model.norm=cosinenorm has no LlamaForCausalLM (rotary positions) equivalent (it has RMSNorm only)",
        ),
        (
            Llama,
            dict(parallel_block=True),
            "model.parallel_block=true has no LlamaForCausalLM (rotary positions) equivalent (its blocks are "
            "sequential)",
        ),
    ],
)
def test_a_knob_without_a_transformers_equivalent_is_refused_before_anything_is_written(
    cls, knobs, message, bpe, tmp_path
):
    ckpt = save_checkpoint(tiny(cls, 320, **knobs), tmp_path / "m.ckpt", bpe)
    with pytest.raises(WgptError) as error:
        export(ckpt, tmp_path / "exports" / "hf")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def test_out_is_new_empty_or_a_previous_export_unless_overwrite(bpe, tmp_path, monkeypatch):
    ckpt = save_checkpoint(tiny(GPT, 320), tmp_path / "m.ckpt", bpe)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(
        WgptError, match=r"out=.*notes exists and is not a wgpt export \(no wgpt.json\): give a new or empty"
    ):
        export(ckpt, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(WgptError, match="is a file"):
        export(ckpt, tmp_path / "notes" / "todo.txt")
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "outer" / "inner")
    with pytest.raises(WgptError, match="holds the current directory"):
        export(ckpt, tmp_path / "outer", overwrite=True)

    out = export(ckpt, tmp_path / "hf")
    (out / "stale.txt").write_text("from before")
    export(ckpt, out)  # a previous export: replaced whole
    assert not (out / "stale.txt").exists() and (out / "wgpt.json").is_file()
    export(ckpt, tmp_path / "notes", overwrite=True)
    assert not (tmp_path / "notes" / "todo.txt").exists() and (tmp_path / "notes" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.ckpt", "notes", "outer"]  # no temp dirs left


def test_a_directory_that_is_not_a_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickle")
    (tmp_path / "mistral").mkdir()
    (tmp_path / "mistral" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    cases = {
        tmp_path / "nope": "does not exist: give a Hugging Face model directory",
        tmp_path / "empty": "has no config.json: it is not a Hugging Face model directory",
        tmp_path / "bin": "holds pytorch_model.bin, not model.safetensors: wgpt reads safetensors only",
        tmp_path / "mistral": "holds a model_type=mistral model: wgpt loads gpt2 (GPT2LMHeadModel), llama (",
    }
    for path, message in cases.items():
        with pytest.raises(WgptError) as error:
            read_hf_dir(path, "init_from")
        assert str(error.value).startswith(f"init_from={path} ") and message in str(error.value)
        assert "\n" not in str(error.value)


def test_weights_that_do_not_fit_name_the_model_values_the_directory_implies(bpe, tmp_path):
    out = export(save_checkpoint(tiny(GPT, 320), tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    llama = Llama(
        vocab_size=320,
        d_embed=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        n_kv_heads=2,
        tie_embeddings=True,
        name="llama3-tiny",
    )
    with pytest.raises(WgptError) as error:
        load_hf_weights(llama, out, bpe)
    assert str(error.value) == (
        f"init_from={out} holds a GPT2LMHeadModel that model llama3-tiny (n_kv_heads=2, norm=rmsnorm, activation=silu, "
        "gated=true, pos=rotary, bias=false) does not fit: "
        "its config.json implies model.n_kv_heads=null model.norm=layernorm "
        "model.activation=gelu model.gated=false model.pos=learned model.bias=true: "
        "add those overrides, or use model=gpt2 with the overrides of its run"
    )
    wide = GPT(vocab_size=320, d_embed=64, n_layers=2, n_heads=4, max_seq_len=64, name="gpt2")
    with pytest.raises(
        WgptError, match=r"model gpt2 \(d_embed=64\) does not fit: its config.json implies model.d_embed=32: "
    ):
        load_hf_weights(wide, out, bpe)
    with pytest.raises(
        WgptError, match="tokenizer bpe300 .*, this run uses r50k .*: train with tokenizer=bpe tokenizer.vocab_size=300"
    ):
        load_hf_weights(GPT(vocab_size=50304, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64), out, R50k().load())


def test_an_export_from_before_the_newer_knobs_still_loads(bpe, tmp_path):
    """A wgpt.json written before norm_affine, qk_norm, ... existed: those knobs are at their defaults."""
    model = tiny(GPT, 320)
    out = export(save_checkpoint(model, tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    record = json.loads((out / "wgpt.json").read_text())
    newer = ("norm_affine", "qk_norm", "dropout_embed", "dropout_attn", "dropout_resid", "zero_init", "parallel_block")
    newer += ("attn_window", "window_pattern", "logit_softcap", "z_loss", "document_mask", "document_positions")
    record["model_config"] = {k: v for k, v in record["model_config"].items() if k not in newer}
    (out / "wgpt.json").write_text(json.dumps(record))
    back, _ = model_from_hf_dir(out)
    tokens = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), model(tokens))


@pytest.mark.parametrize("knob", ["qk_norm", "parallel_block"])
def test_init_from_refuses_a_model_with_qk_norm_or_parallel_blocks(knob, bpe, tmp_path):
    out = export(save_checkpoint(tiny(GPT, 320, norm_affine=False), tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    target = tiny(GPT, 320, norm_affine=False, **{knob: True})
    with pytest.raises(WgptError, match=rf"\({knob}=true\) does not fit: its config.json implies model.{knob}=false"):
        load_hf_weights(target, out, bpe)


@pytest.mark.parametrize("cls, knobs", [(GPT, {}), (Llama, dict(qk_norm=True, multiple_of=16))], ids=["gpt2", "qwen3"])
def test_init_from_takes_an_export_without_norm_gains_into_the_same_model_only(cls, knobs, bpe, tmp_path):
    model = tiny(cls, 320, norm_affine=False, **knobs)
    out = export(save_checkpoint(model, tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    cfg = OmegaConf.create({"init_from": str(out)})
    fresh = cls(**model.config)  # the same config, weights of its own
    start_from(fresh, check_init_from(cfg, fresh, None))  # as train.py init_from=<dir> does
    assert fresh.state_dict().keys() == model.state_dict().keys()  # no gains: the unit ones stay in the export
    for name, weight in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], weight), name
    with pytest.raises(WgptError) as error:
        check_init_from(cfg, cls(**{**model.config, "norm_affine": True}), None)
    assert "(norm_affine=true) does not fit: its config.json implies model.norm_affine=false: " in str(error.value)
