"""OpenAI-compatible API layer: chat client with retries and cost accounting, image preprocessing, cache.

Shared by the QA drafter (``vlmad.qa.draft``) and the chain-of-image runner. Import-light: ``openai`` and
``PIL`` are imported only when a request is sent or an image is encoded. The fake server for tests and
benches lives in :mod:`vlmad.api.testing` (not imported here).
"""

from vlmad.api.cache import ResponseCache, cache_key
from vlmad.api.client import (
    PRICES,
    ChatClient,
    ChatResult,
    Price,
    RetryPolicy,
    RunStats,
    Usage,
    api_key_from_env,
    base_url_from_env,
    cost_usd,
)
from vlmad.api.errors import ERROR_KINDS, APIError, CacheError
from vlmad.api.images import file_sha256, image_content, image_info, prepare_image

__all__ = [
    "ERROR_KINDS",
    "PRICES",
    "APIError",
    "CacheError",
    "ChatClient",
    "ChatResult",
    "Price",
    "ResponseCache",
    "RetryPolicy",
    "RunStats",
    "Usage",
    "api_key_from_env",
    "base_url_from_env",
    "cache_key",
    "cost_usd",
    "file_sha256",
    "image_content",
    "image_info",
    "prepare_image",
]
