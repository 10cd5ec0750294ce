"""headscope: look inside the attention heads of tiny GPT-Neo transformers over HTTP.

Importing this package is cheap and torch-free; the server lives in `headscope.app` and the
model code in `headscope.runtime`.
"""

__version__ = "0.1.0"
