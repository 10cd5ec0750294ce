"""Typed results: the server's own response schemas, plus conversions to numpy and pandas.

Each result subclasses the pydantic model from `headscope.schemas` (pydantic-only modules, no
torch), so field names are exactly the JSON's. numpy and pandas are imported only when a
conversion is asked for, so the client installs and imports without them.

A result read from a safetensors answer holds numpy arrays (float32, or float16 when asked for)
where the JSON answer has nested lists; `to_numpy()` then hands the array over as it is, and
`model_dump()` writes it back as lists. Corpus results keep fields the server adds after this
client was written (confidence intervals, warnings) and show them in `to_pandas()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, SerializerFunctionWrapHandler
from pydantic import WrapSerializer as _WrapSerializer

from headscope import schemas

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "AblateResult",
    "CorpusAblationResult",
    "HeadScoresResult",
    "ActivityByTagResult",
    "ActivityResult",
    "AnalyzeResult",
    "AttentionByTagResult",
    "AttentionResult",
    "CorpusSource",
    "HeadPattern",
    "Health",
    "HeadRankResult",
    "ModelInfo",
    "ProbePrediction",
    "ProbeRunInfo",
    "ProbeScoresResult",
    "QuotesResult",
    "RankedHead",
    "Ready",
    "TagAttention",
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
        raise ImportError("to_pandas() needs pandas: pip install 'headscope[pandas]'") from err
    return pandas


def to_array(values: Any, dtype: Any = None) -> np.ndarray:
    """A nested list of numbers as a numpy array (float64 unless `dtype` says otherwise)."""
    numpy = _numpy()
    return numpy.asarray(values, dtype=dtype if dtype is not None else numpy.float64)


def _lists(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    # A field read from safetensors is an array; it dumps as the nested lists JSON has.
    if hasattr(value, "tolist") and not isinstance(value, list):
        return value.tolist()
    return handler(value)


# Long: one row per (layer, head, token); wide: one row per token, one column per head.
Layout = Literal["long", "wide"]

_AsLists = _WrapSerializer(_lists)
Matrix = Annotated[list[list[float]], _AsLists]
Cube = Annotated[list[list[list[float]]], _AsLists]


class EngineArrays(BaseModel):
    """A result with arrays from the engine: they come as float32 or, when asked, float16."""

    _dtype: str = PrivateAttr(default="float32")

    def __eq__(self, other: object) -> bool:
        # Compared as dumped, where arrays are lists: numpy's == would answer with an array.
        if not isinstance(other, EngineArrays) or type(other) is not type(self):
            return NotImplemented
        return self._dtype == other._dtype and self.model_dump() == other.model_dump()

    def _array(self, values: Any, dtype: Any) -> np.ndarray:
        # An array from safetensors already has the dtype: asarray hands it over, no copy.
        return _numpy().asarray(values, dtype=dtype if dtype is not None else self._dtype)


def set_dtype(result: Any, dtype: str) -> None:
    """Record the dtype the server sent the numbers in, so to_numpy() gives the same."""
    if isinstance(result, EngineArrays):
        result._dtype = dtype


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


def _frame_values(array: Any) -> np.ndarray:
    # pandas has no float16 columns to speak of (it overflows printing them): float32 holds
    # every float16 exactly.
    numpy = _numpy()
    return array.reshape(-1).astype(numpy.promote_types(array.dtype, numpy.float32), copy=False)


def activity_frame(
    tokens: Sequence[schemas.Token], layers: Sequence[int], heads: Sequence[int], array: Any
) -> pd.DataFrame:
    """Long format: one row per (layer, head, token) with the token's text and tag."""
    numpy, pandas = _numpy(), _pandas()
    n_layers, n_heads, n_tokens = array.shape  # [layer, head, token]
    cells = n_layers * n_heads
    return pandas.DataFrame(
        {
            "layer": numpy.repeat(numpy.asarray(layers, dtype=numpy.int64), n_heads * n_tokens),
            "head": numpy.tile(
                numpy.repeat(numpy.asarray(heads, dtype=numpy.int64), n_tokens), n_layers
            ),
            "token": numpy.tile(numpy.array([t.index for t in tokens], dtype=numpy.int64), cells),
            "text": numpy.tile(numpy.array([t.text for t in tokens], dtype=object), cells),
            "tag": numpy.tile(numpy.array([t.tag for t in tokens], dtype=object), cells),
            "activity": _frame_values(array),
        }
    )


def pattern_frame(tokens: Sequence[schemas.Token], queries: Sequence[int], pattern: Any):
    """Long format: one row per (query, key) with both tokens' texts and the weight."""
    numpy, pandas = _numpy(), _pandas()
    n_queries, n_keys = pattern.shape  # [query, key]
    texts = numpy.array([t.text for t in tokens], dtype=object)
    queries = numpy.asarray(queries, dtype=numpy.int64)
    return pandas.DataFrame(
        {
            "query": numpy.repeat(queries, n_keys),
            "key": numpy.tile(numpy.arange(n_keys), n_queries),
            "query_text": numpy.repeat(texts[queries], n_keys),
            "key_text": numpy.tile(texts[:n_keys], n_queries),
            "weight": _frame_values(pattern),
        }
    )


class TagResult(schemas.TagResponse):
    def to_pandas(self) -> pd.DataFrame:
        """The token table: index `token`; columns id, text, start, end, tag."""
        return tokens_frame(self.tokens)


class ActivityResult(EngineArrays, schemas.ActivityResponse):
    activity: Cube

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """Activity as an array of shape [layer, head, token], in the order of `layers`/`heads`,
        in the dtype the server sent (float32, or float16 when asked) unless `dtype` says
        otherwise."""
        return self._array(self.activity, dtype)

    def head_activity(self, layer: int, head: int) -> Sequence[float]:
        """Activity per token of one reported head."""
        return self.activity[self.layers.index(layer)][self.heads.index(head)]

    def to_pandas(self, layout: Layout = "long") -> pd.DataFrame:
        """`long` (default): one row per (layer, head, token) with columns layer, head, token,
        text, tag, activity. `wide`: the token table with one column per head, `L{l}H{h}`."""
        if layout == "wide":
            array = self.to_numpy()
            return tokens_frame(
                self.tokens,
                {
                    head_name(layer, head): array[i, j]
                    for i, layer in enumerate(self.layers)
                    for j, head in enumerate(self.heads)
                },
            )
        _check_layout(layout)
        return activity_frame(self.tokens, self.layers, self.heads, self.to_numpy())


def _check_layout(layout: str) -> None:
    if layout not in ("long", "wide"):
        raise ValueError(f"layout must be 'long' or 'wide'; got {layout!r}")


class AttentionResult(EngineArrays, schemas.AttentionResponse):
    pattern: Matrix

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """The pattern as an array of shape [query, key] (one row when `query` was given), in
        the dtype the server sent unless `dtype` says otherwise."""
        return self._array(self.pattern, dtype)

    def to_pandas(self) -> pd.DataFrame:
        """Long format: one row per (query, key): query, key, query_text, key_text, weight."""
        pattern = self.to_numpy()
        queries = [self.query] if self.query is not None else range(pattern.shape[0])
        return pattern_frame(self.tokens, list(queries), pattern)


class HeadPattern(schemas.HeadPattern):
    pattern: Matrix


class AnalyzeResult(EngineArrays, schemas.AnalyzeResponse):
    activity: Cube
    patterns: list[HeadPattern]  # type: ignore[assignment]  # the client's subclass of the server's item

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """Activity of every head as an array of shape [layer, head, token], in the dtype the
        server sent unless `dtype` says otherwise."""
        return self._array(self.activity, dtype)

    def pattern(self, layer: int, head: int, dtype: Any = None) -> np.ndarray:
        """A requested head's attention pattern as an array of shape [query, key]."""
        for item in self.patterns:
            if (item.layer, item.head) == (layer, head):
                return self._array(item.pattern, dtype)
        asked = ", ".join(head_name(item.layer, item.head) for item in self.patterns) or "none"
        raise KeyError(f"{head_name(layer, head)} was not requested (patterns: {asked})")

    def patterns_to_numpy(self, dtype: Any = None) -> np.ndarray:
        """Every requested pattern stacked, shape [pattern, query, key], in `patterns` order."""
        numpy = _numpy()
        n_tokens = len(self.tokens)
        if not self.patterns:
            return numpy.zeros((0, n_tokens, n_tokens), dtype=dtype or self._dtype)
        return numpy.stack([self._array(item.pattern, dtype) for item in self.patterns])

    def to_pandas(self, layout: Layout = "long") -> pd.DataFrame:
        """`long` (default): one row per (layer, head, token) with columns layer, head, token,
        text, tag, activity. `wide`: the token table with one column per head, `L{l}H{h}`."""
        array = self.to_numpy()  # [layer, head, token]
        n_layers, n_heads, _ = array.shape
        if layout == "wide":
            return tokens_frame(
                self.tokens,
                {
                    head_name(layer, head): array[layer, head]
                    for layer in range(n_layers)
                    for head in range(n_heads)
                },
            )
        _check_layout(layout)
        return activity_frame(self.tokens, range(n_layers), range(n_heads), array)

    def patterns_to_pandas(self) -> pd.DataFrame:
        """Long format: one row per (layer, head, query, key) of every requested pattern, with
        the tokens' texts and the weight."""
        pandas = _pandas()
        frames = []
        for item in self.patterns:
            pattern = self._array(item.pattern, None)
            frame = pattern_frame(self.tokens, range(pattern.shape[0]), pattern)
            frame.insert(0, "layer", item.layer)
            frame.insert(1, "head", item.head)
            frames.append(frame)
        if not frames:
            columns = ["layer", "head", "query", "key", "query_text", "key_text", "weight"]
            return pandas.DataFrame(columns=columns)
        return pandas.concat(frames, ignore_index=True)


# -- corpus statistics -------------------------------------------------------------------------
#
# The server may add confidence intervals and warnings to these results. They are kept (extra
# fields allowed) and put in the frames when present: an interval `<stat>_ci` (or `ci: {stat:
# ...}`) as columns `<stat>_ci_low` and `<stat>_ci_high`, written either as [low, high] (per
# head: [layer][head][2]) or as {"low": ..., "high": ...}; any other per-head grid or per-row
# value as a column of its own name; anything else (a warning) in `frame.attrs`.

INTERVAL_BOUNDS = (("low", "high"), ("lower", "upper"))


def _bounds(interval: Any) -> tuple[Any, Any] | None:
    """(low, high) of an interval written either way, or None if it is not one."""
    if isinstance(interval, Mapping):
        for low, high in INTERVAL_BOUNDS:
            if low in interval and high in interval:
                return interval[low], interval[high]
        return None
    if isinstance(interval, Sequence) and not isinstance(interval, str):
        numpy = _numpy()
        array = numpy.asarray(interval, dtype=numpy.float64)
        if array.ndim >= 1 and array.shape[-1] == 2:
            return array[..., 0], array[..., 1]
    return None


def _intervals(name: str, value: Any) -> dict[str, Any] | None:
    """The columns `<stat>_ci_low/_high` for an extra field that holds intervals, or None."""
    if name == "ci" and isinstance(value, Mapping) and _bounds(value) is None:
        columns: dict[str, Any] = {}
        for stat, interval in value.items():
            columns.update(_intervals(f"{stat}_ci", interval) or {f"{stat}_ci": interval})
        return columns
    if name == "ci" or name.endswith("_ci"):
        bounds = _bounds(value)
        if bounds is not None:
            return {f"{name}_low": bounds[0], f"{name}_high": bounds[1]}
    return None


def _extras_by_row(rows: Sequence[BaseModel]) -> list[dict[str, Any]]:
    """Each row's fields, with intervals split into low/high."""
    table = []
    for row in rows:
        fields = row.model_dump()
        for name in list(row.model_extra or {}):
            columns = _intervals(name, fields[name])
            if columns is not None:
                del fields[name]
                fields.update(columns)
        table.append(fields)
    return table


def _attach_extras(frame: pd.DataFrame, result: BaseModel, shape: tuple[int, ...] = ()) -> None:
    """Extra top-level fields: intervals and grids of `shape` as columns, the rest as attrs."""
    numpy = _numpy()
    extras = dict(result.model_extra or {})
    if getattr(result, "warning", None) is not None:
        frame.attrs["warning"] = result.warning  # type: ignore[attr-defined]
    declared_ci = getattr(result, "ci", None)
    if isinstance(declared_ci, BaseModel) and shape:
        # The server's own intervals: each per-head interval as two columns; the rest (level,
        # resamples, method) in frame.attrs["ci"].
        intervals = declared_ci.model_dump()
        frame.attrs["ci"] = {k: v for k, v in intervals.items() if _bounds(v) is None}
        extras["ci"] = {k: v for k, v in intervals.items() if _bounds(v) is not None}
    for name, value in extras.items():
        columns = _intervals(name, value) if shape else None
        if columns is not None:
            for column, grid in columns.items():
                frame[column] = numpy.asarray(grid, dtype=numpy.float64).reshape(-1)
            continue
        if shape and _grid_shape(value) == shape:
            frame[name] = numpy.asarray(value, dtype=object).reshape(-1)
            continue
        frame.attrs[name] = value


def _grid_shape(value: Any) -> tuple[int, int] | None:
    is_grid = (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], list)
        and all(not isinstance(item, list) for row in value for item in row)
    )
    return (len(value), len(value[0])) if is_grid else None


def head_statistics_frame(result: BaseModel, names: Sequence[str]) -> pd.DataFrame:
    """One row per head: layer, head, then each [layer][head] grid of `names` (NaN where the
    server sent null), its intervals and the other extra fields when the server gave them."""
    numpy, pandas = _numpy(), _pandas()
    grids = {name: getattr(result, name) for name in names}
    shapes = [shape for grid in grids.values() if (shape := _grid_shape(grid)) is not None]
    if not shapes:  # every grid null: nothing was counted (no quotations, say)
        frame = pandas.DataFrame(columns=["layer", "head", *names])
        _attach_extras(frame, result)
        return frame
    shape = shapes[0]
    n_layers, n_heads = shape
    frame = pandas.DataFrame(
        {
            "layer": numpy.repeat(numpy.arange(n_layers), n_heads),
            "head": numpy.tile(numpy.arange(n_heads), n_layers),
            **{
                name: numpy.full(n_layers * n_heads, numpy.nan)
                if grid is None
                else numpy.asarray(grid, dtype=numpy.float64).reshape(-1)
                for name, grid in grids.items()
            },
        }
    )
    _attach_extras(frame, result, shape)
    return frame


def _grid(result: BaseModel, name: str, dtype: Any) -> np.ndarray:
    """A [layer][head] field of a corpus result as an array of shape [layer, head]."""
    values = getattr(result, name)
    if values is None:
        raise ValueError(
            f"{name} is null in this result: no tokens to average over (see the counts)"
        )
    return to_array(values, dtype)


class TagAttention(schemas.TagAttention):
    model_config = ConfigDict(extra="allow")


class AttentionByTagResult(schemas.AttentionByTagResponse):
    model_config = ConfigDict(extra="allow")
    rows: list[TagAttention]  # type: ignore[assignment]  # the client's subclass of the server's item

    def to_pandas(self) -> pd.DataFrame:
        """One row per tag (index `tag`): attention, frequency, query_tokens, and intervals
        (`attention_ci_low`, ...) when the server gives them."""
        pandas = _pandas()
        frame = pandas.DataFrame(_extras_by_row(self.rows))
        if frame.empty:
            frame = pandas.DataFrame(columns=list(schemas.TagAttention.model_fields))
        frame = frame.set_index("tag")
        _attach_extras(frame, self)
        return frame

    def attention_to(self, tag: str) -> float:
        """The `attention` of the row for `tag` (0.0 when the tag is not among the rows)."""
        return next((row.attention for row in self.rows if row.tag == tag), 0.0)


ACTIVITY_BY_TAG_GRIDS = ("mean_at_position", "mean_overall", "lift")
QUOTES_GRIDS = ("mean_inside", "mean_outside", "ratio", "attention_to_opening")


class ActivityByTagResult(schemas.ActivityByTagResponse):
    model_config = ConfigDict(extra="allow")

    def to_numpy(self, field: str = "lift", dtype: Any = None) -> np.ndarray:
        """A grid of shape [layer, head]: `lift` (default), `mean_at_position` or
        `mean_overall`. Raises ValueError when the field is null (no tokens at `position`)."""
        if field not in ACTIVITY_BY_TAG_GRIDS:
            raise ValueError(f"no grid named {field!r}")
        return _grid(self, field, dtype)

    def to_pandas(self) -> pd.DataFrame:
        """One row per head: layer, head, mean_at_position, mean_overall, lift (NaN when null),
        and their intervals (`lift_ci_low`, ...) when the server gives them."""
        return head_statistics_frame(self, ACTIVITY_BY_TAG_GRIDS)


class QuotesResult(schemas.QuotesResponse):
    model_config = ConfigDict(extra="allow")

    def to_numpy(self, field: str = "ratio", dtype: Any = None) -> np.ndarray:
        """A grid of shape [layer, head]: `ratio` (default), `mean_inside`, `mean_outside` or
        `attention_to_opening`. Raises ValueError when the field is null (no quotations)."""
        if field not in QUOTES_GRIDS:
            raise ValueError(f"no grid named {field!r}")
        return _grid(self, field, dtype)

    def to_pandas(self) -> pd.DataFrame:
        """One row per head: layer, head, mean_inside, mean_outside, ratio,
        attention_to_opening (NaN when null), and their intervals when the server gives them."""
        return head_statistics_frame(self, QUOTES_GRIDS)

    def spans_to_pandas(self) -> pd.DataFrame:
        """The quotations found, one row per span."""
        pandas = _pandas()
        columns = list(schemas.QuoteSpan.model_fields)
        return pandas.DataFrame([span.model_dump() for span in self.spans], columns=columns)


class RankedHead(schemas.RankedHead):
    model_config = ConfigDict(extra="allow")


class HeadRankResult(schemas.HeadRankResponse):
    model_config = ConfigDict(extra="allow")
    heads: list[RankedHead]  # type: ignore[assignment]  # the client's subclass of the server's item

    def to_pandas(self) -> pd.DataFrame:
        """The ranked heads, best combined rank first, indexed by `L{layer}H{head}`, with
        intervals when the server gives them."""
        pandas = _pandas()
        columns = list(schemas.RankedHead.model_fields)
        frame = pandas.DataFrame(_extras_by_row(self.heads))
        if frame.empty:
            frame = pandas.DataFrame(columns=columns)
        frame.index = pandas.Index(
            [head_name(head.layer, head.head) for head in self.heads], name="head"
        )
        _attach_extras(frame, self)
        return frame


class ProbeScoresResult(schemas.ProbeScores):
    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """The score grid as an array of shape [layer, head] (the paper's Appendix A/B)."""
        return to_array(self.scores, dtype)

    def to_pandas(self) -> pd.DataFrame:
        """Long format: one row per head: layer, head, vector, tag, metric, value, support."""
        numpy, pandas = _numpy(), _pandas()
        scores = self.to_numpy()  # [layer, head]
        n_layers, n_heads = scores.shape
        return pandas.DataFrame(
            {
                "layer": numpy.repeat(numpy.arange(n_layers), n_heads),
                "head": numpy.tile(numpy.arange(n_heads), n_layers),
                "vector": self.vector,
                "tag": self.tag,
                "metric": self.metric,
                "value": scores.reshape(-1),
                "support": pandas.array([self.support] * scores.size, dtype="Int64"),
            }
        )


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


class AblateResult(schemas.AblateResponse):
    model_config = ConfigDict(extra="allow")

    def to_pandas(self) -> pd.DataFrame:
        """One row per prediction: index, next_text, next_tag, loss_before, loss_after,
        loss_change, logit and probability before and after (the top-k lists left out)."""
        pandas = _pandas()
        rows = [
            prediction.model_dump(exclude={"top_before", "top_after"})
            for prediction in self.predictions
        ]
        return pandas.DataFrame(rows)


class CorpusAblationResult(schemas.CorpusAblationResponse):
    model_config = ConfigDict(extra="allow")

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """With all_heads: the grid of mean loss changes, shape [layer, head]. Raises
        ValueError when the result has no grid (heads were ablated together)."""
        return _grid(self, "grid", dtype)


class HeadScoresResult(schemas.HeadScoresResponse):
    model_config = ConfigDict(extra="allow")

    def to_numpy(self, dtype: Any = None) -> np.ndarray:
        """The scores as an array of shape [layer, head]."""
        return to_array(self.scores, dtype)
