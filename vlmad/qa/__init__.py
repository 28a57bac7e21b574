"""QA builder: question-answer annotations of dataset images, their store, review and training exports.

This package file stays light: it re-exports the errors, the store (:mod:`vlmad.qa.store`) and the file
formats (:mod:`vlmad.qa.io`). The other stages (templates, drafting, review, split, export) are imported
from their own modules.
"""

from vlmad.qa.errors import QAError, QAImportError, QAStoreError
from vlmad.qa.io import manual_item_id, read_items_jsonl, read_manual_file, write_items_jsonl
from vlmad.qa.store import (
    DEFAULT_DB_NAME,
    SCHEMA_VERSION,
    HistoryEntry,
    QAStore,
    default_store_path,
    new_item_id,
    now_iso,
    template_item_id,
)

__all__ = [
    "DEFAULT_DB_NAME",
    "SCHEMA_VERSION",
    "HistoryEntry",
    "QAError",
    "QAImportError",
    "QAStore",
    "QAStoreError",
    "default_store_path",
    "manual_item_id",
    "new_item_id",
    "now_iso",
    "read_items_jsonl",
    "read_manual_file",
    "template_item_id",
    "write_items_jsonl",
]
