"""The one exception type wgpt raises for bad input."""

import os
import sys
from contextlib import contextmanager


class WgptError(Exception):
    """A mistake the user can fix: the message is one line naming the bad value and the fix.

    ``train.py`` prints it without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one).
    """


@contextmanager
def one_line_errors():
    """Turn a WgptError into one line on stderr and exit status 1 (a traceback with HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except WgptError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
