"""The one exception type wgpt raises for bad input (the entry points print it as one line)."""

from __future__ import annotations


class WgptError(Exception):
    """A mistake the user can fix: the message is one line naming the bad value and the fix.

    The entry points print it without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one).
    """
