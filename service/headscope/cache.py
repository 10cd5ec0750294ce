"""A bounded LRU of analysis results, keyed by (model fingerprint, endpoint, text, options).

A viewer asks for the same text again and again (another head's pattern, a re-render); a
cached result answers in the time it takes to encode it. Bounded by the bytes of the arrays it
holds, not by a count: one 512-token analysis with patterns can outweigh a hundred short ones.
Cached arrays are made read-only, so no caller can change what the next one gets.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from headscope.encoding import plain_rows

# Bookkeeping per entry beyond its arrays (dicts, token lists, the key), for the byte bound.
ENTRY_OVERHEAD_BYTES = 4096


def payload_bytes(value: Any) -> int:
    """Approximate memory of a payload: its arrays' bytes plus its strings' lengths."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(payload_bytes(item) + 64 for item in value.values())
    if isinstance(value, list):
        if plain_rows(value):
            # Rows of a few short values: their JSON length stands in for what they hold, at a
            # fraction of the cost of visiting each value (hundreds per analysis) in Python.
            with contextlib.suppress(TypeError):
                return len(orjson.dumps(value)) + 64 * sum(map(len, value)) + 8 * len(value)
        if value and isinstance(value[0], str):
            return sum(map(len, value)) + 8 * len(value)
        return sum(payload_bytes(item) + 8 for item in value)
    if isinstance(value, str):
        return len(value)
    return 16


def _freeze(value: Any) -> None:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, dict):
        for item in value.values():
            _freeze(item)
    elif isinstance(value, list) and not plain_rows(value):
        for item in value:
            if isinstance(item, (np.ndarray, dict, list)):
                _freeze(item)


class AnalysisCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: tuple, value: Any) -> None:
        size = payload_bytes(value) + len(repr(key)) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything else
        _freeze(value)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def get_or_compute(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """The cached value for `key`, or compute, store and return it.

        Two threads missing on the same key both compute: simpler than per-key locks, and the
        result is the same either way.
        """
        if not self.enabled:
            return compute()
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
