"""Response encodings of analysis results: JSON (orjson, straight from numpy), safetensors, npy.

The runtime hands back a *payload*: the response's JSON fields with numpy float32 arrays where
the numbers are. Encoding it here, instead of through pydantic lists of Python floats, is what
makes large responses cheap:

- JSON (default): orjson writes float32 arrays natively, each number as the shortest decimal
  that reads back as the same float32 (`0.33333334`, not `0.3333333432674408`). Parsed as
  float32, every number is exactly the engine's.
- `Accept: application/x-safetensors`: every array as a tensor (`activity`, `pattern`,
  `patterns.0.pattern`, ...) and the other fields as JSON in the header's metadata, under
  `headscope`, with each array replaced by its tensor's name. `decode_safetensors` undoes it.
- `Accept: application/x-npy`: the one array of /v1/activity (`activity`) or /v1/attention
  (`pattern`), for numpy.load; tokens are not included (ask for JSON or safetensors for them).

Torch-free (numpy, orjson, safetensors.numpy), so the client side can decode with it too.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from headscope.errors import HeadscopeError

JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
# Accepted spellings of the safetensors media type (there is no registered one).
SAFETENSORS_ALIASES = {SAFETENSORS, "application/safetensors", "application/vnd.safetensors"}
METADATA_KEY = "headscope"
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class NotAcceptable(HeadscopeError):
    status_code = 406
    code = "not_acceptable"


@dataclass(frozen=True)
class Precision:
    """How numbers are rounded before encoding (request fields `dtype` and `decimals`)."""

    dtype: str = "float32"
    decimals: int | None = None

    @property
    def is_exact(self) -> bool:
        return self.dtype == "float32" and self.decimals is None

    def apply(self, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind != "f" or self.is_exact:
            return array
        if self.decimals is not None:
            array = np.round(array, self.decimals)
        if self.dtype == "float16":
            array = array.astype(np.float16)
        return array


@dataclass(frozen=True)
class Sparsity:
    """Which pattern weights are written as 0 (request fields `top_k` and `threshold`)."""

    top_k: int | None = None
    threshold: float | None = None

    @property
    def is_dense(self) -> bool:
        return self.top_k is None and self.threshold is None

    def apply(self, pattern: np.ndarray) -> np.ndarray:
        """[..., q, k] -> the same shape, dropped weights set to 0 (a new array)."""
        kept = pattern.copy()
        if self.top_k is not None and self.top_k < pattern.shape[-1]:
            # The k-th largest weight of each row; everything below it goes.
            kth = np.partition(pattern, -self.top_k, axis=-1)[..., -self.top_k, None]
            kept[pattern < kth] = 0.0
        if self.threshold is not None:
            kept[pattern < self.threshold] = 0.0
        return kept

    def sparsify(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with its `pattern` arrays made sparse; the input is left as it was."""
        if self.is_dense:
            return payload
        payload = dict(payload)
        if isinstance(payload.get("pattern"), np.ndarray):
            payload["pattern"] = self.apply(payload["pattern"])
        if isinstance(payload.get("patterns"), list):
            payload["patterns"] = [
                {**item, "pattern": self.apply(item["pattern"])} for item in payload["patterns"]
            ]
        return payload


def negotiate(accept: str | None, has_single_array: bool) -> str:
    """The media type to answer with, from the Accept header.

    Anything that is not one of the binary types (browsers' text/html, */*, none) gets JSON, so
    the JSON contract is the default everywhere. A binary type this endpoint cannot produce, and
    nothing else acceptable, is a 406.
    """
    if not accept:
        return JSON
    offered: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media_type, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            offered.append((-quality, position, media_type.lower()))
    refused_binary: str | None = None
    for _, _, media_type in sorted(offered):
        if media_type in SAFETENSORS_ALIASES:
            return SAFETENSORS
        if media_type == NPY:
            if has_single_array:
                return NPY
            refused_binary = media_type
            continue
        return JSON
    if refused_binary is not None:
        raise NotAcceptable(
            f"{refused_binary} holds one array; this endpoint returns several. Accept "
            f"{SAFETENSORS} or {JSON} instead.",
            detail={"acceptable": [JSON, SAFETENSORS]},
        )
    return JSON


def _map_arrays(value: Any, function) -> Any:
    if isinstance(value, np.ndarray):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_arrays(item, function) for key, item in value.items()}
    if isinstance(value, list):
        if plain_rows(value):
            return value  # the tokens
        return [_map_arrays(item, function) for item in value]
    return value


def plain_rows(value: list) -> bool:
    """A list of dicts of plain values (the tokens). Payload lists are homogeneous, so the first
    row tells."""
    return (
        bool(value)
        and isinstance(value[0], dict)
        and not any(isinstance(item, (np.ndarray, dict, list)) for item in value[0].values())
    )


def to_lists(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with arrays as nested lists of Python floats (for the pydantic models)."""
    return _map_arrays(payload, lambda array: array.tolist())


# orjson holds the GIL for the whole of one call (a 512x512 pattern: see bench/README.md), all
# that time the event loop (health checks, every other request's I/O) cannot run. Arrays bigger than
# this are written a slice at a time, and other threads get the GIL between slices.
JSON_SLICE_FLOATS = 4096


def _array_json(array: np.ndarray) -> bytes:
    """orjson's bytes for the array: the same bytes, written slices of rows at a time."""
    array = np.ascontiguousarray(array)
    if array.ndim <= 1 or array.size <= JSON_SLICE_FLOATS:
        return orjson.dumps(array, option=ORJSON_OPTIONS)
    row_size = array[0].size
    if row_size > JSON_SLICE_FLOATS:
        return b"[" + b",".join(_array_json(row) for row in array) + b"]"
    step = JSON_SLICE_FLOATS // row_size
    # Each slice is "[row,row,...]": its rows, without its brackets, join into the whole.
    slices = (
        orjson.dumps(array[start : start + step], option=ORJSON_OPTIONS)[1:-1]
        for start in range(0, len(array), step)
    )
    return b"[" + b",".join(slices) + b"]"


def encode_json(payload: dict[str, Any], precision: Precision = Precision()) -> bytes:
    return orjson.dumps(
        _map_arrays(payload, lambda array: orjson.Fragment(_array_json(precision.apply(array)))),
        option=ORJSON_OPTIONS,
    )


def _walk_arrays(value: Any, leaf: Callable[[Any, str], Any], path: str = "") -> Any:
    """Rebuild a payload, each value that is not a dict or a list of dicts replaced by
    leaf(value, its tensor name): dotted keys and list indices, "patterns.0.pattern"."""
    if isinstance(value, dict):
        return {
            key: _walk_arrays(item, leaf, f"{path}.{key}" if path else key)
            for key, item in value.items()
        }
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_walk_arrays(item, leaf, f"{path}.{index}") for index, item in enumerate(value)]
    return leaf(value, path)


def _tensor_names(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Replace each array by its tensor name; return (skeleton, {name: array})."""
    tensors: dict[str, np.ndarray] = {}

    def name_array(value: Any, path: str) -> Any:
        if isinstance(value, np.ndarray):
            tensors[path] = value
            return path
        return value

    return _walk_arrays(payload, name_array), tensors


def encode_safetensors(payload: dict[str, Any], precision: Precision = Precision()) -> bytes:
    from safetensors.numpy import save

    skeleton, tensors = _tensor_names(payload)
    tensors = {
        name: np.ascontiguousarray(precision.apply(array)) for name, array in tensors.items()
    }
    return save(tensors, metadata={METADATA_KEY: orjson.dumps(skeleton).decode()})


def decode_safetensors(data: bytes) -> dict[str, Any]:
    """Rebuild the JSON-shaped payload (with numpy arrays) from a safetensors response."""
    import json
    import struct

    from safetensors.numpy import load

    header_length = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8 : 8 + header_length])["__metadata__"]
    skeleton = json.loads(metadata[METADATA_KEY])
    tensors = load(data)

    def array_of(value: Any, path: str) -> Any:
        return (
            tensors[path] if isinstance(value, str) and value == path and path in tensors else value
        )

    return _walk_arrays(skeleton, array_of)


def encode_npy(array: np.ndarray, precision: Precision = Precision()) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(precision.apply(array)), allow_pickle=False)
    return buffer.getvalue()


def encode(
    payload: dict[str, Any],
    media_type: str,
    precision: Precision = Precision(),
    single_array: str | None = None,
) -> bytes:
    """Encode a payload as `media_type` (one of JSON, SAFETENSORS, NPY)."""
    if media_type == SAFETENSORS:
        return encode_safetensors(payload, precision)
    if media_type == NPY:
        if single_array is None:
            raise NotAcceptable(f"{NPY} is not offered here.")
        return encode_npy(payload[single_array], precision)
    return encode_json(payload, precision)
