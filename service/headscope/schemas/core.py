"""Core v1 schemas: tokens, tagging, activity, attention, analyze, model info, errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from headscope.schemas.output import OutputOptions, PatternOutputOptions

__all__ = [
    "ActivityRequest",
    "ActivityResponse",
    "Alignment",
    "AnalyzeRequest",
    "AnalyzeResponse",
    "AttentionRequest",
    "AttentionResponse",
    "ErrorBody",
    "ErrorResponse",
    "HeadPattern",
    "HeadRef",
    "HealthResponse",
    "ModelInfo",
    "ReadyResponse",
    "BodyModel",
    "RequestModel",
    "TagRequest",
    "TagResponse",
    "TextRequest",
    "Token",
]

Alignment = Literal["overlap", "paper"]

# Most entries a layers/heads/patterns list may have, whatever the model: a bound checked while
# parsing, far above any real model's geometry (each entry must also be distinct and exist in
# the loaded model, which caps a list at its layer or head count).
MAX_SELECTION = 4096


def refuse_duplicates(values: list, what: str) -> list:
    """Each entry once: a repeated layer, head or pattern would multiply the response's size
    (and its cost) without adding anything."""
    seen: set = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} lists {value} more than once; list each at most once")
        seen.add(value)
    return values


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class BodyModel(RequestModel):
    """Base of JSON request bodies: strict types as well, so `true` is never read as layer 1.

    Query-string models stay lax: there every value arrives as text.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class TextRequest(BodyModel):
    text: str = Field(
        description="The text to analyse. Tokenized with the model's tokenizer; at most "
        "`max_tokens` tokens (see GET /v1/model)."
    )

    @field_validator("text")
    @classmethod
    def _text_is_valid_unicode(cls, text: str) -> str:
        # A lone surrogate (JSON "\ud800") is legal JSON but not encodable text: refuse it here
        # rather than let the tokenizer fail on it.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError("text contains characters that are not valid Unicode") from err
        return text


class Token(BaseModel):
    index: int = Field(description="Position of the token in the sequence, from 0.")
    id: int = Field(description="Token id in the model's vocabulary.")
    text: str = Field(description="The characters of the submitted text this token covers.")
    start: int = Field(description="Character offset of the token's first character.")
    end: int = Field(description="Character offset one past the token's last character.")
    tag: str | None = Field(
        default=None,
        description="Penn Treebank POS tag of the word the token belongs to (NLTK's averaged "
        "perceptron), or NONE for a token of whitespace only.",
    )


class TagRequest(TextRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": 'Tom said, "I like the lake."'}]}
    )

    alignment: Alignment = Field(
        default="overlap",
        description="How word tags map to model tokens. `overlap` (default): sentences split "
        "first, each token gets the tag of the word its non-whitespace characters overlap most. "
        "`paper`: the paper's pipeline (Treebank over the whole text, tag of the token's middle "
        "character, rounded up), kept for comparison only.",
    )


class TagResponse(BaseModel):
    tokens: list[Token] = Field(description="The model tokens with their POS tags.")


class ActivityRequest(OutputOptions, TextRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "Lily walked to the park.", "layers": [6], "heads": [4]}]
        }
    )

    layers: list[int] | None = Field(
        default=None,
        max_length=MAX_SELECTION,
        description="Layers to report, from 0, each at most once. Default: all layers.",
    )
    heads: list[int] | None = Field(
        default=None,
        max_length=MAX_SELECTION,
        description="Heads to report in each layer, from 0, each at most once. Default: all heads.",
    )

    @field_validator("layers", "heads")
    @classmethod
    def _each_once(cls, values: list[int] | None, info) -> list[int] | None:
        return values if values is None else refuse_duplicates(values, info.field_name)


class ActivityResponse(BaseModel):
    tokens: list[Token] = Field(description="The model tokens (without tags).")
    layers: list[int] = Field(description="The layers reported, in the order of `activity`.")
    heads: list[int] = Field(description="The heads reported, in the order of `activity[i]`.")
    activity: list[list[list[float]]] = Field(
        description="activity[i][j][t] = L2 norm of the contribution of head heads[j] of layer "
        "layers[i] to the residual stream at token t: ‖z_h · W_O[:, h-slice]ᵀ‖₂, raw W_O, no bias."
    )


class AttentionRequest(PatternOutputOptions, TextRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": 'She said, "Look at the ball!"', "layer": 2, "head": 0, "query": 7}
            ]
        }
    )

    layer: int = Field(description="Layer, from 0.")
    head: int = Field(description="Head within the layer, from 0.")
    query: int | None = Field(
        default=None,
        description="Only this query position's row (returned as a one-row matrix). "
        "Default: all rows.",
    )


class AttentionResponse(BaseModel):
    tokens: list[Token] = Field(description="The model tokens (without tags).")
    layer: int = Field(description="Layer of the pattern.")
    head: int = Field(description="Head of the pattern.")
    query: int | None = Field(default=None, description="The query row asked for, if any.")
    pattern: list[list[float]] = Field(
        description="pattern[q][k] = attention weight of query q on key k (rows sum to 1; "
        "causal, and on local layers only the last `window_size` keys are visible)."
    )


class HeadRef(BodyModel):
    layer: int = Field(description="Layer, from 0.")
    head: int = Field(description="Head within the layer, from 0.")


class AnalyzeRequest(PatternOutputOptions, TextRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "His dog ate the bone.", "patterns": [{"layer": 5, "head": 5}]}]
        }
    )

    patterns: list[HeadRef] = Field(
        default_factory=list,
        max_length=MAX_SELECTION,
        description="Heads whose full attention pattern to return, each at most once. Activity "
        "is always returned for every head.",
    )

    @field_validator("patterns")
    @classmethod
    def _each_head_once(cls, patterns: list[HeadRef]) -> list[HeadRef]:
        refuse_duplicates([f"layer {ref.layer} head {ref.head}" for ref in patterns], "patterns")
        return patterns


class HeadPattern(BaseModel):
    layer: int = Field(description="Layer of the pattern.")
    head: int = Field(description="Head of the pattern.")
    pattern: list[list[float]] = Field(description="pattern[q][k], as in /v1/attention.")


class AnalyzeResponse(BaseModel):
    tokens: list[Token] = Field(description="The model tokens with their POS tags.")
    activity: list[list[list[float]]] = Field(
        description="activity[layer][head][token] for every layer and head."
    )
    patterns: list[HeadPattern] = Field(description="The requested attention patterns.")


class ModelInfo(BaseModel):
    model_id: str = Field(description="The hub id or local directory the model was loaded from.")
    architecture: str = Field(description="The model class, e.g. GPTNeoForCausalLM.")
    n_layers: int = Field(description="Number of transformer blocks.")
    n_heads: int = Field(description="Attention heads per layer.")
    d_head: int = Field(description="Size of each head's key/query/value vectors.")
    d_model: int = Field(description="Width of the residual stream.")
    max_tokens: int = Field(description="The most tokens one request may have.")
    max_position_embeddings: int = Field(description="The positions the config allows.")
    attention_layers: list[Literal["global", "local"]] = Field(
        description="Attention type per layer; local layers see only the last `window_size` "
        "positions."
    )
    window_size: int = Field(description="Window of the local attention layers.")
    weights_sha256: str = Field(
        description="Fingerprint of the weights: sha256 over the weight file(s), in name order."
    )
    activity_w_o: Literal["raw"] = Field(
        default="raw",
        description="Activity uses the model's raw W_O, as the paper does (not a centred W_O).",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="Always `ok` while the process answers.")


class ReadyResponse(BaseModel):
    ready: bool = Field(description="True once the model is loaded.")
    model_id: str | None = Field(
        default=None,
        description="The loaded model: its hub id, or a local directory's name (never a path).",
    )
    probes: Literal["loaded", "unavailable"] = Field(
        default="unavailable", description="Whether probe endpoints can answer."
    )
    probes_reason: str | None = Field(
        default=None, description="Why probes are unavailable, and how to fix it."
    )
    tagger: Literal["ready", "starting", "unresponsive", "stopped"] = Field(
        default="ready",
        description="Whether the POS tagger answers. While it does not, routes that need tags "
        "answer 503 with Retry-After and the others are unaffected: 'starting' (a new tagger "
        "process is loading), 'unresponsive' (it stopped answering and is being replaced).",
    )


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. `input_too_long`.")
    message: str = Field(description="What went wrong, for a person.")
    detail: object | None = Field(default=None, description="Structured detail, if any.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="The error; every 4xx and 5xx has this one shape.")
