"""Errors that are the user's to fix.

A :class:`UserError` is caught by the CLI and printed as one line with exit code 2
(no traceback): a bad path, a malformed file, a value out of range. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message names the file or value and what was expected."""

    exit_code = 2
