"""Seeds compared on a real -m sweep through train.py: the table at the sweep's end, its files, and
python -m wgpt.compare on the sweep dir. The statistics on hand-made dirs: tests/unit/test_compare.py."""

import csv
import json

from conftest import FAST, paths, read_metrics, run_cli


def test_a_sweep_over_seeds_ends_with_the_comparison(tmp_path, data_dir):
    result = run_cli(
        "train.py",
        "-m",
        "model=gpt2-tiny",
        "model.norm=layernorm,rmsnorm",
        "seed=1,2",
        *FAST,
        *paths(tmp_path, data_dir),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    out = result.stdout
    # After the sweep's own table: two groups of two seeds, the first the baseline.
    assert out.index("Sweep summary") < out.index("Comparison over seeds")
    table = out[out.index("Comparison over seeds") :]
    assert "val_bpb of 4 finished runs in 2 groups; baseline: model.norm=layernorm" in table
    assert "model.norm=rmsnorm" in table and "Time to val_bpb <= " in table
    rows = list(csv.DictReader(open(sweep_dir / "compare.csv")))
    assert [(r["group"], r["n"]) for r in rows] == [("model.norm=layernorm", "2"), ("model.norm=rmsnorm", "2")]
    assert (sweep_dir / "compare.png").is_file()

    # Each validation row says how many training seconds came before it.
    seconds = [float(r["train_seconds"]) for r in read_metrics(sweep_dir / "0-gpt2-tiny") if r["val_loss"]]
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1]

    # The command on the same dir: seeds paired, a target of our own.
    again = run_cli("-m", "wgpt.compare", str(sweep_dir), "--paired", "--target", "100", "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "paired p" in again.stdout and "2 of 2" in again.stdout  # everyone is below 100 bits per byte
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["target"] == {"value": 100.0, "source": "--target"}
    assert [g["n"] for g in saved["groups"]] == [2, 2]
    at = saved["groups"][0]["target"]["at"]  # reached at the first validation, after 4 steps
    assert at["steps"] == 4 and at["tokens"] > 0 and at["flops"] > 0  # FLOPs per step from each run's record.json
