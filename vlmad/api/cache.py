"""A persistent key -> JSON response cache in SQLite, shared safely by concurrent processes.

The database runs in WAL mode with a busy timeout, so several processes (a drafting run and a second one
started on other samples, a chain-of-image grid run from several shells) can read and write one cache file.
Each :class:`ResponseCache` holds one connection; it may be used from several threads (calls are
serialised by a lock) but must not be shared across processes (open one per process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlmad.api.errors import CacheError

SCHEMA_VERSION = 1
_MARKER = "vlmad-api-cache"
#: Keys shorter than this are not searched for in stored values (a placeholder such as "EMPTY" for a
#: local server is no secret, and searching for a 1-3 character string would refuse ordinary text).
_MIN_SECRET_LEN = 8


def cache_key(**parts: Any) -> str:
    """Hex sha256 of the canonical JSON of ``parts`` (sorted keys, no whitespace, UTF-8).

    Equal parts give equal keys whatever their order; every part must be JSON-serialisable (else
    ``TypeError``; NaN/inf -> ``ValueError``).
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _current_secret(env_var: str = "OPENAI_API_KEY") -> str | None:
    key = os.environ.get(env_var)
    return key if key and len(key) >= _MIN_SECRET_LEN else None


class ResponseCache:
    """SQLite (WAL) key -> JSON object store.

    - ``get(key)`` returns the stored dict or ``None``.
    - ``put(key, value)`` stores (or replaces) a JSON object; a value whose JSON contains the current
      ``OPENAI_API_KEY`` value is refused with ``ValueError`` (defence in depth: a key must never be written
      to disk). Non-JSON-able values -> ``TypeError``/``ValueError``.
    - A database locked by other writers for longer than ``timeout`` seconds, a file that is not a vlmad
      cache (another SQLite database, or not SQLite at all) or one from a newer schema -> :class:`CacheError`
      naming the file.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise CacheError(self.path, f"cannot open the response cache ({exc})") from None
        try:
            self._setup(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CacheError(self.path, self._explain(exc)) from None
        except CacheError:
            conn.close()
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "cache_meta" not in tables:
                raise CacheError(
                    self.path,
                    "is an SQLite database but not a vlmad response cache; choose another cache file",
                )
            if not tables:
                conn.execute("CREATE TABLE cache_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute(
                    "CREATE TABLE responses "
                    "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at TEXT NOT NULL)"
                )
                conn.executemany(
                    "INSERT INTO cache_meta VALUES (?, ?)",
                    [("marker", _MARKER), ("schema_version", str(SCHEMA_VERSION))],
                )
            meta = dict(conn.execute("SELECT key, value FROM cache_meta").fetchall())
            if meta.get("marker") != _MARKER:
                raise CacheError(self.path, "is not a vlmad response cache; choose another cache file")
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise CacheError(
                    self.path,
                    f"was written by a newer vlmad (cache schema {version}, this one reads "
                    f"{SCHEMA_VERSION}); upgrade vlmad or use another cache file",
                )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return "the response cache is locked by another process; retry when it finishes"
        if "not a database" in text or "malformed" in text:
            return "is not a vlmad response cache (not an SQLite database); choose another cache file"
        return f"response cache error ({text})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError(self.path, "the response cache is closed")
        return self._conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored under ``key``, or ``None`` when there is none."""
        with self._lock:
            try:
                row = (
                    self._connection().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
                )
            except sqlite3.Error as exc:
                raise CacheError(self.path, self._explain(exc)) from None
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (a JSON object) under ``key``, replacing what was there."""
        if not isinstance(value, dict):
            raise TypeError(f"cache values must be dicts, got {type(value).__name__}")
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        secret = _current_secret()
        if secret is not None and (secret in text or secret in key):
            raise ValueError(
                "refusing to cache a value that contains the OPENAI_API_KEY value; "
                "API keys must never be written to disk"
            )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            try:
                self._connection().execute(
                    "INSERT OR REPLACE INTO responses (key, value, created_at) VALUES (?, ?, ?)",
                    (key, text, now),
                )
            except sqlite3.Error as exc:
                raise CacheError(self.path, self._explain(exc)) from None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            row = self._connection().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`CacheError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
