"""Defaults in one place: where the server is, how long to wait, and how to retry."""

from __future__ import annotations

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_ENV = "HEADSCOPE_URL"
API_KEY_ENV = "HEADSCOPE_API_KEY"

# An analysis of a 512-token text takes well under a second on a laptop, but a corpus request can
# run for minutes; connecting to a live server never takes long.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)

DEFAULT_MAX_RETRIES = 2
# Backoff before retry n (from 0) is INITIAL_RETRY_DELAY * 2**n, capped, minus up to 25% jitter
# so that many clients refused together do not come back together.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
RETRY_JITTER = 0.25
# A Retry-After longer than this is not waited for: the backoff is used instead.
MAX_RETRY_AFTER = 60.0
# 429: the server's queue is full; 502/504: a proxy in front lost the server; 503: not ready yet.
RETRY_STATUS_CODES = frozenset({429, 502, 503, 504})
