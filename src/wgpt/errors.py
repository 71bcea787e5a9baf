"""The one exception type wgpt raises for bad input."""

import os
import sys
from contextlib import contextmanager

from hydra.errors import CompactHydraException


class WgptError(Exception):
    """A mistake the user can fix: the message is one line naming the bad value and the fix.

    ``train.py`` prints it without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one).
    """


class JobError(CompactHydraException):
    """A sweep job's WgptError: Hydra marks the job failed, runs the others, and ends the sweep
    with exit status 1 and this one line (no traceback)."""


@contextmanager
def one_line_errors():
    """Turn a WgptError into one line on stderr and exit status 1 (a traceback with HYDRA_FULL_ERROR=1)."""
    from wgpt.launch import in_sweep

    try:
        yield
    except WgptError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_sweep():
            raise JobError(f"Error: {e}") from None
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
