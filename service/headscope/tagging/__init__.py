"""POS tags for model tokens: NLTK's tagger, its child process and the alignment to tokens.
Imports neither torch nor the model."""
