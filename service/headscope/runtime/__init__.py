"""The runtime: the only package that imports torch and transformers.

`load_runtime(settings)` loads model, tokenizer and tagger once; the `Runtime` it returns answers
the API's questions and raises domain errors from `headscope.errors` on bad input.
"""

from headscope.runtime.runtime import Encoded, Runtime, load_runtime

__all__ = ["Encoded", "Runtime", "load_runtime"]
