"""What tests/unit/test_sweep_resume.py and tests/e2e/test_sweep_resume_cli.py share: a sweep dir
made by hand."""

from pathlib import Path


def fake_sweep(sweep_dir: Path, jobs: list[list[str]], task: list[str]) -> None:
    """A sweep dir as Hydra leaves it: multirun.yaml, and a job dir per job with its .hydra/."""
    sweep_dir.mkdir(parents=True)
    overrides = "".join(f"    - {o}\n" for o in task)
    (sweep_dir / "multirun.yaml").write_text(
        f"hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n    task:\n{overrides}"
    )
    for num, job in enumerate(jobs):
        hydra_dir = sweep_dir / f"{num}-gpt2-tiny" / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in job))
