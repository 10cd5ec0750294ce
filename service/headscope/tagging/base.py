"""What the service needs from a tagger, whichever process it tags in.

Two implementations: PosTagger (headscope.tagging.nltk_tagger) tags in the calling process;
TaggerProcess (headscope.tagging.child) is a transport to a PosTagger in a child process.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

# The tag of a model token that overlaps no word (whitespace, or characters no word covers).
NO_WORD = "NONE"

Alignment = Literal["overlap", "paper"]

# "ready": tagging. "starting": loading, at first or as a replacement. "unresponsive": it stopped
# answering and is being replaced. "stopped": closed with the server.
TaggerHealth = Literal["ready", "starting", "unresponsive", "stopped"]


@dataclass(frozen=True)
class WordSpan:
    start: int
    end: int
    tag: str


@runtime_checkable
class Tagger(Protocol):
    """Penn Treebank tags for the words of a text and for the model tokens over it."""

    identity: dict[str, str]  # what tags: tagger, its weights' hash, splitter, nltk version

    @property
    def classes(self) -> set[str]:
        """Every tag the tagger can give a word."""
        ...

    @property
    def health(self) -> TaggerHealth:
        """Whether requests can be tagged now."""
        ...

    def tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> list[str]:
        """One tag per model token, given the tokens' character offsets into `text`."""
        ...

    def submit_tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> Future[list[str]]:
        """tag_tokens's answer as a future, to wait for without holding a thread meanwhile.
        A tagger that cannot take the request raises NotReady (503) at once or in the future."""
        ...

    def prefetch(self, text: str) -> bool:
        """A hint that `text` will be tagged soon; never blocks, never fails. True if taken."""
        ...

    def word_spans(self, text: str) -> list[WordSpan]:
        """The tagged words of `text`, sentence by sentence."""
        ...

    def close(self) -> None:
        """Stop what the tagger started."""
        ...
