"""headscope: look inside the attention heads of tiny GPT-Neo transformers over HTTP.

Importing this package is cheap and torch-free; the server is built by `headscope.app`, and only
`headscope.model` imports torch.
"""

__version__ = "0.1.0"
