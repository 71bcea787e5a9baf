"""Value checks with one-line errors (key, bad value, fix), shared by every config group.

Types come from the code, not a second schema: ``check_targets`` checks each ``_target_`` node
against the signature of what it names (unknown keys, values against the type hints, Literal
choices included); ``check_number`` takes a test and the words for what to give instead.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence, Union

from omegaconf import DictConfig, ListConfig

from wgpt.util.errors import WgptError


def positive(v) -> bool:
    return v > 0


def at_least_one(v) -> bool:
    return v >= 1


def non_negative(v) -> bool:
    return v >= 0


def steps_or_unlimited(v) -> bool:
    return v == -1 or v >= 1


def missing_keys(node: DictConfig, key: str):
    """The ``???`` keys under ``node``, found without resolving interpolations (that would raise)."""
    for name in node:
        child, full = node._get_node(name), f"{key}.{name}" if key else str(name)
        if child._is_missing():
            yield full
        elif isinstance(child, DictConfig) and not child._is_none():
            yield from missing_keys(child, full)


def is_kind(kind: type, value) -> bool:
    if isinstance(value, bool):  # True is an int to Python, not a batch size
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def check_number(key: str, value, kind: type, test: Callable[[Any], bool], give: str) -> None:
    if not is_kind(kind, value):
        raise WgptError(f"{key}={value} is not {'a whole number' if kind is int else 'a number'}: give {give}")
    if not test(value):
        raise WgptError(f"{key}={value} is out of range: give {give}")


def check_readable(key: str, path: Path, fix: str) -> None:
    if not path.exists():
        raise WgptError(f"{key}={path} does not exist: {fix}")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise WgptError(f"{key}={path} is not readable (permissions): make it readable, or {fix}")


def check_creatable(key: str, path: Path, fix: str) -> None:
    """A directory that exists, or that can be made: its nearest existing parent is a writable
    directory (not a file, not read-only)."""
    if path.is_dir():
        return
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise WgptError(f"{key}={path} cannot be a directory: {existing} is a file: {fix}")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise WgptError(f"{key}={path} cannot be created: {existing} is not writable: {fix}")


def check_targets(node: DictConfig, key: str, own_keys: Mapping[str, Sequence[str]] = {}) -> None:
    """Check every ``_target_`` node under ``node`` against the signature of what it names.
    ``own_keys``: keys of a node (by its full key) that wgpt reads and its target never sees."""
    if "_target_" in node:
        check_arguments(node, key, own_keys.get(key, ()))
    for name in node:
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_targets(child, f"{key}.{name}" if key else str(name), own_keys)


def check_arguments(node: DictConfig, key: str, own: Sequence[str] = ()) -> None:
    """Unknown keys and values of the wrong type for the callable that ``node._target_`` names
    (``own``: keys wgpt reads itself, not passed to it)."""
    target = node._target_
    obj = import_target(target, key)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = type_hints(obj)
    for name in node:
        if str(name).startswith("_") or name in own:
            continue
        if name not in params:
            if takes_any:
                continue
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = (
                f" (did you mean {key}.{close[0]}?)"
                if close
                else f" (it takes: {', '.join(p for p in params if p != 'self')})"
            )
            raise WgptError(f"{key}.{name} is not a setting of {target}{hint}: fix the key in the command or the YAML")
        check_type(f"{key}.{name}", node[name], hints.get(name))


@dataclass(frozen=True)
class Range:
    """Bounds of a number, declared where it is taken: ``warmup_steps: Annotated[int, Range(0)]``.
    ``check_type`` (so every ``_target_``'s arguments) refuses a value outside them before
    anything runs. ``open_low``: ``low`` itself is out (a learning rate above 0)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def __contains__(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "of any size"
        if self.high is None:
            return f"above {self.low}" if self.open_low else f"of {self.low} or more"
        if self.low is None:
            return f"of {self.high} or less"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}]"


def _in_range(hint, value) -> bool:
    """Whether ``value`` is within the Ranges of some member of ``hint`` it matches (through
    Optional and unions of annotated numbers); True where no member carries a Range."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        return matches(value, base) and all(value in r for r in extras if isinstance(r, Range))
    if origin in (Union, UnionType):
        return any(_in_range(h, value) for h in typing.get_args(hint) if matches(value, h))
    return matches(value, hint)


def _ranges(hint) -> list[Range]:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return [r for r in typing.get_args(hint)[1:] if isinstance(r, Range)]
    if origin in (Union, UnionType):
        return [r for h in typing.get_args(hint) for r in _ranges(h)]
    return []


def check_type(key: str, value, hint) -> None:
    if hint is None:
        return
    if matches(value, hint):
        if not _in_range(hint, value):
            bounds = " or ".join(map(str, _ranges(hint)))
            raise WgptError(f"{key}={value} is out of range: give a number {bounds}")
        return
    choices = _literal_choices(hint)
    if choices:
        choices = list(dict.fromkeys(map(str, choices)))  # Lightning lists 16 and "16"
        raise WgptError(f"{key}={value} is not one of {', '.join(choices)}: pick one")
    raise WgptError(f"{key}={value} is not {describe_type(hint)}: fix the value in the command or the YAML")


def matches(value, hint) -> bool:
    """Whether a config value can be passed where ``hint`` is declared (unknown hints pass)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return matches(value, typing.get_args(hint)[0])
    if hint is Any or isinstance(hint, (typing.TypeVar, str)):
        return True
    if origin in (Union, UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint in (None, NoneType):
        return value is None
    if value is None:
        return False
    if isinstance(value, DictConfig) and "_target_" in value:  # instantiated to whatever is declared
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return is_kind(hint, value)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (Path, os.PathLike):
        return isinstance(value, (str, Path))
    if base in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        return isinstance(value, (ListConfig, list, tuple))
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, (DictConfig, dict))
    return True  # callables, classes: what they will be is not knowable from a config value


def describe_type(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return describe_type(typing.get_args(hint)[0])
    if origin in (Union, UnionType):
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", NoneType: "null"}
    if hint in names:
        return names[hint]
    return f"a {getattr(origin or hint, '__name__', str(hint))}"


def _literal_choices(hint) -> list:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _literal_choices(typing.get_args(hint)[0])
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin in (Union, UnionType):
        return [c for h in typing.get_args(hint) for c in _literal_choices(h)]
    return []


def import_target(target: str, key: str):
    import logging

    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # it logs the failure over 3 lines before raising
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        return get_object(target)
    except Exception as e:  # ImportError, or Hydra's wrapping of it
        why = " ".join(str(e).split())  # Hydra's message spans lines
        raise WgptError(f"{key}._target_={target} cannot be imported ({why}): fix the module or class path") from None
    finally:
        hydra_log.setLevel(level)


def type_hints(obj) -> dict:
    """The evaluated type hints of ``obj``'s parameters ({} where they cannot be evaluated)."""
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(function, include_extras=True)  # with their Ranges
    except Exception:  # a forward reference to a name imported only for type checkers
        return {}
