"""Compatibility, end to end: a run made by today's code (tests/fixtures/compat-run) keeps working
through the command line after src/wgpt is restructured: resumed by train.py, scored by eval.py,
sampled by generate.py, exported by export.py. One launch per test; every launch works on a copy
of the fixture under tmp_path, with paths.* there, so nothing is written in the repo.

The fixture's data dir is not shipped: train.py retrains its BPE tokenizer (deterministic: the
fingerprint must match the checkpoint's, or it refuses to resume) and tokenizes the bins; eval.py
tokenizes the bins with the tokenizer the checkpoint holds. generate.py and export.py need no data.
"""

import csv
import json
import math
import shutil

import pytest
import torch
import yaml

from conftest import ROOT, paths, run_cli

FIXTURE = ROOT / "tests" / "fixtures" / "compat-run"
TOKENIZER = "bpe320-c6058e15bd32ce75"  # the fingerprint the fixture's checkpoints record


def fixture_overrides(**replace: str) -> list[str]:
    """The overrides the fixture was made with (its .hydra/overrides.yaml), as a user reruns them:
    without its paths.* (that machine's) and with ``replace``d values."""
    made = yaml.safe_load((FIXTURE / ".hydra" / "overrides.yaml").read_text())
    kept = [o for o in made if not o.startswith("paths.") and o.split("=")[0] not in replace]
    return [*kept, *(f"{key}={value}" for key, value in replace.items())]


@pytest.fixture
def run(tmp_path):
    """A writable copy of the fixture's run dir (eval.py writes beside the checkpoint it scores)."""
    return shutil.copytree(FIXTURE, tmp_path / "run")


def test_train_py_resumes_the_fixture_to_a_larger_budget(run, tmp_path):
    ckpt = run / "checkpoints" / "recent.ckpt"
    result = run_cli(
        "train.py",
        f"ckpt_path={ckpt}",
        *fixture_overrides(**{"trainer.max_steps": "12"}),
        *paths(tmp_path, tmp_path / "data"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (new_run,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()  # a resumed run gets a new dir
    summary = json.loads((new_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 12
    assert summary["resumed_from"] == str(ckpt) and math.isfinite(summary["final_val_loss"])
    with open(new_run / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps and min(steps) >= 8 and max(steps) >= 11  # went on from step 8, not from 0
    checkpoint = torch.load(new_run / "checkpoints" / "recent.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 12 and checkpoint["tokenizer"]["fingerprint"] == TOKENIZER
    assert (tmp_path / "data" / "shakespeare" / "tokenizers" / "bpe320.json").is_file()  # retrained there


def test_eval_py_scores_the_fixture_as_its_run_validated(run, tmp_path):
    """With the run's batch size and its limit_val_batches=2, eval.py reads the very windows the
    run validated on: its validation loss is the checkpoint's best val_loss."""
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    result = run_cli("eval.py", f"ckpt_path={best}", "max_batches=2", "device=cpu", *paths(tmp_path, tmp_path / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run / f"eval-{best.stem}.json").read_text())
    validation = saved["results"]["shakespeare"]["validation"]
    assert math.isfinite(validation["loss"]) and math.isfinite(saved["results"]["shakespeare"]["test"]["loss"])
    logged = torch.load(best, map_location="cpu", weights_only=True)["best_metrics"]
    assert validation["loss"] == pytest.approx(logged["val_loss"], rel=1e-3)
    assert validation["bpb"] == pytest.approx(logged["val_bpb"], rel=1e-3)
    assert saved["global_step"] == 8 and saved["tokenizer"]["fingerprint"] == TOKENIZER
    assert (tmp_path / "data" / "shakespeare" / "tokenized-bpe320").is_dir()  # bins made for the checkpoint's tokenizer
    assert not list(FIXTURE.glob("eval-*.json"))


def test_generate_py_continues_a_prompt_greedily_as_the_model_does(run):
    """temperature=0: the text must be the argmax continuation, computed here with wgpt.load_run."""
    import wgpt

    ckpt, prompt = run / "checkpoints" / "recent.ckpt", "ROMEO:"
    result = run_cli(
        "generate.py", f"ckpt_path={ckpt}", f"prompt={prompt}", "max_new_tokens=5", "temperature=0", "device=cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    model, tokenizer, _ = wgpt.load_run(ckpt)
    ids, new = tokenizer.encode(prompt), []
    with torch.no_grad():
        for _ in range(5):
            next_id = int(model(torch.tensor([ids + new]))[0, -1, : len(tokenizer)].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            new.append(next_id)
    assert new and result.stdout == prompt + tokenizer.decode(new) + "\n"


def test_export_py_writes_a_directory_transformers_loads_with_the_same_logits(run, tmp_path):
    out = tmp_path / "hf"
    result = run_cli("export.py", f"ckpt_path={run}", f"out={out}")  # a run dir stands for its best checkpoint
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]

    transformers = pytest.importorskip("transformers")  # the [hf] extra
    import wgpt

    model, tokenizer, _ = wgpt.load_run(run)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "To be, or not to be"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(torch.tensor([ids])).logits, model(torch.tensor([ids])), atol=1e-5, rtol=1e-4
        )


def test_the_tools_print_their_usage():
    """python -m wgpt.<tool> --help: the module paths in the README keep working."""
    for tool in ("plot", "tokens", "shapes"):
        result = run_cli("-m", f"wgpt.{tool}", "--help", timeout=120)
        assert result.returncode == 0, f"wgpt.{tool}: {result.stderr[-2000:]}"
        assert f"python -m wgpt.{tool}" in result.stdout, f"wgpt.{tool} printed no usage: {result.stdout[:500]}"
