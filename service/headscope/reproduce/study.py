"""The paper's study as stages, each cached in the output folder and resumed from there.

Stages: probes (key, query and value probes with the paper's protocol, plus the control task),
quotes (case study 1), activity and attention by tag (case studies 2 and 3, Appendix C/D), and
the ranking of heads per tag (beyond the paper). A stage's result is saved as JSON under
`<out>/stages/` with a key over the weights, the corpus and the options; a later run with the
same key loads it instead of computing it again, so an interrupted run resumes at the stage it
stopped in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headscope.analysis.ablation import AblationAnalysis
from headscope.analysis.corpus import CorpusAnalysis
from headscope.analysis.corpus_text import Corpus
from headscope.analysis.probes.pipeline import TrainConfig, train_probe_run
from headscope.analysis.probes.store import ProbeRun, ProbeRunError, load_probe_run
from headscope.analysis.service import Runtime
from headscope.errors import InvalidRequest
from headscope.model.probe_features import Progress, no_progress
from headscope.reproduce.compare import MIN_SUPPORT
from headscope.schemas import (
    HEAD_SCORE_KINDS,
    ActivityByTagRequest,
    AttentionByTagRequest,
    CorpusAblationRequest,
    HeadRankQuery,
    HeadRef,
    HeadScoresQuery,
    QuotesRequest,
)

log = logging.getLogger("headscope.reproduce")

STAGE_FORMAT = 1
VECTORS = ("key", "query", "value")

# The paper's heads and the questions its case studies ask of them.
QUOTE_HEAD = (2, 0)
PAST_TENSE_HEAD = (6, 4)
POSSESSIVE_HEAD = (5, 5)
ACTIVITY_QUESTIONS = (("VBD", "before"), ("PRP$", "on"), ("DT", "on"))
# "Do these heads matter?": each case study's head, zero-ablated alone, and the next-token tags
# its story is about (quote marks for L2H0, past-tense verbs for L6H4, the nouns possessives
# point to for L5H5).
ABLATION_QUESTIONS = (
    ((2, 0), "``"),
    ((2, 0), "''"),
    ((6, 4), "VBD"),
    ((5, 5), "NN"),
)
# (layer, head, direction, tag): case study 2, case study 3 and Appendix C/D.
ATTENTION_QUESTIONS = (
    (*PAST_TENSE_HEAD, "from", "VBD"),
    (*POSSESSIVE_HEAD, "from", "PRP$"),
    (*POSSESSIVE_HEAD, "to", "NN"),
)
RANKED_VECTORS = ("key", "query")


@dataclass(frozen=True)
class StudyConfig:
    probe_sequences: int = 200  # per split, as the paper: 200 train + 200 test stories
    corpus_sequences: int = 100  # sequences behind every corpus statistic (Appendix C/D: 100)
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> StudyConfig:
        return cls(probe_sequences=10, corpus_sequences=12, seed=seed)


class StageCache:
    """JSON results of finished stages under `<out>/stages/`, keyed by what they depend on."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = folder
        self.identity = identity

    def _key(self, stage: str) -> str:
        material = json.dumps([STAGE_FORMAT, stage, self.identity], sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    def load(self, stage: str) -> Any | None:
        path = self.folder / f"{stage}.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != self._key(stage):
            return None
        return saved.get("result")

    def save(self, stage: str, result: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{stage}.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"key": self._key(stage), "result": result}))
        partial.replace(path)  # a stage file is whole or absent, never half written


@dataclass
class StageRecord:
    name: str
    seconds: float
    cached: bool


class Study:
    """Runs the stages for one runtime (loaded without probes) and corpus into `out`."""

    def __init__(
        self,
        runtime: Runtime,
        analysis: CorpusAnalysis,
        corpus: Corpus,
        config: StudyConfig,
        out: Path,
        *,
        progress: Progress = no_progress,
    ) -> None:
        self.runtime = runtime
        self.analysis = analysis
        self.corpus = corpus
        self.config = config
        self.out = out
        self.progress = progress
        identity = {
            "weights_sha256": runtime.weights_sha256,
            "max_tokens": runtime.max_tokens,
            "corpus_sha256": corpus.sha256,
            "config": asdict(config),
        }
        self.cache = StageCache(out / "stages", identity)
        self.records: list[StageRecord] = []
        self.probe_run: ProbeRun | None = None

    def _stage(self, name: str, compute: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = self.cache.load(name)
        cached = result is not None
        if not cached:
            log.info("reproduce: stage %s", name)
            result = compute()
            self.cache.save(name, result)
        self.records.append(StageRecord(name, time.monotonic() - started, cached))
        return result

    # -- stages --------------------------------------------------------------------------------

    def probes(self) -> ProbeRun:
        def train() -> dict:
            trained = train_probe_run(
                self.runtime,
                self.corpus,
                TrainConfig(
                    vectors=VECTORS,
                    seed=self.config.seed,
                    max_sequences=self.config.probe_sequences,
                ),
                store=self.out / "probes",
                progress=self.progress,
            )
            return {"run_directory": str(trained.directory.resolve())}

        result = self._stage("probes", train)
        try:
            run = load_probe_run(
                result["run_directory"], expected_fingerprint=self.runtime.weights_sha256
            )
        except ProbeRunError:  # the cached run was moved or damaged: train it again
            (self.out / "stages" / "probes.json").unlink(missing_ok=True)
            self.records.pop()
            result = self._stage("probes", train)
            run = load_probe_run(
                result["run_directory"], expected_fingerprint=self.runtime.weights_sha256
            )
        self.probe_run = run
        self.runtime.probes = run  # the ranking reads the run through the runtime, as the API does
        self.runtime.probes_reason = None
        return run

    def _draw(self) -> dict:
        return {"n_sequences": self.config.corpus_sequences, "seed": self.config.seed}

    def quotes(self) -> dict:
        return self._stage(
            "quotes",
            lambda: self.analysis.quotes(QuotesRequest(**self._draw())).model_dump(mode="json"),
        )

    def activity(self) -> dict[str, dict]:
        def compute() -> dict[str, dict]:
            results = {}
            for tag, position in self._each(ACTIVITY_QUESTIONS, "activity by tag"):
                request = ActivityByTagRequest(tag=tag, position=position, **self._draw())
                results[f"{position} {tag}"] = self.analysis.activity_by_tag(request).model_dump(
                    mode="json"
                )
            return results

        return self._stage("activity", compute)

    def attention(self) -> dict[str, dict]:
        def compute() -> dict[str, dict]:
            results = {}
            for layer, head, direction, tag in self._each(ATTENTION_QUESTIONS, "attention by tag"):
                request = AttentionByTagRequest(
                    layer=layer, head=head, **{f"{direction}_tag": tag}, **self._draw()
                )
                key = f"L{layer}H{head} {direction} {tag}"
                results[key] = self.analysis.attention_by_tag(request).model_dump(mode="json")
            return results

        return self._stage("attention", compute)

    def ablation(self) -> dict[str, dict]:
        """Per case-study head and tag: the mean next-token loss change on that tag when the
        head alone is zero-ablated, with its interval."""

        def compute() -> dict[str, dict]:
            ablations = AblationAnalysis(self.analysis)
            results = {}
            for (layer, head), tag in self._each(ABLATION_QUESTIONS, "ablation"):
                request = CorpusAblationRequest(
                    heads=[HeadRef(layer=layer, head=head)], mode="zero", tag=tag, **self._draw()
                )
                key = f"L{layer}H{head} {tag}"
                results[key] = ablations.corpus_ablation(request).model_dump(mode="json")
            return results

        return self._stage("ablation", compute)

    def head_scores(self) -> dict[str, dict]:
        """Every head's induction, previous-token and duplicate-token score (the paper suggests
        L6H4 and L5H5 act as part-of-speech induction heads)."""

        def compute() -> dict[str, dict]:
            ablations = AblationAnalysis(self.analysis)
            return {
                kind: ablations.head_scores(
                    HeadScoresQuery(kind=kind, seed=self.config.seed)  # type: ignore[arg-type]
                ).model_dump(mode="json")
                for kind in HEAD_SCORE_KINDS
            }

        return self._stage("head_scores", compute)

    def rankable_tags(self) -> list[str]:
        """The probe run's tags with at least MIN_SUPPORT held-out tokens: the only ones ranked."""
        assert self.probe_run is not None
        support = self.probe_run.manifest["metrics"]["support"]
        return [tag for tag in self.probe_run.tags if support.get(tag, 0) >= MIN_SUPPORT]

    def ranking(self) -> dict[str, dict[str, dict]]:
        """Per vector and tag: heads by probe F1 and activity lift on the tag, combined."""

        def compute() -> dict[str, dict[str, dict]]:
            results: dict[str, dict[str, dict]] = {vector: {} for vector in RANKED_VECTORS}
            questions = [(v, t) for t in self.rankable_tags() for v in RANKED_VECTORS]
            for vector, tag in self._each(questions, "rank heads"):
                query = HeadRankQuery(tag=tag, vector=vector, limit=10, **self._draw())
                try:
                    ranked = self.analysis.rank_heads(query)
                except InvalidRequest as err:  # the tag never occurs in the drawn sequences
                    log.info("reproduce: %s %s not ranked: %s", vector, tag, err.message)
                    continue
                results[vector][tag] = ranked.model_dump(mode="json")
            return results

        return self._stage("ranking", compute)

    def _each(self, items: Iterable, description: str) -> Iterable:
        items = list(items)
        return self.progress(items, description, len(items))
