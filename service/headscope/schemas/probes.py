"""Probe schemas: the loaded run, score grids (the paper's Appendix A/B) and predictions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from headscope.schemas.core import TextRequest, Token

__all__ = [
    "ProbeCorpus",
    "ProbeHead",
    "ProbeMajorityBaseline",
    "ProbeMetric",
    "ProbePredictRequest",
    "ProbePredictResponse",
    "ProbeRunInfo",
    "ProbeScores",
    "ProbeSplit",
    "ProbeVector",
    "ProbeVectorSummary",
    "TagProbability",
    "TokenPrediction",
]

ProbeVector = Literal["key", "query", "value"]
ProbeMetric = Literal["f1", "precision", "recall", "selectivity"]


class ProbeCorpus(BaseModel):
    source: str = Field(description="The corpus file, or hub:<dataset>/<file>.")
    sha256: str = Field(description="sha256 of the corpus file's bytes.")
    sequences: int = Field(description="Sequences in the corpus (before the split and the cap).")


class ProbeSplit(BaseModel):
    unit: Literal["sequence"] = Field(
        description="The split is by whole sequence, never by token, so no sequence leaks."
    )
    seed: int = Field(description="Seed of the shuffle before the split.")
    test_size: float = Field(description="Fraction of sequences held out before the cap.")
    max_sequences_per_split: int | None = Field(
        description="Cap on sequences per split (the paper: 200 + 200); null = no cap."
    )
    train_sequences: int = Field(description="Sequences the probes were trained on.")
    test_sequences: int = Field(description="Held-out sequences the scores come from.")
    train_tokens: int = Field(description="Labelled training tokens.")
    test_tokens: int = Field(description="Labelled held-out tokens.")
    include_none: bool = Field(
        description="Whether whitespace-only tokens (tag NONE) were kept as a class."
    )


class ProbeHead(BaseModel):
    layer: int = Field(description="Layer, from 0.")
    head: int = Field(description="Head within the layer, from 0.")


class ProbeVectorSummary(BaseModel):
    vector: ProbeVector = Field(description="Which of the head's vectors the probes read.")
    mean_accuracy: float = Field(description="Held-out accuracy, averaged over all heads.")
    best_accuracy: float = Field(description="The best head's held-out accuracy.")
    best_accuracy_head: ProbeHead = Field(description="The head with the best accuracy.")
    mean_macro_f1: float = Field(description="Held-out macro-F1, averaged over all heads.")
    best_macro_f1: float = Field(description="The best head's held-out macro-F1.")
    best_macro_f1_head: ProbeHead = Field(description="The head with the best macro-F1.")
    mean_selectivity: float | None = Field(
        description="Accuracy minus control-task accuracy, averaged over heads (null when the "
        "run has no control task)."
    )


class ProbeMajorityBaseline(BaseModel):
    tag: str = Field(description="The most frequent training tag.")
    accuracy: float = Field(description="Held-out accuracy of always predicting it.")


class ProbeRunInfo(BaseModel):
    run_id: str = Field(description="The run's id (its folder name in the store by default).")
    created: str = Field(description="When the run was trained (ISO 8601, UTC).")
    model_id: str = Field(description="The model the probes were trained on.")
    model_fingerprint: str = Field(
        description="sha256 of that model's weights; equals GET /v1/model's weights_sha256."
    )
    vectors: list[ProbeVector] = Field(description="The vectors with probes in this run.")
    tags: list[str] = Field(description="The probes' classes (Penn tags seen in training).")
    method: str = Field(description="How the probes were fitted.")
    corpus: ProbeCorpus = Field(description="The text the probes were trained and scored on.")
    split: ProbeSplit = Field(description="The train/test split.")
    majority_baseline: ProbeMajorityBaseline = Field(
        description="What always guessing the most frequent tag scores."
    )
    zero_division: float = Field(
        description="The score of a precision/recall/F1 whose denominator is 0 (sklearn's "
        "`zero_division`)."
    )
    summary: list[ProbeVectorSummary] = Field(description="Overall figures, one per vector.")


class ProbeScores(BaseModel):
    vector: ProbeVector = Field(description="The vector the probes read.")
    tag: str = Field(description="The tag scored, or accuracy / macro / weighted.")
    metric: ProbeMetric = Field(description="The metric in the grid.")
    scores: list[list[float]] = Field(
        description="scores[layer][head]: the metric of that head's probe on the held-out split."
    )
    support: int | None = Field(
        description="Held-out tokens with this tag; null for accuracy / macro / weighted."
    )


class ProbePredictRequest(TextRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "Tom ran home.", "vector": "key", "layer": 6, "head": 4}]
        }
    )

    vector: ProbeVector = Field(description="Which of the head's vectors the probe reads.")
    layer: int = Field(description="Layer, from 0.")
    head: int = Field(description="Head within the layer, from 0.")
    top_k: int = Field(
        default=3,
        ge=1,
        description="How many of the most probable tags to list per token (at most the run's "
        "number of tags; more lists them all).",
    )


class TagProbability(BaseModel):
    tag: str = Field(description="A Penn Treebank tag.")
    probability: float = Field(description="The probe's probability for it.")


class TokenPrediction(BaseModel):
    tag: str = Field(description="The probe's most probable tag for the token.")
    probability: float = Field(description="Its probability.")
    top: list[TagProbability] = Field(description="The top_k tags, most probable first.")


class ProbePredictResponse(BaseModel):
    run_id: str = Field(description="The probe run that answered.")
    vector: ProbeVector = Field(description="The vector the probe read.")
    layer: int = Field(description="Layer of the probe's head.")
    head: int = Field(description="Head of the probe.")
    tokens: list[Token] = Field(
        description="The model tokens, each with its true (NLTK) tag for comparison."
    )
    predictions: list[TokenPrediction] = Field(description="One prediction per token, in order.")
