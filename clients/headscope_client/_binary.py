"""The server's binary answers, read into numpy arrays: safetensors (every array of a result) and
npy (the one array of /v1/activity or /v1/attention).

A safetensors answer holds each array as a tensor named by its place in the JSON
(`activity`, `pattern`, `patterns.0.pattern`) and the rest of the JSON in the header's metadata,
under `headscope`, with each array replaced by its tensor's name (`headscope.encoding` on the
server). numpy and safetensors are imported here only, when a binary answer arrives, so the base
install (httpx + pydantic) never needs them.
"""

from __future__ import annotations

import functools
import io
import struct
from typing import Any

from pydantic_core import from_json

JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
METADATA_KEY = "headscope"

# A path into a result: field names and list indices, e.g. ("patterns", 0, "pattern").
Path = tuple[str | int, ...]


@functools.cache
def binary_libraries_missing() -> str | None:
    """Why the binary formats cannot be read here (a pip hint), or None when they can.

    Asked once: Python does not remember failed imports, and `auto` asks on every call."""
    try:
        import numpy  # noqa: F401
        import safetensors.numpy  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed: pip install 'headscope[numpy]'"
    return None


def decode_safetensors(data: bytes) -> tuple[dict[str, Any], dict[Path, Any]]:
    """(the JSON fields with each array replaced by an empty list, {path: array}).

    The arrays keep the dtype the server sent (float32, or float16 when asked for)."""
    from safetensors.numpy import load

    (header_length,) = struct.unpack("<Q", data[:8])
    metadata = from_json(data[8 : 8 + header_length]).get("__metadata__") or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"the safetensors header has no {METADATA_KEY!r} metadata")
    fields = from_json(metadata[METADATA_KEY])
    arrays = {_place_of(fields, name): array for name, array in load(data).items()}
    return fields, arrays


def _place_of(fields: dict[str, Any], name: str) -> Path:
    """The path of tensor `name` in the JSON fields, where the server left the name itself; the
    name is replaced by an empty list there (the parsed result's placeholder)."""
    path: Path = tuple(int(part) if part.isdigit() else part for part in name.split("."))
    owner: Any = fields
    try:
        for part in path[:-1]:
            owner = owner[part]
        found = owner[path[-1]]
    except (KeyError, IndexError, TypeError):
        found = None
    if found != name:
        raise ValueError(f"tensor {name!r} is not named in the metadata")
    owner[path[-1]] = []
    return path


def decode_npy(data: bytes) -> Any:
    import numpy

    return numpy.load(io.BytesIO(data), allow_pickle=False)


def place_arrays(result: Any, arrays: dict[Path, Any]) -> None:
    """Put each array at its path in a parsed result, in place of the empty list."""
    for path in arrays:
        owner = result
        for part in path[:-1]:
            owner = owner[part] if isinstance(part, int) else getattr(owner, part)
        # Plain assignment: the models do not validate on assignment, so the array stays as is.
        setattr(owner, str(path[-1]), arrays[path])
