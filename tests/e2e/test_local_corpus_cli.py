"""A one-file corpus through train.py and process.py on the command line, and a corpus process.py
refuses. The splitting itself: tests/unit/test_local_corpus.py."""

from __future__ import annotations

from conftest import run_cli
from helpers_local_corpus import play

FAST = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def test_train_and_process_on_one_file(tmp_path):
    (tmp_path / "one.txt").write_text(play(1500))
    env = {"WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    common = ["data=local", f"data.path={tmp_path / 'one.txt'}", f"paths.output_root={tmp_path / 'out'}"]
    result = run_cli("train.py", *common, *FAST, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "gpt2-tiny").iterdir()
    log = (run_dir / "train.log").read_text()
    assert "its text is split inside instead, 5% of it each to validation and test" in log
    assert "step 2 | val_loss" in log
    bins = sorted(p.name for p in (tmp_path / "data" / "local" / "tokenized").iterdir())
    assert bins == ["test.bin", "test.json", "train.bin", "train.json", "validation.bin", "validation.json"]

    result = run_cli("process.py", *common, "force=true", env=env)  # the same bins again, by process.py
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "data" / "local" / "tokenized").iterdir()) == bins


def test_process_refusing_a_corpus_leaves_no_run_dir_or_data_dir(tmp_path):
    (tmp_path / "tiny.txt").write_text("One line.\nTwo lines.\n")
    result = run_cli(
        "process.py",
        "data=local",
        f"data.path={tmp_path / 'tiny.txt'}",
        f"paths.output_root={tmp_path / 'out'}",
        env={"WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf")},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: data.path={tmp_path / 'tiny.txt'} is too small to split")
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
