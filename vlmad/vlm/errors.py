"""The exception of the VLM layer."""

from __future__ import annotations

from vlmad.errors import VlmadError


class VlmError(VlmadError):
    """A vision-language model, its family, its inputs or an adapter cannot be used.

    The message says what was wrong and what to do (for example: pass a local directory instead of a Hub
    id that is not cached while the Hub is offline).
    """
