import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

import wgpt.launch  # noqa: E402, F401  (registers the resolvers conf/train.yaml uses, for tests that compose it)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data directory with the Shakespeare bins prepared once for the whole session."""
    from wgpt.data.datamodule import DatasetLightningWrapper
    from wgpt.data.shakespeare import load_splits
    from functools import partial

    path = tmp_path_factory.mktemp("data")
    load = partial(load_splits, validation_plays=["macbeth", "twelfth-night"], test_plays=["hamlet", "the-tempest"])
    DatasetLightningWrapper({"shakespeare": load}, seq_len=32, data_dir=path).prepare_data()
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run a top-level script (train.py, ...) as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
