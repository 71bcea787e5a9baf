"""Where corpora come from: Hugging Face hub datasets and the user's own files.

Each function returns ``{split: dataset}`` for train/validation/test, every dataset a Hugging
Face ``Dataset`` or (streaming) ``IterableDataset`` with a ``text`` column, ready for
``generate_bin``. A split the source lacks is carved from the start of another one, so the
carve is deterministic and, when streaming, reads only the documents it takes.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from wgpt.data.splits import SPLITS
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

LOCAL_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


def hub(
    path: str,
    name: str | None = None,
    splits: Mapping[str, str] | None = None,
    carve: Mapping[str, int] | None = None,
    carve_from: str = "train",
    text_field: str = "text",
    streaming: bool = True,
    revision: str | None = None,
) -> dict[str, Any]:
    """A dataset from the Hugging Face hub (or a local directory laid out like its hub repo).

    Args:
        path, name, revision: as for ``datasets.load_dataset``, e.g. ``HuggingFaceFW/fineweb-edu``
            with ``name="sample-10BT"``.
        splits: ``{our split: the source's split}`` for the splits the source has.
        carve: ``{our split: documents}`` to take, in order, from the start of ``carve_from``;
            what remains of ``carve_from`` is its split.
    """
    import datasets

    splits = dict(splits or {"train": "train"})
    carve = dict(carve or {})
    on_hub = not Path(path).expanduser().exists()
    if on_hub:
        _check_hub_reachable(path)
    try:
        loaded = {
            ours: datasets.load_dataset(path, name, split=theirs, streaming=streaming, revision=revision)
            for ours, theirs in splits.items()
        }
    except ConnectionError as e:  # offline mode without a cached copy, or the network gone since the check
        reason = (
            "HF_HUB_OFFLINE is set, and the datasets cache holds no copy"
            if _offline()
            else str(e).split("\n")[0] or type(e).__name__
        )
        raise HubUnreachable(_endpoint(), path, reason) from e
    except datasets.exceptions.DatasetNotFoundError as e:
        raise WgptError(
            f"{path} is not a dataset on the Hugging Face hub ({e}): check its name"
            + (", and log in for a private or gated one (hf auth login)" if on_hub else "")
        ) from e
    if carve:
        loaded.update(_carve(loaded.pop(carve_from), carve, rest=carve_from))
    missing = [s for s in SPLITS if s not in loaded]
    if missing:
        raise WgptError(f"dataset {path} gives no {missing} split(s): map them in `splits` or take them with `carve`")
    return {split: _text_column(ds, text_field, path) for split, ds in loaded.items()}


def local(
    path: str,
    text_field: str = "text",
    carve: Mapping[str, int] | None = None,
    streaming: bool = True,
    split_share: float = 0.05,
) -> dict[str, Any]:
    """The user's own ``.txt``/``.md`` (one document per file), ``.jsonl``/``.json`` or ``.parquet``
    files (one document per record, text in ``text_field``): a file or a directory of them.

    Validation and test are the first ``carve`` documents, in file-name order. Where text files
    are too few for that and a train split besides (one ``.txt`` file, say), their text is split
    inside instead: validation and test take ``split_share`` of it each, from the start, cut at
    line ends, and train the rest.
    """
    import datasets

    files = _local_files(Path(path).expanduser())
    formats = {LOCAL_FORMATS[f.suffix] for f in files}
    if len(formats) > 1:
        raise WgptError(f"data.path={path} mixes file formats {sorted(formats)}: point it at files of one format")
    (builder,) = formats
    carve = dict(carve or {"validation": 1, "test": 1})
    _check_carve(carve)
    if builder == "text" and len(files) < sum(int(n) for n in carve.values()) + 1:
        return _split_inside(files, list(carve), split_share, path, streaming)
    options = {"sample_by": "document"} if builder == "text" else {}
    data = datasets.load_dataset(
        builder, data_files=[str(f) for f in files], split="train", streaming=streaming, **options
    )
    carved = _carve(data, carve, rest="train")
    return {split: _text_column(ds, text_field, path) for split, ds in carved.items()}


def _split_inside(files: list[Path], carved: list[str], share: float, path: str, streaming: bool) -> dict[str, Any]:
    """``carved`` splits of ``share`` of the files' text each, in file-name order from the start,
    then train: consecutive byte ranges cut after a newline (where the text has one nearby), so
    no split starts inside a line or a character. A range crossing files is a document per file."""
    import datasets

    if not 0 < share < 1 / (len(carved) + 1):
        raise WgptError(
            f"split_share={share} is out of range: give each of {', '.join(carved)} a share of the text "
            f"above 0 and below {1 / (len(carved) + 1):.2f}, e.g. data.datasets.<name>.split_share=0.05"
        )
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    cuts = [0, *(_cut_after_newline(files, sizes, round(total * share * (i + 1))) for i in range(len(carved))), total]
    names = [*carved, "train"]
    empty = [name for name, start, end in zip(names, cuts, cuts[1:]) if not _has_text(files, sizes, start, end)]
    if empty:
        # The cut is at line ends: a short file may leave no line for some split.
        raise WgptError(
            f"data.path={path} is too small to split into {', '.join(names)}: its {total:,} bytes leave the "
            f"{' and '.join(empty)} split{'s' if len(empty) > 1 else ''} no text ({share:.0%} each to "
            f"{' and '.join(carved)}, cut at line ends): give at least {len(names)} documents (files), "
            f"or a text of {math.ceil(1 / share)} lines or more"
        )
    log.info(
        "data.path=%s holds %d document%s, fewer than the carve takes: its text is split inside instead, "
        "%s of it each to %s (cut at line ends), the rest to train",
        path,
        len(files),
        "s" * (len(files) > 1),
        f"{share:.0%}",
        " and ".join(carved),
    )
    features = datasets.Features({"text": datasets.Value("string")})
    make = datasets.IterableDataset.from_generator if streaming else datasets.Dataset.from_generator
    # Not streaming, datasets caches what the generator gave under a hash of its arguments: the
    # files' modification times make an edited file a new dataset.
    files_kw = {
        "files": tuple(map(str, files)),
        "sizes": tuple(sizes),
        "stamps": tuple(f.stat().st_mtime_ns for f in files),
    }
    return {
        name: make(_pieces, features=features, gen_kwargs={**files_kw, "start": start, "end": end})
        for name, start, end in zip(names, cuts, cuts[1:])
    }


def _cut_after_newline(files: list[Path], sizes: list[int], offset: int, reach: int = 1 << 20) -> int:
    """The offset just after the first newline at or after ``offset`` in the files' joined bytes,
    within ``reach`` bytes; else ``offset`` moved to the start of a UTF-8 character."""
    file_start = 0
    for f, size in zip(files, sizes):
        if offset < file_start + size:
            with open(f, "rb") as fh:
                fh.seek(offset - file_start)
                chunk = fh.read(min(reach, file_start + size - offset))
            newline = chunk.find(b"\n")
            if newline >= 0:
                return offset + newline + 1
            skip = 0
            while skip < len(chunk) and chunk[skip] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                skip += 1
            return offset + skip
        file_start += size
    return offset


def _ranges(files, sizes, start: int, end: int):
    """(file, start, end) for each file overlapping ``[start, end)`` of the joined bytes."""
    file_start = 0
    for f, size in zip(files, sizes):
        lo, hi = max(start, file_start), min(end, file_start + size)
        if lo < hi:
            yield f, lo - file_start, hi - file_start
        file_start += size


def _has_text(files, sizes, start: int, end: int) -> bool:
    for f, lo, hi in _ranges(files, sizes, start, end):
        with open(f, "rb") as fh:
            fh.seek(lo)
            if fh.read(hi - lo).strip():
                return True
    return False


def _pieces(files: tuple[str, ...], sizes: tuple[int, ...], stamps: tuple[int, ...], start: int, end: int):
    """The records of one split made inside the files: a document per file it overlaps."""
    for f, lo, hi in _ranges(files, sizes, start, end):
        with open(f, "rb") as fh:
            fh.seek(lo)
            data = fh.read(hi - lo)
        try:
            yield {"text": data.decode("utf-8")}
        except UnicodeDecodeError as e:
            raise WgptError(f"{f} is not UTF-8 text ({e.reason} at byte {lo + e.start}): convert it to UTF-8") from None


class HubUnreachable(WgptError):
    """The Hugging Face hub cannot be reached for a dataset (no network, a firewall, offline mode)."""

    def __init__(self, endpoint: str, path: str, reason: str):

        self.endpoint, self.path, self.reason = endpoint, path, reason
        super().__init__(
            f"the Hugging Face hub ({endpoint}) cannot be reached for {path} ({reason}): prepare the data where there "
            f"is network (`{process_command()}`) and copy its data dir here, or train on a local copy of its files "
            "with data=local data.path=<dir>"
        )


def _endpoint() -> str:
    import datasets

    return datasets.config.HF_ENDPOINT


def _offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set: datasets reads only its cache."""
    import datasets

    return bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False) or getattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    )


def _check_hub_reachable(path: str) -> None:
    """Fail at once, in one line, where the hub cannot be reached: ``datasets`` would retry for
    half a minute and end in a traceback. One request through huggingface_hub's own HTTP client
    (its proxies, certificates and endpoint), no retries; any HTTP answer will do. In offline mode
    (HF_HUB_OFFLINE=1) nothing is asked: ``datasets`` may find the dataset in its cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if _offline():
        return
    # Network failures only: socket errors and requests' (OSErrors), and httpx's of newer huggingface_hub.
    network_errors = (OSError, *(m.TransportError for m in map(sys.modules.get, ("httpx", "httpx2")) if m is not None))
    endpoint = _endpoint()
    try:
        get_session().head(endpoint, timeout=getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10))
    except network_errors as e:
        raise HubUnreachable(endpoint, path, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None


def check_source(load) -> None:
    """Before any heavy work, what a source can check cheaply: a local corpus path that does not
    exist or holds no usable files. (A hub dataset is only found out by loading it.)"""
    if getattr(load, "func", None) is local and "path" in load.keywords:
        _local_files(Path(load.keywords["path"]).expanduser())


def too_small_fix(load, name: str, split: str, tokens: int, needed: int) -> str:
    """What to do about a ``split`` of dataset ``name`` holding ``tokens`` tokens where a window takes ``needed``."""
    keywords = getattr(load, "keywords", {}) if getattr(load, "func", None) is local else {}
    if "path" not in keywords:
        return f"lower data.seq_len, or add text to the {split} split"
    path = keywords["path"]
    files = _local_files(Path(path).expanduser())
    carve = dict(keywords.get("carve") or {"validation": 1, "test": 1})
    if LOCAL_FORMATS[files[0].suffix] == "text" and len(files) < sum(int(n) for n in carve.values()) + 1:
        total = sum(f.stat().st_size for f in files)
        share = (
            keywords.get("split_share", 0.05)
            if split != "train"
            else 1 - len(carve) * keywords.get("split_share", 0.05)
        )
        need = -(-total * needed // max(tokens, 1))  # its share grows with the text
        return (
            f"data.path={path} ({total:,} bytes) is split inside, {share:.0%} of it to {split}: give it about "
            f"{need:,} bytes of text or more, or lower data.seq_len"
        )
    if split in carve:
        return f"raise data.datasets.{name}.carve.{split} (the documents it takes), or lower data.seq_len"
    return f"add documents to data.path={path}, or lower data.seq_len"


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise WgptError(
            f"data.path={path} does not exist: point it at a file or directory of .txt, .jsonl or .parquet files"
        )
    candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in candidates if p.suffix in LOCAL_FORMATS and not p.name.startswith(".")]
    if not files:
        raise WgptError(f"data.path={path} holds no {'/'.join(sorted(LOCAL_FORMATS))} files: point it at your corpus")
    return files


def _carve(data, counts: dict[str, int], rest: str) -> dict[str, Any]:
    """Consecutive slices from the start of ``data``: ``counts`` documents each, then the rest."""
    _check_carve(counts)
    out, start = {}, 0
    for split, count in counts.items():
        out[split] = data.skip(start).take(int(count))
        start += int(count)
    out[rest] = data.skip(start)
    return out


def _check_carve(counts: Mapping[str, int]) -> None:
    for split, count in counts.items():
        if int(count) < 1:
            raise WgptError(f"carve.{split}={count}: take at least one document for the {split} split")


def _text_column(data, text_field: str, source: str):
    """Only the text, under the name ``text`` (other columns would be read for nothing)."""
    columns = data.column_names
    if columns is not None and text_field not in columns:
        raise WgptError(f"{source} has no field {text_field!r} (fields: {columns}): set data.text_field")
    if columns is not None:
        data = data.select_columns([text_field])
    return data.rename_column(text_field, "text") if text_field != "text" else data


def process_command() -> str:
    """The command that prepares this run's data: process.py with its data and tokenizer choices and
    their overrides."""
    if not HydraConfig.initialized():
        return "python process.py data=<your data config>"
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").startswith(("data.", "paths.", "tokenizer."))]
    choices = hydra_cfg.runtime.choices
    tokenizer = [f"tokenizer={choices['tokenizer']}"] if choices.get("tokenizer") not in (None, "r50k") else []
    return " ".join(["python process.py", f"data={choices.get('data')}", *tokenizer, *overrides])


def describe(load: Callable) -> str:
    """A readable record of where a split came from, kept in each bin's sidecar."""
    if isinstance(load, functools.partial):
        plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
        args = ", ".join(
            [*(repr(plain(v)) for v in load.args), *(f"{k}={plain(v)!r}" for k, v in load.keywords.items())]
        )
        return f"{load.func.__module__}.{load.func.__qualname__}({args})"
    return f"{getattr(load, '__module__', '')}.{getattr(load, '__qualname__', repr(load))}"
