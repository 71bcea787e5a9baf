"""What tests/unit/test_local_corpus.py and tests/e2e/test_local_corpus_cli.py share: a corpus text."""


def play(lines: int = 400) -> str:
    """Text of many lines of different lengths, with characters of 2 and 3 UTF-8 bytes."""
    return "".join(
        f"Line {i}: {'é' * (i % 7)} what light through yonder window {'—' * (i % 3)} breaks {i * 7}\n"
        for i in range(lines)
    )
