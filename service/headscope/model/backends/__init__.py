"""Ways to run a block of the forward pass; each is tested against Hugging Face to 1e-5."""
