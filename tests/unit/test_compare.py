"""python -m wgpt.compare: its statistics against scipy and hand computation, the interpolation to a
target, grouping, the baseline, and its one-line errors, on run dirs written here."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from scipy import stats

from wgpt.tools.compare import format_comparison, main
from wgpt.tools.comparison import compare_jobs
from wgpt.tools.runs import load_jobs
from wgpt.util.stats import crossing, holm, mean_interval, paired, welch

A = [2.10, 2.14, 2.12, 2.15]
B = [2.05, 2.02, 2.08]


def test_mean_interval_is_students_t():
    got = mean_interval(A)
    low, high = stats.t.interval(0.95, len(A) - 1, loc=stats.tmean(A), scale=stats.sem(A))
    assert got.mean == pytest.approx(sum(A) / 4)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.sd == pytest.approx(stats.tstd(A))
    one = mean_interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.low) and math.isnan(one.sd) and one.n == 1


def test_welch_matches_scipy():
    got = welch(B, A)
    expected = stats.ttest_ind(B, A, equal_var=False)
    ci = expected.confidence_interval(0.95)
    assert got.diff == pytest.approx(sum(B) / 3 - sum(A) / 4)
    assert got.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert got.df == pytest.approx(expected.df)
    assert math.isnan(welch([1.0], A).p)  # n = 1: no test
    assert welch([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_paired_matches_scipy():
    a, b = [2.1, 2.3, 2.2, 2.4], [2.0, 2.25, 2.1, 2.3]
    got = paired(a, b)
    expected = stats.ttest_rel(a, b)
    ci = expected.confidence_interval(0.95)
    assert got.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert got.diff == pytest.approx(0.0875)


def test_holm_by_hand():
    # sorted: 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = holm([0.02, math.nan])  # an untested group does not count
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1])


def test_crossing_interpolates_between_validations():
    values = [3.0, 2.5, 2.0, 1.8]
    axes = {"steps": [100, 200, 300, 400], "seconds": [10.0, 20.0, 40.0, 50.0]}
    got = crossing(values, axes, 2.25)  # halfway from 2.5 (step 200) to 2.0 (step 300)
    assert got == pytest.approx({"steps": 250.0, "seconds": 30.0})
    assert crossing(values, axes, 3.5) == {"steps": 100.0, "seconds": 10.0}  # the first point already reaches it
    assert crossing(values, axes, 1.0) is None  # never reached
    assert crossing([1.0, 2.0, 3.0], {"steps": [1, 2, 3]}, 2.5, mode="max") == {"steps": 2.5}


# --------------------------------------------------------------------------- on run dirs


def make_run(root, name, overrides, curve, *, status="completed", norm="layernorm", lr=0.002, seed=1, seconds=True):
    """A finished run dir as train.py leaves it: overrides, config, metrics.csv, summary.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "seed": seed,
        "model": {"norm": norm},
        "optim": {"lr": lr},
        "data": {"batch_size": 2, "seq_len": 8},
        "trainer": {"accumulate_grad_batches": 1, "devices": 1},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train_loss", "val_bpb", "train_seconds"])
        for i, value in enumerate(curve):
            step = 100 * (i + 1) - 1
            writer.writerow([0, step, value + 0.1, "", ""])
            writer.writerow([0, step, "", value, 10.0 * (i + 1) if seconds else ""])
    (run / "summary.json").write_text(json.dumps({"status": status}))
    (run / "record.json").write_text(json.dumps({"global_step": 100 * len(curve), "train_flops": 1e9}))
    return run


@pytest.fixture
def sweep(tmp_path):
    """Two settings x three seeds; rmsnorm lower by ~0.1 and reaching layernorm's final sooner."""
    root = tmp_path / "sweep"
    for seed, shift in zip((1, 2, 3), (0.0, 0.02, -0.01)):
        layer = [3.0 + shift, 2.6 + shift, 2.4 + shift]
        rms = [2.9 + shift, 2.5 + shift, 2.3 + shift]
        make_run(root, f"{2 * seed - 2}", ["model.norm=layernorm", f"seed={seed}"], layer, seed=seed)
        make_run(root, f"{2 * seed - 1}", ["model.norm=rmsnorm", f"seed={seed}"], rms, norm="rmsnorm", seed=seed)
    make_run(root, "9", ["model.norm=rmsnorm", "seed=4"], [9.0, 9.0, 9.0], norm="rmsnorm", status="failed")
    return root


def test_groups_and_time_to_target(sweep):
    jobs, notes = load_jobs([sweep], "val_bpb")
    result = compare_jobs(jobs, "val_bpb", paired=True, notes=notes)
    assert [g.label for g in result.groups] == ["model.norm=layernorm", "model.norm=rmsnorm"]
    assert [g.n for g in result.groups] == [3, 3]  # the failed job left out, and said so
    assert any("9 left out: failed" in n for n in notes)
    base, rms = result.groups
    assert result.baseline is base and result.target == pytest.approx(2.4 + 0.01 / 3)
    assert rms.welch.diff == pytest.approx(-0.1)
    assert rms.paired.diff == pytest.approx(-0.1) and rms.paired.n == 3
    assert rms.p_adjusted == rms.welch.p  # one comparison: Holm changes nothing
    # rmsnorm's mean curve 2.9033, 2.5033, 2.3033 reaches 2.4033 halfway between steps 200 and 300
    assert rms.target["steps"] == pytest.approx(250.0) and rms.target["train_seconds"] == pytest.approx(25.0)
    assert rms.target["tokens"] == pytest.approx(250 * 16) and rms.target["flops"] == pytest.approx(250 * 1e9 / 300)
    assert base.target["steps"] == pytest.approx(300.0)
    assert rms.ratios["steps"] == pytest.approx(250 / 300)
    assert (base.reached, rms.reached) == (2, 3)  # seed 2 of layernorm ends above the mean final
    text = format_comparison(result)
    assert "model.norm=rmsnorm reaches the baseline's final val_bpb in 0.83x the steps" in text


def test_a_target_no_group_reaches_is_reported(sweep):
    result = compare_jobs(load_jobs([sweep], "val_bpb")[0], "val_bpb", target=1.0)
    assert all(g.target is None and g.reached == 0 for g in result.groups)
    assert "not reached" in format_comparison(result)


def test_grouping_by_several_keys_reads_unset_keys_from_the_config(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", ["seed=1"], [3.0, 2.0], lr=0.001, seed=1)
    make_run(root, "b", ["seed=2"], [3.0, 2.2], lr=0.001, seed=2)
    make_run(root, "c", ["optim.lr=0.002", "seed=1"], [3.0, 1.9], lr=0.002, seed=1)
    make_run(root, "d", ["optim.lr=0.002", "model.norm=rmsnorm"], [3.0, 1.8], lr=0.002, norm="rmsnorm")
    jobs, _ = load_jobs([root], "val_bpb")
    result = compare_jobs(
        jobs, "val_bpb", by=["optim.lr", "model.norm"], baseline=["optim.lr=2e-3", "model.norm=rmsnorm"]
    )
    assert [g.label for g in result.groups] == [
        "optim.lr=0.001, model.norm=layernorm",
        "optim.lr=0.002, model.norm=layernorm",
        "optim.lr=0.002, model.norm=rmsnorm",
    ]
    assert [g.n for g in result.groups] == [2, 1, 1]
    assert result.baseline.jobs[0].dir.name == "d"
    assert result.holm  # two groups against the baseline


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--by", "model.nrom"], "--by model.nrom: no such key in the config of"),
        (["--target", "low"], "--target 'low' is not a number"),
        (["--metric", "val_acc"], "--metric val_acc: "),
        (["--baseline", "model.norm=cosine"], "--baseline model.norm=cosine: no group has it; model.norm is one of"),
    ],
)
def test_bad_input_is_one_line(sweep, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main([str(sweep), "--no-plot", *argv])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_dir_with_no_finished_job_is_one_line(tmp_path, capsys):
    make_run(tmp_path / "s", "0", ["seed=1"], [3.0], status="interrupted")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert "no finished job under" in err and "1 interrupted" in err and len(err.splitlines()) == 1


def test_the_command_writes_table_csv_json_and_plot(sweep, capsys):
    main([str(sweep), "--paired"])
    out = capsys.readouterr().out
    assert "paired p" in out and "final - baseline (Welch 95% CI)" in out
    rows = list(csv.DictReader(open(sweep / "compare.csv")))
    assert [r["group"] for r in rows] == ["model.norm=layernorm", "model.norm=rmsnorm"]
    assert float(rows[1]["welch_diff"]) == pytest.approx(-0.1)
    saved = json.loads((sweep / "compare.json").read_text())
    assert saved["groups"][1]["target"]["ratio_to_baseline"]["steps"] == pytest.approx(250 / 300)
    assert (sweep / "compare.png").stat().st_size > 10_000


def test_a_value_typed_two_ways_is_one_group_and_a_config_group_is_read_by_its_choice(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", ["optim.lr=1e-3", "seed=1"], [3.0, 2.0], lr=0.001, seed=1)
    make_run(root, "b", ["optim.lr=0.001", "seed=2"], [3.0, 2.1], lr=0.001, seed=2)
    make_run(root, "c", ["model=llama3-tiny", "optim.lr=0.001"], [3.0, 1.9], lr=0.001)
    for name, model in (("a", "gpt2-tiny"), ("b", "gpt2-tiny"), ("c", "llama3-tiny")):
        hydra = {"hydra": {"runtime": {"choices": {"model": model, "optim": "adamw"}}}}
        (root / name / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    jobs, _ = load_jobs([root], "val_bpb")
    assert [g.n for g in compare_jobs(jobs, "val_bpb").groups] == [2, 1]
    result = compare_jobs(jobs, "val_bpb", by=["model"], baseline=["model=gpt2-tiny"])
    assert [(g.label, g.n) for g in result.groups] == [("model=gpt2-tiny", 2), ("model=llama3-tiny", 1)]


def test_seeds_validated_at_other_steps_are_said_and_a_first_validation_is_a_bound(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", ["seed=1"], [3.0, 2.5, 2.0], seed=1)
    make_run(root, "b", ["seed=2"], [3.0, 2.5], seed=2)  # stopped early
    jobs, _ = load_jobs([root], "val_bpb")
    result = compare_jobs(jobs, "val_bpb", target=3.5)
    (group,) = result.groups
    assert group.curve["steps"] == [100.0, 200.0]
    assert any("the 2 of 3 validations every seed has" in n for n in result.notes)
    assert group.target_at_first and "<= 100 (1.00x)" in format_comparison(result)
    assert group.tokens_per_sec == pytest.approx((300 * 16 / 30 + 200 * 16 / 20) / 2)
