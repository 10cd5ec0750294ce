"""Request options for how numbers come back: precision and rounding (any endpoint with arrays).

The response format itself is chosen by the Accept header: JSON (default),
`application/x-safetensors` (every array as a tensor, the rest as JSON metadata) or
`application/x-npy` (the one array of /v1/activity or /v1/attention).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OutputOptions", "PatternOutputOptions"]


class OutputOptions(BaseModel):
    # As the JSON request bodies it is mixed into: unknown fields and lax types are errors.
    model_config = ConfigDict(extra="forbid", strict=True)

    dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="Precision of the returned numbers. `float32` (default): the engine's own "
        "numbers, each written as the shortest decimal that reads back as the same float32. "
        "`float16`: rounded to half precision (about 3 significant digits; halves binary "
        "responses).",
    )
    decimals: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Round every returned number to this many decimal places (shorter JSON). "
        "Default: no rounding.",
    )


class PatternOutputOptions(OutputOptions):
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="Sparse patterns: keep only the k largest weights of each query row (ties at "
        "the k-th weight are all kept) and write every other weight as 0. Rows then sum to less "
        "than 1. Default: every weight.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Sparse patterns: write weights below this value as 0 (combines with "
        "`top_k`). Default: every weight.",
    )
