"""The errors whose message is already the one line a user should read (no type name, no
traceback): a bad parameter, an unusable run directory, a model that cannot be loaded. Any room
may raise them; the loop and the CLI show them as they are."""

from __future__ import annotations


class OneLineError(Exception):
    """str() is one line for the user, naming what is wrong and, where it can, what to do."""
