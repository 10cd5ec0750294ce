"""Corpus v1 schemas: attention and activity by tag, quotations, head ranking, figure queries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headscope.schemas.core import BodyModel, RequestModel
from headscope.schemas.probes import ProbeMetric

__all__ = [
    "ActivityByTagFigureQuery",
    "ActivityByTagRequest",
    "ActivityByTagResponse",
    "ActivityFigureQuery",
    "ActivityByTagIntervals",
    "AttentionByTagFigureQuery",
    "AttentionByTagIntervals",
    "AttentionByTagRequest",
    "AttentionByTagResponse",
    "AttentionFigureQuery",
    "CorpusSequenceQuery",
    "CorpusSequenceResponse",
    "CorpusSource",
    "CorpusSourceRequest",
    "DEFAULT_N_SEQUENCES",
    "GridInterval",
    "HeadId",
    "Interval",
    "HeadRankQuery",
    "HeadRankResponse",
    "Position",
    "QuoteSpan",
    "QuotesIntervals",
    "QuotesFigureQuery",
    "QuotesRequest",
    "QuotesResponse",
    "RankedHead",
    "TagAttention",
]

DEFAULT_N_SEQUENCES = 100

Position = Literal["on", "before", "after"]

Grid = list[list[float]]  # [layer][head]
MaybeGrid = list[list[float | None]]  # [layer][head], null where undefined


def _valid_unicode(text: str | None) -> str | None:
    # A lone surrogate is legal JSON but not encodable text; refuse it before the tokenizer does.
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("text contains characters that are not valid Unicode") from err
    return text


# -- what to analyse ---------------------------------------------------------------------------


class CorpusSourceRequest(BodyModel):
    texts: list[str] | None = Field(
        default=None,
        description="The sequences to analyse, each at most `max_tokens` tokens. Leave out to "
        "draw `n_sequences` from the server's corpus instead. At most `corpus_max_sequences` "
        "texts and `corpus_max_tokens` tokens in all (413 above either).",
    )
    n_sequences: int | None = Field(
        default=None,
        ge=1,
        description=f"How many sequences to draw from the server's corpus when `texts` is left "
        f"out (default {DEFAULT_N_SEQUENCES}; 422 above `corpus_max_sequences`). Sequences longer "
        "than `max_tokens` are cut to their first `max_tokens` tokens.",
    )
    seed: int = Field(
        default=0,
        description="Seed of the draw from the corpus: the same seed, corpus and n_sequences "
        "always give the same sequences.",
    )

    @field_validator("texts")
    @classmethod
    def _texts_are_valid(cls, texts: list[str] | None) -> list[str] | None:
        if texts is None:
            return None
        if not texts:
            raise ValueError("texts is empty; leave it out to draw from the server's corpus")
        for text in texts:
            _valid_unicode(text)
        return texts

    @model_validator(mode="after")
    def _one_source(self):
        if self.texts is not None and self.n_sequences is not None:
            raise ValueError("give either texts or n_sequences, not both")
        return self


class CorpusSource(BaseModel):
    kind: Literal["texts", "corpus", "job"] = Field(
        description="`texts`: the submitted texts; `corpus`: a seeded draw from the server's "
        "corpus; `job`: every sequence of a corpus, from a finished corpus job."
    )
    sequences: int = Field(description="Number of sequences analysed.")
    tokens: int = Field(description="Number of tokens analysed, over all sequences.")
    corpus: str | None = Field(
        default=None, description="The corpus drawn from: a file path or `hub:<dataset>/<file>`."
    )
    corpus_sha256: str | None = Field(
        default=None, description="sha256 of the corpus file's bytes."
    )
    seed: int | None = Field(default=None, description="Seed of the draw.")
    indices: list[int] | None = Field(
        default=None,
        description="Index in the corpus (sequences split at blank lines or <|endoftext|>) of "
        "each drawn sequence, in the order analysed and reported.",
    )
    truncated: int = Field(
        default=0, description="How many drawn sequences were cut to `max_tokens` tokens."
    )
    job: str | None = Field(default=None, description="The corpus job's id (kind `job`).")


# -- confidence intervals ----------------------------------------------------------------------

WARNING_DESCRIPTION = (
    "Set when the statistic rests on little data (fewer than 20 tokens or 5 sequences behind "
    "it): the means and their intervals are then anecdotal. Null otherwise."
)


class Interval(BaseModel):
    low: float | None = Field(description="Lower bound; null where undefined.")
    high: float | None = Field(description="Upper bound; null where undefined.")


class GridInterval(BaseModel):
    low: MaybeGrid = Field(description="[layer][head] lower bounds; null where undefined.")
    high: MaybeGrid = Field(description="[layer][head] upper bounds; null where undefined.")


class Intervals(BaseModel):
    level: float = Field(description="Confidence level of every interval, e.g. 0.95.")
    resamples: int = Field(description="Bootstrap resamples behind each interval.")
    method: str = Field(description="How the intervals are computed.")


# -- attention by tag --------------------------------------------------------------------------


class AttentionByTagRequest(CorpusSourceRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"layer": 6, "head": 4, "from_tag": "VBD", "n_sequences": 2},
                {"layer": 2, "head": 0, "to_tag": "``", "texts": ['Tom said, "Hi!"']},
            ]
        }
    )

    layer: int = Field(description="Layer, from 0.", examples=[6])
    head: int = Field(description="Head within the layer, from 0.", examples=[4])
    from_tag: str | None = Field(
        default=None,
        description="Query tag A: report, for each tag B, where tokens tagged A put their "
        "attention. Give exactly one of from_tag and to_tag.",
    )
    to_tag: str | None = Field(
        default=None,
        description="Key tag B: report, for each tag A, how much attention tokens tagged A put on "
        "tokens tagged B. Give exactly one of from_tag and to_tag.",
    )

    _tags_are_valid = field_validator("from_tag", "to_tag")(_valid_unicode)

    @model_validator(mode="after")
    def _one_direction(self):
        if (self.from_tag is None) == (self.to_tag is None):
            raise ValueError("give exactly one of from_tag and to_tag")
        return self


class TagAttention(BaseModel):
    tag: str = Field(
        description="With from_tag: the key tag B. With to_tag: the query tag A. Tags are the "
        "Penn Treebank tags of POST /v1/tag (overlap alignment); NONE (whitespace tokens) counts "
        "as a tag."
    )
    attention: float = Field(
        description="Mean, over query tokens tagged A, of the attention mass (sum of pattern "
        "weights) the query puts on key tokens tagged B. With from_tag these sum to 1 over B."
    )
    frequency: float = Field(
        description="The same mean under uniform attention: mean, over query tokens tagged A, of "
        "the share of the key positions the query can attend to (itself and earlier tokens, "
        "within the window on local layers) that are tagged B. The baseline for `attention`; "
        "with from_tag these also sum to 1 over B."
    )
    query_tokens: int = Field(description="Number of query tokens tagged A averaged over.")


class AttentionByTagIntervals(Intervals):
    attention: dict[str, Interval] = Field(
        description="Interval of each row's `attention`, by the row's tag."
    )


class AttentionByTagResponse(BaseModel):
    layer: int = Field(description="Layer of the head.")
    head: int = Field(description="Head within the layer.")
    direction: Literal["from", "to"] = Field(
        description="`from`: rows are key tags B for query tag `tag`; `to`: rows are query tags "
        "A for key tag `tag`."
    )
    tag: str = Field(description="The from_tag or to_tag asked for.")
    tag_tokens: int = Field(
        description="Number of tokens tagged `tag` in the analysed sequences (with from_tag: the "
        "number of query tokens averaged over)."
    )
    rows: list[TagAttention] = Field(
        description="One row per tag, largest `attention` first. With from_tag: every tag B among "
        "the positions visible to A tokens (empty when no token is tagged A). With to_tag: every "
        "query tag A that occurs."
    )
    ci: AttentionByTagIntervals | None = Field(
        default=None, description="Bootstrap confidence intervals; null when there are no rows."
    )
    warning: str | None = Field(default=None, description=WARNING_DESCRIPTION)
    source: CorpusSource = Field(description="What was analysed.")


# -- activity by tag ---------------------------------------------------------------------------


class ActivityByTagRequest(CorpusSourceRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"tag": "VBD", "position": "before", "n_sequences": 2, "seed": 0}]
        }
    )

    tag: str = Field(
        description="Penn Treebank tag (as in POST /v1/tag), or NONE.", examples=["VBD"]
    )
    position: Position = Field(
        default="on",
        description="Which tokens to average over, relative to runs of consecutive tokens tagged "
        "`tag` (one word may span several tokens): `on` = every token tagged `tag`; `before` = "
        "the token just before each run; `after` = the token just after each run.",
    )

    _tag_is_valid = field_validator("tag")(_valid_unicode)


class ActivityByTagIntervals(Intervals):
    mean_at_position: GridInterval = Field(description="Interval of `mean_at_position`.")
    lift: GridInterval = Field(description="Interval of `lift`.")


class ActivityByTagResponse(BaseModel):
    tag: str = Field(description="The tag asked for.")
    position: Position = Field(description="The position asked for.")
    tag_tokens: int = Field(description="Number of tokens tagged `tag`.")
    positions: int = Field(description="Number of tokens at `position` (averaged over).")
    tokens: int = Field(description="Number of tokens in all (the overall mean's count).")
    mean_at_position: Grid | None = Field(
        description="[layer][head]: mean activity over the tokens at `position`; null when there "
        "are none."
    )
    mean_overall: Grid = Field(description="[layer][head]: mean activity over every token.")
    lift: Grid | None = Field(
        description="[layer][head]: mean_at_position / mean_overall; above 1 means the head is "
        "more active there than on average. Null when there are no such tokens."
    )
    ci: ActivityByTagIntervals | None = Field(
        default=None,
        description="Bootstrap confidence intervals; null when there are no tokens at `position`.",
    )
    warning: str | None = Field(default=None, description=WARNING_DESCRIPTION)
    source: CorpusSource = Field(description="What was analysed.")


# -- quotations --------------------------------------------------------------------------------


class QuotesRequest(CorpusSourceRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ['Lily said, "I want to play." Then she ran.']}]}
    )


class QuoteSpan(BaseModel):
    sequence: int = Field(
        description="Index of the sequence: into `texts`, or into `source.indices` for a draw."
    )
    opening_token: int = Field(description="Token holding the opening quote mark (tagged ``).")
    closing_token: int | None = Field(
        description="Token holding the closing quote mark (tagged ''); null when the quotation "
        "runs to the end of the sequence."
    )
    start: int = Field(description="Character offset of the opening quote mark.")
    end: int = Field(
        description="Character offset one past the closing quote mark (or the sequence's end)."
    )
    inside_tokens: int = Field(
        description="Tokens strictly between the opening and the closing quote-mark tokens."
    )


class QuotesIntervals(Intervals):
    mean_inside: GridInterval = Field(description="Interval of `mean_inside`.")
    mean_outside: GridInterval = Field(description="Interval of `mean_outside`.")
    ratio: GridInterval = Field(description="Interval of `ratio`.")
    attention_to_opening: GridInterval = Field(description="Interval of `attention_to_opening`.")


class QuotesResponse(BaseModel):
    spans: list[QuoteSpan] = Field(
        description="Every quotation found. Quote marks are the words NLTK tags `` (opening) and "
        "'' (closing), located by character, so a closing mark merged into a token such as '.\"' "
        "still counts; an opening mark while a quotation is open starts a new one."
    )
    inside_tokens: int = Field(description="Tokens inside quotations, over all sequences.")
    outside_tokens: int = Field(
        description="Tokens outside quotations; the quote-mark tokens count as neither."
    )
    mean_inside: Grid | None = Field(
        description="[layer][head]: mean activity over tokens inside quotations; null if none."
    )
    mean_outside: Grid | None = Field(
        description="[layer][head]: mean activity over tokens outside quotations; null if none."
    )
    ratio: Grid | None = Field(
        description="[layer][head]: mean_inside / mean_outside; null when either is null."
    )
    attention_to_opening: Grid | None = Field(
        description="[layer][head]: mean, over tokens inside quotations, of the attention weight "
        "they put on their quotation's opening-quote token (0 where a local layer's window no "
        "longer reaches it); null when no token is inside a quotation."
    )
    ci: QuotesIntervals | None = Field(
        default=None,
        description="Bootstrap confidence intervals; null when no token is inside a quotation or "
        "none outside.",
    )
    warning: str | None = Field(default=None, description=WARNING_DESCRIPTION)
    source: CorpusSource = Field(description="What was analysed.")


# -- head ranking ------------------------------------------------------------------------------


class HeadRankQuery(RequestModel):
    tag: str = Field(
        description="Penn Treebank tag, e.g. VBD: probes for it and activity near it.",
        examples=["VBD"],
    )
    vector: str = Field(
        default="key", description="Which probed vector: one of the probe run's vectors."
    )
    metric: ProbeMetric = Field(default="f1", description="Probe score to rank by.")
    position: Position = Field(
        default="on", description="Where activity lift is measured, as in activity-by-tag."
    )
    n_sequences: int = Field(
        default=DEFAULT_N_SEQUENCES,
        ge=1,
        description="Sequences drawn from the server's corpus to measure activity lift.",
    )
    seed: int = Field(default=0, description="Seed of the draw.")
    limit: int | None = Field(
        default=None, ge=1, description="Return only the first `limit` heads of each ranking."
    )

    _names_are_valid = field_validator("tag", "vector")(_valid_unicode)


class CorpusSequenceQuery(RequestModel):
    seed: int = Field(
        default=0,
        ge=0,
        description="Seed of the draw: the sequence is the one a corpus analysis with this seed "
        "and `n_sequences` 1 analyses.",
        examples=[7],
    )


class CorpusSequenceResponse(BaseModel):
    text: str = Field(
        description="The drawn sequence, cut to its first `max_tokens` tokens when longer."
    )
    index: int = Field(
        description="Its index in the corpus (sequences split at blank lines or <|endoftext|>)."
    )
    truncated: bool = Field(description="Whether the sequence was cut to `max_tokens` tokens.")
    seed: int = Field(description="Seed of the draw.")
    corpus: str = Field(
        description="The corpus file's name, without its folder (e.g. `validation.txt`)."
    )
    corpus_sha256: str = Field(description="sha256 of the corpus file's bytes.")


class HeadId(BaseModel):
    layer: int = Field(description="Layer, from 0.")
    head: int = Field(description="Head within the layer, from 0.")


class RankedHead(HeadId):
    probe_score: float | None = Field(
        description="The probe's `metric` for this head's vector and tag; null if undefined."
    )
    probe_rank: int = Field(description="Rank by probe_score, 1 = best (ties share a rank).")
    lift: float = Field(description="Activity lift at `position`, as in activity-by-tag.")
    lift_rank: int = Field(description="Rank by lift, 1 = best (ties share a rank).")
    mean_at_position: float = Field(description="Mean activity at `position`.")
    mean_overall: float = Field(description="Mean activity over all tokens.")
    combined_score: float = Field(
        description="(probe percentile + lift percentile) / 2, where a percentile is "
        "1 - (rank - 1) / (heads - 1): 1 for the best head on both, 0 for the worst."
    )
    combined_rank: int = Field(
        description="Rank by combined_score, 1 = best; ties broken by probe_score, then lift."
    )


class HeadRankResponse(BaseModel):
    tag: str = Field(description="The tag.")
    vector: str = Field(description="The probed vector.")
    metric: ProbeMetric = Field(description="The probe metric.")
    position: Position = Field(description="Where lift was measured.")
    probe_run: str = Field(description="Id of the probe run the scores come from.")
    probe_support: int | None = Field(
        default=None, description="Number of evaluation tokens tagged `tag` behind the scores."
    )
    combination: str = Field(description="How combined_score is computed.")
    heads: list[RankedHead] = Field(description="Heads by combined rank, best first.")
    by_probe: list[HeadId] = Field(description="Heads by probe score, best first.")
    by_lift: list[HeadId] = Field(description="Heads by activity lift, best first.")
    source: CorpusSource = Field(description="The sequences behind the lifts.")


# -- figures (GET query parameters) ------------------------------------------------------------


class FigureSize(RequestModel):
    width: int = Field(default=1000, ge=300, le=4000, description="Width of the PNG in pixels.")
    height: int | None = Field(
        default=None,
        ge=150,
        le=4000,
        description="Height of the PNG in pixels. Default: 500 for charts; for token figures, "
        "as tall as the wrapped text needs (text past a given height is cut off).",
    )


class ActivityFigureQuery(FigureSize):
    text: str = Field(
        description="The text, at most `max_tokens` tokens.",
        examples=['Tom said, "I like the lake." Then he ran.'],
    )
    layer: int = Field(description="Layer, from 0.", examples=[2])
    head: int = Field(description="Head within the layer, from 0.", examples=[0])
    bold_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Tokens with activity at least this fraction of the text's maximum are bold.",
    )

    _text_is_valid = field_validator("text")(_valid_unicode)


class AttentionFigureQuery(FigureSize):
    text: str = Field(
        description="The text, at most `max_tokens` tokens.",
        examples=['She said, "Look at the ball!"'],
    )
    layer: int = Field(description="Layer, from 0.", examples=[2])
    head: int = Field(description="Head within the layer, from 0.", examples=[0])
    query: int | None = Field(
        default=None, description="Query token whose attention row is drawn. Default: the last."
    )

    _text_is_valid = field_validator("text")(_valid_unicode)


class AttentionByTagFigureQuery(AttentionByTagRequest, FigureSize):
    # Query strings arrive as text: lax types here, unlike the strict JSON body it extends.
    model_config = ConfigDict(extra="forbid", strict=False)

    top: int = Field(default=15, ge=1, le=60, description="Bars for at most this many tags.")


class ActivityByTagFigureQuery(ActivityByTagRequest, FigureSize):
    # Query strings arrive as text: lax types here, unlike the strict JSON body it extends.
    model_config = ConfigDict(extra="forbid", strict=False)

    layer: int | None = Field(
        default=None, description="Draw every head of this layer. Default: the `top` heads by lift."
    )
    top: int = Field(default=16, ge=1, le=128, description="Heads drawn when `layer` is left out.")


class QuotesFigureQuery(QuotesRequest, FigureSize):
    # Query strings arrive as text: lax types here, unlike the strict JSON body it extends.
    model_config = ConfigDict(extra="forbid", strict=False)

    layer: int | None = Field(
        default=None,
        description="Draw every head of this layer. Default: the `top` heads by inside/outside "
        "activity ratio.",
    )
    top: int = Field(default=16, ge=1, le=128, description="Heads drawn when `layer` is left out.")
