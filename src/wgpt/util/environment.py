"""Environment variables set for the duration of a block."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them (unset where
    they were unset)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
