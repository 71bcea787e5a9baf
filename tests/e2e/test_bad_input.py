"""Every kind of bad input, through the real CLI: one line naming the bad value and the fix,
exit status 1, no traceback, and no file written or changed (outputs, data, checkpoints)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_in_process


@dataclass
class Case:
    args: list[str]
    says: list[str]  # what the error line must name: the bad value, the valid ones, the fix
    data: str = "shared"  # shared: the session's prepared bins; "corrupt", "mismatched": a damaged copy
    skip: str | None = None
    env: dict = field(default_factory=dict)
    gpu: bool = False  # needs a CUDA GPU: marked gpu (and skipped without one)
    process: bool = False  # through a new process (run_cli), not run_in_process (cases with env always are)


CPU_CORES = os.cpu_count() or 1
GPUS = torch.cuda.device_count()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# A port bound and never listened on, for this whole session: connecting to it is refused at once,
# so an endpoint there is a hub that cannot be reached, whatever network this machine has.
_CLOSED = socket.socket()
_CLOSED.bind(("127.0.0.1", 0))
NO_HUB = f"http://127.0.0.1:{_CLOSED.getsockname()[1]}"

CASES = {
    # Hydra: options and keys that do not exist
    "unknown model": Case(["model=gpt3"], ["model=gpt3 is not an option", "gpt2-tiny", "llama3-tiny"]),
    "unknown data": Case(["data=shakespear"], ["data=shakespear is not an option", "shakespeare", "local"]),
    "unknown logger in a list": Case(
        ["logger=[csv,nope]"], ["logger=nope is not an option: choose one of csv, tensorboard, wandb"]
    ),
    "unknown option of an optional group": Case(
        ["hparams_search=nope"], ["hparams_search=nope is not an option: choose one of lr_batch"]
    ),
    # (a schedule's options out of range: tests/unit/test_schedules.py, through the same check)
    "a data dir that cannot be made": Case(
        ["paths.data_dir={tmp}/notes.ckpt/data"], ["cannot be a directory", "notes.ckpt is a file", "paths.data_dir"]
    ),
    "a Lightning value Lightning refuses at fit": Case(
        ["trainer.limit_val_batches=-1"], ["trainer.limit_val_batches=-1 is out of range: give a number of batches"]
    ),
    "logger null": Case(["logger=null"], ["logger=null", "choose one of csv, tensorboard, wandb"]),
    "unknown trainer": Case(["trainer=fast"], ["trainer=fast is not an option", "default"]),
    "misspelled key": Case(
        ["optim.lrr=1e-3"], ["optim.lrr is not a config key", "did you mean optim.lr?", "+optim.lrr="]
    ),
    "misspelled group": Case(["modle=gpt2"], ["modle", "did you mean model"]),
    "misspelled model key": Case(["model.n_layer=2"], ["model.n_layer is not a config key", "model.n_layers"]),
    "added unknown trainer argument": Case(
        ["+trainer.max_step=5"], ["trainer.max_step is not a lightning.Trainer argument", "trainer.max_steps"]
    ),
    "unparsable override": Case(["optim.lr=[1e-3"], ["cannot parse the override", "optim.lr=[1e-3"]),
    # numbers
    "learning rate not a number": Case(["optim.lr=fast"], ["optim.lr=fast is not a number", "optim.lr=3e-4"]),
    "learning rate zero": Case(["optim.lr=0"], ["optim.lr=0 is out of range", "above 0"]),
    "learning rate negative": Case(["optim.lr=-3e-4"], ["optim.lr=-0.0003 is out of range"]),
    "batch size zero": Case(["data.batch_size=0"], ["data.batch_size=0 is out of range", "at least 1"]),
    "batch size fractional": Case(["data.batch_size=2.5"], ["data.batch_size=2.5 is not a whole number"]),
    "batch size not a number": Case(["data.batch_size=many"], ["data.batch_size=many is not a whole number"]),
    "seq_len zero": Case(["data.seq_len=0"], ["data.seq_len=0 is out of range"]),
    "seq_len not a number": Case(["data.seq_len=long"], ["data.seq_len=long is not a whole number"]),
    "stride_ratio zero": Case(["data.stride_ratio=0"], ["data.stride_ratio=0 is out of range", "(0, 1]"]),
    "stride_ratio above 1": Case(["data.stride_ratio=1.5"], ["data.stride_ratio=1.5 is out of range", "(0, 1]"]),
    "max_steps zero": Case(["trainer.max_steps=0"], ["trainer.max_steps=0 is out of range", "-1 (no limit)"]),
    "precision unknown": Case(["trainer.precision=bf17"], ["trainer.precision=bf17 is not one of", "bf16-mixed"]),
    "betas not a pair": Case(["optim.betas=0.9"], ["optim.betas=0.9 must be two numbers in [0, 1)"]),
    "switch not a boolean": Case(["compile=flase"], ["compile=flase", "auto"]),
    "strategy misspelled": Case(
        ["trainer.strategy=ddp_spwn"], ["trainer.strategy=ddp_spwn", "did you mean ddp_spawn?"]
    ),
    "trainer argument wgpt sets": Case(["+trainer.logger=false"], ["trainer.logger is set by wgpt", "logger="]),
    "broken interpolation": Case(["optim.lr=${nope}"], ["optim.lr", "nope"]),
    # model shapes
    "width not divisible by heads": Case(
        ["model.d_embed=100"], ["d_embed=100 is not divisible by n_heads=6", "model.*"]
    ),
    "kv heads not dividing heads": Case(["model=llama3-tiny", "model.n_kv_heads=4"], ["n_kv_heads=4", "n_heads=6"]),
    "seq_len above max_seq_len": Case(
        ["data.seq_len=256"], ["data.seq_len=256 exceeds model.max_seq_len=128", "lower data.seq_len"]
    ),
    "model setting of the wrong type": Case(["model.n_layers=deep"], ["n_layers", "deep", "model"]),
    # data
    "data path missing": Case(
        ["data=local", "data.path={tmp}/no-such-corpus"], ["data.path=", "no-such-corpus does not exist"]
    ),
    "data path not set": Case(["data=local"], ["data.path is not set", "data.path=<value>"]),
    "data path without text files": Case(["data=local", "data.path={tmp}/empty"], ["holds no", "files"]),
    "data path unreadable": Case(
        ["data=local", "data.path={tmp}/locked"],
        ["locked is not readable"],
        skip="root reads everything" if AS_ROOT else None,
    ),
    "corrupt bins": Case(
        ["data.auto_prepare=false"],
        ["dataset 'shakespeare' is not ready", "truncated", "python process.py"],
        data="corrupt",
    ),
    "bins of another source": Case(
        ["data.auto_prepare=false", "data.datasets.shakespeare.validation_plays=[macbeth]"],
        ["dataset 'shakespeare' is not ready", "was made from", "python process.py"],
    ),
    "mixture weight negative": Case(
        ["data.weights={shakespeare:-1}"], ["data.weights={shakespeare:-1} must be numbers of 0 or more"]
    ),
    "one-file corpus of too few lines": Case(
        ["data=local", "data.path={tmp}/tiny.txt"],
        ["data.path=", "tiny.txt is too small to split", "3 documents", "20 lines"],
    ),
    "one-file corpus too short for a window": Case(
        ["data=local", "data.path={tmp}/short.txt"],
        [
            "dataset 'local' is too small for windows of data.seq_len=128",
            "short.txt",
            "bytes of text or more",
            "data.seq_len",
        ],
    ),
    "records fewer than the carve takes": Case(
        ["data=local", "data.path={tmp}/two.jsonl"],
        ["the train split of 'local' holds no text", "at least 3 documents"],
    ),
    "hub unreachable": Case(
        ["data=slim-pajama", "data.auto_prepare=true"],
        [
            "hub (" + NO_HUB + ") cannot be reached for dataset 'slim-pajama'",
            "python process.py data=slim-pajama",
            "data=local",
        ],
        env={"HF_ENDPOINT": NO_HUB, "HF_DATASETS_CACHE": "{tmp}/hf"},
    ),
    "hub offline": Case(
        ["data=slim-pajama", "data.auto_prepare=true"],
        ["cannot be reached for dataset 'slim-pajama'", "HF_HUB_OFFLINE is set", "python process.py data=slim-pajama"],
        env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": NO_HUB, "HF_DATASETS_CACHE": "{tmp}/hf"},
    ),
    "bins of another tokenizer": Case(["data.auto_prepare=false"], ["tokenized with", "prepare"], data="mismatched"),
    # optimizers and schedules
    "unknown optimizer class": Case(
        ["optim._target_=torch.optim.Adamm"], ["optim._target_=torch.optim.Adamm cannot be imported"]
    ),
    "unknown optimizer argument": Case(
        ["+optim.momentum=0.9"], ["optim.momentum is not a setting of torch.optim.AdamW"]
    ),
    "argument the group's optimizer lacks": Case(
        ["optim=muon", "+optim.param_groups.hidden_matrices.betas=[0.9,0.95]"],
        ["optim.param_groups.hidden_matrices.betas is not a setting of torch.optim.Muon"],
    ),
    "unknown parameter kind": Case(
        ["optim.param_groups.vectors.kinds=[vectors]"], ["kinds names 'vectors'", "hidden_matrix"]
    ),
    "schedule option out of range": Case(
        ["optim/scheduler=wsd", "optim.scheduler.decay_fraction=2"],
        ["optim.scheduler.decay_fraction=2 is out of range"],
    ),
    # tokenizers
    "unknown tokenizer": Case(["tokenizer=bpee"], ["tokenizer=bpee is not an option", "bpe", "r50k"]),
    "tokenizer vocabulary too small": Case(
        ["tokenizer=bpe", "tokenizer.vocab_size=100"], ["tokenizer.vocab_size=100 is out of range", "259"]
    ),
    "tokenizer vocabulary not a number": Case(
        ["tokenizer=bpe", "tokenizer.vocab_size=big"], ["tokenizer.vocab_size=big is not a whole number"]
    ),
    "tokenizer trained on an unknown dataset": Case(
        ["tokenizer=bpe", "tokenizer.train_on=tinystories"],
        ["tokenizer.train_on=tinystories is not a dataset", "shakespeare"],
    ),
    "tokenizer not trained and may not be": Case(
        ["tokenizer=bpe", "data.auto_prepare=false"],
        ["tokenizer bpe4096 is not trained on 'shakespeare'", "python process.py data=shakespeare tokenizer=bpe"],
    ),
    # checkpoints
    "checkpoint missing": Case(["ckpt_path={tmp}/nope.ckpt"], ["ckpt_path=", "nope.ckpt does not exist"]),
    "checkpoint not a checkpoint": Case(["ckpt_path={tmp}/notes.ckpt"], ["notes.ckpt is not a checkpoint"]),
    "resume not an option": Case(["resume=yes"], ["resume=yes is not an option", "resume=auto"]),
    # devices
    "GPU without one": Case(
        ["trainer.accelerator=gpu"],
        ["trainer.accelerator=gpu", "no CUDA GPU"],
        skip="a GPU is here" if torch.cuda.is_available() else None,
    ),
    "more GPUs than exist": Case(
        ["trainer.accelerator=gpu", f"trainer.devices={GPUS + 1}"],
        [f"trainer.devices={GPUS + 1}", f"{GPUS} GPU"],
        skip=None if GPUS else "needs a CUDA GPU",
        gpu=True,
    ),
    "more devices than exist": Case(
        ["trainer.accelerator=cpu", f"trainer.devices={CPU_CORES + 1}"],
        [f"trainer.devices={CPU_CORES + 1}", f"{CPU_CORES} CPU cores"],
    ),
    "devices zero": Case(["trainer.accelerator=cpu", "trainer.devices=0"], ["trainer.devices=0 is out of range"]),
}


def snapshot(*roots: Path) -> dict[str, tuple[int, int] | str]:
    """Every file (size, modification time) and dir under ``roots``, to spot any write."""
    seen = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            stat = path.stat()  # a dir's own mtime would only show that an entry came and went
            seen[str(path)] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else "dir"
    return seen


def damaged_copy(data_dir: Path, kind: str, where: Path) -> Path:
    copy = where / f"data-{kind}"
    shutil.copytree(data_dir, copy)
    train_bin = copy / "shakespeare" / "tokenized" / "train.bin"
    if kind == "corrupt":  # cut short, as by a full disk
        with open(train_bin, "r+b") as f:
            f.truncate(train_bin.stat().st_size // 2)
    else:  # made by another tokenizer: its sidecar says so
        sidecar = next(p for p in train_bin.parent.iterdir() if p.name.startswith("train") and p.suffix == ".json")
        info = json.loads(sidecar.read_text())
        info["tokenizer"] = "cl100k_base:0000"
        sidecar.write_text(json.dumps(info))
    return copy


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.gpu] if case.gpu else []) for name, case in CASES.items()]
)
def test_bad_input_is_one_line_naming_the_value_and_writes_nothing(name, data_dir, tmp_path):
    """One case through `python train.py`, in a directory of its own."""
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.txt").write_text("text")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    (tmp_path / "tiny.txt").write_text("A corpus of one line.\nAnd another.\n")
    (tmp_path / "short.txt").write_text(
        "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(100))
    )
    (tmp_path / "two.jsonl").write_text('{"text": "the first record"}\n{"text": "the second record"}\n')
    data = data_dir if case.data == "shared" else damaged_copy(data_dir, case.data, tmp_path)
    out = tmp_path / "runs"
    out.mkdir()
    watched = (out, data, tmp_path / "notes.ckpt")
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    (tmp_path / "locked").chmod(0)
    try:
        before = snapshot(*watched)
        env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in case.env.items()}
        run = run_cli if case.process or case.env else run_in_process  # env read at import: a new process
        result = run("train.py", *args, f"paths.output_root={out}/outputs", env={"WGPT_DATA_DIR": str(data), **env})
        after = snapshot(*watched)
    finally:
        (tmp_path / "locked").chmod(0o755)  # for pytest to remove it

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    for words in case.says:
        assert words in errors[0], errors[0]
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"


def test_hydra_full_error_shows_the_traceback(data_dir, tmp_path):
    for args in (["optim.lr=fast"], ["model=gpt3"]):
        result = run_cli(
            "train.py",
            *args,
            f"paths.output_root={tmp_path}",
            env={"WGPT_DATA_DIR": str(data_dir), "HYDRA_FULL_ERROR": "1"},
        )
        assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr[-2000:]


def test_a_sweep_with_one_bad_job_is_refused_in_one_line_before_any_job_runs(data_dir, tmp_path):
    """Every job's config is checked before the first job starts (wgpt.core.sweep_check.SweepCheck)."""
    result = run_cli(
        "train.py",
        "-m",
        "optim.lr=1e-3,fast",
        "model.n_layers=1",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu",
        f"paths.output_root={tmp_path / 'outputs'}",
        env={"WGPT_DATA_DIR": str(data_dir)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "Error: optim.lr=fast is not a number: give a learning rate above 0, e.g. optim.lr=3e-4 "
        "(sweep job 1 of 2: optim.lr=fast; no job has run)"
    )
    assert not (tmp_path / "outputs").exists()  # no sweep dir, no job dir
