"""Typed results: the server's own response schemas, plus conversions to numpy and pandas.

Each result subclasses the pydantic model from `headscope.schemas` (pydantic-only modules, no
torch), so field names are exactly the JSON's. numpy and pandas are imported only when a
conversion is asked for, so the client installs and imports without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from headscope import schemas

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "ActivityByTagResult",
    "ActivityResult",
    "AnalyzeResult",
    "AttentionByTagResult",
    "AttentionResult",
    "CorpusSource",
    "Health",
    "HeadRankResult",
    "ModelInfo",
    "ProbePrediction",
    "ProbeRunInfo",
    "ProbeScoresResult",
    "QuotesResult",
    "Ready",
    "TagResult",
    "Token",
    "head_name",
]

# The server's models that need no conversions are the results as they are.
Token = schemas.Token
ModelInfo = schemas.ModelInfo
Health = schemas.HealthResponse
Ready = schemas.ReadyResponse
CorpusSource = schemas.CorpusSource
ProbeRunInfo = schemas.ProbeRunInfo


def head_name(layer: int, head: int) -> str:
    """The paper's notation for a head: `L{layer}H{head}`."""
    return f"L{layer}H{head}"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as err:  # pragma: no cover - numpy is in the test environment
        raise ImportError(
            "to_numpy() needs numpy: pip install 'headscope[numpy]' (or numpy)"
        ) from err
    return numpy


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - pandas is in the test environment
        raise ImportError("to_pandas() needs pandas: pip install pandas") from err
    return pandas


def to_array(values: Any, dtype: Any = None) -> np.ndarray:
    """A nested list of numbers as a numpy array (float64 unless `dtype` says otherwise)."""
    numpy = _numpy()
    return numpy.asarray(values, dtype=dtype if dtype is not None else numpy.float64)


def tokens_frame(tokens: Sequence[schemas.Token], columns: dict[str, Any] | None = None):
    """One row per token (index, id, text, start, end, tag), plus any extra `columns`."""
    pandas = _pandas()
    # Built from one dict: adding 128 head columns one by one would fragment the frame.
    data = {
        "id": [token.id for token in tokens],
        "text": [token.text for token in tokens],
        "start": [token.start for token in tokens],
        "end": [token.end for token in tokens],
        "tag": [token.tag for token in tokens],
        **(columns or {}),
    }
    return pandas.DataFrame(data, index=pandas.Index([t.index for t in tokens], name="token"))


class TagResult(schemas.TagResponse):
    def to_pandas(self) -> pd.DataFrame:
        """The token table: index `token`; columns id, text, start, end, tag."""
        return tokens_frame(self.tokens)


class ActivityResult(schemas.ActivityResponse):
    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """Activity as an array of shape [layer, head, token], in the order of `layers`/`heads`."""
        return to_array(self.activity, dtype)

    def head_activity(self, layer: int, head: int) -> list[float]:
        """Activity per token of one reported head."""
        return self.activity[self.layers.index(layer)][self.heads.index(head)]

    def to_pandas(self) -> pd.DataFrame:
        """The token table with one activity column per reported head, named `L{l}H{h}`."""
        return tokens_frame(
            self.tokens,
            {
                head_name(layer, head): self.activity[i][j]
                for i, layer in enumerate(self.layers)
                for j, head in enumerate(self.heads)
            },
        )


class AttentionResult(schemas.AttentionResponse):
    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """The pattern as an array of shape [query, key] (one row when `query` was given)."""
        return to_array(self.pattern, dtype)


class AnalyzeResult(schemas.AnalyzeResponse):
    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """Activity of every head as an array of shape [layer, head, token]."""
        return to_array(self.activity, dtype)

    def pattern(self, layer: int, head: int, dtype: Any = None) -> np.ndarray:
        """A requested head's attention pattern as an array of shape [query, key]."""
        for item in self.patterns:
            if (item.layer, item.head) == (layer, head):
                return to_array(item.pattern, dtype)
        asked = ", ".join(head_name(item.layer, item.head) for item in self.patterns) or "none"
        raise KeyError(f"{head_name(layer, head)} was not requested (patterns: {asked})")

    def to_pandas(self) -> pd.DataFrame:
        """The token table (with tags) and one activity column per head, named `L{l}H{h}`."""
        return tokens_frame(
            self.tokens,
            {
                head_name(layer, head): values
                for layer, heads in enumerate(self.activity)
                for head, values in enumerate(heads)
            },
        )


def _grid(result: BaseModel, name: str, dtype: Any) -> np.ndarray:
    """A [layer][head] field of a corpus result as an array of shape [layer, head]."""
    values = getattr(result, name)
    if values is None:
        raise ValueError(
            f"{name} is null in this result: no tokens to average over (see the counts)"
        )
    return to_array(values, dtype)


class AttentionByTagResult(schemas.AttentionByTagResponse):
    def to_pandas(self) -> pd.DataFrame:
        """One row per tag (index `tag`): attention, frequency, query_tokens."""
        pandas = _pandas()
        frame = pandas.DataFrame([row.model_dump() for row in self.rows])
        if frame.empty:
            frame = pandas.DataFrame(columns=list(schemas.TagAttention.model_fields))
        return frame.set_index("tag")

    def attention_to(self, tag: str) -> float:
        """The `attention` of the row for `tag` (0.0 when the tag is not among the rows)."""
        return next((row.attention for row in self.rows if row.tag == tag), 0.0)


class ActivityByTagResult(schemas.ActivityByTagResponse):
    def to_numpy(self, field: str = "lift", dtype: Any = None) -> np.ndarray:
        """A grid of shape [layer, head]: `lift` (default), `mean_at_position` or
        `mean_overall`. Raises ValueError when the field is null (no tokens at `position`)."""
        if field not in ("lift", "mean_at_position", "mean_overall"):
            raise ValueError(f"no grid named {field!r}")
        return _grid(self, field, dtype)


class QuotesResult(schemas.QuotesResponse):
    def to_numpy(self, field: str = "ratio", dtype: Any = None) -> np.ndarray:
        """A grid of shape [layer, head]: `ratio` (default), `mean_inside`, `mean_outside` or
        `attention_to_opening`. Raises ValueError when the field is null (no quotations)."""
        if field not in ("ratio", "mean_inside", "mean_outside", "attention_to_opening"):
            raise ValueError(f"no grid named {field!r}")
        return _grid(self, field, dtype)

    def to_pandas(self) -> pd.DataFrame:
        """The quotations found, one row per span."""
        pandas = _pandas()
        columns = list(schemas.QuoteSpan.model_fields)
        return pandas.DataFrame([span.model_dump() for span in self.spans], columns=columns)


class HeadRankResult(schemas.HeadRankResponse):
    def to_pandas(self) -> pd.DataFrame:
        """The ranked heads, best combined rank first, indexed by `L{layer}H{head}`."""
        pandas = _pandas()
        columns = list(schemas.RankedHead.model_fields)
        frame = pandas.DataFrame([head.model_dump() for head in self.heads], columns=columns)
        frame.index = pandas.Index(
            [head_name(head.layer, head.head) for head in self.heads], name="head"
        )
        return frame


class ProbeScoresResult(schemas.ProbeScores):
    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """The score grid as an array of shape [layer, head] (the paper's Appendix A/B)."""
        return to_array(self.scores, dtype)


class ProbePrediction(schemas.ProbePredictResponse):
    def to_pandas(self) -> pd.DataFrame:
        """The token table (`tag` is the true NLTK tag) with the probe's `predicted` tag, its
        `probability`, and `correct`."""
        predicted = [prediction.tag for prediction in self.predictions]
        return tokens_frame(
            self.tokens,
            {
                "predicted": predicted,
                "probability": [prediction.probability for prediction in self.predictions],
                "correct": [
                    token.tag == tag for token, tag in zip(self.tokens, predicted, strict=True)
                ],
            },
        )

    @property
    def accuracy(self) -> float:
        """Share of tokens whose predicted tag is the true tag."""
        hits = sum(
            token.tag == prediction.tag
            for token, prediction in zip(self.tokens, self.predictions, strict=True)
        )
        return hits / len(self.tokens)
