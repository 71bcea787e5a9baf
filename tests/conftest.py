import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from warm_launcher import WarmLauncher

ROOT = Path(__file__).resolve().parents[1]

import wgpt.core.launch  # noqa: E402, F401  (registers the resolvers conf/train.yaml uses, for tests that compose it)

# pytest-xdist (`-n auto`, pyproject's addopts) runs the suite in one worker per core. Each
# worker and every process it starts (train.py, DDP ranks, loader workers) then gets an equal
# share of the cores: PyTorch's default of one thread per core in each of them would make
# OpenMP threads wait on each other, several times slower. An OMP_NUM_THREADS you set is kept.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# CPU MFU divides by a matmul peak measured once and cached (wgpt.core.devices.cpu_peak_flops).
# Measured here, beside other tests, it would read low: keep it out of the user's cache.
os.environ["XDG_CACHE_HOME"] = os.path.join(tempfile.gettempdir(), f"wgpt-test-cache-{os.getuid()}")

# A model small enough to take a few seconds, on the real data path, on the CPU (also on a GPU
# machine: these runs check CPU facts, and a GPU would compile the model first).
FAST = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.batch_size=4",
    "data.num_workers=0",
    "optim.lr=1e-2",
    "trainer.max_steps=8",
    "trainer.val_every_n_steps=4",
    "trainer.limit_val_batches=4",
    "trainer.log_every_n_steps=2",
    "callbacks.recent.every_n_train_steps=4",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def paths(tmp_path: Path, data_dir: Path) -> list[str]:
    return [f"paths.output_root={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}"]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


_warm: list[WarmLauncher] = []  # this test process's zygote, started by the first run_cli that can use one


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: int = 300,
    input: str = "",
    new_session: bool = False,
    fresh: bool = False,
):
    """Run a top-level script (train.py, ..., or ``-m wgpt.<tool>``) as a user would, in a process
    of its own; returns the CompletedProcess. The process is forked from one that has torch and
    Lightning imported already (tests/warm_launcher.py: ~7 s less a run) unless ``fresh`` (a new
    interpreter, for what happens at import), the environment changes what a preloaded module read
    at import, or WGPT_TEST_FRESH=1 is set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not fresh and os.environ.get("WGPT_TEST_FRESH") != "1" and sys.platform == "linux":
        if not _warm:
            _warm.append(WarmLauncher(ROOT))
        if _warm[0].usable(args, env):
            return _warm[0].run(args, cwd or ROOT, env, timeout, input=input, new_session=new_session)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=new_session,
    )


def train_killable(*args: str, kill: tuple[int, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python train.py <args>`` with tests/record_batches.py's KillWhen among its callbacks:
    SIGKILLed at ``kill`` = (step, moment), a crash, not an exception; None: it runs on. Every
    launch of one run passes the same overrides, killed or not, as a restarted job does."""
    env = {"PYTHONPATH": str(ROOT / "tests"), **({"WGPT_TEST_KILL": f"{kill[0]}:{kill[1]}"} if kill else {})}
    return run_cli("train.py", *args, "+callbacks.kill._target_=record_batches.KillWhen", env=env, **kwargs)


def killed_at(step: int, *args: str) -> subprocess.CompletedProcess:
    """``train_killable`` SIGKILLed once optimizer step ``step`` is done."""
    return train_killable(*args, kill=(step, "step"))


def pytest_sessionfinish(session, exitstatus):
    for launcher in _warm:
        launcher.close()


def run_in_process(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a top-level script (train.py, ...) as ``run_cli`` does, but in this process: its command
    line, environment, working directory, ``sys.path[0]``, stdout, stderr and exit status as from
    a shell, without the ~7 s a new process spends importing torch and Lightning. Logging, warning
    filters and Hydra's state are put back afterwards, so the next test starts as it would have.
    For runs refused before training starts (bad input); anything that trains, launches ranks,
    handles signals or reads an environment variable at import goes through ``run_cli``."""
    import contextlib
    import io
    import logging
    import runpy
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    named = ("lightning", "lightning.pytorch", "lightning.fabric", "py.warnings", "wgpt", "hydra")
    loggers = [logging.getLogger(), *map(logging.getLogger, named)]
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.filters[:]) for lg in loggers]
    saved_argv, saved_path, saved_env, saved_cwd = sys.argv[:], sys.path[:], dict(os.environ), os.getcwd()
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.environ.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    sys.argv = [str(ROOT / script), *args]
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / script), run_name="__main__")
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:  # as the interpreter would: a traceback and status 1
                traceback.print_exc()
                code = 1
            finally:
                logging.captureWarnings(False)  # before catch_warnings restores showwarning
    finally:
        for lg, handlers, level, propagate, filters in saved_loggers:
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)
            lg.propagate = propagate
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([sys.executable, script, *args], code, out.getvalue(), err.getvalue())


def once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A directory that ``make`` fills once for the whole session, shared by every xdist worker
    (the first to ask makes it, the others wait and reuse it). Tests must only read it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        path = tmp_path_factory.mktemp(name)
        make(path)
        return path
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's own
    path = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (path / ".made").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            make(path)
            (path / ".made").touch()
    return path


def save_result(path: Path, result: subprocess.CompletedProcess) -> None:
    saved = {"args": result.args, "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
    path.write_text(json.dumps(saved))


def load_result(path: Path) -> subprocess.CompletedProcess:
    saved = json.loads(path.read_text())
    return subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data directory with the Shakespeare bins prepared once per worker (tests may snapshot it:
    no other worker's run touches it)."""
    from functools import partial

    from wgpt.data.datamodule import DatasetLightningWrapper
    from wgpt.data.shakespeare import load_splits

    path = tmp_path_factory.mktemp("data")
    load = partial(load_splits, validation_plays=["macbeth", "twelfth-night"], test_plays=["hamlet", "the-tempest"])
    DatasetLightningWrapper({"shakespeare": load}, seq_len=32, data_dir=path).prepare_data()
    return path


# The one gpt2-tiny run that several tests check (tests/e2e/test_train_cli.py the run dir,
# test_progress_runs.py what it printed, test_eval_cli.py, test_generate_cli.py and test_crash_safety.py
# its checkpoint):
# `python /path/to/train.py` started from another directory, progress bar on (in a pipe).
GPT2_TINY_RUN = ["model=gpt2-tiny", *(o for o in FAST if o != "trainer.enable_progress_bar=false")]


@pytest.fixture(scope="session")
def gpt2_tiny_run(tmp_path_factory, data_dir):
    """(CompletedProcess, run dir) of GPT2_TINY_RUN; read-only: copy what a test would change."""

    def make(path: Path):
        result = run_cli(str(ROOT / "train.py"), *GPT2_TINY_RUN, *paths(path, data_dir), cwd=path)
        save_result(path / "result.json", result)

    path = once(tmp_path_factory, "gpt2-tiny-run", make)
    result = load_result(path / "result.json")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (path / "outputs" / "gpt2-tiny").iterdir()
    return result, run_dir


# The one -m sweep that several tests check (tests/e2e/test_train_cli.py its jobs, test_loggers_cli.py
# the loggers, test_plot_cli.py the plots): two models, gradient accumulation, every logger installed (W&B offline).
LOGGERS = ["csv", *(name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name))]
SWEEP = [
    "-m",
    "model=gpt2-tiny,llama3-tiny",
    "trainer.accumulate_grad_batches=2",
    *FAST,
    f"logger=[{','.join(LOGGERS)}]",
    *(["logger.wandb.offline=true"] if "wandb" in LOGGERS else []),
]


def offline_wandb_env(path: Path) -> dict:
    """W&B with no network and every file it writes under path, none in ~."""
    home = path / "wandb-home"
    return {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(home),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
    }


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, data_dir):
    """(CompletedProcess, sweep dir) of SWEEP; read-only, except plots written beside the runs."""

    def make(path: Path):
        wandb_config = Path.home() / ".config" / "wandb"
        existed = wandb_config.exists()
        # no network here: a W&B that waited for one would time out
        result = run_cli("train.py", *SWEEP, *paths(path, data_dir), env=offline_wandb_env(path), timeout=300)
        save_result(path / "result.json", result)
        (path / "wrote-home.json").write_text(json.dumps(wandb_config.exists() and not existed))

    path = once(tmp_path_factory, "sweep", make)
    result = load_result(path / "result.json")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (path / "outputs" / "multirun").iterdir()
    return result, sweep_dir


# Modules whose tests are the longest (multi-process runs, several launches each): first in the
# order, so that the tests left at the end, which an idle worker takes over from a busy one
# (`--dist worksteal`), are short ones and no worker waits on a long tail.
# Module names (tests/e2e/<name>.py; test files have unique names across tests/unit and tests/e2e).
LONGEST_FIRST = [
    "test_ddp_cli",
    "test_crash_safety",
    "test_fsdp_runs",
    "test_sweep_resume_cli",
    "test_search",
    "test_process",
    "test_add_model",
    "test_generate_cli",
    "test_eval_cli",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    module = lambda item: getattr(getattr(item, "module", None), "__name__", "")  # noqa: E731
    items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: the rest keep their order
