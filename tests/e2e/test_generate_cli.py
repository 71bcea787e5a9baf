"""generate.py end to end: sampling from conftest's gpt2-tiny checkpoint, and its one-line errors.
Decoding and sampling themselves: tests/unit/test_generate.py."""

from conftest import ROOT, run_cli


def test_generate_py_samples_from_a_trained_checkpoint_and_writes_nothing(gpt2_tiny_run, tmp_path):
    _, run_dir = gpt2_tiny_run
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    before = sorted(p.name for p in run_dir.rglob("*"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # On the CPU, in float32: cached and uncached decoding then agree to the token (a GPU's
    # kernels need not round the same way for both).
    args = [
        str(ROOT / "generate.py"),
        f"ckpt_path={ckpt}",
        "prompt=[To be,Once upon a time]",
        "max_new_tokens=8",
        "device=cpu",
    ]

    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "To be" in result.stdout and "Once upon a time" in result.stdout
    assert "prompt 1/2" in result.stdout and "prompt 2/2" in result.stdout
    assert "tokens/s" in result.stderr and "kv_cache=on" in result.stderr
    assert list(cwd.iterdir()) == []  # no run dir, .hydra/ or log file
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # nor anything beside the checkpoint

    reference = run_cli(*args, "kv_cache=false", cwd=cwd)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert reference.stdout == result.stdout  # same seed, same tokens, with or without the cache


def test_generate_py_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.ckpt"
    result = run_cli("generate.py", f"ckpt_path={missing}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: ckpt_path={missing} does not exist: "
        "give the path of a .ckpt file (runs keep them in <run dir>/checkpoints/)"
    ]
    # Settings are checked before the checkpoint is read.
    result = run_cli("generate.py", f"ckpt_path={missing}", "temperature=-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: temperature=-1 is out of range: give a number >= 0 (0 is greedy)"
    ]
