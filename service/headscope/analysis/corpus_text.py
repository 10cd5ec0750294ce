"""TinyStories text: sequences from a local file, or the validation split from the hub."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from headscope.errors import StartupError

HUB_DATASET = "roneneldan/TinyStories"
HUB_VALIDATION_FILE = "TinyStories-valid.txt"
END_OF_TEXT = "<|endoftext|>"
_SEPARATOR = re.compile(r"\n\s*\n|^\s*<\|endoftext\|>\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Corpus:
    source: str  # the path, or "hub:<dataset>/<file>"
    sha256: str  # of the file's bytes
    sequences: list[str]


def split_sequences(text: str) -> list[str]:
    """Sequences separated by a blank line or by a line holding only <|endoftext|>."""
    return [part.strip() for part in _SEPARATOR.split(text) if part and part.strip()]


def read_corpus(path: str | Path) -> Corpus:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StartupError(f"Cannot read corpus file '{path}': {err.strerror}") from err
    text = data.decode("utf-8", errors="replace")
    return Corpus(str(path), hashlib.sha256(data).hexdigest(), split_sequences(text))


def fetch_validation_corpus() -> Corpus:
    """The TinyStories validation split from the Hugging Face cache, or the hub."""
    from headscope.hub import dataset_file

    path = dataset_file(
        HUB_DATASET,
        HUB_VALIDATION_FILE,
        "Pass --corpus PATH (or HEADSCOPE_CORPUS) with a text file of stories separated by "
        "blank lines or <|endoftext|> lines.",
    )
    corpus = read_corpus(path)
    return Corpus(f"hub:{HUB_DATASET}/{HUB_VALIDATION_FILE}", corpus.sha256, corpus.sequences)


def load_corpus(path: str | Path | None) -> Corpus:
    return read_corpus(path) if path else fetch_validation_corpus()
