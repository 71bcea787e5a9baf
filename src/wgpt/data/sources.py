"""Where corpora come from: Hugging Face hub datasets and the user's own files.

Each function returns ``{split: dataset}`` for train/validation/test, every dataset a Hugging
Face ``Dataset`` or (streaming) ``IterableDataset`` with a ``text`` column, ready for
``generate_bin``. A split the source lacks is carved from the start of another one, so the
carve is deterministic and, when streaming, reads only the documents it takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from wgpt.data.splits import SPLITS
from wgpt.errors import WgptError

LOCAL_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
    loaded = {
        ours: datasets.load_dataset(path, name, split=theirs, streaming=streaming, revision=revision)
        for ours, theirs in splits.items()
    }
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
) -> dict[str, Any]:
    """The user's own ``.txt``/``.md`` (one document per file), ``.jsonl``/``.json`` or ``.parquet``
    files (one document per record, text in ``text_field``): a file or a directory of them.

    Validation and test are the first ``carve`` documents, in file-name order.
    """
    import datasets

    files = _local_files(Path(path).expanduser())
    formats = {LOCAL_FORMATS[f.suffix] for f in files}
    if len(formats) > 1:
        raise WgptError(f"data.path={path} mixes file formats {sorted(formats)}: point it at files of one format")
    (builder,) = formats
    options = {"sample_by": "document"} if builder == "text" else {}
    data = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=streaming, **options)
    carved = _carve(data, dict(carve or {"validation": 1, "test": 1}), rest="train")
    return {split: _text_column(ds, text_field, path) for split, ds in carved.items()}


def check_source(load) -> None:
    """Before any heavy work, what a source can check cheaply: a local corpus path that does not
    exist or holds no usable files. (A hub dataset is only found out by loading it.)"""
    if getattr(load, "func", None) is local and "path" in load.keywords:
        _local_files(Path(load.keywords["path"]).expanduser())


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise WgptError(f"data.path={path} does not exist: point it at a file or directory of .txt, .jsonl or .parquet files")
    candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in candidates if p.suffix in LOCAL_FORMATS and not p.name.startswith(".")]
    if not files:
        raise WgptError(f"data.path={path} holds no {'/'.join(sorted(LOCAL_FORMATS))} files: point it at your corpus")
    return files


def _carve(data, counts: dict[str, int], rest: str) -> dict[str, Any]:
    """Consecutive slices from the start of ``data``: ``counts`` documents each, then the rest."""
    out, start = {}, 0
    for split, count in counts.items():
        if int(count) < 1:
            raise WgptError(f"carve.{split}={count}: take at least one document for the {split} split")
        out[split] = data.skip(start).take(int(count))
        start += int(count)
    out[rest] = data.skip(start)
    return out


def _text_column(data, text_field: str, source: str):
    """Only the text, under the name ``text`` (other columns would be read for nothing)."""
    columns = data.column_names
    if columns is not None and text_field not in columns:
        raise WgptError(f"{source} has no field {text_field!r} (fields: {columns}): set data.text_field")
    if columns is not None:
        data = data.select_columns([text_field])
    return data.rename_column(text_field, "text") if text_field != "text" else data
