"""Command-line overrides compared: what a run or a sweep job trains (``job_identity``), and the
first thing two launches differ in (``job_difference``): ``resume=auto`` continues a run, and a
resumed sweep a job, only when they match."""

from __future__ import annotations

from typing import Sequence

from omegaconf import OmegaConf

# Overrides that say how a sweep was started or where its files are, not what its jobs train: a
# resumed sweep adds resume=auto, and may find its data elsewhere.
LAUNCH_OVERRIDES = ("resume", "start_datetime", "paths")
# Overrides that continue a run differently without making it another run: steps to skip past.
CONTINUATION_OVERRIDES = ("callbacks.guard.skip_steps",)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def overrides_of(node) -> list[str]:
    """A list of overrides from a config (``hydra.overrides.task``, ``overrides.yaml``) as typed:
    unresolved, for an override may hold an interpolation (``+x=${hydra:job.num}``)."""
    return [str(o) for o in OmegaConf.to_container(node, resolve=False)]


def job_identity(overrides: Sequence[str]) -> dict[str, str]:
    """What a job trains, from its overrides: key -> value, without those that only say how the
    sweep was started (a resumed sweep adds ``resume=auto``) or how it is continued."""
    return {
        key: value
        for key, value in map(split_override, overrides)
        if key.split(".")[0] not in LAUNCH_OVERRIDES and key not in CONTINUATION_OVERRIDES
    }


def same_value(a: str | None, b: str | None) -> bool:
    """Two override values alike, as Hydra would read them: a job of ``optim.lr=1e-3,2e-3`` has
    ``optim.lr=0.001``, and ``false`` is written back ``False``."""

    def canonical(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return (
                value.lower()
                if isinstance(value, str) and value.lower() in ("true", "false", "null", "none")
                else value
            )

    return canonical(a) == canonical(b)


def job_difference(there: Sequence[str], here: Sequence[str]) -> tuple[str, str] | None:
    """The first thing two jobs' overrides differ in, as it is in each (``optim.lr=1e-3``, ``no
    optim.lr``); None: the same job. An interpolated value (``+x=${hydra:job.num}``) is passed over:
    a job's own DDP launch gets it resolved."""
    a, b = job_identity(there), job_identity(here)
    for key in dict.fromkeys([*a, *b]):
        if not same_value(a.get(key), b.get(key)) and not _interpolated(a.get(key, "") + b.get(key, "")):
            return _shown(key, a), _shown(key, b)
    return None


def _interpolated(value: str) -> bool:
    return "${" in value or "$\\{" in value  # as typed, or as Hydra escapes it in a sweep job's overrides


def _shown(key: str, values: dict[str, str]) -> str:
    return f"{key}={values[key]}" if key in values else f"no {key}"
