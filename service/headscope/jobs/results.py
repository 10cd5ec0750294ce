"""Finished corpus jobs as the server reads them: job.json and the merged float64 sums, turned
into the corpus endpoints' answers with the same formulas (ratios of sums over tokens).

Only JSON and safetensors are read, never a pickle. A job keeps no per-sequence sums (a whole
split's would not fit), so its bootstrap intervals resample shards, whose sums are on disk: a
cluster bootstrap over blocks of `shard_sequences` consecutive sequences, the same Resampler as the
corpus endpoints (with one sequence per shard it is their bootstrap over sequences). The quote
spans are kept per shard in the shard file's metadata.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.numpy import load_file

from headscope.analysis.bootstrap import (
    LEVEL,
    RESAMPLES,
    Resampler,
    finite_or_none,
    grid_interval,
    mean_of,
    support_warning,
)
from headscope.analysis.corpus import tag_attention_rows
from headscope.errors import InvalidRequest, NotFound
from headscope.jobs.ablation import ABLATION, ablation_response
from headscope.jobs.run import JOB_FILE, SHARDS_DIR, STATISTICS_FILE
from headscope.jobs.statistics import POSITIONS, Sums, require_head
from headscope.schemas import (
    ActivityByTagIntervals,
    ActivityByTagResponse,
    AttentionByTagIntervals,
    AttentionByTagResponse,
    CorpusAblationIntervals,
    CorpusAblationResponse,
    CorpusJob,
    CorpusJobAblationQuery,
    CorpusJobActivityQuery,
    CorpusJobAttentionQuery,
    CorpusJobQuotesQuery,
    CorpusSource,
    Interval,
    QuotesIntervals,
    QuoteSpan,
    QuotesResponse,
)

log = logging.getLogger("headscope.jobs")


# A job's answer lists the quotations of its first sequences only: a whole split has millions.
MAX_SPANS = 1000
JOB_METHOD = (
    f"percentile bootstrap over shards: the job's shards (blocks of shard_sequences consecutive "
    f"sequences) drawn with replacement {RESAMPLES} times (seeded by the query's seed), the "
    "statistic recomputed from the resampled shard sums each time"
)


def _grid(values: np.ndarray | None) -> list[list[float]] | None:
    return None if values is None else values.tolist()


def _mean_ratio(a: np.ndarray, na: np.ndarray, b: np.ndarray, nb: np.ndarray) -> np.ndarray:
    return mean_of(a, na) / mean_of(b, nb)


def _intervals_spec() -> dict:
    return {"level": LEVEL, "resamples": RESAMPLES, "method": JOB_METHOD}


class ShardRows:
    """Slices of every finished shard's sums, stacked in shard order: the bootstrap's units."""

    def __init__(self, directory: Path, seed: int) -> None:
        # One slice of one shard in memory at a time: a whole split's shards would not fit.
        self.paths = sorted((directory / SHARDS_DIR).glob("*.sums.safetensors"))
        self.resampler = Resampler.of(len(self.paths), seed)

    def __call__(self, name: str, index: tuple = ()) -> np.ndarray:
        """[shard, ...]: sums[name][index] of each shard."""
        rows = []
        for path in self.paths:
            with safe_open(path, "numpy") as file:
                # A slice reads only its own bytes: one head's attention mass, not every head's.
                row = file.get_slice(name)[index] if index else file.get_tensor(name)
                rows.append(np.array(row, dtype=np.float64))
        return np.stack(rows)

    def quote_spans(self, limit: int) -> tuple[list[QuoteSpan], int]:
        """(the first `limit` quotations, their `sequence` an index into the job's corpus; how
        many the job found in all)."""
        spans: list[QuoteSpan] = []
        total = 0
        for path in self.paths:
            with safe_open(path, "numpy") as file:
                metadata = file.metadata() or {}
            first = int(metadata["first_sequence"])
            in_shard = json.loads(metadata.get("quote_spans", "[]"))
            total += len(in_shard)
            for sequence, opening, closing, start, end, inside in in_shard[: limit - len(spans)]:
                spans.append(
                    QuoteSpan(
                        sequence=first + sequence,
                        opening_token=opening,
                        closing_token=closing,
                        start=start,
                        end=end,
                        inside_tokens=inside,
                    )
                )
        return spans, total


@dataclass(frozen=True)
class FinishedJob:
    job: CorpusJob
    directory: Path

    @property
    def source(self) -> CorpusSource:
        return CorpusSource(
            kind="job",
            sequences=self.job.sequences,
            tokens=self.job.tokens,
            corpus=self.job.corpus,
            corpus_sha256=self.job.corpus_sha256,
            truncated=self.job.truncated,
            job=self.job.id,
        )


class JobResults:
    """The finished jobs under one directory (each job in a folder of its own, or the directory
    itself one job's OUT)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._sums: dict[tuple[Path, int], Sums] = {}  # by (file, mtime)
        self._lock = threading.Lock()

    def jobs(self, corpus_sha256: str | None = None) -> list[CorpusJob]:
        found = [finished.job for finished in self._finished()]
        if corpus_sha256 is not None:
            found = [job for job in found if job.corpus_sha256 == corpus_sha256]
        return sorted(found, key=lambda job: (job.finished or "", job.id), reverse=True)

    def _finished(self) -> list[FinishedJob]:
        if self.directory is None or not self.directory.is_dir():
            return []
        candidates = [self.directory / JOB_FILE, *sorted(self.directory.glob(f"*/{JOB_FILE}"))]
        finished = []
        for path in candidates:
            if not path.is_file():
                continue
            try:
                job = CorpusJob.model_validate(json.loads(path.read_text()))
            except (OSError, ValueError, ValidationError) as err:
                log.warning("Skipping %s: not a readable job file (%s)", path, err)
                continue
            if job.status == "finished":
                finished.append(FinishedJob(job, path.parent))
        return finished

    def job(self, job_id: str) -> FinishedJob:
        for finished in self._finished():
            if finished.job.id == job_id:
                return finished
        where = (
            f"the jobs directory {self.directory.name!r}"
            if self.directory is not None
            else "no jobs directory (set HEADSCOPE_JOBS_DIR)"
        )
        raise NotFound(
            f"no finished corpus job {job_id!r} in {where}; GET /v1/corpus/jobs lists them",
            detail={"job": job_id},
        )

    def _statistics(self, finished: FinishedJob, statistic: str) -> tuple[Sums, dict[str, int]]:
        if statistic not in finished.job.statistics:
            raise NotFound(
                f"corpus job {finished.job.id} did not compute {statistic}; it has: "
                + (", ".join(finished.job.statistics) or "none"),
                detail={"job": finished.job.id, "statistics": finished.job.statistics},
            )
        path = finished.directory / STATISTICS_FILE
        key = (path, path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._sums:
                self._sums = {key: load_file(path)}  # the job asked for last stays loaded
            sums = self._sums[key]
        return sums, {tag: i for i, tag in enumerate(finished.job.tags)}

    @staticmethod
    def _tag(tags: dict[str, int], tag: str, field: str) -> int:
        if tag not in tags:
            raise InvalidRequest(
                f"{field} {tag!r} is not a tag the job's tagger produces; tags are: "
                + ", ".join(sorted(tags)),
                detail={field: tag, "tags": sorted(tags)},
            )
        return tags[tag]

    # -- the corpus questions ------------------------------------------------------------------

    def activity_by_tag(self, job_id: str, query: CorpusJobActivityQuery) -> ActivityByTagResponse:
        """Every head's mean activity on, before or after a tag, from the job's sums."""
        finished = self.job(job_id)
        sums, tags = self._statistics(finished, "activity-by-tag")
        chosen = self._tag(tags, query.tag, "tag")
        position = POSITIONS.index(query.position)
        at_count = int(sums["activity.positions"][position, chosen])
        mean_all = sums["activity.sum_all"] / sums["tokens"][0]  # [layer, head]
        mean_at = sums["activity.sum_at"][position, chosen] / at_count if at_count else None
        with_position = int(sums["activity.sequences_with_position"][position, chosen])
        ci = None
        if at_count:
            shards = ShardRows(finished.directory, query.seed)
            at = shards("activity.sum_at", (position, chosen))  # [shard, layer, head]
            at_count_by_shard = shards("activity.positions", (position, chosen))  # [shard]
            overall = (shards("activity.sum_all"), shards("tokens", (0,)))
            ci = ActivityByTagIntervals(
                **_intervals_spec(),
                mean_at_position=grid_interval(
                    shards.resampler.interval(mean_of, at, at_count_by_shard)
                ),
                lift=grid_interval(
                    shards.resampler.interval(_mean_ratio, at, at_count_by_shard, *overall)
                ),
            )
        return ActivityByTagResponse(
            tag=query.tag,
            position=query.position,
            tag_tokens=int(sums["activity.tag_tokens"][chosen]),
            positions=at_count,
            tokens=int(sums["tokens"][0]),
            mean_at_position=_grid(mean_at),
            mean_overall=mean_all.tolist(),
            lift=_grid(None if mean_at is None else mean_at / mean_all),
            ci=ci,
            warning=support_warning(
                at_count, with_position, f"the mean {query.position} {query.tag}"
            ),
            source=finished.source,
        )

    def attention_by_tag(
        self, job_id: str, query: CorpusJobAttentionQuery
    ) -> AttentionByTagResponse:
        """Where tokens of one tag put one head's attention, by tag, from the job's sums."""
        finished = self.job(job_id)
        sums, tags = self._statistics(finished, "attention-by-tag")
        mass_all = sums["attention.mass"]  # [layer, head, q tag, k tag]
        n_layers, n_heads = mass_all.shape[:2]
        layer, head = query.layer, query.head
        require_head(layer, head, n_layers, n_heads)
        direction = "from" if query.from_tag is not None else "to"
        tag = query.from_tag if query.from_tag is not None else query.to_tag
        assert tag is not None
        chosen = self._tag(tags, tag, f"{direction}_tag")
        mass = mass_all[layer, head]  # [q tag, k tag]
        uniform_mass = sums["attention.uniform_mass"][layer]  # [q tag, k tag]
        counts = sums["attention.tag_tokens"]  # [tag]
        rows = tag_attention_rows(direction, chosen, tags, mass, uniform_mass, counts)
        with_tag = int(sums["attention.sequences_with_tag"][chosen])
        ci = None
        if rows:
            shards = ShardRows(finished.directory, query.seed)
            if direction == "from":  # [shard, key tag] over [shard]
                bounds = shards.resampler.interval(
                    mean_of,
                    shards("attention.mass", (layer, head, chosen)),
                    shards("attention.tag_tokens", (chosen,)),
                )
            else:  # [shard, query tag] over [shard, query tag]
                bounds = shards.resampler.interval(
                    mean_of,
                    shards("attention.mass", (layer, head, slice(None), chosen)),
                    shards("attention.tag_tokens"),
                )
            low, high = bounds
            ci = AttentionByTagIntervals(
                **_intervals_spec(),
                attention={
                    row.tag: Interval(
                        low=finite_or_none(low[tags[row.tag]]),
                        high=finite_or_none(high[tags[row.tag]]),
                    )
                    for row in rows
                },
            )
        return AttentionByTagResponse(
            layer=layer,
            head=head,
            direction=direction,  # type: ignore[arg-type]
            tag=tag,
            tag_tokens=int(counts[chosen]),
            rows=rows,
            ci=ci,
            warning=support_warning(int(counts[chosen]), with_tag, f"{tag} ({direction})"),
            source=finished.source,
        )

    def quotes(self, job_id: str, query: CorpusJobQuotesQuery) -> QuotesResponse:
        """Every head's activity inside quotations against outside, from the job's sums."""
        finished = self.job(job_id)
        sums, _ = self._statistics(finished, "quotes")
        inside_count = int(sums["quotes.inside_tokens"][0])
        outside_count = int(sums["quotes.outside_tokens"][0])
        mean_inside = sums["quotes.sum_inside"] / inside_count if inside_count else None
        mean_outside = sums["quotes.sum_outside"] / outside_count if outside_count else None
        ratio = (
            mean_inside / mean_outside
            if mean_inside is not None and mean_outside is not None
            else None
        )
        to_opening = sums["quotes.sum_to_opening"] / inside_count if inside_count else None
        shards = ShardRows(finished.directory, query.seed)
        ci = None
        if inside_count and outside_count:
            inside = (shards("quotes.sum_inside"), shards("quotes.inside_tokens", (0,)))
            outside = (shards("quotes.sum_outside"), shards("quotes.outside_tokens", (0,)))
            to_opening_by_shard = (shards("quotes.sum_to_opening"), inside[1])
            ci = QuotesIntervals(
                **_intervals_spec(),
                mean_inside=grid_interval(shards.resampler.interval(mean_of, *inside)),
                mean_outside=grid_interval(shards.resampler.interval(mean_of, *outside)),
                ratio=grid_interval(shards.resampler.interval(_mean_ratio, *inside, *outside)),
                attention_to_opening=grid_interval(
                    shards.resampler.interval(mean_of, *to_opening_by_shard)
                ),
            )
        spans, spans_found = shards.quote_spans(MAX_SPANS)
        warnings = [
            support_warning(
                inside_count,
                int(sums["quotes.sequences_with_inside"][0]),
                "the mean inside quotations",
            ),
            f"spans lists the first {len(spans)} of the {spans_found} quotations found"
            if spans_found > len(spans)
            else None,
        ]
        return QuotesResponse(
            spans=spans,
            inside_tokens=inside_count,
            outside_tokens=outside_count,
            mean_inside=_grid(mean_inside),
            mean_outside=_grid(mean_outside),
            ratio=_grid(ratio),
            attention_to_opening=_grid(to_opening),
            ci=ci,
            warning="; ".join(warning for warning in warnings if warning) or None,
            source=finished.source,
        )

    def ablation(self, job_id: str, query: CorpusJobAblationQuery) -> CorpusAblationResponse:
        """Single-head ablation effects by next-token tag, from the job's sums."""
        finished = self.job(job_id)
        sums, tags = self._statistics(finished, ABLATION)
        answer = ablation_response(finished.job, finished.source, sums, tags, query)
        if answer.predictions:
            shards = ShardRows(finished.directory, query.seed)
            if answer.grid is not None and query.tag is not None:  # [shard, l, h] / [shard]
                column = tags[query.tag]
                bounds = shards.resampler.interval(
                    mean_of,
                    shards("ablation.change", (slice(None), slice(None), column)),
                    shards("ablation.predictions", (column,)),
                )
                run = [[value is not None for value in row] for row in answer.grid]
                low, high = (np.where(run, bound, np.nan) for bound in bounds)
                answer.ci = CorpusAblationIntervals(
                    **_intervals_spec(), grid=grid_interval((low, high))
                )
            elif answer.heads:  # [shard, tag] over [shard, tag]
                head = answer.heads[0]
                low, high = shards.resampler.interval(
                    mean_of,
                    shards("ablation.change", (head.layer, head.head)),
                    shards("ablation.predictions"),
                )
                intervals = {}
                for row in answer.by_next_tag or []:
                    column = tags[row.tag]
                    row.ci = Interval(
                        low=finite_or_none(low[column]), high=finite_or_none(high[column])
                    )
                    intervals[row.tag] = row.ci
                answer.ci = CorpusAblationIntervals(**_intervals_spec(), mean_loss_change=intervals)
        return answer
