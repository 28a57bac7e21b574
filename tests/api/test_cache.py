"""ResponseCache (SQLite WAL key -> JSON) and cache_key."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vlmad.api import CacheError, ResponseCache, cache_key

KEY = "sk-vlmad-cache-test-0123456789abcdef"

WRITER = """
import sys
from vlmad.api.cache import ResponseCache
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with ResponseCache(path) as cache:
    for i in range(n):
        cache.put(f"{who}-{i}", {"who": who, "i": i})
        assert cache.get(f"{who}-{i}") == {"who": who, "i": i}
"""


def test_cache_key_is_canonical() -> None:
    a = cache_key(model="gpt-4o", image="ab12", params={"temperature": 0, "max_tokens": 9}, prompt="v1")
    b = cache_key(prompt="v1", params={"max_tokens": 9, "temperature": 0}, image="ab12", model="gpt-4o")
    assert a == b and len(a) == 64 and int(a, 16) >= 0
    assert cache_key(model="gpt-4o", image="ab12") != cache_key(model="gpt-4o-mini", image="ab12")
    assert cache_key(x=1) != cache_key(x="1") and cache_key(x="é") == cache_key(x="\u00e9")
    with pytest.raises(TypeError):
        cache_key(x=object())
    with pytest.raises(ValueError):
        cache_key(x=float("nan"))


def test_put_get_replace_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    with ResponseCache(path) as cache:
        assert cache.get("k") is None and "k" not in cache and len(cache) == 0
        cache.put("k", {"text": "Yes", "usage": {"prompt_tokens": 3}, "nested": [1, None, "é"]})
        cache.put("k2", {"text": None})
        cache.put("k", {"text": "No"})  # replaces
        assert cache.get("k") == {"text": "No"} and "k" in cache and len(cache) == 2
        journal = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    with ResponseCache(path) as cache:  # reopened: still there
        assert cache.get("k2") == {"text": None} and len(cache) == 2
    with pytest.raises(CacheError, match="closed"):
        cache.get("k")
    with pytest.raises(TypeError):
        ResponseCache(tmp_path / "c2.sqlite").put("k", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_concurrent_processes_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ResponseCache(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{j}", "40"], stderr=subprocess.PIPE)
        for j in range(3)
    ]
    with ResponseCache(path) as cache:

        def write(who: str) -> None:
            for i in range(40):
                cache.put(f"{who}-{i}", {"who": who, "i": i})

        threads = [threading.Thread(target=write, args=(f"t{j}",)) for j in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
        assert len(cache) == 5 * 40
        assert cache.get("p2-39") == {"who": "p2", "i": 39} and cache.get("t1-0") == {"who": "t1", "i": 0}


def test_refuses_values_holding_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(ValueError, match="OPENAI_API_KEY") as err:
            cache.put("k", {"raw": {"headers": {"Authorization": f"Bearer {KEY}"}}})
        assert KEY not in str(err.value)
        assert cache.get("k") is None
        cache.put("ok", {"text": "no secret here"})
    assert KEY.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")  # a local placeholder is no secret
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put("k", {"text": "EMPTY answer"})
        assert cache.get("k") == {"text": "EMPTY answer"}


def test_foreign_and_newer_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "qa.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE items (id TEXT)")
    with pytest.raises(CacheError, match=r"qa\.sqlite.*not a vlmad response cache"):
        ResponseCache(other)
    text = tmp_path / "notes.sqlite"
    text.write_bytes(b"hello, this is not a database at all" * 50)
    with pytest.raises(CacheError, match=r"notes\.sqlite"):
        ResponseCache(text)
    newer = tmp_path / "newer.sqlite"
    ResponseCache(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE cache_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CacheError, match="newer vlmad"):
        ResponseCache(newer)


def test_locked_database_is_a_cache_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite"
    cache = ResponseCache(path, timeout=0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        with pytest.raises(CacheError, match=r"busy\.sqlite.*locked"):
            cache.put("k", {"v": 1})
        assert cache.get("k") is None  # readers are not blocked in WAL mode
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    cache.put("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    cache.close()
