"""A corpus file read lazily, a shard of sequences at a time.

The sequences are exactly those of `headscope.analysis.corpus_text.split_sequences` (blank lines
or `<|endoftext|>` lines separate them), found line by line so the file is never held whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from headscope.analysis.corpus_text import END_OF_TEXT, HUB_DATASET, HUB_VALIDATION_FILE
from headscope.errors import StartupError

HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Shard:
    index: int
    first_sequence: int  # index in the corpus of the shard's first sequence
    texts: list[str]


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    label: str  # the path, or "hub:<dataset>/<file>", as the corpus endpoints name it
    sha256: str  # of the file's bytes

    @classmethod
    def open(cls, corpus: str) -> CorpusFile:
        """`corpus` is a path, or "hub" for the TinyStories validation split (cache or hub)."""
        if corpus == "hub":
            from headscope.hub import dataset_file

            path = Path(
                dataset_file(
                    HUB_DATASET,
                    HUB_VALIDATION_FILE,
                    "Pass --corpus PATH with a text file of stories separated by blank lines or "
                    "<|endoftext|> lines.",
                )
            )
            label = f"hub:{HUB_DATASET}/{HUB_VALIDATION_FILE}"
        else:
            path, label = Path(corpus), corpus
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while chunk := file.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as err:
            raise StartupError(f"Cannot read corpus file '{path}': {err.strerror}") from err
        return cls(path, label, digest.hexdigest())

    def sequences(self) -> Iterator[str]:
        """The corpus's sequences in order, one line of the file in memory at a time."""
        lines: list[str] = []
        with self.path.open("rb") as file:
            for raw in file:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                stripped = line.strip()
                if stripped and stripped != END_OF_TEXT:
                    lines.append(line)
                    continue
                text = "\n".join(lines).strip()
                lines = []
                if text:
                    yield text
        text = "\n".join(lines).strip()
        if text:
            yield text

    def shards(self, shard_sequences: int) -> Iterator[Shard]:
        """Consecutive shards of `shard_sequences` sequences (the last may hold fewer)."""
        texts: list[str] = []
        index = first = 0
        for number, text in enumerate(self.sequences()):
            if not texts:
                first = number
            texts.append(text)
            if len(texts) == shard_sequences:
                yield Shard(index, first, texts)
                index, texts = index + 1, []
        if texts:
            yield Shard(index, first, texts)
