"""`Client` and `AsyncClient`: the same methods, one blocking and one awaitable.

Both only send: every request is built, and every response parsed, by `BaseClient`. A batch
(`analyze_many`) runs its calls a few at a time over the client's one connection pool: threads
for `Client`, tasks for `AsyncClient`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Literal, overload

import httpx

from headscope_client import _models as models
from headscope_client._base import (
    AblationMode,
    Alignment,
    APICall,
    ArrayDType,
    ArrayFormat,
    BaseClient,
    HeadLike,
    HeadScoreKind,
    Position,
    ProbeMetric,
    ProbeVector,
    ResultFormat,
    ResultT,
    TimeoutLike,
)
from headscope_client._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from headscope_client._exceptions import HeadscopeError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AsyncClient", "Client"]


class Client(BaseClient):
    """A blocking client for a headscope server.

    `base_url` defaults to $HEADSCOPE_URL, then http://127.0.0.1:8000; `api_key` to
    $HEADSCOPE_API_KEY (sent as `Authorization: Bearer <key>`). Use as a context manager, or call
    `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url, timeout=timeout, max_retries=max_retries, api_key=api_key, headers=headers
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=self._default_headers(),
            transport=transport,
        )

    def _send(self, call: APICall[ResultT]) -> ResultT:
        request = self._http.build_request(
            call.method,
            call.path,
            json=call.json,
            params=call.params,
            headers={"Accept": call.accept},
        )
        for attempt in itertools.count():
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = self._http.send(request)
            except httpx.TransportError as err:
                error = err
            delay = self._retry_delay(call, attempt, response, error)
            if delay is None:
                return self._result(call, request, response, error)
            self._log_retry(request, attempt, delay, response, error)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- endpoints ------------------------------------------------------------------------------

    def health(self) -> models.Health:
        """GET /healthz: the process answers."""
        return self._send(self._health_call())

    def ready(self) -> models.Ready:
        """GET /readyz: whether the model (and the probes) are loaded; never raises for 503."""
        return self._send(self._ready_call())

    def model(self) -> models.ModelInfo:
        """GET /v1/model: geometry, token limit, attention layout and weights fingerprint."""
        return self._send(self._model_call())

    def tag(self, text: str, *, alignment: Alignment | None = None) -> models.TagResult:
        """POST /v1/tag: the model's tokens, each with its word's Penn Treebank tag."""
        return self._send(self._tag_call(text, alignment))

    @overload
    def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = ...,
        heads: Iterable[int] | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        format: ResultFormat = ...,
    ) -> models.ActivityResult: ...
    @overload
    def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = ...,
        heads: Iterable[int] | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        format: Literal["npy"],
    ) -> np.ndarray: ...
    def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = None,
        heads: Iterable[int] | None = None,
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        format: ArrayFormat = "json",
    ) -> models.ActivityResult | np.ndarray:
        """POST /v1/activity: activity [layer, head, token] of the chosen (default all) heads.
        With format="npy", the bare array (numpy.ndarray), without tokens."""
        return self._send(self._activity_call(text, layers, heads, dtype, decimals, format))

    @overload
    def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        top_k: int | None = ...,
        threshold: float | None = ...,
        format: ResultFormat = ...,
    ) -> models.AttentionResult: ...
    @overload
    def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        top_k: int | None = ...,
        threshold: float | None = ...,
        format: Literal["npy"],
    ) -> np.ndarray: ...
    def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = None,
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ArrayFormat = "json",
    ) -> models.AttentionResult | np.ndarray:
        """POST /v1/attention: one head's pattern [query, key], or one query row of it.
        With format="npy", the bare array (numpy.ndarray), without tokens."""
        return self._send(
            self._attention_call(
                text, layer, head, query, dtype, decimals, top_k, threshold, format
            )
        )

    def analyze(
        self,
        text: str,
        *,
        patterns: Iterable[HeadLike] = (),
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ResultFormat = "json",
    ) -> models.AnalyzeResult:
        """POST /v1/analyze: tags, every head's activity, and the patterns of `patterns` heads."""
        return self._send(
            self._analyze_call(text, patterns, dtype, decimals, top_k, threshold, format)
        )

    def analyze_many(
        self,
        texts: Iterable[str],
        *,
        patterns: Iterable[HeadLike] = (),
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ResultFormat = "auto",
        concurrency: int = 8,
        progress: bool = False,
    ) -> list[models.AnalyzeResult | HeadscopeError]:
        """`analyze` on each text, `concurrency` at a time over one connection pool: the
        results in the order of `texts`, each a result or the error that text met (after the
        usual retries), so one bad text never stops the batch. `format` defaults to `auto`:
        safetensors when numpy and safetensors are installed. `progress`: a tqdm bar."""
        calls = self._analyze_many_calls(
            texts, patterns, dtype, decimals, top_k, threshold, format, concurrency
        )
        with self._progress_bar(len(calls), progress) as bar:

            def outcome(call: APICall[models.AnalyzeResult]):
                try:
                    return self._send(call)
                except HeadscopeError as error:
                    return error
                finally:
                    bar.update()

            pool = ThreadPoolExecutor(max_workers=concurrency)
            try:
                return list(pool.map(outcome, calls))
            finally:
                # Interrupted (Ctrl-C), the texts not yet sent are dropped, not waited for.
                pool.shutdown(cancel_futures=True)

    def probes(self) -> models.ProbeRunInfo:
        """GET /v1/probes: the loaded probe run (tags, vectors, corpus, split, overall scores)."""
        return self._send(self._probes_call())

    def probe_scores(
        self, vector: ProbeVector, tag: str, *, metric: ProbeMetric | None = None
    ) -> models.ProbeScoresResult:
        """GET /v1/probes/scores: a [layer, head] grid of one metric (default f1) for one tag
        (or `accuracy` / `macro` / `weighted`)."""
        return self._send(self._probe_scores_call(vector, tag, metric))

    def probe_predict(
        self, text: str, vector: ProbeVector, layer: int, head: int, *, top_k: int | None = None
    ) -> models.ProbePrediction:
        """POST /v1/probes/predict: one head's probe on a text, the predicted tag per token
        beside the true one, with the `top_k` (default 3) most probable tags."""
        return self._send(self._probe_predict_call(text, vector, layer, head, top_k))

    def attention_by_tag(
        self,
        layer: int,
        head: int,
        *,
        from_tag: str | None = None,
        to_tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.AttentionByTagResult:
        """POST /v1/corpus/attention-by-tag: where tokens tagged `from_tag` look, by key tag
        (or who looks at `to_tag`), over `texts` or `n_sequences` drawn from the server's corpus."""
        return self._send(
            self._attention_by_tag_call(layer, head, from_tag, to_tag, texts, n_sequences, seed)
        )

    def activity_by_tag(
        self,
        tag: str,
        *,
        position: Position | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.ActivityByTagResult:
        """POST /v1/corpus/activity-by-tag: grids [layer, head] of mean activity on, before or
        after tokens tagged `tag`, the overall mean, and their ratio (lift)."""
        return self._send(self._activity_by_tag_call(tag, position, texts, n_sequences, seed))

    def quotes(
        self,
        *,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.QuotesResult:
        """POST /v1/corpus/quotes: every head's activity inside vs. outside quotations and its
        attention to the opening quote mark (the paper's case study 1)."""
        return self._send(self._quotes_call(texts, n_sequences, seed))

    def rank_heads(
        self,
        tag: str,
        *,
        vector: str | None = None,
        metric: ProbeMetric | None = None,
        position: Position | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        limit: int | None = None,
    ) -> models.HeadRankResult:
        """GET /v1/heads/rank: heads ranked by probe score for `tag`, by activity lift near it,
        and by the two combined."""
        return self._send(
            self._rank_heads_call(tag, vector, metric, position, n_sequences, seed, limit)
        )

    def ablate(
        self,
        text: str,
        heads: Iterable[tuple[int, int]],
        *,
        mode: AblationMode | None = None,
        top_k: int | None = None,
    ) -> models.AblateResult:
        """POST /v1/ablate: per token, the next token's loss, logit, probability and top-k
        without and with `heads` ((layer, head) pairs) ablated together, and by next tag."""
        return self._send(self._ablate_call(text, heads, mode, top_k))

    def corpus_ablation(
        self,
        *,
        heads: Iterable[tuple[int, int]] | None = None,
        all_heads: bool = False,
        mode: AblationMode | None = None,
        tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.CorpusAblationResult:
        """POST /v1/corpus/ablation: mean loss change per next-token tag with intervals, or
        (`all_heads`) the [layer, head] grid of single-head ablation effects for `tag`."""
        return self._send(
            self._corpus_ablation_call(heads, all_heads, mode, tag, texts, n_sequences, seed)
        )

    def head_scores(
        self,
        kind: HeadScoreKind,
        *,
        seed: int | None = None,
        n_sequences: int | None = None,
        length: int | None = None,
    ) -> models.HeadScoresResult:
        """GET /v1/heads/scores: every head's induction, previous-token or duplicate-token
        score on repeated random tokens, as a [layer, head] grid."""
        return self._send(self._head_scores_call(kind, seed, n_sequences, length))

    def activity_figure(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        bold_fraction: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/activity.png: the text shaded by one head's activity (PNG bytes)."""
        return self._send(
            self._activity_figure_call(text, layer, head, bold_fraction, width, height)
        )

    def attention_figure(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/attention.png: the text shaded by one query token's attention row
        (default: the last token's) (PNG bytes)."""
        return self._send(self._attention_figure_call(text, layer, head, query, width, height))

    def attention_by_tag_figure(
        self,
        layer: int,
        head: int,
        *,
        from_tag: str | None = None,
        to_tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/attention-by-tag.png: bar chart of `attention_by_tag` (PNG bytes)."""
        return self._send(
            self._attention_by_tag_figure_call(
                layer, head, from_tag, to_tag, texts, n_sequences, seed, top, width, height
            )
        )

    def activity_by_tag_figure(
        self,
        tag: str,
        *,
        position: Position | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        layer: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/activity-by-tag.png: bar chart of `activity_by_tag` for one layer's
        heads or the `top` heads by lift (PNG bytes)."""
        return self._send(
            self._activity_by_tag_figure_call(
                tag, position, texts, n_sequences, seed, layer, top, width, height
            )
        )

    def quotes_figure(
        self,
        *,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        layer: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/quotes.png: bar charts of `quotes` (PNG bytes)."""
        return self._send(
            self._quotes_figure_call(texts, n_sequences, seed, layer, top, width, height)
        )


class AsyncClient(BaseClient):
    """The awaitable twin of `Client`, with the same methods, options and defaults.

    Use `async with AsyncClient(...) as client`, or `await client.aclose()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url, timeout=timeout, max_retries=max_retries, api_key=api_key, headers=headers
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=self._default_headers(),
            transport=transport,
        )

    async def _send(self, call: APICall[ResultT]) -> ResultT:
        request = self._http.build_request(
            call.method,
            call.path,
            json=call.json,
            params=call.params,
            headers={"Accept": call.accept},
        )
        for attempt in itertools.count():
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = await self._http.send(request)
            except httpx.TransportError as err:
                error = err
            delay = self._retry_delay(call, attempt, response, error)
            if delay is None:
                return self._result(call, request, response, error)
            self._log_retry(request, attempt, delay, response, error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- endpoints ------------------------------------------------------------------------------

    async def health(self) -> models.Health:
        """GET /healthz: the process answers."""
        return await self._send(self._health_call())

    async def ready(self) -> models.Ready:
        """GET /readyz: whether the model (and the probes) are loaded; never raises for 503."""
        return await self._send(self._ready_call())

    async def model(self) -> models.ModelInfo:
        """GET /v1/model: geometry, token limit, attention layout and weights fingerprint."""
        return await self._send(self._model_call())

    async def tag(self, text: str, *, alignment: Alignment | None = None) -> models.TagResult:
        """POST /v1/tag: the model's tokens, each with its word's Penn Treebank tag."""
        return await self._send(self._tag_call(text, alignment))

    @overload
    async def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = ...,
        heads: Iterable[int] | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        format: ResultFormat = ...,
    ) -> models.ActivityResult: ...
    @overload
    async def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = ...,
        heads: Iterable[int] | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        format: Literal["npy"],
    ) -> np.ndarray: ...
    async def activity(
        self,
        text: str,
        *,
        layers: Iterable[int] | None = None,
        heads: Iterable[int] | None = None,
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        format: ArrayFormat = "json",
    ) -> models.ActivityResult | np.ndarray:
        """POST /v1/activity: activity [layer, head, token] of the chosen (default all) heads.
        With format="npy", the bare array (numpy.ndarray), without tokens."""
        return await self._send(self._activity_call(text, layers, heads, dtype, decimals, format))

    @overload
    async def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        top_k: int | None = ...,
        threshold: float | None = ...,
        format: ResultFormat = ...,
    ) -> models.AttentionResult: ...
    @overload
    async def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = ...,
        dtype: ArrayDType | None = ...,
        decimals: int | None = ...,
        top_k: int | None = ...,
        threshold: float | None = ...,
        format: Literal["npy"],
    ) -> np.ndarray: ...
    async def attention(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = None,
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ArrayFormat = "json",
    ) -> models.AttentionResult | np.ndarray:
        """POST /v1/attention: one head's pattern [query, key], or one query row of it.
        With format="npy", the bare array (numpy.ndarray), without tokens."""
        return await self._send(
            self._attention_call(
                text, layer, head, query, dtype, decimals, top_k, threshold, format
            )
        )

    async def analyze(
        self,
        text: str,
        *,
        patterns: Iterable[HeadLike] = (),
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ResultFormat = "json",
    ) -> models.AnalyzeResult:
        """POST /v1/analyze: tags, every head's activity, and the patterns of `patterns` heads."""
        return await self._send(
            self._analyze_call(text, patterns, dtype, decimals, top_k, threshold, format)
        )

    async def analyze_many(
        self,
        texts: Iterable[str],
        *,
        patterns: Iterable[HeadLike] = (),
        dtype: ArrayDType | None = None,
        decimals: int | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        format: ResultFormat = "auto",
        concurrency: int = 8,
        progress: bool = False,
    ) -> list[models.AnalyzeResult | HeadscopeError]:
        """`analyze` on each text, `concurrency` at a time over one connection pool: the
        results in the order of `texts`, each a result or the error that text met (after the
        usual retries), so one bad text never stops the batch. `format` defaults to `auto`:
        safetensors when numpy and safetensors are installed. `progress`: a tqdm bar."""
        calls = self._analyze_many_calls(
            texts, patterns, dtype, decimals, top_k, threshold, format, concurrency
        )
        limit = asyncio.Semaphore(concurrency)
        with self._progress_bar(len(calls), progress) as bar:

            async def outcome(call: APICall[models.AnalyzeResult]):
                async with limit:
                    try:
                        return await self._send(call)
                    except HeadscopeError as error:
                        return error
                    finally:
                        bar.update()

            return list(await asyncio.gather(*(outcome(call) for call in calls)))

    async def probes(self) -> models.ProbeRunInfo:
        """GET /v1/probes: the loaded probe run (tags, vectors, corpus, split, overall scores)."""
        return await self._send(self._probes_call())

    async def probe_scores(
        self, vector: ProbeVector, tag: str, *, metric: ProbeMetric | None = None
    ) -> models.ProbeScoresResult:
        """GET /v1/probes/scores: a [layer, head] grid of one metric (default f1) for one tag
        (or `accuracy` / `macro` / `weighted`)."""
        return await self._send(self._probe_scores_call(vector, tag, metric))

    async def probe_predict(
        self, text: str, vector: ProbeVector, layer: int, head: int, *, top_k: int | None = None
    ) -> models.ProbePrediction:
        """POST /v1/probes/predict: one head's probe on a text, the predicted tag per token
        beside the true one, with the `top_k` (default 3) most probable tags."""
        return await self._send(self._probe_predict_call(text, vector, layer, head, top_k))

    async def attention_by_tag(
        self,
        layer: int,
        head: int,
        *,
        from_tag: str | None = None,
        to_tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.AttentionByTagResult:
        """POST /v1/corpus/attention-by-tag: where tokens tagged `from_tag` look, by key tag
        (or who looks at `to_tag`), over `texts` or `n_sequences` drawn from the server's corpus."""
        return await self._send(
            self._attention_by_tag_call(layer, head, from_tag, to_tag, texts, n_sequences, seed)
        )

    async def activity_by_tag(
        self,
        tag: str,
        *,
        position: Position | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.ActivityByTagResult:
        """POST /v1/corpus/activity-by-tag: grids [layer, head] of mean activity on, before or
        after tokens tagged `tag`, the overall mean, and their ratio (lift)."""
        return await self._send(self._activity_by_tag_call(tag, position, texts, n_sequences, seed))

    async def quotes(
        self,
        *,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.QuotesResult:
        """POST /v1/corpus/quotes: every head's activity inside vs. outside quotations and its
        attention to the opening quote mark (the paper's case study 1)."""
        return await self._send(self._quotes_call(texts, n_sequences, seed))

    async def rank_heads(
        self,
        tag: str,
        *,
        vector: str | None = None,
        metric: ProbeMetric | None = None,
        position: Position | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        limit: int | None = None,
    ) -> models.HeadRankResult:
        """GET /v1/heads/rank: heads ranked by probe score for `tag`, by activity lift near it,
        and by the two combined."""
        return await self._send(
            self._rank_heads_call(tag, vector, metric, position, n_sequences, seed, limit)
        )

    async def ablate(
        self,
        text: str,
        heads: Iterable[tuple[int, int]],
        *,
        mode: AblationMode | None = None,
        top_k: int | None = None,
    ) -> models.AblateResult:
        """POST /v1/ablate: per token, the next token's loss, logit, probability and top-k
        without and with `heads` ((layer, head) pairs) ablated together, and by next tag."""
        return await self._send(self._ablate_call(text, heads, mode, top_k))

    async def corpus_ablation(
        self,
        *,
        heads: Iterable[tuple[int, int]] | None = None,
        all_heads: bool = False,
        mode: AblationMode | None = None,
        tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
    ) -> models.CorpusAblationResult:
        """POST /v1/corpus/ablation: mean loss change per next-token tag with intervals, or
        (`all_heads`) the [layer, head] grid of single-head ablation effects for `tag`."""
        return await self._send(
            self._corpus_ablation_call(heads, all_heads, mode, tag, texts, n_sequences, seed)
        )

    async def head_scores(
        self,
        kind: HeadScoreKind,
        *,
        seed: int | None = None,
        n_sequences: int | None = None,
        length: int | None = None,
    ) -> models.HeadScoresResult:
        """GET /v1/heads/scores: every head's induction, previous-token or duplicate-token
        score on repeated random tokens, as a [layer, head] grid."""
        return await self._send(self._head_scores_call(kind, seed, n_sequences, length))

    async def activity_figure(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        bold_fraction: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/activity.png: the text shaded by one head's activity (PNG bytes)."""
        return await self._send(
            self._activity_figure_call(text, layer, head, bold_fraction, width, height)
        )

    async def attention_figure(
        self,
        text: str,
        layer: int,
        head: int,
        *,
        query: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/attention.png: the text shaded by one query token's attention row
        (default: the last token's) (PNG bytes)."""
        return await self._send(
            self._attention_figure_call(text, layer, head, query, width, height)
        )

    async def attention_by_tag_figure(
        self,
        layer: int,
        head: int,
        *,
        from_tag: str | None = None,
        to_tag: str | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/attention-by-tag.png: bar chart of `attention_by_tag` (PNG bytes)."""
        return await self._send(
            self._attention_by_tag_figure_call(
                layer, head, from_tag, to_tag, texts, n_sequences, seed, top, width, height
            )
        )

    async def activity_by_tag_figure(
        self,
        tag: str,
        *,
        position: Position | None = None,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        layer: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/activity-by-tag.png: bar chart of `activity_by_tag` for one layer's
        heads or the `top` heads by lift (PNG bytes)."""
        return await self._send(
            self._activity_by_tag_figure_call(
                tag, position, texts, n_sequences, seed, layer, top, width, height
            )
        )

    async def quotes_figure(
        self,
        *,
        texts: Iterable[str] | None = None,
        n_sequences: int | None = None,
        seed: int | None = None,
        layer: int | None = None,
        top: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> bytes:
        """GET /v1/figures/quotes.png: bar charts of `quotes` (PNG bytes)."""
        return await self._send(
            self._quotes_figure_call(texts, n_sequences, seed, layer, top, width, height)
        )
