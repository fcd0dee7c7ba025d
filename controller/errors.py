"""Errors that are the user's to fix: the CLI prints them as one line each and exits 2, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in a file, an option or an argument; the message says which and what was expected."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]
