"""The paper's published probe scores, shipped with the package (paper_reference.json).

The file is the authors' per-head results on the real TinyStories-1M, compacted: per vector (key,
query) the tags, the held-out support of each tag, F1 per layer, head and tag, accuracy and
macro-F1 per head. Its `provenance` says where it comes from; nothing is read from outside the
package at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

REFERENCE_FILE = "paper_reference.json"
PAPER_MODEL = "roneneldan/TinyStories-1M"


@dataclass(frozen=True)
class PaperVector:
    tags: list[str]
    support: dict[str, int]
    f1: np.ndarray  # [layer, head, tag]
    accuracy: np.ndarray  # [layer, head]
    macro_f1: np.ndarray  # [layer, head]

    def f1_of(self, tag: str) -> np.ndarray | None:
        """[layer, head] F1 of `tag`, or None when the paper has no such class."""
        if tag not in self.tags:
            return None
        return self.f1[:, :, self.tags.index(tag)]


@dataclass(frozen=True)
class PaperReference:
    about: str
    provenance: dict[str, Any]
    vectors: dict[str, PaperVector]


@cache
def paper_reference() -> PaperReference:
    raw = json.loads(resources.files(__package__).joinpath(REFERENCE_FILE).read_text("utf-8"))
    vectors = {
        name: PaperVector(
            tags=list(data["tags"]),
            support={tag: int(n) for tag, n in zip(data["tags"], data["support"], strict=True)},
            f1=np.asarray(data["f1"], dtype=np.float64),
            accuracy=np.asarray(data["accuracy"], dtype=np.float64),
            macro_f1=np.asarray(data["macro_f1"], dtype=np.float64),
        )
        for name, data in raw["vectors"].items()
    }
    return PaperReference(raw["about"], raw["provenance"], vectors)
