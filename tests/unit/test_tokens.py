"""wgpt.tools.tokens in this process: colours on a terminal, and pieces of split characters and
whitespace shown faithfully. python -m wgpt.tools.tokens: tests/e2e/test_tokens_cli.py."""

import re

from wgpt.tokenizers.r50k import Tokenizer
from wgpt.tools.tokens import piece_parts, show, split_arguments, visible


def test_colour_on_a_terminal_and_none_with_no_color(monkeypatch, capsys):
    # In this process (show() alone, a subprocess costs seconds of imports): rich reads the environment.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("NO_COLOR", "")
    show(Tokenizer(), "To be or")
    view = capsys.readouterr().out.split("\nids: ")[0]
    styles = [s for s in re.findall(r"\x1b\[([\d;]+)m", view) if s != "0"]  # each token's colours (per terminal type)
    assert len(styles) == 3 and styles[0] == styles[2] != styles[1]  # alternating backgrounds
    assert re.sub(r"\x1b\[[\d;]*m", "", view) == "To·be·or"  # no separators: the colours tell the tokens apart

    monkeypatch.setenv("NO_COLOR", "1")
    show(Tokenizer(), "To be or")
    assert capsys.readouterr().out.startswith("To│·be│·or\nids: [2514, 307, 393]\n")


def test_pieces_of_split_characters_and_whitespace_are_shown_faithfully():
    assert piece_parts("🦜".encode()[:2]) == [("<0xF0><0x9F>", True)]
    assert piece_parts(b"\x9c ok\xe6") == [("<0x9C>", True), (" ok", False), ("<0xE6>", True)]
    assert visible(" a\tb\nc\r\x00") == "·a→b↵\nc␍␀"
    assert split_arguments(["hi", "model=gpt2", "+x.y=1", "there", "--", "seed=2"]) == (
        ["model=gpt2", "+x.y=1"],
        ["hi", "there", "seed=2"],
    )
