"""A hub dataset where the Hugging Face hub cannot be reached: one line saying so and what to do, at
once (not after half a minute of retries), and nothing left behind. No test here needs a network:
the hub is an endpoint on a closed local port, offline mode, or a local server."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from conftest import run_cli


@pytest.fixture
def closed_endpoint():
    """An endpoint on a port bound but never listened on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def hub_without_the_dataset():
    """A local server answering every request as the hub does for a repository that does not exist."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def process(tmp_path, env: dict, *args: str):
    start = time.monotonic()
    result = run_cli(
        "process.py",
        "data=slim-pajama",
        *args,
        f"paths.output_root={tmp_path / 'out'}",
        env={"WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf"), **env},
    )
    return result, time.monotonic() - start


def assert_one_line_and_nothing_left(result, tmp_path) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not (tmp_path / "data").exists(), sorted((tmp_path / "data").rglob("*"))  # no .prepare.lock, no dirs
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))  # no run dir of process.py
    return lines[0]


def test_unreachable_hub_is_one_line_at_once(tmp_path, closed_endpoint):
    result, seconds = process(tmp_path, {"HF_ENDPOINT": closed_endpoint})
    line = assert_one_line_and_nothing_left(result, tmp_path)
    assert f"the Hugging Face hub ({closed_endpoint}) cannot be reached for dataset 'slim-pajama'" in line
    assert "DKYoon/SlimPajama-6B" in line and "python process.py data=slim-pajama" in line
    assert "copy its bins" in line and "data=local data.path=" in line
    assert seconds < 20  # datasets' own retries take ~30 s


def test_offline_mode_without_a_cached_copy_is_one_line(tmp_path, closed_endpoint):
    result, _ = process(tmp_path, {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": closed_endpoint})
    line = assert_one_line_and_nothing_left(result, tmp_path)
    assert "cannot be reached for dataset 'slim-pajama'" in line and "HF_HUB_OFFLINE is set" in line


def test_a_reachable_hub_without_the_dataset_is_one_line(tmp_path, hub_without_the_dataset):
    """Any answer from the endpoint counts as reachable: datasets then asks for the dataset itself."""
    result, _ = process(tmp_path, {"HF_ENDPOINT": hub_without_the_dataset})
    line = assert_one_line_and_nothing_left(result, tmp_path)
    assert "DKYoon/SlimPajama-6B is not a dataset on the Hugging Face hub" in line and "check its name" in line


def test_an_unreachable_hub_for_training_a_tokenizer_is_one_line(tmp_path, closed_endpoint):
    """tokenizer=bpe reads the dataset before any bin is made: the same line, with its command."""
    result, seconds = process(tmp_path, {"HF_ENDPOINT": closed_endpoint}, "tokenizer=bpe")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(
        f"Error: the Hugging Face hub ({closed_endpoint}) cannot be reached for DKYoon/SlimPajama-6B"
    )
    assert "`python process.py data=slim-pajama tokenizer=bpe" in line and "data=local data.path=" in line
    assert not (tmp_path / "out").exists() and seconds < 20
