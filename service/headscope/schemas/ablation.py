"""Ablation (does a head matter for the model's next-token predictions?) and per-head scores on
repeated random tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headscope.schemas.core import (
    MAX_SELECTION,
    HeadRef,
    RequestModel,
    TextRequest,
    Token,
    refuse_duplicates,
)
from headscope.schemas.corpus import (
    WARNING_DESCRIPTION,
    CorpusSource,
    CorpusSourceRequest,
    Grid,
    GridInterval,
    Interval,
    Intervals,
    MaybeGrid,
)

__all__ = [
    "ABLATION_MODES",
    "HEAD_SCORES_METHOD",
    "HEAD_SCORE_KINDS",
    "AblateRequest",
    "AblateResponse",
    "AblationMeans",
    "AblationTagRow",
    "AblatedToken",
    "CorpusAblationIntervals",
    "CorpusAblationRequest",
    "CorpusAblationResponse",
    "HeadScoresQuery",
    "HeadScoresResponse",
    "Prediction",
]

ABLATION_MODES = ("zero", "mean")
AblationMode = Literal["zero", "mean"]
MODE_DESCRIPTION = (
    "What an ablated head's z (pattern · values, its input to W_O) becomes at every token: "
    "`zero` (its contribution removed) or `mean` (its mean z over the server's corpus: its "
    "average effect kept, what it says about this text removed)."
)


def _heads_once(heads: list[HeadRef]) -> list[HeadRef]:
    refuse_duplicates([f"layer {ref.layer} head {ref.head}" for ref in heads], "heads")
    return heads


class AblateRequest(TextRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": 'She said, "Look at the ball!" and ran.',
                    "heads": [{"layer": 2, "head": 0}],
                    "mode": "zero",
                }
            ]
        }
    )

    heads: list[HeadRef] = Field(
        min_length=1,
        max_length=MAX_SELECTION,
        description="The heads to ablate together, each at most once (at least one).",
    )
    mode: AblationMode = Field(default="zero", description=MODE_DESCRIPTION)
    top_k: int = Field(
        default=5, ge=0, le=50, description="Predictions listed per token, before and after."
    )

    @field_validator("heads")
    @classmethod
    def _each_head_once(cls, heads: list[HeadRef]) -> list[HeadRef]:
        return _heads_once(heads)


class Prediction(BaseModel):
    id: int = Field(description="Token id.")
    text: str = Field(description="The token, decoded.")
    prob: float = Field(description="Its probability as the next token.")


class AblatedToken(BaseModel):
    index: int = Field(description="Position t: the prediction made here is of token t + 1.")
    next_id: int = Field(description="The actual next token's id.")
    next_text: str = Field(description="The actual next token's text.")
    next_tag: str | None = Field(description="The POS tag of the actual next token.")
    loss_before: float = Field(description="-log p(next token) without the ablation (nats).")
    loss_after: float = Field(description="-log p(next token) with the heads ablated.")
    loss_change: float = Field(description="loss_after - loss_before: > 0 when ablation hurts.")
    logit_before: float = Field(description="The next token's logit without the ablation.")
    logit_after: float = Field(description="The next token's logit with the ablation.")
    prob_before: float = Field(description="The next token's probability without the ablation.")
    prob_after: float = Field(description="The next token's probability with the ablation.")
    top_before: list[Prediction] = Field(description="The top_k predictions without.")
    top_after: list[Prediction] = Field(description="The top_k predictions with the ablation.")


class AblationTagRow(BaseModel):
    tag: str = Field(description="POS tag of the next token.")
    tokens: int = Field(description="Predictions of a next token with this tag.")
    mean_loss_before: float = Field(description="Their mean loss without the ablation.")
    mean_loss_after: float = Field(description="Their mean loss with the ablation.")
    mean_loss_change: float = Field(description="Their mean loss change.")
    ci: Interval | None = Field(
        default=None,
        description="95% bootstrap interval of mean_loss_change over sequences (corpus only).",
    )


class AblationMeans(BaseModel):
    """Where the mean z of `mean` ablation comes from."""

    corpus: str = Field(description="The corpus file's name (or hub id).")
    corpus_sha256: str = Field(description="sha256 of the corpus file's bytes.")
    seed: int = Field(description="Seed of the draw of sequences.")
    sequences: int = Field(description="Sequences the means are taken over.")
    tokens: int = Field(description="Tokens the means are taken over.")


class AblateResponse(BaseModel):
    heads: list[HeadRef] = Field(description="The heads ablated together.")
    mode: AblationMode = Field(description="How they were ablated.")
    means: AblationMeans | None = Field(
        default=None, description="The mean z's source (mode `mean` only)."
    )
    tokens: list[Token] = Field(description="The text's tokens, tags included.")
    predictions: list[AblatedToken] = Field(
        description="One per token that has a next token: how well it is predicted."
    )
    mean_loss_before: float | None = Field(description="Mean loss over the predictions.")
    mean_loss_after: float | None = Field(description="Mean loss with the ablation.")
    by_next_tag: list[AblationTagRow] = Field(
        description="The predictions grouped by the next token's POS tag, most hurt first."
    )


# -- over a corpus -----------------------------------------------------------------------------


class CorpusAblationRequest(CorpusSourceRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"heads": [{"layer": 2, "head": 0}], "mode": "zero", "n_sequences": 20},
                {"all_heads": True, "tag": "VBD", "mode": "mean", "n_sequences": 20},
            ]
        }
    )

    heads: list[HeadRef] | None = Field(
        default=None,
        max_length=MAX_SELECTION,
        description="Heads to ablate together; leave out with `all_heads`.",
    )
    all_heads: bool = Field(
        default=False,
        description="Ablate each head alone: the [layer][head] grid of mean loss changes on "
        "predictions of a next token tagged `tag` (needs `tag`).",
    )
    mode: AblationMode = Field(default="zero", description=MODE_DESCRIPTION)
    tag: str | None = Field(
        default=None,
        description="Only predictions of a next token with this tag (needed with all_heads).",
    )

    @field_validator("heads")
    @classmethod
    def _each_head_once(cls, heads: list[HeadRef] | None) -> list[HeadRef] | None:
        if heads is None:
            return None
        if not heads:
            raise ValueError("heads is empty; list at least one head, or use all_heads")
        return _heads_once(heads)

    @model_validator(mode="after")
    def _heads_or_all(self):
        if (self.heads is None) == (not self.all_heads):
            raise ValueError("give either heads or all_heads: true, not both nor neither")
        if self.all_heads and self.tag is None:
            raise ValueError("all_heads needs a tag: the grid is for predictions of that tag")
        return self


class CorpusAblationIntervals(Intervals):
    mean_loss_change: dict[str, Interval] | None = Field(
        default=None, description="Per next-token tag (with `heads`)."
    )
    grid: GridInterval | None = Field(default=None, description="Per head (with `all_heads`).")


class CorpusAblationResponse(BaseModel):
    mode: AblationMode = Field(description="How the heads were ablated.")
    heads: list[HeadRef] | None = Field(description="The heads ablated together, or null.")
    tag: str | None = Field(description="The next-token tag counted, or null for every tag.")
    means: AblationMeans | None = Field(default=None, description="Mode `mean`: the source.")
    by_next_tag: list[AblationTagRow] | None = Field(
        default=None, description="With `heads`: mean loss change per next-token tag."
    )
    predictions: int = Field(description="Predictions (tokens with a next token) counted.")
    mean_loss_before: float | None = Field(
        default=None, description="With all_heads: the mean loss on the tag without ablation."
    )
    grid: MaybeGrid | None = Field(
        default=None,
        description="With all_heads: [layer][head] mean loss change on predictions of `tag` "
        "when that head alone is ablated.",
    )
    ci: CorpusAblationIntervals | None = Field(
        default=None, description="95% bootstrap intervals over sequences."
    )
    warning: str | None = Field(default=None, description=WARNING_DESCRIPTION)
    source: CorpusSource = Field(description="What was analysed.")


# -- per-head scores -----------------------------------------------------------------------------

HEAD_SCORE_KINDS = ("induction", "previous_token", "duplicate_token")
HEAD_SCORES_METHOD = (
    "Each of `n_sequences` sequences (seeded) is `length` token ids drawn uniformly from the "
    "vocabulary, then the same ids again (2 x length tokens; no text, so no meaning to use). "
    "A head's score is its attention weight, averaged over the positions p that count and over "
    "sequences: induction, p in the repeat (p >= length + 1) attending to p - length + 1 (the "
    "token after the earlier copy of the current one); duplicate_token, p in the repeat "
    "attending to p - length (the earlier copy itself); previous_token, every p >= 1 attending "
    "to p - 1. Uniform attention over the visible keys would score about 1/p; a head that "
    "always attends there scores 1. Local layers see only the last `window_size` keys: a key "
    "out of the window scores 0."
)


class HeadScoresQuery(RequestModel):
    kind: Literal["induction", "previous_token", "duplicate_token"] = Field(
        description="Which score: see the endpoint's description for the method."
    )
    seed: int = Field(default=0, description="Seed of the random token sequences.")
    n_sequences: int = Field(default=8, ge=1, le=64, description="Random sequences averaged.")
    length: int = Field(
        default=50, ge=2, le=1024, description="Tokens before the repeat (2 x length in all)."
    )


class HeadScoresResponse(BaseModel):
    kind: str = Field(description="Which score.")
    scores: Grid = Field(description="[layer][head] score, in the model's geometry.")
    n_layers: int = Field(description="Rows of the grid: the model's layers.")
    n_heads: int = Field(description="Columns of the grid: heads per layer.")
    seed: int = Field(description="Seed of the random token sequences.")
    n_sequences: int = Field(description="Random sequences averaged.")
    length: int = Field(description="Tokens before the repeat.")
    method: str = Field(description="How the scores are computed.")
