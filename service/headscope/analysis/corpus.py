"""Analyses over many sequences: attention by POS tag, activity by POS context, quotations, and
the ranking of heads by probe score and activity lift.

Sequences are the submitted texts or a seeded draw from the server's corpus (loaded on first
use). They are tagged one by one, then run through the analysis engine in right-padded batches of
similar length: padding sits after every real token, so causal attention never lets a real
position see it, and the padded positions are dropped. Sums are kept in float64 and divided once
at the end, so a mean over a corpus equals the mean of the per-text numbers pooled by token.

Results are cached per (model fingerprint, corpus fingerprint, request) in a bounded LRU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from headscope.analysis.bootstrap import (
    METHOD,
    RESAMPLES,
    Resampler,
    finite_or_none,
    grid_interval,
    mean_of,
    support_warning,
)
from headscope.analysis.corpus_text import Corpus, load_corpus
from headscope.analysis.service import Encoded, Runtime
from headscope.cache import AnalysisCache, one_per_entry
from headscope.errors import (
    CorpusUnavailable,
    HeadscopeError,
    InputTooLong,
    InvalidRequest,
    ProbesNotLoaded,
    StartupError,
)
from headscope.model.runner import SequenceArrays
from headscope.schemas import (
    DEFAULT_N_SEQUENCES,
    ActivityByTagIntervals,
    ActivityByTagRequest,
    ActivityByTagResponse,
    AttentionByTagIntervals,
    AttentionByTagRequest,
    AttentionByTagResponse,
    CorpusSequenceQuery,
    CorpusSequenceResponse,
    CorpusSource,
    CorpusSourceRequest,
    HeadId,
    HeadRankQuery,
    HeadRankResponse,
    Interval,
    QuotesIntervals,
    QuoteSpan,
    QuotesRequest,
    QuotesResponse,
    RankedHead,
    TagAttention,
)
from headscope.settings import Settings
from headscope.tagging.base import NO_WORD

log = logging.getLogger("headscope.corpus")

OPENING_QUOTE = "``"
CLOSING_QUOTE = "''"
# A batch holds at most this many tokens (batch x longest) and this many attention cells per head
# (batch x longest²): the engine keeps [batch, head, q, k] scores for a whole layer at once.
BATCH_TOKENS = 8192
BATCH_CELLS = 1 << 21
# The quotes analysis keeps every head's pattern ([batch, layer, head, q, k], 128 per cell).
ALL_PATTERN_BATCH_CELLS = 1 << 18
PROGRESS_EVERY_SECONDS = 5.0
CORPUS_RETRY_SECONDS = 60.0
COMBINATION = (
    "combined_score = (probe percentile + lift percentile) / 2, where a head's percentile in a "
    "ranking is 1 - (rank - 1) / (heads - 1): 1 for the best head, 0 for the worst."
)

Response = TypeVar("Response", bound=BaseModel)


@dataclass(frozen=True)
class Sequences:
    """What one request analyses: encoded sequences and where they came from."""

    encoded: list[Encoded]
    source: CorpusSource

    @property
    def tokens(self) -> int:
        return sum(len(encoded) for encoded in self.encoded)


class Progress:
    """Logs how far a long request has got, at most every PROGRESS_EVERY_SECONDS."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.started = self.last_report = time.monotonic()

    def update(self, done: int, stage: str) -> None:
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_EVERY_SECONDS:
            self.last_report = now
            log.info(
                "%s: %s %d/%d sequences (%.0f%%), %.1f s so far",
                self.what,
                stage,
                done,
                self.total,
                100.0 * done / max(self.total, 1),
                now - self.started,
            )

    def finish(self, tokens: int) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed >= PROGRESS_EVERY_SECONDS:
            log.info(
                "%s: done, %d sequences, %d tokens in %.1f s",
                self.what,
                self.total,
                tokens,
                elapsed,
            )


def runs_of(tags: Sequence[str], tag: str, position: str) -> np.ndarray:
    """Boolean mask of the tokens at `position` relative to runs of consecutive `tag` tokens."""
    on = np.array([t == tag for t in tags], dtype=bool)
    if position == "on":
        return on
    mask = np.zeros_like(on)
    if position == "before":
        mask[:-1] = ~on[:-1] & on[1:]  # not tagged, and the next token starts a run
    else:
        mask[1:] = ~on[1:] & on[:-1]  # not tagged, and the previous token ends a run
    return mask


def quote_spans(
    text: str, offsets: Sequence[tuple[int, int]], words: Sequence
) -> list[tuple[int, int | None, int, int]]:
    """(opening token, closing token or None, start char, end char) of each quotation.

    Quote marks are found among the tagger's words, not the tokens' tags: GPT-2's BPE merges a
    closing mark with the punctuation before it ('."', '!"'), and such a token takes the tag of
    its first word ('.'), so the closing '' would be lost.
    """
    token_at = np.full(len(text) + 1, -1, dtype=np.int64)  # character -> token
    for index, (start, end) in enumerate(offsets):
        token_at[start:end] = index
    spans: list[tuple[int, int | None, int, int]] = []
    opening: tuple[int, int] | None = None  # (token, start char)
    for word in words:
        token = int(token_at[word.start])
        if token < 0:
            continue
        if word.tag == OPENING_QUOTE:
            if opening is not None:  # unclosed: it ends where the next one opens
                spans.append((opening[0], None, opening[1], word.start))
            opening = (token, word.start)
        elif word.tag == CLOSING_QUOTE and opening is not None:
            spans.append((opening[0], token, opening[1], word.end))
            opening = None
    if opening is not None:
        spans.append((opening[0], None, opening[1], len(text)))
    return spans


def quote_masks(
    spans: Sequence[tuple[int, int | None, int, int]], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside, outside, opening_of) over a sequence's n tokens, from its `quote_spans`: tokens
    inside a quotation and outside every one (the marks themselves are neither), and for each
    inside token the index of its opening mark (-1 elsewhere)."""
    inside = np.zeros(n, dtype=bool)
    marks = np.zeros(n, dtype=bool)
    opening_of = np.full(n, -1, dtype=np.int64)  # inside token -> its opening token
    for opening, closing, _, _ in spans:
        stop = n if closing is None else closing
        inside[opening + 1 : stop] = True
        opening_of[opening + 1 : stop] = opening
        marks[opening] = True
        if closing is not None:
            marks[closing] = True
    inside &= ~marks
    return inside, ~inside & ~marks, opening_of


def ranks(scores: np.ndarray) -> np.ndarray:
    """Competition ranks, 1 = highest score; NaN ranks last."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    return 1 + (filled[None, :] > filled[:, None]).sum(axis=1)


def _grid(values: np.ndarray | None) -> list[list[float]] | None:
    return None if values is None else values.tolist()


INTERVAL_SPEC: dict[str, Any] = {"level": 0.95, "resamples": RESAMPLES, "method": METHOD}


class CorpusAnalysis:
    """The corpus questions of the API, for one runtime and one app's settings."""

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.cache = AnalysisCache(settings.corpus_cache_size, size_of=one_per_entry)
        self._corpus: Corpus | None = None
        self._corpus_error: tuple[float, str] | None = None
        self._corpus_lock = threading.Lock()
        classes = runtime.tagger.classes
        self.known_tags = frozenset(classes) | {NO_WORD}

    # -- the corpus ----------------------------------------------------------------------------

    def corpus(self) -> Corpus:
        """The server's corpus, loaded on first use; 503 with the reason when it cannot be."""
        with self._corpus_lock:
            if self._corpus is not None:
                return self._corpus
            now = time.monotonic()
            # A failed load (e.g. the hub offline) is not retried on every request.
            if self._corpus_error and now - self._corpus_error[0] < CORPUS_RETRY_SECONDS:
                raise CorpusUnavailable(self._corpus_error[1])
            started = time.monotonic()
            try:
                corpus = load_corpus(self.settings.corpus)
            except StartupError as err:
                message = (
                    f"No corpus to draw sequences from: {err} Or send `texts` with the request."
                )
                self._corpus_error = (now, message)
                raise CorpusUnavailable(message) from err
            if not corpus.sequences:
                message = f"The corpus {corpus.source} holds no sequences. Send `texts` instead."
                self._corpus_error = (now, message)
                raise CorpusUnavailable(message)
            log.info(
                "Loaded corpus %s: %d sequences in %.1f s",
                corpus.source,
                len(corpus.sequences),
                time.monotonic() - started,
            )
            self._corpus = corpus
            return corpus

    # -- inputs --------------------------------------------------------------------------------

    def check_tag(self, tag: str, field: str) -> None:
        if tag not in self.known_tags:
            raise InvalidRequest(
                f"{field} {tag!r} is not a tag the tagger produces; tags are: "
                + ", ".join(sorted(self.known_tags)),
                detail={field: tag, "tags": sorted(self.known_tags)},
            )

    def check_size(self, request: CorpusSourceRequest) -> None:
        """The cap on sequences: 413 for too many texts, 422 for too large an n_sequences."""
        limit = self.settings.corpus_max_sequences
        error: type[HeadscopeError]
        if request.texts is not None:
            count, error, what = len(request.texts), InputTooLong, "texts holds"
        else:
            count = request.n_sequences or DEFAULT_N_SEQUENCES
            error, what = InvalidRequest, "n_sequences asks for"
        if count > limit:
            raise error(
                f"{what} {count} sequences; the limit is {limit} (corpus_max_sequences)",
                detail={"sequences": count, "corpus_max_sequences": limit},
            )

    def _check_tokens(self, tokens: int) -> None:
        limit = self.settings.corpus_max_tokens
        if tokens > limit:
            raise InputTooLong(
                f"the sequences hold {tokens} tokens in all; the limit is {limit} "
                "(corpus_max_tokens). Send fewer or shorter texts, or a smaller n_sequences.",
                detail={"tokens": tokens, "corpus_max_tokens": limit},
            )

    def _encode_truncated(self, text: str) -> tuple[Encoded, bool]:
        """A corpus sequence cut to its first max_tokens tokens (the text cut to match)."""
        encoding = self.runtime.tokenizer(text, add_special_tokens=False)
        ids, offsets = encoding.input_ids, encoding.offset_mapping
        limit = self.runtime.max_tokens
        if len(ids) <= limit:
            return Encoded(text, ids, offsets), False
        offsets = offsets[:limit]
        return Encoded(text[: offsets[-1][1]], ids[:limit], offsets), True

    def draw(self, seed: int, count: int) -> tuple[Corpus, list[int]]:
        """The corpus and the indices of `count` sequences drawn from it with `seed`."""
        corpus = self.corpus()
        if count > len(corpus.sequences):
            raise InvalidRequest(
                f"n_sequences {count} is more than the corpus's {len(corpus.sequences)} sequences",
                detail={"n_sequences": count, "corpus_sequences": len(corpus.sequences)},
            )
        return corpus, random.Random(seed).sample(range(len(corpus.sequences)), count)

    def sequence(self, query: CorpusSequenceQuery) -> CorpusSequenceResponse:
        """One sequence drawn from the corpus: the one a draw of one with this seed analyses."""
        corpus, (index,) = self.draw(query.seed, 1)
        encoded, truncated = self._encode_truncated(corpus.sequences[index])
        return CorpusSequenceResponse(
            text=encoded.text,
            index=index,
            truncated=truncated,
            seed=query.seed,
            # The name only: the server's folders are none of the client's business.
            corpus=Path(corpus.source).name,
            corpus_sha256=corpus.sha256,
        )

    def sequences(self, request: CorpusSourceRequest) -> Sequences:
        self.check_size(request)
        if request.texts is not None:
            encoded = []
            for index, text in enumerate(request.texts):
                try:
                    encoded.append(self.runtime.encode(text))
                except HeadscopeError as err:
                    detail = {"text_index": index, **(err.detail or {})}
                    raise type(err)(f"texts[{index}]: {err.message}", detail=detail) from err
            source = CorpusSource(
                kind="texts", sequences=len(encoded), tokens=sum(len(e) for e in encoded)
            )
            self._check_tokens(source.tokens)
            return Sequences(encoded, source)

        count = request.n_sequences or DEFAULT_N_SEQUENCES
        corpus, indices = self.draw(request.seed, count)
        encoded, truncated = [], 0
        for index in indices:
            sequence, was_cut = self._encode_truncated(corpus.sequences[index])
            encoded.append(sequence)
            truncated += was_cut
        source = CorpusSource(
            kind="corpus",
            sequences=count,
            tokens=sum(len(e) for e in encoded),
            corpus=corpus.source,
            corpus_sha256=corpus.sha256,
            seed=request.seed,
            indices=indices,
            truncated=truncated,
        )
        self._check_tokens(source.tokens)
        return Sequences(encoded, source)

    def _cached(
        self, kind: str, request: CorpusSourceRequest, compute: Callable[[], Response]
    ) -> tuple[Response, bool]:
        """(response, True if it came from the cache)."""
        self.check_size(request)
        corpus_sha = None
        if request.texts is None:
            corpus_sha = self.corpus().sha256
        key_material = json.dumps(
            [
                kind,
                self.runtime.weights_sha256,
                self.runtime.max_tokens,
                corpus_sha,
                request.model_dump(mode="json"),
            ],
            sort_keys=True,
        )
        key = hashlib.sha256(key_material.encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True  # type: ignore[return-value]
        response = compute()
        self.cache.put(key, response)
        return response, False

    def _tag_all(self, sequences: Sequences, progress: Progress) -> list[list[str]]:
        tags = []
        for done, encoded in enumerate(sequences.encoded, start=1):
            tags.append(self.runtime.tags(encoded))
            progress.update(done, "tagged")
        return tags

    def _run_batches(
        self,
        sequences: Sequences,
        progress: Progress,
        cell_budget: int = BATCH_CELLS,
        **kept,
    ) -> Iterator[tuple[list[int], list[SequenceArrays]]]:
        """(indices, their results) per batch of similar length, shortest first."""
        done = 0
        for batch, results in self.runtime.runner.batches(
            [encoded.ids for encoded in sequences.encoded],
            max_batch_tokens=BATCH_TOKENS,
            max_batch_cells=cell_budget,
            longest_first=False,
            **kept,
        ):
            yield batch, results
            done += len(batch)
            progress.update(done, "analysed")

    # -- attention by tag ----------------------------------------------------------------------

    def attention_by_tag(self, request: AttentionByTagRequest) -> AttentionByTagResponse:
        return self.attention_by_tag_cached(request)[0]

    def attention_by_tag_cached(
        self, request: AttentionByTagRequest
    ) -> tuple[AttentionByTagResponse, bool]:
        self.runtime.check_head(request.layer, request.head)
        direction = "from" if request.from_tag is not None else "to"
        tag = request.from_tag if request.from_tag is not None else request.to_tag
        assert tag is not None
        self.check_tag(tag, f"{direction}_tag")
        return self._cached(
            "attention-by-tag",
            request,
            lambda: self._attention_by_tag(request, direction, tag),
        )

    def _attention_by_tag(
        self, request: AttentionByTagRequest, direction: str, tag: str
    ) -> AttentionByTagResponse:
        layer, head = request.layer, request.head
        sequences = self.sequences(request)
        progress = Progress(
            f"attention-by-tag L{layer}H{head} {direction} {tag}", len(sequences.encoded)
        )
        tags = self._tag_all(sequences, progress)
        vocabulary = sorted({t for sequence_tags in tags for t in sequence_tags} | {tag})
        tag_index = {t: i for i, t in enumerate(vocabulary)}
        n_tags = len(vocabulary)
        # [query tag, key tag]: summed attention mass, and the same under uniform attention.
        mass = np.zeros((n_tags, n_tags))
        uniform_mass = np.zeros((n_tags, n_tags))
        counts = np.zeros(n_tags)  # tokens per tag
        # Per sequence (in request order), for the intervals: attention mass by query and key
        # tag, and tokens per tag.
        masses = np.zeros((len(sequences.encoded), n_tags, n_tags))  # [sequence, q tag, k tag]
        tag_counts = np.zeros((len(sequences.encoded), n_tags))  # [sequence, tag]

        for batch, results in self._run_batches(
            sequences, progress, last_layer=layer, patterns=[(layer, head)]
        ):
            for index, result in zip(batch, results, strict=True):
                pattern = result.patterns[(layer, head)].astype(np.float64)  # [q, k]
                n = len(pattern)
                visible = self.runtime.runner.visible(layer, n).astype(np.float64)  # [q, k]
                uniform = visible / visible.sum(axis=-1, keepdims=True)  # [q, k]
                one_hot = np.eye(n_tags)[[tag_index[t] for t in tags[index]]]  # [token, tag]
                this_mass = one_hot.T @ (pattern @ one_hot)
                mass += this_mass
                uniform_mass += one_hot.T @ (uniform @ one_hot)
                counts += one_hot.sum(axis=0)
                masses[index] = this_mass
                tag_counts[index] = one_hot.sum(axis=0)

        chosen = tag_index[tag]
        rows = tag_attention_rows(direction, chosen, tag_index, mass, uniform_mass, counts)
        resampler = Resampler.of(len(masses), request.seed)
        if direction == "from":
            low, high = resampler.interval(mean_of, masses[:, chosen, :], tag_counts[:, chosen])
        else:
            low, high = resampler.interval(mean_of, masses[:, :, chosen], tag_counts)
        ci = AttentionByTagIntervals(
            **INTERVAL_SPEC,
            attention={
                row.tag: Interval(
                    low=finite_or_none(low[tag_index[row.tag]]),
                    high=finite_or_none(high[tag_index[row.tag]]),
                )
                for row in rows
            },
        )
        with_tag = int((tag_counts[:, chosen] > 0).sum())
        progress.finish(sequences.tokens)
        return AttentionByTagResponse(
            layer=layer,
            head=head,
            direction=direction,  # type: ignore[arg-type]
            tag=tag,
            tag_tokens=int(counts[chosen]),
            rows=rows,
            ci=ci if rows else None,
            warning=support_warning(int(counts[chosen]), with_tag, f"{tag} ({direction})"),
            source=sequences.source,
        )

    # -- activity by tag -----------------------------------------------------------------------

    def activity_by_tag(self, request: ActivityByTagRequest) -> ActivityByTagResponse:
        return self.activity_by_tag_cached(request)[0]

    def activity_by_tag_cached(
        self, request: ActivityByTagRequest
    ) -> tuple[ActivityByTagResponse, bool]:
        self.check_tag(request.tag, "tag")
        return self._cached("activity-by-tag", request, lambda: self._activity_by_tag(request))

    def _activity_by_tag(self, request: ActivityByTagRequest) -> ActivityByTagResponse:
        sequences = self.sequences(request)
        progress = Progress(
            f"activity-by-tag {request.position} {request.tag}", len(sequences.encoded)
        )
        tags = self._tag_all(sequences, progress)
        g = self.runtime.geometry
        sum_at = np.zeros((g.n_layers, g.n_heads))
        sum_all = np.zeros((g.n_layers, g.n_heads))
        at_count = tag_count = 0
        # Per sequence (in request order), for the intervals: sums at the position and overall
        # ([sequence, layer, head]), and their token counts.
        sequence_at = np.zeros((len(sequences.encoded), g.n_layers, g.n_heads))
        sequence_all = np.zeros_like(sequence_at)
        sequence_at_count = np.zeros(len(sequences.encoded))
        sequence_count = np.zeros(len(sequences.encoded))
        for batch, results in self._run_batches(sequences, progress):
            for index, result in zip(batch, results, strict=True):
                activity = result.activity.astype(np.float64)  # [layer, head, token]
                n = activity.shape[-1]
                mask = runs_of(tags[index], request.tag, request.position)
                this_at = activity[:, :, mask].sum(axis=-1)
                this_all = activity.sum(axis=-1)
                sum_at += this_at
                sum_all += this_all
                at_count += int(mask.sum())
                sequence_at[index] = this_at
                sequence_all[index] = this_all
                sequence_at_count[index] = mask.sum()
                sequence_count[index] = n
                tag_count += sum(t == request.tag for t in tags[index])
        mean_all = sum_all / sequences.tokens
        mean_at = sum_at / at_count if at_count else None
        ci = None
        if at_count:
            resampler = Resampler.of(len(sequences.encoded), request.seed)
            ci = ActivityByTagIntervals(
                **INTERVAL_SPEC,
                mean_at_position=grid_interval(
                    resampler.interval(mean_of, sequence_at, sequence_at_count)
                ),
                lift=grid_interval(
                    resampler.interval(
                        lambda a, na, o, no: mean_of(a, na) / mean_of(o, no),
                        sequence_at,
                        sequence_at_count,
                        sequence_all,
                        sequence_count,
                    )
                ),
            )
        with_position = int((sequence_at_count > 0).sum())
        progress.finish(sequences.tokens)
        return ActivityByTagResponse(
            tag=request.tag,
            position=request.position,
            tag_tokens=tag_count,
            positions=at_count,
            tokens=sequences.tokens,
            mean_at_position=_grid(mean_at),
            mean_overall=mean_all.tolist(),
            lift=_grid(None if mean_at is None else mean_at / mean_all),
            ci=ci,
            warning=support_warning(
                at_count, with_position, f"the mean {request.position} {request.tag}"
            ),
            source=sequences.source,
        )

    # -- quotations ----------------------------------------------------------------------------

    def quotes(self, request: QuotesRequest) -> QuotesResponse:
        return self.quotes_cached(request)[0]

    def quotes_cached(self, request: QuotesRequest) -> tuple[QuotesResponse, bool]:
        return self._cached("quotes", request, lambda: self._quotes(request))

    def _quotes(self, request: QuotesRequest) -> QuotesResponse:
        sequences = self.sequences(request)
        progress = Progress("quotes", len(sequences.encoded))
        spans_by_sequence = []
        for done, encoded in enumerate(sequences.encoded, start=1):
            words = self.runtime.tagger.word_spans(encoded.text)
            spans_by_sequence.append(quote_spans(encoded.text, encoded.offsets, words))
            progress.update(done, "tagged")

        g = self.runtime.geometry
        sum_inside = np.zeros((g.n_layers, g.n_heads))
        sum_outside = np.zeros((g.n_layers, g.n_heads))
        sum_to_opening = np.zeros((g.n_layers, g.n_heads))
        inside_count = outside_count = 0
        spans: list[QuoteSpan] = []
        for index, found in enumerate(spans_by_sequence):
            n = len(sequences.encoded[index])
            for opening, closing, start, end in found:
                stop = n if closing is None else closing
                spans.append(
                    QuoteSpan(
                        sequence=index,
                        opening_token=opening,
                        closing_token=closing,
                        start=start,
                        end=end,
                        inside_tokens=max(stop - opening - 1, 0),
                    )
                )
        # Per sequence, for the intervals: [sequence, layer, head] sums and [sequence] counts.
        shape = (len(sequences.encoded), g.n_layers, g.n_heads)
        sequence_inside, sequence_outside = np.zeros(shape), np.zeros(shape)
        sequence_to_opening = np.zeros(shape)
        sequence_inside_count = np.zeros(len(sequences.encoded))
        sequence_outside_count = np.zeros(len(sequences.encoded))
        # Only sequences with a quotation need every head's pattern; the rest need activity.
        with_quotes = [i for i, found in enumerate(spans_by_sequence) if found]
        for batch, results in self._run_batches(
            sequences, progress, ALL_PATTERN_BATCH_CELLS, all_patterns=bool(with_quotes)
        ):
            for index, result in zip(batch, results, strict=True):
                activity = result.activity.astype(np.float64)  # [layer, head, token]
                inside, outside, opening_of = quote_masks(
                    spans_by_sequence[index], activity.shape[-1]
                )
                sequence_inside[index] = activity[:, :, inside].sum(axis=-1)
                sequence_outside[index] = activity[:, :, outside].sum(axis=-1)
                sequence_inside_count[index] = inside.sum()
                sequence_outside_count[index] = outside.sum()
                sum_inside += sequence_inside[index]
                sum_outside += sequence_outside[index]
                inside_count += int(inside.sum())
                outside_count += int(outside.sum())
                if inside.any():
                    queries = np.flatnonzero(inside)
                    keys = opening_of[queries]
                    assert result.all_patterns is not None
                    patterns = result.all_patterns  # [layer, head, q, k]
                    weights = patterns[:, :, queries, keys].astype(np.float64)  # [l, h, inside]
                    sequence_to_opening[index] = weights.sum(axis=-1)
                    sum_to_opening += sequence_to_opening[index]

        mean_inside = sum_inside / inside_count if inside_count else None
        mean_outside = sum_outside / outside_count if outside_count else None
        ratio = (
            mean_inside / mean_outside
            if mean_inside is not None and mean_outside is not None
            else None
        )
        ci = None
        if inside_count and outside_count:
            resampler = Resampler.of(len(sequences.encoded), request.seed)
            ci = QuotesIntervals(
                **INTERVAL_SPEC,
                mean_inside=grid_interval(
                    resampler.interval(mean_of, sequence_inside, sequence_inside_count)
                ),
                mean_outside=grid_interval(
                    resampler.interval(mean_of, sequence_outside, sequence_outside_count)
                ),
                ratio=grid_interval(
                    resampler.interval(
                        lambda i, ni, o, no: mean_of(i, ni) / mean_of(o, no),
                        sequence_inside,
                        sequence_inside_count,
                        sequence_outside,
                        sequence_outside_count,
                    )
                ),
                attention_to_opening=grid_interval(
                    resampler.interval(mean_of, sequence_to_opening, sequence_inside_count)
                ),
            )
        with_quotes_inside = int((sequence_inside_count > 0).sum())
        progress.finish(sequences.tokens)
        return QuotesResponse(
            spans=spans,
            inside_tokens=inside_count,
            outside_tokens=outside_count,
            mean_inside=_grid(mean_inside),
            mean_outside=_grid(mean_outside),
            ratio=_grid(ratio),
            attention_to_opening=_grid(sum_to_opening / inside_count if inside_count else None),
            ci=ci,
            warning=support_warning(inside_count, with_quotes_inside, "the mean inside quotations"),
            source=sequences.source,
        )

    # -- head ranking --------------------------------------------------------------------------

    def rank_heads(self, query: HeadRankQuery) -> HeadRankResponse:
        probes = self.runtime.probes
        if probes is None:
            raise ProbesNotLoaded(self.runtime.probes_reason or "No probe run loaded.")
        vectors = list(getattr(probes, "vectors", ()))
        if vectors and query.vector not in vectors:
            raise InvalidRequest(
                f"vector {query.vector!r} was not probed; the probe run has: {', '.join(vectors)}",
                detail={"vector": query.vector, "vectors": vectors},
            )
        probe_tags = list(getattr(probes, "tags", ()))
        if probe_tags and query.tag not in probe_tags:
            raise InvalidRequest(
                f"tag {query.tag!r} was not probed; the probe run has: {', '.join(probe_tags)}",
                detail={"tag": query.tag, "tags": probe_tags},
            )
        self.check_tag(query.tag, "tag")
        scores, support = probes.scores(query.vector, query.tag, query.metric)
        probe_scores = np.asarray(scores, dtype=np.float64)  # [layer, head]

        activity = self.activity_by_tag(
            ActivityByTagRequest(
                tag=query.tag,
                position=query.position,
                n_sequences=query.n_sequences,
                seed=query.seed,
            )
        )
        if activity.lift is None:
            raise InvalidRequest(
                f"no token is {query.position} {query.tag} in the {query.n_sequences} sequences "
                "drawn, so activity lift is undefined; draw more with n_sequences.",
                detail={"tag": query.tag, "position": query.position},
            )
        lift = np.asarray(activity.lift)  # [layer, head]
        mean_at = np.asarray(activity.mean_at_position)
        mean_all = np.asarray(activity.mean_overall)

        n_layers, n_heads = lift.shape
        if probe_scores.shape != lift.shape:
            raise InvalidRequest(
                f"the probe run's scores have shape {probe_scores.shape}, the model has "
                f"{lift.shape} heads",
            )
        probe_flat, lift_flat = probe_scores.ravel(), lift.ravel()
        probe_rank, lift_rank = ranks(probe_flat), ranks(lift_flat)
        n = probe_flat.size
        spread = max(n - 1, 1)
        combined = ((1 - (probe_rank - 1) / spread) + (1 - (lift_rank - 1) / spread)) / 2
        probe_key = np.where(np.isnan(probe_flat), -np.inf, probe_flat)
        order = sorted(range(n), key=lambda i: (-combined[i], -probe_key[i], -lift_flat[i], i))

        def head_id(i: int) -> HeadId:
            return HeadId(layer=i // n_heads, head=i % n_heads)

        heads = [
            RankedHead(
                layer=i // n_heads,
                head=i % n_heads,
                probe_score=None if np.isnan(probe_flat[i]) else float(probe_flat[i]),
                probe_rank=int(probe_rank[i]),
                lift=float(lift_flat[i]),
                lift_rank=int(lift_rank[i]),
                mean_at_position=float(mean_at.ravel()[i]),
                mean_overall=float(mean_all.ravel()[i]),
                combined_score=float(combined[i]),
                combined_rank=position,
            )
            for position, i in enumerate(order, start=1)
        ]
        by_probe = sorted(range(n), key=lambda i: (probe_rank[i], i))
        by_lift = sorted(range(n), key=lambda i: (lift_rank[i], i))
        limit = query.limit or n
        try:
            support_count = None if support is None else int(support)
        except (TypeError, ValueError):
            support_count = None
        return HeadRankResponse(
            tag=query.tag,
            vector=query.vector,
            metric=query.metric,
            position=query.position,
            probe_run=str(getattr(probes, "run_id", "")),
            probe_support=support_count,
            combination=COMBINATION,
            heads=heads[:limit],
            by_probe=[head_id(i) for i in by_probe[:limit]],
            by_lift=[head_id(i) for i in by_lift[:limit]],
            source=activity.source,
        )


def tag_attention_rows(
    direction: str,
    chosen: int,
    tag_index: dict[str, int],
    mass: np.ndarray,
    uniform_mass: np.ndarray,
    counts: np.ndarray,
) -> list[TagAttention]:
    """One row per tag that `chosen` attends to ("from") or that attends to it ("to"): the mean
    attention mass per query token and what uniform attention would give, strongest first.
    `mass` and `uniform_mass` are [query tag, key tag] sums; `counts` the query tokens per tag."""
    rows = []
    if direction == "from":
        queries = int(counts[chosen])
        if queries:
            for key_tag, key in tag_index.items():
                if uniform_mass[chosen, key] > 0:
                    rows.append(
                        TagAttention(
                            tag=key_tag,
                            attention=float(mass[chosen, key] / queries),
                            frequency=float(uniform_mass[chosen, key] / queries),
                            query_tokens=queries,
                        )
                    )
    else:
        for query_tag, query in tag_index.items():
            queries = int(counts[query])
            if queries:
                rows.append(
                    TagAttention(
                        tag=query_tag,
                        attention=float(mass[query, chosen] / queries),
                        frequency=float(uniform_mass[query, chosen] / queries),
                        query_tokens=queries,
                    )
                )
    rows.sort(key=lambda row: (-row.attention, row.tag))
    return rows
