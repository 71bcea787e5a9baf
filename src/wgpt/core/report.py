"""The one exception type wgpt raises for bad input, and the entry points' one-line error reports.

Every entry point (train.py, eval.py, generate.py, process.py) reports a mistake in one line on
stderr and exits with status 1, without a traceback unless ``HYDRA_FULL_ERROR=1``:

- ``one_line_config_errors`` wraps the whole Hydra app: an unknown config option, a misspelled
  key, an override that does not parse (Hydra's own errors, which it would print over several
  lines with a list of search paths).
- ``one_line_errors`` wraps the task function: a ``WgptError`` (a bad value, found by wgpt) or
  an OmegaConf error (a missing ``???`` value, a broken interpolation).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from hydra.errors import (
    CompactHydraException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from wgpt.core.launch import RUN_LOCK, in_sweep, rank_tag
from wgpt.util.errors import WgptError
from wgpt.util.files import written_atomically

FULL_ERROR = "HYDRA_FULL_ERROR"
BORROWED_ENV = "WGPT_BORROWED_HYDRA_FULL_ERROR"  # set while wgpt, not the user, set HYDRA_FULL_ERROR


class JobError(CompactHydraException):
    """A sweep job's WgptError: Hydra marks the job failed, runs the others, and ends the sweep
    with exit status 1 and this one line (no traceback)."""


def _exit_with(message: str) -> None:
    print(message if message.startswith("Error: ") else f"Error: {message}", file=sys.stderr)
    raise SystemExit(1)


@contextmanager
def one_line_config_errors(conf_dir: str | Path, overrides: Sequence[str] | None = None):
    """Report Hydra's composition errors in one line; ``conf_dir`` is the app's config dir,
    ``overrides`` the command line's (None: ``sys.argv``), whose group options are checked first.

    Hydra prints them itself, over several lines, unless HYDRA_FULL_ERROR=1 lets them through to
    the caller: so wgpt sets it for Hydra's part of the run, and ``one_line_errors`` unsets it
    for the task's part (a bug there still gets Hydra's trimmed traceback).
    """
    missing = missing_option(sys.argv[1:] if overrides is None else overrides, Path(conf_dir))
    if os.environ.get(FULL_ERROR) == "1":  # the user asked for tracebacks
        if missing:
            raise WgptError(missing)
        yield
        return
    if missing:
        _exit_with(missing)
    os.environ[FULL_ERROR] = os.environ[BORROWED_ENV] = "1"
    try:
        yield
    except (HydraException, OmegaConfBaseException) as e:
        _exit_with(describe_config_error(e, Path(conf_dir)))
    except ValueError as e:  # Hydra's own check of a group set to null, raised without a config error type
        if "Config group override must be" not in str(e):
            raise
        groups = [
            a.partition("=")[0]
            for a in sys.argv[1:]
            if a.partition("=")[2] == "null" and (Path(conf_dir) / a.partition("=")[0]).is_dir()
        ]
        group = groups[0] if groups else "a config group"
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml")) if groups else []
        _exit_with(
            f"{group}=null: a config group takes an option, not null: choose one of {', '.join(options)}"
            if options
            else f"{group} cannot be null: choose one of its options"
        )
    finally:
        os.environ.pop(FULL_ERROR, None)
        os.environ.pop(BORROWED_ENV, None)


@contextmanager
def one_line_errors():
    """Turn a WgptError or an OmegaConf error into one line on stderr and exit status 1 (a
    traceback with HYDRA_FULL_ERROR=1); in a sweep, into a failed job."""

    borrowed = os.environ.pop(BORROWED_ENV, None) is not None and os.environ.pop(FULL_ERROR, None) is not None
    try:
        yield
    except (WgptError, OmegaConfBaseException, InstantiationException) as e:
        bad_input = user_error(e)
        if bad_input is None or os.environ.get(FULL_ERROR) == "1":
            raise  # a real bug: Hydra prints its trimmed traceback (HYDRA_FULL_ERROR is unset)
        message = str(bad_input) if isinstance(bad_input, WgptError) else describe_config_error(bad_input)
        if in_sweep():  # the job fails, the sweep goes on, and ends with this line
            if borrowed:
                os.environ[FULL_ERROR] = os.environ[BORROWED_ENV] = "1"
            raise JobError(f"Error: {message}") from None
        _exit_with(message)
    if borrowed:  # the task ended normally: Hydra's part of the run (e.g. a sweep's end) resumes
        os.environ[FULL_ERROR] = os.environ[BORROWED_ENV] = "1"


def missing_option(overrides: Sequence[str], conf_dir: Path) -> str | None:
    """The line for the first ``group=option`` override naming an option with no file under
    ``conf_dir/group/`` (each option of a list or a choice sweep), else None. Hydra reports these
    itself, except for an optional group (``hparams_search``), which it skips without a word.
    Overrides Hydra cannot parse, sweeps it expands (glob, range) and runs with other config dirs
    (``--config-dir``, ``hydra.searchpath``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    if any(a.startswith(("-cd", "--config-dir", "hydra.searchpath", "+hydra.searchpath")) for a in overrides):
        return None
    parser = OverridesParser.create()

    def options(text: str) -> list[str]:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # not an override, or a sweep only Hydra can expand: Hydra's to report
            return []
        value = override.value()
        if override.is_sweep_override():
            if override.value_type not in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
                return []  # glob, range, interval: Hydra expands them
            return [o for item in override.sweep_string_iterator() for o in options(f"{override.key_or_group}={item}")]
        return [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]

    for text in overrides:
        key = text.lstrip("+~").partition("=")[0].partition("@")[0]
        group = conf_dir / key
        if text.startswith("-") or not key or key.startswith("hydra") or "." in key or not group.is_dir():
            continue
        for option in options(text):
            if option != "null" and not (group / f"{option}.yaml").is_file():
                names = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
                return f"{key}={option} is not an option: choose one of {names} (or add conf/{key}/{option}.yaml)"
    return None


def user_error(e: BaseException) -> WgptError | OmegaConfBaseException | None:
    """The user's mistake behind ``e`` (a WgptError or OmegaConf error, also when raised inside a
    constructor that Hydra's instantiate called), or None when ``e`` is a bug."""
    if isinstance(e, InstantiationException):
        e = e.__cause__
    return e if isinstance(e, (WgptError, OmegaConfBaseException)) else None


# What Hydra writes into a run dir before the task starts: a run refused for bad input leaves none of it.
HYDRA_RUN_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log")


_created_dirs: list[Path] = []  # the run dir and the dirs above it that this launch creates, deepest first
# A run dir that existed (a run continued in place): its .hydra/ files as they were, put back on bad input.
_earlier_hydra_files: dict[Path, bytes] = {}


class RunDirWatch(Callback):
    """Hydra callback: notes, before Hydra makes a single run's dir, which of its dirs (up to
    ``paths.output_root``) do not exist yet, so that bad input removes only what this launch made,
    never another run's files (same-second launches, a relaunched sweep job, a fixed hydra.run.dir)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(config.hydra.run.dir).resolve()
        root = Path(config.paths.output_root).resolve()
        _created_dirs[:] = [
            d for d in (run_dir, *run_dir.parents) if (d == root or root in d.parents) and not d.exists()
        ]
        _earlier_hydra_files.clear()
        for name in HYDRA_RUN_FILES[:-1]:  # Hydra is about to write them anew
            if (run_dir / name).is_file():
                _earlier_hydra_files[run_dir / name] = (run_dir / name).read_bytes()


@contextmanager
def discarded_on_bad_input(run_dir: str | Path):
    """On bad input in the block, remove what Hydra wrote into the run dir that this launch made,
    and the dirs it made: nothing is written. Anything else found there is left, with its dirs; a
    run dir that existed (a run continued in place) gets its earlier .hydra/ files back.
    Sweep jobs keep their dirs (the sweep's table reports them), and only one process cleans up."""

    run_dir = Path(run_dir).resolve()
    if not run_dir.exists():  # train() called without Hydra's run dir (tests, scripts): the dirs it will make
        _created_dirs[:] = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
        _earlier_hydra_files.clear()
    try:
        yield
    except (WgptError, OmegaConfBaseException, InstantiationException) as e:
        if user_error(e) is None or in_sweep() or rank_tag():
            raise
        for path, content in _earlier_hydra_files.items():  # a run continued in place keeps its config
            if path.is_relative_to(run_dir):
                with written_atomically(path) as tmp:
                    tmp.write_bytes(content)
        if run_dir in _created_dirs:
            for name in (*HYDRA_RUN_FILES, _job_log_name(), RUN_LOCK):
                (run_dir / name).unlink(missing_ok=True)
            hydra_dir = run_dir / ".hydra"
            if hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
                hydra_dir.rmdir()
            for directory in _created_dirs:
                try:
                    directory.rmdir()
                except OSError:  # not empty: something else lives there
                    break
        raise


def _job_log_name() -> str:
    """The log file Hydra's default job logging names after the script (process.log, ...)."""
    from hydra.core.hydra_config import HydraConfig

    return f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else HYDRA_RUN_FILES[-1]


def describe_config_error(e: BaseException, conf_dir: Path | None = None) -> str:
    """One line for a Hydra or OmegaConf error: the bad option, key or value and what to do."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return (
            f"{group}={name} is not an option: choose one of {', '.join(sorted(e.options))} "
            f"(or add conf/{group}/{name}.yaml)"
        )
    message = str(e)
    unloadable = re.search(r"Could not load '([^']+)/([^'/]+)'", message)
    if isinstance(e, MissingConfigException) and unloadable and conf_dir is not None:  # an option inside a list
        group, name = unloadable.groups()
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        return (
            f"{group}/{name} is not an option of {group}: choose from {', '.join(options)} "
            f"(or add conf/{group}/{name}.yaml)"
        )
    if isinstance(e, OverrideParseException):
        return f"cannot parse the override {e.override!r}: write key=value (quote values with spaces or brackets)"
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown and cause is not None and "not in struct" in str(cause):
        key = unknown.group(1)
        suggestion = _did_you_mean(key, getattr(cause, "parent_node", None))
        return f"{key} is not a config key{suggestion}: fix the spelling, or add a new key with +{key}=..."
    if unknown and "No match in the defaults list" in message:
        key = unknown.group(1)
        groups = sorted(p.name for p in conf_dir.iterdir() if p.is_dir()) if conf_dir else []
        close = difflib.get_close_matches(key, groups, n=1)
        hint = f" (did you mean {close[0]}=...?)" if close else f" (groups: {', '.join(groups)})" if groups else ""
        return f"{key} is not a config group{hint}: fix the spelling, or set a key of a group like model.n_layers=4"
    if isinstance(e, MissingMandatoryValue):  # directly, or through an interpolation
        named = re.search(r"Missing mandatory value: (\S+)", message)
        key = named.group(1) if named else getattr(e, "full_key", None) or "a value"
        return f"{key} is not set (??? in its config): give it on the command line, e.g. {key}=<value>"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    if cause is not None:
        text += f" ({str(cause).strip().splitlines()[0]})"
    key = getattr(e, "full_key", None) or getattr(cause, "full_key", None)
    return f"{key}: {text}" if key and key not in text else text


def _did_you_mean(key: str, parent) -> str:
    """`` (did you mean optim.lr?)`` from the keys beside a misspelled one, when one is close."""
    if parent is None or not hasattr(parent, "keys"):
        return ""
    prefix, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, [str(k) for k in parent.keys()], n=1)
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
