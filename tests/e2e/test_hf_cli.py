"""Hugging Face export and import through the command line (export.py, generate.py, eval.py, train.py
init_from), on conftest's gpt2-tiny run: offline, never downloaded. In-process checks: tests/unit/test_hf.py."""

import json
import shutil

import pytest
import torch

from wgpt.data.tokenizer import R50k
from wgpt.interop.hf.reading import model_from_hf_dir
from wgpt.interop.sources import load_model_source
from wgpt.models import GPT
from wgpt.tools.generate import generate

from conftest import FAST, ROOT, paths, read_metrics, run_cli
from helpers_hf import bpe300, save_checkpoint, tiny

transformers = pytest.importorskip("transformers")  # the dev extra installs it


@pytest.fixture(scope="module")
def bpe():
    return bpe300()


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
        output = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
        )[0, len(ids) :].tolist()
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
        f"Error: no data= given and ckpt_path={copy} is a Hugging Face directory, which holds no run config: "
        "name the data, e.g. data=shakespeare"
    ]


def fast(**changes) -> list[str]:
    """conftest's FAST overrides with some values changed."""
    args = [a for a in FAST if a.partition("=")[0] not in changes]
    return args + [f"{k}={v}" for k, v in changes.items()]


def test_train_py_init_from_an_export_starts_a_new_run_from_its_weights(exported, data_dir, tmp_path):
    run_dir, best, out, _ = exported
    # A learning rate too small to move a weight: the first validation scores the exported weights.
    settings = fast(**{"trainer.max_steps": 2, "trainer.val_every_n_steps": 2, "optim.lr": 1e-12})
    result = run_cli(
        str(ROOT / "train.py"),
        "model=gpt2-tiny",
        *settings,
        f"init_from={out}",
        *paths(tmp_path, data_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (new_run,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    log = (new_run / "train.log").read_text()
    assert (
        f"init_from: the weights of {out} (GPT2LMHeadModel, step 8 of the run that made it); this run starts at step 0"
        in log
    )
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
        f"init_from={tmp_path / 'notes'}": (
            f"Error: init_from={tmp_path / 'notes'} has no config.json: it is not a Hugging Face model directory"
        ),
        f"init_from={out} model=llama3-tiny": (
            f"Error: init_from={out} holds a GPT2LMHeadModel that model llama3-tiny ("
        ),
        f"init_from={out} model.d_embed=64": (
            f"Error: init_from={out} holds a GPT2LMHeadModel that model gpt2-tiny (d_embed=64) does not fit: "
            "its config.json implies model.d_embed=32: add those overrides"
        ),
        f"init_from={out} ckpt_path={best}": f"Error: init_from={out} and ckpt_path={best}: init_from starts a new run",
        f"ckpt_path={out}": f"Error: ckpt_path={out} is a directory: give the path of a .ckpt file (runs keep them in "
        "<run dir>/checkpoints/); to start a new run from its weights, give init_from=<dir>",
    }
    # The first as a user runs it; the others through wgpt.core.train.train, what train.py calls (each
    # launch costs seconds of imports), with the same config and the same check that nothing is written.
    from wgpt.core.compose import compose_train_config
    from wgpt.core.train import train
    from wgpt.util.errors import WgptError

    for i, (args, message) in enumerate(cases.items()):
        if i == 0:
            result = run_cli(
                str(ROOT / "train.py"),
                "model=gpt2-tiny",
                *fast(),
                *args.split(),
                *paths(tmp_path, data_dir),
                cwd=tmp_path,
            )
            assert result.returncode == 1, (args, result.stderr[-2000:])
            (line,) = result.stderr.strip().splitlines()
        else:
            run_dir = tmp_path / "outputs" / "gpt2-tiny" / "run"  # where train.py's Hydra would put it
            cfg = compose_train_config(
                ["model=gpt2-tiny", *fast(), *args.split(), *paths(tmp_path, data_dir), f"paths.output_dir={run_dir}"]
            )
            with pytest.raises(WgptError) as error:
                train(cfg)
            line = f"Error: {error.value}"
        assert line.startswith(message), (args, line)
        assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*")), args
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "outputs") == ["notes"]
