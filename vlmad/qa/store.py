"""The QA store: every :class:`~vlmad.records.QAItem` of a dataset in one SQLite file, with its history.

One file (by default ``<dataset root>/qa.sqlite``) holds the items and an append-only history of every
change (who, when, the item before and after). SQLite runs in WAL mode with a busy timeout, so several
processes (a drafting run, a reviewer, an importer) can write to one store at once: each change is one
short ``BEGIN IMMEDIATE`` transaction, and a writer waits for another instead of failing. A database still
locked after the timeout raises :class:`QAStoreError`, never a raw ``sqlite3`` error.

The never-overwrite rule: a model draft never replaces an item a person checked. :meth:`QAStore.add_draft`
always inserts a new row, :meth:`QAStore.update` refuses a ``gpt-draft`` item over a verified, edited or
rejected one, and :meth:`QAStore.put_template` leaves alone every template item a person has reviewed.

Layout (schema version :data:`SCHEMA_VERSION`): ``items(id PRIMARY KEY, sample_id, category, kind, source,
status, created_at, updated_at, data)`` where ``data`` is the item's JSON and the other columns copy its
fields for filtering (indexes on ``sample_id``, ``status``, ``source``); ``history(seq, item_id, at, who,
action, before, after)``; ``meta(key, value)`` with ``application = "vlmad-qa"`` and ``schema_version``.
A file from a newer schema version, or any other SQLite file, is refused rather than changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError

from vlmad.errors import ConfigError
from vlmad.qa.errors import QAStoreError
from vlmad.records import QA_KINDS, QA_SOURCES, QA_STATUSES, QAItem

SCHEMA_VERSION = 1
DEFAULT_DB_NAME = "qa.sqlite"
APPLICATION = "vlmad-qa"
HISTORY_ACTIONS: tuple[str, ...] = ("create", "review", "edit", "update", "import")
Decision = Literal["accept", "edit", "reject"]

# statuses a person has decided on: a model draft never replaces an item in one of them
CHECKED_STATUSES: tuple[str, ...] = ("verified", "edited", "rejected")
REVIEWABLE_STATUSES: tuple[str, ...] = ("draft", "verified", "edited")
# fields a reviewer's edit may not set: identity and provenance, and what the store sets itself
_FIXED_FIELDS = frozenset({"id", "source", "created_at", "draft", "status", "reviewer", "updated_at"})
# fields that do not count as content when comparing two versions of an item
_TIME_FIELDS = frozenset({"created_at", "updated_at"})
_SQLITE_HEADER = b"SQLite format 3\x00"
_MAX_SQL_VALUES = 500  # a filter with more values is applied in Python (SQLite limits bound parameters)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    sample_id TEXT NOT NULL,
    category TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_sample_id ON items(sample_id);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    at TEXT NOT NULL,
    who TEXT,
    action TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX IF NOT EXISTS history_item_id ON history(item_id);
"""


def default_store_path(dataset_root: str | Path) -> Path:
    """The store a dataset uses unless told otherwise: ``<dataset_root>/qa.sqlite``."""
    return Path(dataset_root) / DEFAULT_DB_NAME


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds precision and a ``Z`` suffix: ``2024-05-01T12:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_item_id() -> str:
    """A fresh random item id (uuid4 as 32 hex digits)."""
    return uuid.uuid4().hex


def template_item_id(sample_id: str, kind: str, variant: int) -> str:
    """The deterministic id of a template item: the same sample, kind and phrasing give the same id."""
    return hashlib.sha256(f"template|{sample_id}|{kind}|{variant}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class HistoryEntry:
    """One change of one item, in the order the store made them (``seq`` increases).

    ``action`` is ``create``, ``review`` (accept or reject), ``edit`` (a reviewer changed it), ``update``
    (content replaced, e.g. a rebuilt template or a manual re-import) or ``import``. ``before`` / ``after``
    are ``QAItem.model_dump(mode="json")`` of the item before and after the change (``before`` is ``None``
    for ``create`` and ``import``).
    """

    seq: int
    item_id: str
    at: str
    who: str | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _dump(item: QAItem) -> dict[str, Any]:
    return item.model_dump(mode="json")


def _json(value: dict[str, Any] | None) -> str | None:
    # ASCII escapes keep lone surrogates (possible in model text such as draft.raw) storable
    return None if value is None else json.dumps(value, sort_keys=True)


def _content(item: QAItem) -> dict[str, Any]:
    return {k: v for k, v in _dump(item).items() if k not in _TIME_FIELDS}


# the columns of the items table besides the id: indexed fields of the item, then its JSON
_COLUMNS = ("sample_id", "category", "kind", "source", "status", "created_at", "updated_at", "data")


def _row(item: QAItem) -> tuple[str | None, ...]:
    """The values of :data:`_COLUMNS` for ``item``."""
    return (
        item.sample_id,
        item.category,
        item.kind,
        item.source,
        item.status,
        item.created_at,
        item.updated_at,
        _json(_dump(item)),
    )


def _is_locked(e: sqlite3.OperationalError) -> bool:
    msg = str(e)
    return "locked" in msg or "busy" in msg


def _values(
    name: str, value: str | Iterable[str] | None, allowed: tuple[str, ...] | None
) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if allowed is not None:
        bad = sorted({v for v in values if v not in allowed})
        if bad:
            raise ConfigError(
                f"unknown QA {name} {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}"
            )
    return values


class QAStore:
    """A QA store in one SQLite file; see the module docstring for the layout and the rules.

    ``QAStore(path)`` opens the store, creating the file and its tables when they do not exist (with
    ``create=False`` a missing file is an error). ``timeout`` is how long (seconds) an operation waits for
    another writer before raising :class:`QAStoreError`. Each store holds one connection: use it from the
    thread and process that opened it, and open one store per process (a store inherited through ``fork``
    refuses to work). Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise QAStoreError(self.path, "is a directory, not a QA store file")
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if not self.path.exists() and not create:
            raise QAStoreError(self.path, "no QA store here (create one first, or check the path)")
        if exists:
            with self.path.open("rb") as f:
                if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                    raise QAStoreError(
                        self.path, "not a SQLite database, so not a vlmad QA store; choose another file"
                    )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise QAStoreError(self.path, f"cannot open the database ({e})") from e
        try:
            self._open(create)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection and transactions
    def _open(self, create: bool) -> None:
        """Check (or create) the schema, switching a vlmad store to WAL.

        SQLite answers "locked" at once, without its busy handler, when two processes switch a new file to
        WAL together; such an answer is retried here until ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        with self._errors("opening the store"):
            while True:
                try:
                    self._open_once(create)
                    return
                except sqlite3.OperationalError as e:
                    if not _is_locked(e) or time.monotonic() >= deadline:
                        raise
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(2 * delay, 0.05)

    def _open_once(self, create: bool) -> None:
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if self._tables():
            # check before changing anything: never switch a foreign database to WAL
            self._check_meta()
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        if not create:
            raise QAStoreError(self.path, "not a vlmad QA database (it has no QA tables)")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = self._tables()  # another process may have created them meanwhile
            if tables and "meta" not in tables:
                raise QAStoreError(
                    self.path, "not a vlmad QA database (another program wrote tables into it)"
                )
            if not tables:
                # one statement at a time: executescript() would commit the open transaction first
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._check_meta()

    def _tables(self) -> set[str]:
        rows = self._connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows} - {"sqlite_sequence"}

    def _check_meta(self) -> None:
        conn = self._connection()
        if "meta" not in self._tables():
            raise QAStoreError(self.path, "not a vlmad QA database (no vlmad-qa marker); choose another file")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as e:  # another program's table named "meta"
            if _is_locked(e):
                raise
            raise QAStoreError(
                self.path, "not a vlmad QA database (no vlmad-qa marker); choose another file"
            ) from e
        if meta.get("application") != APPLICATION:
            raise QAStoreError(self.path, "not a vlmad QA database (no vlmad-qa marker); choose another file")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise QAStoreError(self.path, f"bad schema version {meta.get('schema_version')!r}") from None
        if version > SCHEMA_VERSION:
            raise QAStoreError(
                self.path,
                f"written by a newer vlmad (QA store schema version {version}, this vlmad reads up to "
                f"{SCHEMA_VERSION}); upgrade vlmad to use this store",
            )
        if version < 1:
            raise QAStoreError(self.path, f"bad schema version {version}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise QAStoreError(self.path, "the store is closed")
        if os.getpid() != self._pid:
            raise QAStoreError(
                self.path, "store opened in another process; open a new QAStore in this process"
            )
        return self._conn

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn sqlite3 errors into :class:`QAStoreError` naming the file and what to do."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if _is_locked(e):
                raise QAStoreError(
                    self.path,
                    f"database is locked by another process or connection (while {doing}, busy timeout "
                    f"{self.timeout:g} s); retry when the other writer has finished, or raise the timeout",
                ) from e
            raise QAStoreError(self.path, f"SQLite error while {doing}: {e}") from e
        except sqlite3.Error as e:
            raise QAStoreError(self.path, f"SQLite error while {doing}: {e}") from e

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back if it raises."""
        conn = self._connection()
        with self._errors(doing):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection; safe to call twice. Operations on a closed store raise QAStoreError."""
        if self._conn is not None and os.getpid() == self._pid:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> QAStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QAStore({str(self.path)!r})"

    # ------------------------------------------------------------------ rows
    def _item(self, item_id: str, data: str) -> QAItem:
        try:
            # json.loads, not model_validate_json: the latter rejects escaped lone surrogates
            return QAItem.model_validate(json.loads(data))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise QAStoreError(self.path, f"item {item_id} is stored damaged ({loc}: {err['msg']})") from None
        except json.JSONDecodeError:
            raise QAStoreError(self.path, f"item {item_id} is stored damaged (not JSON)") from None

    def _fetch(self, conn: sqlite3.Connection, item_id: str) -> QAItem | None:
        row = conn.execute("SELECT data FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else self._item(item_id, row[0])

    def _fetch_many(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, QAItem]:
        found: dict[str, QAItem] = {}
        for i in range(0, len(ids), _MAX_SQL_VALUES):
            chunk = ids[i : i + _MAX_SQL_VALUES]
            marks = ",".join("?" * len(chunk))
            for item_id, data in conn.execute(f"SELECT id, data FROM items WHERE id IN ({marks})", chunk):
                found[item_id] = self._item(item_id, data)
        return found

    @staticmethod
    def _insert(conn: sqlite3.Connection, item: QAItem) -> None:
        conn.execute(
            f"INSERT INTO items (id, {', '.join(_COLUMNS)}) VALUES (?, {', '.join('?' * len(_COLUMNS))})",
            (item.id, *_row(item)),
        )

    @staticmethod
    def _replace(conn: sqlite3.Connection, item: QAItem) -> None:
        conn.execute(
            f"UPDATE items SET {', '.join(c + ' = ?' for c in _COLUMNS)} WHERE id = ?", (*_row(item), item.id)
        )

    @staticmethod
    def _log(
        conn: sqlite3.Connection,
        item_id: str,
        who: str | None,
        action: str,
        before: QAItem | None,
        after: QAItem | None,
    ) -> None:
        conn.execute(
            "INSERT INTO history (item_id, at, who, action, before, after) VALUES (?, ?, ?, ?, ?, ?)",
            (
                item_id,
                now_iso(),
                who,
                action,
                _json(None if before is None else _dump(before)),
                _json(None if after is None else _dump(after)),
            ),
        )

    # ------------------------------------------------------------------ writing
    def add(self, items: Iterable[QAItem], *, who: str | None = None, action: str = "create") -> list[str]:
        """Insert new items in one transaction and return their ids, in order.

        ``action`` (``create`` or ``import``) and ``who`` go to each item's history entry. An id that is
        already in the store, or twice in ``items``, raises :class:`QAStoreError` and nothing is written.
        """
        if action not in ("create", "import"):
            raise QAStoreError(self.path, f"add() records 'create' or 'import', not {action!r}")
        batch = list(items)
        ids = [it.id for it in batch]
        seen: set[str] = set()
        for item_id in ids:
            if item_id in seen:
                raise QAStoreError(
                    self.path, f"item id {item_id} appears twice in one add(); nothing written"
                )
            seen.add(item_id)
        with self._write("adding items") as conn:
            existing = self._fetch_many(conn, ids)
            if existing:
                first = next(iter(existing))
                raise QAStoreError(
                    self.path,
                    f"{len(existing)} item id(s) already in the store (first: {first}); nothing written "
                    "(use update() to change an item)",
                )
            for item in batch:
                self._insert(conn, item)
                self._log(conn, item.id, who, action, None, item)
        return ids

    def put_template(self, items: Iterable[QAItem]) -> tuple[int, int]:
        """Insert or refresh template items (``source == "template"``) by id; returns ``(inserted, updated)``.

        Idempotent: a new id is inserted (history ``create``); an existing template item that no person
        has touched (``reviewer`` is ``None`` and status ``verified``) is replaced when its content differs
        (history ``update``, its ``created_at`` kept); an item a person reviewed, edited or rejected is
        left alone, as is any existing item that is not a template item. One transaction; an item whose
        source is not ``template`` raises :class:`QAStoreError` and nothing is written.
        """
        batch = list(items)
        for item in batch:
            if item.source != "template":
                raise QAStoreError(
                    self.path,
                    f"put_template() takes template items, item {item.id} has source {item.source!r}",
                )
        by_id = {it.id: it for it in batch}  # a repeated id: the last one wins
        inserted = updated = 0
        with self._write("storing template items") as conn:
            existing = self._fetch_many(conn, list(by_id))
            for item_id, item in by_id.items():
                old = existing.get(item_id)
                if old is None:
                    self._insert(conn, item)
                    self._log(conn, item_id, item.author, "create", None, item)
                    inserted += 1
                elif (
                    old.source == "template"
                    and old.status == "verified"
                    and old.reviewer is None
                    and _content(old) != _content(item)
                ):
                    new = item.model_copy(update={"created_at": old.created_at, "updated_at": now_iso()})
                    self._replace(conn, new)
                    self._log(conn, item_id, item.author, "update", old, new)
                    updated += 1
        return inserted, updated

    def add_draft(self, item: QAItem) -> str:
        """Store a model draft as a NEW item and return its id (one transaction, history ``create``).

        ``item.source`` must be ``gpt-draft`` and its status ``draft`` or ``failed`` (a draft becomes
        verified only through :meth:`review`), else :class:`QAStoreError`. Re-drafting never touches an
        existing item, verified or not: if ``item.id`` is already taken the draft is stored under a fresh
        id, which is returned.
        """
        if item.source != "gpt-draft":
            raise QAStoreError(
                self.path, f"add_draft() takes gpt-draft items, item {item.id} has {item.source!r}"
            )
        if item.status not in ("draft", "failed"):
            raise QAStoreError(
                self.path, f"a new draft has status 'draft' or 'failed', item {item.id} has {item.status!r}"
            )
        with self._write("adding a draft") as conn:
            while self._fetch(conn, item.id) is not None:
                item = item.model_copy(update={"id": new_item_id()})
            self._insert(conn, item)
            self._log(conn, item.id, item.author, "create", None, item)
        return item.id

    def review(
        self, item_id: str, decision: Decision, *, reviewer: str, changes: dict[str, Any] | None = None
    ) -> QAItem:
        """Record a reviewer's decision on an item and return the item as stored now.

        - ``accept``: status ``verified`` (an item already ``edited`` stays ``edited``: its content is
          still a person's edit); history ``review``.
        - ``edit``: ``changes`` (a dict of QAItem fields other than id, source, created_at, draft, status,
          reviewer and updated_at) applied and validated through :class:`QAItem`; status ``edited``;
          history ``edit``.
        - ``reject``: status ``rejected``; history ``review``.

        Sets ``reviewer`` and ``updated_at``; history keeps the item before and after. Only items in
        status draft, verified or edited can be reviewed. Unknown id, another status, ``changes`` with
        accept/reject or without edit, a fixed or unknown field, or an invalid value raise
        :class:`QAStoreError` and nothing changes. One transaction.
        """
        if decision not in ("accept", "edit", "reject"):
            raise QAStoreError(self.path, f"unknown review decision {decision!r} (accept, edit or reject)")
        if decision == "edit":
            if changes is None:
                raise QAStoreError(self.path, f"editing item {item_id} needs the changes to make")
            fixed = sorted(set(changes) & _FIXED_FIELDS)
            if fixed:
                raise QAStoreError(self.path, f"an edit may not change {', '.join(fixed)} (item {item_id})")
            unknown = sorted(set(changes) - set(QAItem.model_fields))
            if unknown:
                raise QAStoreError(
                    self.path, f"an edit names unknown field(s) {', '.join(unknown)} (item {item_id})"
                )
        elif changes:
            raise QAStoreError(self.path, f"changes are given only with decision 'edit', not {decision!r}")
        with self._write("reviewing an item") as conn:
            old = self._fetch(conn, item_id)
            if old is None:
                raise QAStoreError(self.path, f"no item with id {item_id}")
            if old.status not in REVIEWABLE_STATUSES:
                raise QAStoreError(
                    self.path,
                    f"item {item_id} has status {old.status!r}; only draft, verified or edited items can be "
                    "reviewed",
                )
            if decision == "reject":
                status = "rejected"
            elif decision == "edit" or old.status == "edited":
                status = "edited"
            else:
                status = "verified"
            data = {
                **_dump(old),
                **(changes or {}),
                "status": status,
                "reviewer": reviewer,
                "updated_at": now_iso(),
            }
            try:
                new = QAItem.model_validate(data)
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(x) for x in err["loc"])
                raise QAStoreError(
                    self.path, f"edit of item {item_id} is not valid: {loc}: {err['msg']}"
                ) from None
            self._replace(conn, new)
            self._log(conn, item_id, reviewer, "edit" if decision == "edit" else "review", old, new)
        return new

    def update(self, item: QAItem, *, who: str | None) -> QAItem:
        """Replace a stored item's content with ``item`` (same id) and return the item as stored now.

        For manual edits and re-imports. The stored ``created_at`` is kept and ``updated_at`` set to now;
        history ``update`` with before and after. An item whose content is unchanged is returned as stored
        and nothing is recorded. Refused with :class:`QAStoreError` (nothing changes) for an unknown id and
        when ``item.source`` is ``gpt-draft`` while the stored item is verified, edited or rejected: a model
        draft never overwrites an item a person checked (store the draft with :meth:`add_draft` instead).
        """
        with self._write("updating an item") as conn:
            old = self._fetch(conn, item.id)
            if old is None:
                raise QAStoreError(self.path, f"no item with id {item.id} (use add() for new items)")
            if item.source == "gpt-draft" and old.status in CHECKED_STATUSES:
                raise QAStoreError(
                    self.path,
                    f"item {item.id} is {old.status} by a person or from ground truth; a gpt-draft never "
                    "overwrites it (store the draft as a new item with add_draft())",
                )
            if _content(old) == _content(item):
                return old
            new = item.model_copy(update={"created_at": old.created_at, "updated_at": now_iso()})
            self._replace(conn, new)
            self._log(conn, item.id, who, "update", old, new)
        return new

    # ------------------------------------------------------------------ reading
    def get(self, item_id: str) -> QAItem:
        """The item with this id; :class:`QAStoreError` if there is none."""
        conn = self._connection()
        with self._errors("reading an item"):
            item = self._fetch(conn, item_id)
        if item is None:
            raise QAStoreError(self.path, f"no item with id {item_id}")
        return item

    def _select(
        self,
        what: str,
        *,
        source: str | Iterable[str] | None,
        status: str | Iterable[str] | None,
        category: str | Iterable[str] | None,
        kind: str | Iterable[str] | None,
        sample_ids: str | Iterable[str] | None,
    ) -> tuple[str, list[str], dict[str, set[str]]]:
        """SQL, its parameters, and the filters too long for SQL (column -> allowed values)."""
        filters = {
            "source": _values("source", source, QA_SOURCES),
            "status": _values("status", status, QA_STATUSES),
            "category": _values("category", category, None),
            "kind": _values("kind", kind, QA_KINDS),
            "sample_id": _values("sample_ids", sample_ids, None),
        }
        clauses: list[str] = []
        params: list[str] = []
        post: dict[str, set[str]] = {}
        for column, values in filters.items():
            if values is None:
                continue
            if len(values) > _MAX_SQL_VALUES:
                post[column] = set(values)
                continue
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"SELECT {what} FROM items{where}", params, post

    def items(
        self,
        *,
        source: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        category: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        sample_ids: str | Iterable[str] | None = None,
    ) -> list[QAItem]:
        """Items matching every given filter, ordered by ``(sample_id, created_at, id)``.

        Each filter is ``None`` (any), one value, or an iterable of values (an empty one matches nothing).
        An unknown source, status or kind raises :class:`vlmad.errors.ConfigError`.
        """
        sql, params, post = self._select(
            "id, sample_id, category, kind, source, status, data",
            source=source,
            status=status,
            category=category,
            kind=kind,
            sample_ids=sample_ids,
        )
        conn = self._connection()
        with self._errors("reading items"):
            rows = conn.execute(sql + " ORDER BY sample_id, created_at, id", params).fetchall()
        columns = ("sample_id", "category", "kind", "source", "status")
        out = []
        for item_id, *fields, data in rows:
            row = dict(zip(columns, fields, strict=True))
            if all(row[c] in allowed for c, allowed in post.items()):
                out.append(self._item(item_id, data))
        return out

    def count(
        self,
        *,
        source: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        category: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        sample_ids: str | Iterable[str] | None = None,
    ) -> int:
        """How many items :meth:`items` would return for the same filters."""
        filters = {
            "source": source,
            "status": status,
            "category": category,
            "kind": kind,
            "sample_ids": sample_ids,
        }
        sql, params, post = self._select("COUNT(*)", **filters)
        if post:
            return len(self.items(**filters))
        conn = self._connection()
        with self._errors("counting items"):
            return int(conn.execute(sql, params).fetchone()[0])

    def history(self, item_id: str | None = None) -> list[HistoryEntry]:
        """The history of one item, or of the whole store when ``item_id`` is ``None``, oldest first."""
        sql = "SELECT seq, item_id, at, who, action, before, after FROM history"
        params: tuple[str, ...] = ()
        if item_id is not None:
            sql += " WHERE item_id = ?"
            params = (item_id,)
        conn = self._connection()
        with self._errors("reading the history"):
            rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [
            HistoryEntry(
                seq=seq,
                item_id=iid,
                at=at,
                who=who,
                action=action,
                before=None if before is None else json.loads(before),
                after=None if after is None else json.loads(after),
            )
            for seq, iid, at, who, action, before, after in rows
        ]

    def has_draft(self, sample_id: str, *, model: str, prompt_version: str, kind: str | None = None) -> bool:
        """True when the store holds a gpt-draft item (any status, failed included) for this sample drafted
        by ``model`` with prompt version ``prompt_version`` (and of ``kind`` when given).

        Lets a drafting run that was stopped resume without drafting a sample twice.
        """
        sql = "SELECT id, data FROM items WHERE sample_id = ? AND source = 'gpt-draft'"
        params: list[str] = [sample_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        conn = self._connection()
        with self._errors("looking up drafts"):
            rows = conn.execute(sql, params).fetchall()
        for item_id, data in rows:
            draft = self._item(item_id, data).draft
            if draft is not None and draft.model == model and draft.prompt_version == prompt_version:
                return True
        return False
