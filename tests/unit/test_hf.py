"""Hugging Face export and import (wgpt.interop.hf.config, export.py, init_from): offline, transformers models
built from local configs, never downloaded."""

import json
import logging
import shutil

import pytest
import torch

from conftest import FAST, ROOT, paths, read_metrics, run_cli
from wgpt.interop.sources import load_model_source
from wgpt.interop.checkpoint import save_weights, write_weights_beside
from wgpt.tokenizers.bpe import BPETokenizer, train_bpe
from wgpt.data.tokenizer import R50k
from wgpt.util.errors import WgptError
from wgpt.tools.generate import generate
from wgpt.interop.export import export
from wgpt.interop.hf.reading import load_hf_weights, model_from_hf_dir, read_hf_dir
from wgpt.models import GPT, Llama, padded_vocab_size

transformers = pytest.importorskip("transformers")  # the dev extra installs it

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20
# Knob settings each transformers class can express (see wgpt.interop.hf.config.architecture).
SHAPES = {
    "gpt2": (GPT, {}),
    "gpt2-relu-untied": (GPT, dict(activation="relu", tie_embeddings=False)),
    "llama-gqa-tied": (Llama, dict(n_kv_heads=2, multiple_of=16, tie_embeddings=True)),
    "llama-mha-bias-gelu-untied": (Llama, dict(n_kv_heads=None, bias=True, activation="gelu", tie_embeddings=False)),
}


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer(train_bpe([TEXT], 300), "bpe300")


def tiny(cls, vocab_size, **knobs):
    torch.manual_seed(0)
    model = cls(vocab_size=vocab_size, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64, **knobs).eval()
    with torch.no_grad():  # larger than the init, and norms and biases off their 1 and 0: every weight matters
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def save_checkpoint(model, path, tokenizer, step=7):
    """A checkpoint as training writes one (the weights, what rebuilds model and tokenizer)."""
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "model_class": model_class,
                "model_config": model.config, "tokenizer": tokenizer.record(), "global_step": step}, path)  # fmt: skip
    return path


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
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "wgpt.json",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary dir renamed away
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{GPT: "GPT2LMHeadModel", Llama: "LlamaForCausalLM"}[cls]]
    assert config["vocab_size"] == model.config["vocab_size"] == 320  # padded, as trained

    tokens = torch.randint(0, len(bpe), (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
    theirs = hf_logits(out, tokens)
    print(f"{shape}: logits max abs diff {(ours - theirs).abs().max().item():.2e} (largest logit {ours.abs().max().item():.1f})")
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


@pytest.mark.parametrize("family", ["gpt2", "gpt2-bare", "llama", "llama-bias"])
def test_transformers_models_import_into_wgpt_with_the_same_logits(family, tmp_path):
    torch.manual_seed(0)
    if family.startswith("gpt2"):
        config = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        hf = transformers.GPT2LMHeadModel(config)
        saved = hf.transformer if family == "gpt2-bare" else hf  # the hub's gpt2 is a bare GPT2Model save
    else:
        config = transformers.LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=1000.0, rms_norm_eps=1e-5,
            attention_bias=family == "llama-bias", mlp_bias=family == "llama-bias", tie_word_embeddings=False,
        )  # fmt: skip
        hf = saved = transformers.LlamaForCausalLM(config)
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
    if family.startswith("llama"):  # an MLP width that 8/3 x hidden_size does not give: sized by the knobs
        assert model.blocks[0].mlp.proj.in_features == 72 and model.config["rope_theta"] == 1000.0


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
    knobs = ("d_embed", "n_layers", "n_heads", "n_kv_heads", "norm", "activation", "gated", "pos", "rope_theta", "bias", "tie_embeddings")
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
        assert "lm_head.weight" not in f.keys() and json.loads(f.metadata()["wgpt_aliases"]) == {"lm_head.weight": "wte.weight"}
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
        (GPT, dict(norm="rmsnorm"), "model.norm=rmsnorm has no GPT2LMHeadModel (learned positions) equivalent (it has LayerNorm only)"),
        (GPT, dict(n_kv_heads=2), "model.n_kv_heads=2 has no GPT2LMHeadModel (learned positions) equivalent"),
        (GPT, dict(bias=False), "model.bias=false has no GPT2LMHeadModel (learned positions) equivalent"),
        (GPT, dict(gated=True), "model.gated=true has no GPT2LMHeadModel (learned positions) equivalent"),
        (Llama, dict(gated=False), "model.gated=false has no LlamaForCausalLM (rotary positions) equivalent"),
        (Llama, dict(norm="layernorm"), "model.norm=layernorm has no LlamaForCausalLM (rotary positions) equivalent"),
    ],
)
def test_a_knob_without_a_transformers_equivalent_is_refused_before_anything_is_written(cls, knobs, message, bpe, tmp_path):
    ckpt = save_checkpoint(tiny(cls, 320, **knobs), tmp_path / "m.ckpt", bpe)
    with pytest.raises(WgptError) as error:
        export(ckpt, tmp_path / "exports" / "hf")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def test_export_py_refuses_an_unsupported_knob_in_one_line_and_leaves_nothing(bpe, tmp_path):
    ckpt = save_checkpoint(tiny(GPT, 320, norm="rmsnorm"), tmp_path / "m.ckpt", bpe)
    result = run_cli(str(ROOT / "export.py"), f"ckpt_path={ckpt}", f"out={tmp_path / 'exports' / 'hf'}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: model.norm=rmsnorm has no GPT2LMHeadModel (learned positions) equivalent (it has LayerNorm only): "
        "it cannot be exported; train with pos=rotary for a Llama-shaped export, or with GPT-2's settings"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]
    result = run_cli(str(ROOT / "export.py"), f"ckpt_path={ckpt}", f"out={tmp_path / 'hf'}", "dtype=int8", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "Error: dtype=int8 is not one of float32, bfloat16, float16, or null for the checkpoint's own"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def test_out_is_new_empty_or_a_previous_export_unless_overwrite(bpe, tmp_path, monkeypatch):
    ckpt = save_checkpoint(tiny(GPT, 320), tmp_path / "m.ckpt", bpe)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(WgptError, match=r"out=.*notes exists and is not a wgpt export \(no wgpt.json\): give a new or empty"):
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
        tmp_path / "mistral": "holds a model_type=mistral model: wgpt loads gpt2 (GPT2LMHeadModel) and llama",
    }
    for path, message in cases.items():
        with pytest.raises(WgptError) as error:
            read_hf_dir(path, "init_from")
        assert str(error.value).startswith(f"init_from={path} ") and message in str(error.value)
        assert "\n" not in str(error.value)


def test_weights_that_do_not_fit_name_the_model_values_the_directory_implies(bpe, tmp_path):
    out = export(save_checkpoint(tiny(GPT, 320), tmp_path / "m.ckpt", bpe), tmp_path / "hf")
    llama = Llama(vocab_size=320, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64, n_kv_heads=2, tie_embeddings=True, name="llama3-tiny")
    with pytest.raises(WgptError) as error:
        load_hf_weights(llama, out, bpe)
    assert str(error.value) == (
        f"init_from={out} holds a GPT2LMHeadModel that model llama3-tiny (n_kv_heads=2, norm=rmsnorm, activation=silu, "
        "gated=true, pos=rotary, bias=false) does not fit: its config.json implies model.n_kv_heads=null model.norm=layernorm "
        "model.activation=gelu model.gated=false model.pos=learned model.bias=true: add those overrides, or use model=gpt2 with the overrides of its run"
    )
    wide = GPT(vocab_size=320, d_embed=64, n_layers=2, n_heads=4, max_seq_len=64, name="gpt2")
    with pytest.raises(WgptError, match=r"model gpt2 \(d_embed=64\) does not fit: its config.json implies model.d_embed=32: "):
        load_hf_weights(wide, out, bpe)
    with pytest.raises(WgptError, match="tokenizer bpe300 .*, this run uses r50k .*: train with tokenizer=bpe tokenizer.vocab_size=300"):
        load_hf_weights(GPT(vocab_size=50304, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64), out, R50k().load())


# On a trained checkpoint, through the command line.


@pytest.fixture(scope="module")
def exported(gpt2_tiny_run, tmp_path_factory):
    """(run dir, its best checkpoint, `python export.py` of the run dir, its result)."""
    _, run_dir = gpt2_tiny_run
    out = tmp_path_factory.mktemp("export") / "gpt2-tiny-hf"
    result = run_cli(str(ROOT / "export.py"), f"ckpt_path={run_dir}", f"out={out}", cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return run_dir, best, out, result


def test_transformers_generate_continues_a_prompt_as_generate_py_does(exported, tmp_path):
    run_dir, best, out, result = exported
    assert f"as GPT2LMHeadModel to {out}" in result.stdout and "step 8" in result.stdout
    prompt = "To be, or not to be"
    settings = ["max_new_tokens=16", "temperature=0", "device=cpu"]
    ours = run_cli(str(ROOT / "generate.py"), f"ckpt_path={best}", f"prompt='{prompt}'", *settings, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-3000:]
    text = ours.stdout.removesuffix("\n")

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids == R50k().load().encode(prompt)  # the exported tokenizer gives wgpt's ids
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()  # fmt: skip
    new = output[: output.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in output else output
    assert len(new) > 0 and text == prompt + tokenizer.decode(new)
    loaded = load_model_source(best)
    assert generate(loaded.model, [ids], 16, temperature=0.0, eos_token_id=50256, vocab_size=50259) == [new]

    # generate.py reads the exported directory, and the run dir (its best checkpoint), the same way.
    for source in (out, run_dir):
        again = run_cli(str(ROOT / "generate.py"), f"ckpt_path={source}", f"prompt='{prompt}'", *settings, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout == ours.stdout


def test_eval_py_scores_an_exported_directory_as_its_checkpoint(exported, data_dir, tmp_path):
    run_dir, best, out, _ = exported
    copy = shutil.copytree(out, tmp_path / "hf")
    args = ["batch_size=4", "max_batches=4", f"paths.data_dir={data_dir}", "device=cpu"]
    result = run_cli(str(ROOT / "eval.py"), f"ckpt_path={copy}", "data=shakespeare", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((copy / "eval-hf.json").read_text())
    best_metrics = torch.load(best, weights_only=True)["best_metrics"]
    assert saved["results"]["shakespeare"]["validation"]["loss"] == pytest.approx(best_metrics["val_loss"], rel=1e-4)
    assert saved["global_step"] == 8 and saved["tokenizer"]["name"] == "r50k"

    # A Hugging Face directory holds no run config: the data must be named.
    bad = run_cli(str(ROOT / "eval.py"), f"ckpt_path={copy}", *args, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"Error: no data= given and ckpt_path={copy} is a Hugging Face directory, which holds no run config: name the data, e.g. data=shakespeare"
    ]


def fast(**changes) -> list[str]:
    """conftest's FAST overrides with some values changed."""
    args = [a for a in FAST if a.partition("=")[0] not in changes]
    return args + [f"{k}={v}" for k, v in changes.items()]


def test_train_py_init_from_an_export_starts_a_new_run_from_its_weights(exported, data_dir, tmp_path):
    run_dir, best, out, _ = exported
    # A learning rate too small to move a weight: the first validation scores the exported weights.
    settings = fast(**{"trainer.max_steps": 2, "trainer.val_every_n_steps": 2, "optim.lr": 1e-12})
    result = run_cli(str(ROOT / "train.py"), "model=gpt2-tiny", *settings, f"init_from={out}", *paths(tmp_path, data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (new_run,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    log = (new_run / "train.log").read_text()
    assert f"init_from: the weights of {out} (GPT2LMHeadModel, step 8 of the run that made it); this run starts at step 0" in log
    summary = json.loads((new_run / "summary.json").read_text())
    source = torch.load(best, weights_only=True)["best_metrics"]
    assert summary["global_step"] == 2 and summary["resumed_from"] is None  # a new run, not a continued one
    assert summary["final_val_loss"] == pytest.approx(source["val_loss"], rel=1e-5)
    assert [int(row["step"]) for row in read_metrics(new_run) if row.get("val_loss")] == [1]  # Lightning counts from 0

    # The run ends with its best weights beside its best checkpoint, which load_run reads.
    (weights,) = (new_run / "checkpoints").glob("best-*.safetensors")
    assert f"Best weights: {weights}" in log
    import wgpt

    model, tokenizer, cfg = wgpt.load_run(weights)
    exported_model, _ = model_from_hf_dir(out)
    assert cfg.init_from == str(out) and tokenizer.name == "r50k"
    for (name, a), b in zip(model.state_dict().items(), exported_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_train_py_refuses_a_bad_init_from_in_one_line_and_writes_nothing(exported, data_dir, tmp_path):
    _, best, out, _ = exported
    (tmp_path / "notes").mkdir()
    cases = {
        f"init_from={tmp_path / 'notes'}": f"Error: init_from={tmp_path / 'notes'} has no config.json: it is not a Hugging Face model directory",
        f"init_from={out} model=llama3-tiny": f"Error: init_from={out} holds a GPT2LMHeadModel that model llama3-tiny (",
        f"init_from={out} model.d_embed=64": f"Error: init_from={out} holds a GPT2LMHeadModel that model gpt2-tiny (d_embed=64) does not fit: "
        "its config.json implies model.d_embed=32: add those overrides",
        f"init_from={out} ckpt_path={best}": f"Error: init_from={out} and ckpt_path={best}: init_from starts a new run",
        f"ckpt_path={out}": f"Error: ckpt_path={out} is a directory: give the path of a .ckpt file (runs keep them in "
        "<run dir>/checkpoints/); to start a new run from its weights, give init_from=<dir>",
    }
    # The first as a user runs it; the others through wgpt.core.train.train, what train.py calls (each
    # launch costs seconds of imports), with the same config and the same check that nothing is written.
    from wgpt.core.compose import compose_train_config
    from wgpt.util.errors import WgptError
    from wgpt.core.train import train

    for i, (args, message) in enumerate(cases.items()):
        if i == 0:
            result = run_cli(str(ROOT / "train.py"), "model=gpt2-tiny", *fast(), *args.split(), *paths(tmp_path, data_dir), cwd=tmp_path)
            assert result.returncode == 1, (args, result.stderr[-2000:])
            (line,) = result.stderr.strip().splitlines()
        else:
            run_dir = tmp_path / "outputs" / "gpt2-tiny" / "run"  # where train.py's Hydra would put it
            cfg = compose_train_config(["model=gpt2-tiny", *fast(), *args.split(), *paths(tmp_path, data_dir), f"paths.output_dir={run_dir}"])
            with pytest.raises(WgptError) as error:
                train(cfg)
            line = f"Error: {error.value}"
        assert line.startswith(message), (args, line)
        assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*")), args
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "outputs") == ["notes"]

