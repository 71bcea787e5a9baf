"""record.json and git.diff: what a run ran. A run from a dirty checkout records its commit, its
changed file and its new untracked model file; a clean one records no diff; a directory outside
git says so; the diff is cut at its limit."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import wgpt.core.record as record
from wgpt.core.record import git_state

from conftest import ROOT, run_cli


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A checkout with src/ and conf/, one commit."""
    repo = tmp_path / "repo"
    for name, text in {"src/model.py": "A = 1\n", "conf/model.yaml": "width: 8\n", "README.md": "hi\n"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return repo


def test_a_clean_checkout_records_its_commit_and_no_diff(repo, tmp_path):
    state = git_state(repo, tmp_path)
    assert state == {"commit": git(repo, "rev-parse", "HEAD").strip(), "dirty": False, "diff": None}
    assert not (tmp_path / "git.diff").exists()


def test_a_dirty_checkout_records_its_changes_and_new_files_under_src_and_conf(repo, tmp_path, monkeypatch):
    (repo / "src" / "model.py").write_text("A = 2\n")
    (repo / "src" / "new_model.py").write_text("class Mine:\n    pass\n")
    (repo / "notes.txt").write_text("not code\n")  # dirty, but outside src/ and conf/
    state = git_state(repo, tmp_path)
    assert state["dirty"] and state["diff"] == "git.diff" and state["new_files"] == ["src/new_model.py"]
    diff = (tmp_path / "git.diff").read_text()
    assert "-A = 1\n+A = 2" in diff and "+class Mine:" in diff and "not code" not in diff
    (repo / "src" / "my model é.py").write_bytes(b"B = 'caf\xe9'\n")  # a space, a non-ASCII name, Latin-1 text
    state = git_state(repo, tmp_path)
    assert state["new_files"] == ["src/my model é.py", "src/new_model.py"]
    assert "+B = 'caf\ufffd'" in (tmp_path / "git.diff").read_text()
    monkeypatch.setattr(record, "DIFF_LIMIT", 40)
    state = git_state(repo, tmp_path)
    diff = (tmp_path / "git.diff").read_text()
    kept, cut = diff.split("\n[git.diff cut at 40 bytes of ")
    assert state["diff_cut"] and len(kept.encode()) <= 40 and cut.endswith("]\n")


def test_outside_a_git_checkout_it_says_so(tmp_path):
    assert git_state(tmp_path, tmp_path) == {"commit": None, "note": "not a git checkout (or git is not installed)"}


def test_a_run_from_a_dirty_clone_records_the_command_code_versions_and_totals(tmp_path, data_dir):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / "src" / "wgpt" / "models" / "my_model.py").write_text("# my new architecture\n")
    config = clone / "conf" / "model" / "gpt2-tiny.yaml"
    config.write_text(config.read_text() + "# tried: wider\n")
    args = ["model.n_layers=1", "model.d_embed=32", "model.n_heads=2", "data.batch_size=4", "trainer.max_steps=2"]
    args += ["trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    args += [
        f"paths.output_root={tmp_path / 'out'}",
        f"paths.data_dir={data_dir}",
        "start_datetime=2020-01-01_00-00-00",
    ]
    # The clone's own code, as in a checkout of its own (the test's environment imports this one).
    env = {"WGPT_ROOT": str(clone), "PYTHONPATH": str(clone / "src")}
    ran = run_cli("train.py", *args, cwd=clone, env=env, fresh=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run_dir = tmp_path / "out" / "gpt2-tiny" / "2020-01-01_00-00-00"
    kept = json.loads((run_dir / "record.json").read_text())
    python, script, *overrides = kept["command"].split()
    assert python.startswith("python") and script.endswith("train.py") and overrides == args
    assert kept["git"]["commit"] == git(ROOT, "rev-parse", "HEAD").strip() and kept["git"]["dirty"]
    diff = (run_dir / "git.diff").read_text()
    assert "+# my new architecture" in diff and "+# tried: wider" in diff
    assert kept["versions"]["torch"] and kept["versions"]["lightning"] and kept["machine"]["cpu_cores"] >= 1
    assert kept["numerics"]["precision"] == "32-true" and kept["environment"]["WGPT_ROOT"] == str(clone)
    assert kept["status"] == "completed" and kept["global_step"] == 2 and kept["wall_seconds"] > 0
    assert kept["train_tokens"] == 2 * 4 * 128 and kept["train_flops"] > 0
    shutil.rmtree(clone)


def test_a_continued_run_keeps_the_diff_of_its_first_part(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(record, "code_root", lambda: repo)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (repo / "src" / "model.py").write_text("A = 2\n")
    record.write_run_record(run_dir, "32-true")
    (repo / "src" / "model.py").write_text("A = 3\n")  # changed again before the run continues
    record.write_run_record(run_dir, "32-true")
    assert "+A = 2" in (run_dir / "git.diff").read_text()
    assert "+A = 3" in (run_dir / "git.part2.diff").read_text()
    saved = json.loads((run_dir / "record.json").read_text())
    assert saved["git"]["diff"] == "git.part2.diff" and saved["earlier_parts"][0]["git"]["diff"] == "git.diff"
