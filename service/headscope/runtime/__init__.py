"""The runtime: the only package that imports torch. Serving never imports transformers; tests
and benchmarks use it as the reference the runtime is checked against.

`load_runtime(settings)` loads model, tokenizer and tagger once; the `Runtime` it returns answers
the API's questions and raises domain errors from `headscope.errors` on bad input.

The names below are imported on first use, so that a submodule without torch (the tagger's child
process runs headscope.runtime.tagging_process) can be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headscope.runtime.runtime import Encoded, Runtime, load_runtime

__all__ = ["Encoded", "Runtime", "load_runtime"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("headscope.runtime.runtime"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
