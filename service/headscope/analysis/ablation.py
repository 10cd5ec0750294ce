"""Does a head matter? Ablation of heads on one text or over a corpus, and the standard per-head
scores (induction, previous token, duplicate token) on repeated random tokens.

Probes and activity are correlational; ablation is the causal counterpart: the model's loss on
the actual next token, with chosen heads' z replaced before W_O (headscope.model.ablation), minus
its loss without. Grouped by the POS tag of the *next* token, it says which predictions a head
serves (does ablating L2H0 hurt predicting a closing quote?).

Mean ablation replaces z by the head's mean over a seeded draw of the server's corpus, computed
once per (weights, corpus) and kept with the corpus's sha256.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headscope.analysis.bootstrap import (
    Resampler,
    finite_or_none,
    grid_interval,
    mean_of,
    support_warning,
)
from headscope.analysis.corpus import (
    ALL_PATTERN_BATCH_CELLS,
    BATCH_TOKENS,
    INTERVAL_SPEC,
    CorpusAnalysis,
    Progress,
)
from headscope.cache import AnalysisCache, one_per_entry
from headscope.errors import InvalidRequest
from headscope.schemas import (
    HEAD_SCORES_METHOD,
    AblateRequest,
    AblateResponse,
    AblationMeans,
    AblationTagRow,
    CorpusAblationIntervals,
    CorpusAblationRequest,
    CorpusAblationResponse,
    HeadRef,
    HeadScoresQuery,
    HeadScoresResponse,
    Interval,
)

log = logging.getLogger("headscope.ablation")

# The mean z of `mean` ablation: over this many corpus sequences drawn with this seed.
MEAN_SEQUENCES = 100
MEAN_SEED = 0


def mean_sample(n_sequences: int) -> list[int]:
    """Indices of the corpus sequences the mean z is taken over (the draw of
    `CorpusAnalysis.draw(MEAN_SEED, ...)`), for a corpus of `n_sequences`."""
    return random.Random(MEAN_SEED).sample(range(n_sequences), min(MEAN_SEQUENCES, n_sequences))


def mean_z_of(runtime, id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
    """Every head's mean z over the tokens of `id_lists`, [layer, head, d_head] float32, and
    the tokens counted."""
    total, tokens = runtime.runner.z_sums(id_lists)
    return (total / tokens).astype(np.float32), tokens


class AblationAnalysis:
    """The ablation and head-score questions of the API, on a corpus analysis (its corpus,
    sequence drawing, limits and result cache)."""

    def __init__(self, corpus: CorpusAnalysis) -> None:
        self.corpus = corpus
        self.runtime = corpus.runtime
        self.means = AnalysisCache(4, size_of=one_per_entry)

    # -- inputs --------------------------------------------------------------------------------

    def _heads(self, heads: Sequence[HeadRef]) -> list[tuple[int, int]]:
        for ref in heads:
            self.runtime.check_head(ref.layer, ref.head)
        return [(ref.layer, ref.head) for ref in heads]

    def mean_z(self) -> tuple[np.ndarray, AblationMeans]:
        """Every head's mean z over MEAN_SEQUENCES corpus sequences, [layer, head, d_head], and
        where it comes from; computed once per weights and corpus."""
        corpus = self.corpus.corpus()
        count = min(MEAN_SEQUENCES, len(corpus.sequences))
        key = (
            self.runtime.weights_sha256,
            corpus.sha256,
            MEAN_SEED,
            count,
            self.runtime.max_tokens,
        )
        cached = self.means.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        _, indices = self.corpus.draw(MEAN_SEED, count)
        id_lists = [self.corpus._encode_truncated(corpus.sequences[i])[0].ids for i in indices]
        mean, tokens = mean_z_of(self.runtime, id_lists)
        means = AblationMeans(
            # The name only, as GET /v1/corpus/sequence gives it: not the server's folders.
            corpus=Path(corpus.source).name,
            corpus_sha256=corpus.sha256,
            seed=MEAN_SEED,
            sequences=count,
            tokens=tokens,
        )
        result = (mean, means)
        self.means.put(key, result)
        log.info("Mean z of every head over %d corpus sequences (%d tokens)", count, tokens)
        return result

    def _mean_z_for(self, mode: str) -> tuple[np.ndarray | None, AblationMeans | None]:
        return self.mean_z() if mode == "mean" else (None, None)

    # -- one text ------------------------------------------------------------------------------

    def ablate(self, request: AblateRequest) -> AblateResponse:
        heads = self._heads(request.heads)
        key = (
            self.runtime.weights_sha256,
            "ablate",
            request.text,
            tuple(heads),
            request.mode,
            request.top_k,
        )
        payload = self.runtime.cache.get_or_compute(key, lambda: self._ablate(request, heads))
        return AblateResponse.model_validate(payload)

    def _ablate(self, request: AblateRequest, heads: list[tuple[int, int]]) -> dict:
        runtime = self.runtime
        encoded = runtime.encode(request.text)
        mean_z, means = self._mean_z_for(request.mode)
        tags = runtime.tags(encoded)
        result = runtime.runner.ablate(encoded.ids, heads, mean_z=mean_z, top_k=request.top_k)
        decode = runtime.tokenizer.decode

        def top(variant: int, position: int) -> list[dict]:
            return [
                {"id": int(token), "text": decode([int(token)]), "prob": float(prob)}
                for token, prob in zip(
                    result.top_ids[variant, position],
                    result.top_probs[variant, position],
                    strict=True,
                )
            ]

        predictions: list[dict] = []
        for position in range(len(encoded) - 1):
            next_index = position + 1
            start, end = encoded.offsets[next_index]
            before, after = float(result.loss[0, position]), float(result.loss[1, position])
            predictions.append(
                {
                    "index": position,
                    "next_id": encoded.ids[next_index],
                    "next_text": encoded.text[start:end],
                    "next_tag": tags[next_index],
                    "loss_before": before,
                    "loss_after": after,
                    "loss_change": after - before,
                    "logit_before": float(result.logit[0, position]),
                    "logit_after": float(result.logit[1, position]),
                    "prob_before": float(result.prob[0, position]),
                    "prob_after": float(result.prob[1, position]),
                    "top_before": top(0, position),
                    "top_after": top(1, position),
                }
            )
        by_tag: dict[str, list[dict]] = {}
        for prediction in predictions:
            by_tag.setdefault(prediction["next_tag"], []).append(prediction)
        rows: list[dict] = [
            {
                "tag": tag,
                "tokens": len(group),
                "mean_loss_before": float(np.mean([p["loss_before"] for p in group])),
                "mean_loss_after": float(np.mean([p["loss_after"] for p in group])),
                "mean_loss_change": float(np.mean([p["loss_change"] for p in group])),
            }
            for tag, group in by_tag.items()
        ]
        rows.sort(key=lambda row: (-row["mean_loss_change"], row["tag"]))
        return {
            "heads": [{"layer": layer, "head": head} for layer, head in heads],
            "mode": request.mode,
            "means": None if means is None else means.model_dump(),
            "tokens": runtime.token_dicts(encoded, tags),
            "predictions": predictions,
            "mean_loss_before": float(result.loss[0].mean()) if predictions else None,
            "mean_loss_after": float(result.loss[1].mean()) if predictions else None,
            "by_next_tag": rows,
        }

    # -- over a corpus -------------------------------------------------------------------------

    def corpus_ablation_cached(
        self, request: CorpusAblationRequest
    ) -> tuple[CorpusAblationResponse, bool]:
        if request.heads is not None:
            self._heads(request.heads)
        if request.tag is not None:
            self.corpus.check_tag(request.tag, "tag")
        return self.corpus._cached("ablation", request, lambda: self._corpus_ablation(request))

    def corpus_ablation(self, request: CorpusAblationRequest) -> CorpusAblationResponse:
        return self.corpus_ablation_cached(request)[0]

    def _corpus_ablation(self, request: CorpusAblationRequest) -> CorpusAblationResponse:
        sequences = self.corpus.sequences(request)
        what = "all heads" if request.all_heads else f"{len(request.heads or [])} head(s)"
        progress = Progress(f"ablation of {what} ({request.mode})", len(sequences.encoded))
        tags = self.corpus._tag_all(sequences, progress)
        mean_z, means = self._mean_z_for(request.mode)
        resampler = Resampler.of(len(sequences.encoded), request.seed)
        if request.all_heads:
            response = self._grid(request, sequences, tags, mean_z, resampler, progress)
        else:
            response = self._by_tag(request, sequences, tags, mean_z, resampler, progress)
        progress.finish(sequences.tokens)
        return response.model_copy(update={"means": means})

    def _by_tag(self, request, sequences, tags, mean_z, resampler, progress):
        heads = self._heads(request.heads)
        next_tags = [sequence_tags[1:] for sequence_tags in tags]
        vocabulary = sorted({t for seq in next_tags for t in seq})
        if request.tag is not None:
            vocabulary = [request.tag]
        index_of = {tag: i for i, tag in enumerate(vocabulary)}
        n = len(sequences.encoded)
        before = np.zeros((n, len(vocabulary)))  # [sequence, next tag]: summed losses
        change = np.zeros((n, len(vocabulary)))
        counts = np.zeros((n, len(vocabulary)))
        predictions = 0
        for index, encoded in enumerate(sequences.encoded):
            if len(encoded) >= 2:
                result = self.runtime.runner.ablate(encoded.ids, heads, mean_z=mean_z)
                for position, tag in enumerate(next_tags[index]):
                    column = index_of.get(tag)
                    if column is None:
                        continue
                    before[index, column] += result.loss[0, position]
                    change[index, column] += result.loss[1, position] - result.loss[0, position]
                    counts[index, column] += 1
                    predictions += 1
            progress.update(index + 1, "ablated")
        low, high = resampler.interval(mean_of, change, counts)
        rows, intervals = [], {}
        for tag, column in index_of.items():
            tokens = int(counts[:, column].sum())
            if not tokens:
                continue
            mean_change = change[:, column].sum() / tokens
            mean_before = before[:, column].sum() / tokens
            interval = Interval(low=finite_or_none(low[column]), high=finite_or_none(high[column]))
            intervals[tag] = interval
            rows.append(
                AblationTagRow(
                    tag=tag,
                    tokens=tokens,
                    mean_loss_before=float(mean_before),
                    mean_loss_after=float(mean_before + mean_change),
                    mean_loss_change=float(mean_change),
                    ci=interval,
                )
            )
        rows.sort(key=lambda row: (-row.mean_loss_change, row.tag))
        warning = None
        if request.tag is not None:
            with_tag = int((counts[:, 0] > 0).sum())
            warning = support_warning(int(counts.sum()), with_tag, f"predictions of {request.tag}")
        return CorpusAblationResponse(
            mode=request.mode,
            heads=request.heads,
            tag=request.tag,
            by_next_tag=rows,
            predictions=predictions,
            ci=CorpusAblationIntervals(**INTERVAL_SPEC, mean_loss_change=intervals),
            warning=warning,
            source=sequences.source,
        )

    def _grid(self, request, sequences, tags, mean_z, resampler, progress):
        g = self.runtime.geometry
        every_head = [(layer, head) for layer in range(g.n_layers) for head in range(g.n_heads)]
        n = len(sequences.encoded)
        change = np.zeros((n, g.n_layers, g.n_heads))  # [sequence, layer, head]: summed changes
        counts = np.zeros(n)
        before = 0.0
        for index, encoded in enumerate(sequences.encoded):
            positions = [
                position for position, tag in enumerate(tags[index][1:]) if tag == request.tag
            ]
            if positions:
                clean, ablated = self.runtime.runner.single_head_losses(
                    encoded.ids, every_head, mean_z=mean_z, positions=positions
                )  # [position], [head, position]
                change[index] = (ablated - clean).sum(axis=1).reshape(g.n_layers, g.n_heads)
                counts[index] = len(positions)
                before += float(clean.sum())
            progress.update(index + 1, "ablated")
        predictions = int(counts.sum())
        grid = ci = None
        if predictions:
            grid = [[finite_or_none(v) for v in row] for row in change.sum(axis=0) / predictions]
            ci = CorpusAblationIntervals(
                **INTERVAL_SPEC, grid=grid_interval(resampler.interval(mean_of, change, counts))
            )
        return CorpusAblationResponse(
            mode=request.mode,
            heads=None,
            tag=request.tag,
            predictions=predictions,
            mean_loss_before=before / predictions if predictions else None,
            grid=grid,
            ci=ci,
            warning=support_warning(
                predictions, int((counts > 0).sum()), f"predictions of {request.tag}"
            ),
            source=sequences.source,
        )

    # -- per-head scores -----------------------------------------------------------------------

    def head_scores(self, query: HeadScoresQuery) -> HeadScoresResponse:
        runtime = self.runtime
        if 2 * query.length > runtime.max_tokens:
            raise InvalidRequest(
                f"length {query.length} repeated is {2 * query.length} tokens; the limit is "
                f"{runtime.max_tokens} (max_tokens)",
                detail={"length": query.length, "max_tokens": runtime.max_tokens},
            )
        key = (
            runtime.weights_sha256,
            "head-scores",
            query.kind,
            query.seed,
            query.n_sequences,
            query.length,
        )
        scores = runtime.cache.get_or_compute(key, lambda: {"scores": self._head_scores(query)})
        g = runtime.geometry
        return HeadScoresResponse(
            kind=query.kind,
            scores=scores["scores"].tolist(),
            n_layers=g.n_layers,
            n_heads=g.n_heads,
            seed=query.seed,
            n_sequences=query.n_sequences,
            length=query.length,
            method=HEAD_SCORES_METHOD,
        )

    def _head_scores(self, query: HeadScoresQuery) -> np.ndarray:
        g = self.runtime.geometry
        length = query.length
        rng = np.random.default_rng([query.seed, query.n_sequences, length])
        vocab = self.runtime.model.config.vocab_size
        halves = rng.integers(0, vocab, size=(query.n_sequences, length))
        sequences = [list(map(int, half)) * 2 for half in halves]
        if query.kind == "induction":
            queries = np.arange(length + 1, 2 * length)
            keys = queries - length + 1
        elif query.kind == "duplicate_token":
            queries = np.arange(length, 2 * length)
            keys = queries - length
        else:
            queries = np.arange(1, 2 * length)
            keys = queries - 1
        total = np.zeros((g.n_layers, g.n_heads))
        for _, results in self.runtime.runner.batches(
            sequences,
            max_batch_tokens=BATCH_TOKENS,
            max_batch_cells=ALL_PATTERN_BATCH_CELLS,
            all_patterns=True,
        ):
            for result in results:
                patterns = result.all_patterns  # [layer, head, q, k]
                assert patterns is not None
                total += patterns[:, :, queries, keys].astype(np.float64).mean(axis=-1)
        scores = total / query.n_sequences
        assert all(math.isfinite(v) for v in scores.ravel())
        return scores.astype(np.float32)
