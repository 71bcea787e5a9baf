"""Show how a tokenizer splits a text: `python -m wgpt.tokens [overrides...] "some text"`.

Overrides are those of the training config (conf/train.yaml), so the tokenizer shown is the one
a run with them would train on: ``tokenizer=bpe tokenizer.vocab_size=4096 data=shakespeare``
(trained first where the data config allows, as train.py would), or the one stored with a
model, ``ckpt_path=<.ckpt, .safetensors, run dir or Hugging Face directory>``. Arguments of the
form ``key=value`` are overrides, the others the text (after ``--``, everything is text); with no
text, stdin is read.

Prints the text token by token (alternating background colours on a terminal; on a pipe, or
with NO_COLOR set, pieces separated by ``│``), with spaces, tabs and newlines made visible
(``·``, ``→``, ``↵``) and bytes of a character split across tokens shown as ``<0xNN>``; then
the ids, and a summary line (tokens, characters, bytes, bytes per token, the tokenizer).
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from omegaconf import DictConfig

from wgpt.core.compose import compose_train_config, split_arguments
from wgpt.core.report import one_line_errors

SEPARATOR = "│"  # between tokens where there is no colour to tell them apart
# Alternating light blue and light orange under black text: readable on dark and light themes,
# and still two colours on 16-colour terminals (bright cyan, bright yellow).
BACKGROUNDS = ("black on #a5d6ff", "black on #ffd6a5")
VISIBLE = {" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"}  # a newline also breaks the line, as in the text


# The tokenizer.


def load_tokenizer(cfg: DictConfig):
    """The checkpoint's tokenizer (``ckpt_path``), else the one a run of ``cfg`` would use."""
    if cfg.get("ckpt_path") is not None:
        from wgpt.interop.sources import (
            source_tokenizer,  # lazy: torch and the tokenizers, after the cheap checks of the overrides
        )

        return source_tokenizer(str(cfg.ckpt_path))
    from hydra.utils import instantiate

    from wgpt.data.tokenizer import (
        R50k,  # lazy: torch and the tokenizers, after the cheap checks of the overrides
        tokenizer_spec,  # lazy: torch and the tokenizers, after the cheap checks of the overrides
    )

    spec = tokenizer_spec(cfg)
    if isinstance(spec, R50k):  # ships with wgpt: no data config needed
        return spec.load()
    # As the datamodule loads it (a BPE not trained yet is trained here, where data.auto_prepare
    # allows), without importing Lightning for it.
    datasets = instantiate(cfg.data.datasets, _convert_="partial")
    return spec.load(datasets, cfg.data.data_dir, train=cfg.data.auto_prepare)


def piece_parts(piece: bytes) -> list[tuple[str, bool]]:
    """A token's bytes as (text, is_raw) runs: UTF-8 text, and ``<0xNN>`` for bytes of a
    character that this token holds only part of."""
    parts, start = [], 0
    while start < len(piece):
        try:
            parts.append((piece[start:].decode("utf-8"), False))
            break
        except UnicodeDecodeError as e:
            if e.start:
                parts.append((piece[start : start + e.start].decode("utf-8"), False))
            parts.append(("".join(f"<0x{b:02X}>" for b in piece[start + e.start : start + e.end]), True))
            start += e.end
    return parts


def visible(text: str) -> str:
    """Whitespace made visible, and other control characters shown as their Unicode pictures (␀, ␛, ␡)."""
    return "".join(VISIBLE.get(c) or _picture(c) for c in text)


def _picture(c: str) -> str:
    return chr(0x2400 + ord(c)) if ord(c) < 0x20 else "␡" if c == "\x7f" else c


# The output.


def coloured_view(pieces: Sequence[bytes]):
    """A rich Text of the pieces on alternating backgrounds (split-character bytes in italics)."""
    from rich.text import Text

    view = Text()
    for i, piece in enumerate(pieces):
        background = BACKGROUNDS[i % len(BACKGROUNDS)]
        for text, raw in piece_parts(piece):
            view.append(visible(text) if not raw else text, style=f"{background} italic" if raw else background)
    return view


def plain_view(pieces: Sequence[bytes]) -> str:
    """The pieces separated by ``│``: for pipes, files and NO_COLOR."""
    return SEPARATOR.join("".join(text if raw else visible(text) for text, raw in piece_parts(p)) for p in pieces)


def summary(tokenizer, text: str, pieces: Sequence[bytes]) -> str:
    n_bytes = len(text.encode("utf-8"))
    per_token = f"{n_bytes / len(pieces):.2f}" if pieces else "-"
    line = (
        f"{_count(len(pieces), 'token')}, {_count(len(text), 'character')}, {_count(n_bytes, 'byte')}, "
        f"{per_token} bytes/token; tokenizer {tokenizer.name} ({len(tokenizer)} tokens, {tokenizer.fingerprint})"
    )
    split = sum(any(raw for _, raw in piece_parts(p)) for p in pieces)
    if split:
        line += f"; {_count(split, 'token')} hold{'s' if split == 1 else ''} part of a character, shown as <0xNN> bytes"
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def show(tokenizer, text: str) -> None:
    from rich.console import Console

    ids = tokenizer.encode(text)
    pieces = [tokenizer.id_to_bytes(i) for i in ids]  # bytes: a token may hold part of a character
    console = Console()
    if console.color_system is not None and not console.no_color:  # a terminal (or FORCE_COLOR) that shows colour
        console.print(coloured_view(pieces), soft_wrap=True)  # the terminal wraps: no line breaks added
    else:
        print(plain_view(pieces))
    print(f"ids: {ids}")
    print(summary(tokenizer, text, pieces))


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    overrides, words = split_arguments(argv)
    # Training a BPE on first use takes a while: say so (the wgpt logger has no handler outside train.py).
    logging.getLogger("wgpt").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("wgpt").setLevel(logging.INFO)
    with one_line_errors():
        cfg = compose_train_config(overrides)
        text = " ".join(words) if words else sys.stdin.read()
        show(load_tokenizer(cfg), text)


if __name__ == "__main__":
    main()
