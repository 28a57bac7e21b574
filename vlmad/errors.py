"""Exceptions raised by the vlmad library.

The library never prints or exits; it raises these with messages a user can act on. The CLI turns them
into one-line messages and a non-zero exit code.
"""

from __future__ import annotations

from pathlib import Path


class VlmadError(Exception):
    """Base class of every error vlmad raises on purpose (user errors, bad input, bad configuration)."""


class DatasetError(VlmadError):
    """A dataset file or folder is missing, malformed or has the wrong layout.

    ``str(err)`` is one line: ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigError(VlmadError):
    """A configuration value, recipe or command-line option is invalid."""
