"""Corpus job v1 schemas: finished `headscope corpus run` jobs the server reads from its jobs
directory, and the questions a job answers (the corpus endpoints' answers, one GET each)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator

from headscope.schemas.ablation import AblationMeans, AblationMode
from headscope.schemas.core import HeadRef, RequestModel
from headscope.schemas.corpus import Position, _valid_unicode

__all__ = [
    "CorpusJob",
    "CorpusJobAblation",
    "CorpusJobAblationQuery",
    "CorpusJobActivityQuery",
    "CorpusJobAttentionQuery",
    "CorpusJobList",
    "CorpusJobListQuery",
    "CorpusJobQuotesQuery",
    "JOB_ID_PATTERN",
]

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"


class CorpusJobAblation(BaseModel):
    mode: AblationMode = Field(description="How each head was ablated.")
    heads: list[HeadRef] | None = Field(
        description="The heads ablated (each alone), or null for every head."
    )
    means: AblationMeans | None = Field(
        default=None, description="Mode `mean`: where the mean z comes from (the job's corpus)."
    )

    @field_validator("heads", mode="before")
    @classmethod
    def _pairs_as_heads(cls, heads):
        # job.json keeps the heads as [layer, head] pairs.
        if heads is None:
            return None
        return [
            {"layer": head[0], "head": head[1]} if isinstance(head, list) else head
            for head in heads
        ]


class CorpusJob(BaseModel):
    id: str = Field(description="The job's id: a hash of its corpus, model, kinds and shard size.")
    status: str = Field(description="`finished`, or `running` while shards are being written.")
    corpus: str = Field(description="The corpus analysed: a file path or `hub:<dataset>/<file>`.")
    corpus_sha256: str = Field(description="sha256 of the corpus file's bytes.")
    model: str = Field(description="The model analysed (its path or hub id).")
    weights_sha256: str = Field(description="sha256 of the model's weight files.")
    max_tokens: int = Field(description="Sequences were cut to their first `max_tokens` tokens.")
    kinds: list[str] = Field(description="What the job computed.")
    statistics: list[str] = Field(
        default_factory=list, description="The corpus statistics this job answers."
    )
    shard_sequences: int = Field(description="Sequences per shard.")
    shards: int = Field(default=0, description="Shards finished.")
    sequences: int = Field(default=0, description="Sequences analysed.")
    tokens: int = Field(default=0, description="Tokens analysed.")
    truncated: int = Field(default=0, description="Sequences cut to `max_tokens` tokens.")
    tags: list[str] = Field(default_factory=list, description="Every tag the job's tagger gives.")
    ablation: CorpusJobAblation | None = Field(
        default=None, description="Kind `ablation`: what was ablated."
    )
    created: str | None = Field(default=None, description="When the job started (UTC, ISO 8601).")
    finished: str | None = Field(default=None, description="When it finished (UTC, ISO 8601).")


class CorpusJobList(BaseModel):
    jobs: list[CorpusJob] = Field(description="Finished jobs in the server's jobs directory.")


class CorpusJobListQuery(RequestModel):
    corpus_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Only jobs over the corpus file with this sha256.",
    )


JOB_SEED_DESCRIPTION = (
    "Seed of the bootstrap behind `ci`, which resamples the job's shards (blocks of "
    "`shard_sequences` consecutive sequences); a job with `shard_sequences=1` and a corpus "
    "analysis of the same texts in corpus order with the same seed give the same intervals."
)


class CorpusJobQuotesQuery(RequestModel):
    seed: int = Field(default=0, description=JOB_SEED_DESCRIPTION)


class CorpusJobActivityQuery(RequestModel):
    tag: str = Field(description="Penn Treebank tag, e.g. VBD.", examples=["VBD"])
    position: Position = Field(
        default="on",
        description="`on`: tokens tagged `tag`; `before`/`after`: the token just before/after a "
        "run of them.",
    )
    seed: int = Field(default=0, description=JOB_SEED_DESCRIPTION)

    _tag_is_valid = field_validator("tag")(_valid_unicode)


class CorpusJobAttentionQuery(RequestModel):
    layer: int = Field(description="Layer, from 0.", examples=[6])
    head: int = Field(description="Head within the layer, from 0.", examples=[4])
    from_tag: str | None = Field(
        default=None, description="Query tag A. Give exactly one of from_tag and to_tag."
    )
    to_tag: str | None = Field(
        default=None, description="Key tag B. Give exactly one of from_tag and to_tag."
    )
    seed: int = Field(default=0, description=JOB_SEED_DESCRIPTION)

    _tags_are_valid = field_validator("from_tag", "to_tag")(_valid_unicode)

    @model_validator(mode="after")
    def _one_direction(self):
        if (self.from_tag is None) == (self.to_tag is None):
            raise ValueError("give exactly one of from_tag and to_tag")
        return self


class CorpusJobAblationQuery(RequestModel):
    tag: str | None = Field(
        default=None,
        description="Next-token tag. Alone: the [layer][head] grid of each head's mean loss "
        "change on its predictions. With layer and head: only that tag's row.",
        examples=["VBD"],
    )
    layer: int | None = Field(default=None, description="Layer of one head, from 0.")
    head: int | None = Field(default=None, description="Head within the layer, from 0.")
    seed: int = Field(default=0, description=JOB_SEED_DESCRIPTION)

    _tag_is_valid = field_validator("tag")(_valid_unicode)

    @model_validator(mode="after")
    def _head_or_tag(self):
        if (self.layer is None) != (self.head is None):
            raise ValueError("give layer and head together")
        if self.layer is None and self.tag is None:
            raise ValueError("give a tag (the grid), or a layer and head (its row per tag)")
        return self
