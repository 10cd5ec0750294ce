"""The bounded LRU of results: analyses keyed by (model fingerprint, endpoint, text, options),
corpus statistics, and tagged texts.

A viewer asks for the same text again and again (another head's pattern, a re-render); a
cached result answers in the time it takes to encode it. Bounded by the bytes of the arrays it
holds, not by a count: one 512-token analysis with patterns can outweigh a hundred short ones.
Cached arrays are made read-only, so no caller can change what the next one gets.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any

import cachetools
import numpy as np
import orjson

from headscope.encoding import plain_rows

# Bookkeeping per entry beyond its arrays (dicts, token lists, the key), for the byte bound.
ENTRY_OVERHEAD_BYTES = 4096


def entry_bytes(value: Any) -> int:
    """A cache entry's approximate memory: its payload plus the bookkeeping around it."""
    return payload_bytes(value) + ENTRY_OVERHEAD_BYTES


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


def one_per_entry(value: Any) -> int:
    """Size function for a cache bounded by its number of entries instead of bytes."""
    return 1


class AnalysisCache:
    """The one LRU for analyses, corpus statistics and tags: thread-safe, bounded by the summed
    `size_of` of its entries (bytes by default; `one_per_entry` bounds the count instead).

    Eviction is cachetools' LRUCache; this class adds the lock, the read-only freeze, the key's
    share of the size, and the rule that an entry larger than the whole cache is not kept."""

    def __init__(self, max_size: int, size_of: Callable[[Any], int] = entry_bytes) -> None:
        self.max_size = max_size
        self._size_of = size_of
        self._entries: cachetools.LRUCache = cachetools.LRUCache(
            maxsize=max(max_size, 1), getsizeof=lambda entry: entry[1]
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return int(self._entries.currsize)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        if not self.enabled:
            return
        size = self._size_of(value)
        if self._size_of is entry_bytes:
            size += len(repr(key))
        if size > self.max_size:
            return  # larger than the whole cache: keeping it would evict everything else
        _freeze(value)
        with self._lock:
            self._entries[key] = (value, size)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
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
