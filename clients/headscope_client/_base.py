"""One base for both clients: configuration, request building, response parsing, retry policy.

`Client` and `AsyncClient` (in `_client.py`) only send what this base builds: every endpoint is
an `APICall` built here by a `_<endpoint>_call` method, and every response goes back through
`_retry_delay` (send again?) and `_result` (parse, or raise the mapped exception). Batches
(`analyze_many`) are built here too: the twins only run the calls, a few at a time.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import httpx
from pydantic import BaseModel, ValidationError

from headscope_client import _models as models
from headscope_client._binary import (
    JSON,
    NPY,
    SAFETENSORS,
    binary_libraries_missing,
    decode_npy,
    decode_safetensors,
    place_arrays,
)
from headscope_client._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRY_JITTER,
    RETRY_STATUS_CODES,
)
from headscope_client._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    make_status_error,
)

log = logging.getLogger("headscope_client")

# A pydantic model parsed from JSON, or `bytes` for an image.
ResultT = TypeVar("ResultT")
Alignment = Literal["overlap", "paper"]
Position = Literal["on", "before", "after"]
ProbeMetric = Literal["f1", "precision", "recall", "selectivity"]
ProbeVector = Literal["key", "query", "value"]
AblationMode = Literal["zero", "mean"]
HeadScoreKind = Literal["induction", "previous_token", "duplicate_token"]
# Precision of returned numbers: the engine's float32, or rounded to float16.
ArrayDType = Literal["float32", "float16"]
# How a result travels. `auto`: safetensors when numpy and safetensors are installed, else JSON.
ResultFormat = Literal["json", "safetensors", "auto"]
# /v1/activity and /v1/attention also offer npy: the bare array (a numpy.ndarray), no tokens.
ArrayFormat = Literal["json", "safetensors", "npy", "auto"]
# A head as (layer, head), {"layer": l, "head": h}, or any object with .layer and .head.
HeadLike = tuple[int, int] | Mapping[str, int] | Any
TimeoutLike = float | httpx.Timeout | None

USER_AGENT = "headscope-client"


@dataclass(frozen=True)
class APICall(Generic[ResultT]):
    """One endpoint call, built but not sent."""

    method: str
    path: str
    result: type[ResultT]
    json: Any = None
    params: dict[str, Any] | None = None
    # Statuses other than 2xx that are still an answer (GET /readyz: 503 means "not ready"),
    # turned into a result from the error envelope's message.
    result_statuses: frozenset[int] = field(default_factory=frozenset)
    result_from_error: Callable[[str], ResultT] | None = None
    retry: bool = True
    # The media type asked for (Accept), and the dtype the numbers come in (None: no arrays).
    accept: str = JSON
    dtype: ArrayDType | None = None


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Leave unset options out of the body, so the server's defaults apply."""
    return {name: value for name, value in values.items() if value is not None}


def output_options(
    dtype: ArrayDType | None,
    decimals: int | None,
    top_k: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The request fields for how numbers come back (only those set: the server's defaults
    apply to the rest)."""
    return _drop_none(
        {"dtype": dtype, "decimals": decimals, "top_k": top_k, "threshold": threshold}
    )


def accept_for(format: str, *, npy: bool = False) -> str:
    """The media type to ask for with `format`: one of ResultFormat, or ArrayFormat when `npy`."""
    offered = {"json": JSON, "safetensors": SAFETENSORS} | ({"npy": NPY} if npy else {})
    if format == "auto":
        return SAFETENSORS if binary_libraries_missing() is None else JSON
    if format not in offered:
        raise ValueError(f"format must be one of {', '.join([*offered, 'auto'])}; got {format!r}")
    if offered[format] != JSON and (missing := binary_libraries_missing()):
        raise ImportError(f"format={format!r} needs numpy and safetensors; {missing}")
    return offered[format]


def array_call(
    path: str,
    result: type[ResultT],
    body: dict[str, Any],
    format: str,
    dtype: ArrayDType | None,
    *,
    npy: bool = False,
) -> APICall[ResultT]:
    """POST `body` to an endpoint whose answer holds arrays: in `format` (npy offered when
    `npy`), numbers in `dtype` (the server's default, float32, when unset)."""
    return APICall(
        "POST",
        path,
        result,
        json=body,
        accept=accept_for(format, npy=npy),
        dtype=dtype or "float32",
    )


def head_ref(head: HeadLike) -> dict[str, int]:
    if isinstance(head, Mapping):
        return {"layer": int(head["layer"]), "head": int(head["head"])}
    if isinstance(head, Sequence) and len(head) == 2:
        return {"layer": int(head[0]), "head": int(head[1])}
    if hasattr(head, "layer") and hasattr(head, "head"):
        return {"layer": int(head.layer), "head": int(head.head)}
    raise TypeError(f"expected a head as (layer, head) or {{'layer', 'head'}}, got {head!r}")


def has_error_envelope(response: httpx.Response) -> bool:
    """True when the body is headscope's error envelope: {"error": {"message": ..., ...}}."""
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def lost_behind_a_proxy(response: httpx.Response) -> bool:
    """A 500 without the error envelope: the server answers its own 500s with the envelope, so
    this one came from a proxy in front that lost the server mid-request (Ray Serve's proxy
    answers so when a replica dies). Like a dropped connection, it is sent again."""
    return response.status_code == 500 and not has_error_envelope(response)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header as seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class BaseClient:
    """Configuration and everything that does not depend on how requests are sent."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self._extra_headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self._extra_headers)
        return headers

    # -- request builders, one per endpoint ---------------------------------------------------

    def _health_call(self) -> APICall[models.Health]:
        return APICall("GET", "/healthz", models.Health)

    def _ready_call(self) -> APICall[models.Ready]:
        # Not ready is an answer here, not an error to wait out.
        return APICall(
            "GET",
            "/readyz",
            models.Ready,
            result_statuses=frozenset({503}),
            result_from_error=lambda message: models.Ready(ready=False, probes_reason=message),
            retry=False,
        )

    def _model_call(self) -> APICall[models.ModelInfo]:
        return APICall("GET", "/v1/model", models.ModelInfo)

    def _tag_call(self, text: str, alignment: Alignment | None) -> APICall[models.TagResult]:
        body = _drop_none({"text": text, "alignment": alignment})
        return APICall("POST", "/v1/tag", models.TagResult, json=body)

    def _activity_call(
        self,
        text: str,
        layers: Iterable[int] | None,
        heads: Iterable[int] | None,
        dtype: ArrayDType | None,
        decimals: int | None,
        format: str,
    ) -> APICall[Any]:
        body = _drop_none(
            {
                "text": text,
                "layers": None if layers is None else list(layers),
                "heads": None if heads is None else list(heads),
                **output_options(dtype, decimals),
            }
        )
        return array_call("/v1/activity", models.ActivityResult, body, format, dtype, npy=True)

    def _attention_call(
        self,
        text: str,
        layer: int,
        head: int,
        query: int | None,
        dtype: ArrayDType | None,
        decimals: int | None,
        top_k: int | None,
        threshold: float | None,
        format: str,
    ) -> APICall[Any]:
        body = _drop_none(
            {
                "text": text,
                "layer": layer,
                "head": head,
                "query": query,
                **output_options(dtype, decimals, top_k, threshold),
            }
        )
        return array_call("/v1/attention", models.AttentionResult, body, format, dtype, npy=True)

    def _analyze_call(
        self,
        text: str,
        patterns: Iterable[HeadLike],
        dtype: ArrayDType | None,
        decimals: int | None,
        top_k: int | None,
        threshold: float | None,
        format: str,
    ) -> APICall[models.AnalyzeResult]:
        body = {
            "text": text,
            "patterns": [head_ref(head) for head in patterns],
            **output_options(dtype, decimals, top_k, threshold),
        }
        return array_call("/v1/analyze", models.AnalyzeResult, body, format, dtype)

    def _analyze_many_calls(
        self,
        texts: Iterable[str],
        patterns: Iterable[HeadLike],
        dtype: ArrayDType | None,
        decimals: int | None,
        top_k: int | None,
        threshold: float | None,
        format: str,
        concurrency: int,
    ) -> list[APICall[models.AnalyzeResult]]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of texts, not one string")
        if concurrency < 1:
            raise ValueError("concurrency must be 1 or more")
        heads = [head_ref(head) for head in patterns]
        return [
            self._analyze_call(text, heads, dtype, decimals, top_k, threshold, format)
            for text in texts
        ]

    @staticmethod
    def _progress_bar(total: int, enabled: bool) -> AbstractContextManager[Progress]:
        """A tqdm bar over `total` texts when `enabled`, else a bar that shows nothing."""
        if not enabled:
            return contextlib.nullcontext(_NoProgress())
        try:
            from tqdm.auto import tqdm
        except ImportError as err:
            raise ImportError(
                "progress=True needs tqdm: pip install 'headscope[progress]'"
            ) from err
        return cast(AbstractContextManager[Progress], tqdm(total=total, unit="text"))

    # -- probes ---------------------------------------------------------------------------------

    def _probes_call(self) -> APICall[models.ProbeRunInfo]:
        return APICall("GET", "/v1/probes", models.ProbeRunInfo)

    def _probe_scores_call(
        self, vector: ProbeVector, tag: str, metric: ProbeMetric | None
    ) -> APICall[models.ProbeScoresResult]:
        params = _drop_none({"vector": vector, "tag": tag, "metric": metric})
        return APICall("GET", "/v1/probes/scores", models.ProbeScoresResult, params=params)

    def _probe_predict_call(
        self, text: str, vector: ProbeVector, layer: int, head: int, top_k: int | None
    ) -> APICall[models.ProbePrediction]:
        body = _drop_none(
            {"text": text, "vector": vector, "layer": layer, "head": head, "top_k": top_k}
        )
        return APICall("POST", "/v1/probes/predict", models.ProbePrediction, json=body)

    # -- corpus analyses --------------------------------------------------------------------------

    @staticmethod
    def _source(
        texts: Iterable[str] | None, n_sequences: int | None, seed: int | None
    ) -> dict[str, Any]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of texts, not one string")
        return _drop_none(
            {
                "texts": None if texts is None else list(texts),
                "n_sequences": n_sequences,
                "seed": seed,
            }
        )

    def _attention_by_tag_call(
        self,
        layer: int,
        head: int,
        from_tag: str | None,
        to_tag: str | None,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
    ) -> APICall[models.AttentionByTagResult]:
        body = {
            "layer": layer,
            "head": head,
            **_drop_none({"from_tag": from_tag, "to_tag": to_tag}),
            **self._source(texts, n_sequences, seed),
        }
        return APICall(
            "POST", "/v1/corpus/attention-by-tag", models.AttentionByTagResult, json=body
        )

    def _activity_by_tag_call(
        self,
        tag: str,
        position: Position | None,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
    ) -> APICall[models.ActivityByTagResult]:
        body = {
            "tag": tag,
            **_drop_none({"position": position}),
            **self._source(texts, n_sequences, seed),
        }
        return APICall("POST", "/v1/corpus/activity-by-tag", models.ActivityByTagResult, json=body)

    def _quotes_call(
        self, texts: Iterable[str] | None, n_sequences: int | None, seed: int | None
    ) -> APICall[models.QuotesResult]:
        body = self._source(texts, n_sequences, seed)
        return APICall("POST", "/v1/corpus/quotes", models.QuotesResult, json=body)

    def _rank_heads_call(
        self,
        tag: str,
        vector: str | None,
        metric: ProbeMetric | None,
        position: Position | None,
        n_sequences: int | None,
        seed: int | None,
        limit: int | None,
    ) -> APICall[models.HeadRankResult]:
        params = _drop_none(
            {
                "tag": tag,
                "vector": vector,
                "metric": metric,
                "position": position,
                "n_sequences": n_sequences,
                "seed": seed,
                "limit": limit,
            }
        )
        return APICall("GET", "/v1/heads/rank", models.HeadRankResult, params=params)

    # -- ablation and head scores ----------------------------------------------------------------

    @staticmethod
    def _heads(heads: Iterable[tuple[int, int]]) -> list[dict[str, int]]:
        return [{"layer": layer, "head": head} for layer, head in heads]

    def _ablate_call(
        self, text: str, heads: Iterable[tuple[int, int]], mode: str | None, top_k: int | None
    ) -> APICall[models.AblateResult]:
        body = {
            "text": text,
            "heads": self._heads(heads),
            **_drop_none({"mode": mode, "top_k": top_k}),
        }
        return APICall("POST", "/v1/ablate", models.AblateResult, json=body)

    def _corpus_ablation_call(
        self,
        heads: Iterable[tuple[int, int]] | None,
        all_heads: bool,
        mode: str | None,
        tag: str | None,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
    ) -> APICall[models.CorpusAblationResult]:
        body = {
            **self._source(texts, n_sequences, seed),
            **_drop_none(
                {
                    "heads": None if heads is None else self._heads(heads),
                    "all_heads": all_heads or None,
                    "mode": mode,
                    "tag": tag,
                }
            ),
        }
        return APICall("POST", "/v1/corpus/ablation", models.CorpusAblationResult, json=body)

    def _head_scores_call(
        self, kind: str, seed: int | None, n_sequences: int | None, length: int | None
    ) -> APICall[models.HeadScoresResult]:
        params = _drop_none(
            {"kind": kind, "seed": seed, "n_sequences": n_sequences, "length": length}
        )
        return APICall("GET", "/v1/heads/scores", models.HeadScoresResult, params=params)

    # -- figures (PNG bytes) ------------------------------------------------------------------

    @staticmethod
    def _size(width: int | None, height: int | None) -> dict[str, Any]:
        return _drop_none({"width": width, "height": height})

    def _head_figure_call(
        self,
        figure: str,
        text: str,
        layer: int,
        head: int,
        width: int | None,
        height: int | None,
        **option: Any,
    ) -> APICall[bytes]:
        """GET /v1/figures/{figure}.png of one head over one text, with the figure's own query
        parameter in `option` (sent unless None)."""
        params = {
            "text": text,
            "layer": layer,
            "head": head,
            **_drop_none(option),
            **self._size(width, height),
        }
        return APICall("GET", f"/v1/figures/{figure}.png", bytes, params=params)

    def _activity_figure_call(
        self,
        text: str,
        layer: int,
        head: int,
        bold_fraction: float | None,
        width: int | None,
        height: int | None,
    ) -> APICall[bytes]:
        return self._head_figure_call(
            "activity", text, layer, head, width, height, bold_fraction=bold_fraction
        )

    def _attention_figure_call(
        self,
        text: str,
        layer: int,
        head: int,
        query: int | None,
        width: int | None,
        height: int | None,
    ) -> APICall[bytes]:
        return self._head_figure_call("attention", text, layer, head, width, height, query=query)

    def _attention_by_tag_figure_call(
        self,
        layer: int,
        head: int,
        from_tag: str | None,
        to_tag: str | None,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
        top: int | None,
        width: int | None,
        height: int | None,
    ) -> APICall[bytes]:
        body = self._attention_by_tag_call(
            layer, head, from_tag, to_tag, texts, n_sequences, seed
        ).json
        params = {**body, **_drop_none({"top": top}), **self._size(width, height)}
        return APICall("GET", "/v1/figures/attention-by-tag.png", bytes, params=params)

    def _activity_by_tag_figure_call(
        self,
        tag: str,
        position: Position | None,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
        layer: int | None,
        top: int | None,
        width: int | None,
        height: int | None,
    ) -> APICall[bytes]:
        body = self._activity_by_tag_call(tag, position, texts, n_sequences, seed).json
        params = {**body, **_drop_none({"layer": layer, "top": top}), **self._size(width, height)}
        return APICall("GET", "/v1/figures/activity-by-tag.png", bytes, params=params)

    def _quotes_figure_call(
        self,
        texts: Iterable[str] | None,
        n_sequences: int | None,
        seed: int | None,
        layer: int | None,
        top: int | None,
        width: int | None,
        height: int | None,
    ) -> APICall[bytes]:
        body = self._source(texts, n_sequences, seed)
        params = {**body, **_drop_none({"layer": layer, "top": top}), **self._size(width, height)}
        return APICall("GET", "/v1/figures/quotes.png", bytes, params=params)

    # -- responses ------------------------------------------------------------------------------

    def _retry_delay(
        self,
        call: APICall[Any],
        attempt: int,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float | None:
        """Seconds to wait before sending `call` again after `attempt` (from 0), or None."""
        if not call.retry or attempt >= self.max_retries:
            return None
        if error is not None:
            # A read or write timeout means the server may still be working on the request:
            # sending it again would only add to its load. Failing to connect is retried.
            if isinstance(error, httpx.TimeoutException) and not isinstance(
                error, httpx.ConnectTimeout | httpx.PoolTimeout
            ):
                return None
        elif response is None or not (
            response.status_code in RETRY_STATUS_CODES or lost_behind_a_proxy(response)
        ):
            return None
        else:
            retry_after = retry_after_seconds(response)
            if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
                return retry_after
        backoff = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
        return backoff * (1 - RETRY_JITTER * random.random())

    def _log_retry(
        self,
        request: httpx.Request,
        attempt: int,
        delay: float,
        response: httpx.Response | None,
        error: Exception | None,
    ) -> None:
        reason = f"status {response.status_code}" if response is not None else repr(error)
        log.info(
            "Retrying %s %s in %.2f s (retry %d of %d) after %s",
            request.method,
            request.url.path,
            delay,
            attempt + 1,
            self.max_retries,
            reason,
        )

    def _result(
        self,
        call: APICall[ResultT],
        request: httpx.Request,
        response: httpx.Response | None,
        error: httpx.TransportError | None,
    ) -> ResultT:
        """The parsed result, or the exception for the failure."""
        if error is not None or response is None:
            raise self._connection_error(request, error) from error
        if not (response.is_success or response.status_code in call.result_statuses):
            raise make_status_error(response)
        if call.result is bytes:
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("image/"):
                raise APIResponseValidationError(
                    f"{call.method} {call.path} answered {response.status_code} with "
                    f"{content_type or 'no content type'}, not an image",
                    response=response,
                )
            return cast(ResultT, response.content)
        if not response.is_success and call.result_from_error is not None:
            return call.result_from_error(make_status_error(response).message)
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if call.accept == NPY:
            if media_type != NPY:
                raise self._not_a_result(call, response, f"{media_type or 'no content type'}")
            try:
                return cast(ResultT, decode_npy(response.content))
            except ValueError as err:
                raise self._not_a_result(call, response, f"an unreadable npy body ({err})") from err
        model = cast(type[BaseModel], call.result)
        arrays: dict[Any, Any] = {}
        try:
            if media_type == SAFETENSORS:
                fields, arrays = self._safetensors_fields(call, response)
                result = model.model_validate(fields)
            else:
                result = model.model_validate_json(response.content)
        except ValidationError as err:
            first = err.errors()[0]
            raise self._not_a_result(
                call,
                response,
                f"a body that is not a {model.__name__}: {err.error_count()} error(s), first: "
                f"{first['msg']} at {first['loc']}",
            ) from err
        place_arrays(result, arrays)
        if call.dtype is not None:
            models.set_dtype(result, call.dtype)
        return cast(ResultT, result)

    def _safetensors_fields(
        self, call: APICall[Any], response: httpx.Response
    ) -> tuple[dict[str, Any], dict[Any, Any]]:
        try:
            return decode_safetensors(response.content)
        except ImportError:
            raise
        except Exception as err:  # whatever a damaged body makes the safetensors reader raise
            raise self._not_a_result(
                call, response, f"an unreadable safetensors body ({err})"
            ) from err

    @staticmethod
    def _not_a_result(
        call: APICall[Any], response: httpx.Response, what: str
    ) -> APIResponseValidationError:
        return APIResponseValidationError(
            f"{call.method} {call.path} answered {response.status_code} with {what}",
            response=response,
        )

    def _connection_error(
        self, request: httpx.Request, error: httpx.TransportError | None
    ) -> APIConnectionError:
        target = f"{request.method} {request.url}"
        if isinstance(error, httpx.TimeoutException):
            return APITimeoutError(
                f"{target} timed out ({type(error).__name__}; timeout {self.timeout})",
                request=request,
            )
        return APIConnectionError(f"Could not reach {target}: {error}", request=request)
