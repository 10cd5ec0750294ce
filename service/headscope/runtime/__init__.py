"""The runtime: the only package that imports torch. Serving never imports transformers; tests
and benchmarks use it as the reference the runtime is checked against.

`load_runtime(settings)` loads model, tokenizer and tagger once; the `Runtime` it returns answers
the API's questions and raises domain errors from `headscope.errors` on bad input.
"""

from headscope.runtime.runtime import Encoded, Runtime, load_runtime

__all__ = ["Encoded", "Runtime", "load_runtime"]
