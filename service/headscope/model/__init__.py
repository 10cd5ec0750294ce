"""The model: loading, the analysis forward pass and its backends. The only package that imports
torch; serving never imports transformers (tests and benchmarks use it as the reference)."""
