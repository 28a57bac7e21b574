"""Exceptions of the QA builder (:mod:`vlmad.qa`).

Every one subclasses :class:`vlmad.errors.VlmadError` and reads as one line that names the file and the
problem, so the CLI can show it as it is.
"""

from __future__ import annotations

from pathlib import Path

from vlmad.errors import VlmadError


class QAError(VlmadError):
    """Base class of the QA builder's errors."""


class QAStoreError(QAError):
    """The QA store refused an operation or cannot be used.

    Raised for a database locked by another process after the busy timeout, a file written by a newer
    schema version, a file that is not a vlmad QA database, an unknown item id, and every change the store
    refuses (for instance overwriting a checked item with a model draft). ``path`` is the database file,
    ``problem`` what went wrong and what to do; ``str(err)`` is ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class QAImportError(QAError):
    """A QA file (JSONL or CSV) could not be read, or one of its lines is not a valid QA item.

    ``path`` is the file, ``line`` the 1-based line number (``None`` for a problem with the whole file) and
    ``problem`` what is wrong; ``str(err)`` is ``"<path>:<line>: <problem>"`` (``"<path>: <problem>"``
    without a line).
    """

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{path}: {problem}" if line is None else f"{path}:{line}: {problem}")
