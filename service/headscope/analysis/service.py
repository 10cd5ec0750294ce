"""The Runtime object: tokenizer + tagger + model runner + limits, shared by all routes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.analysis.pool import Awaiting, resolved
from headscope.cache import AnalysisCache
from headscope.encoding import JSON, Precision, Sparsity, encode, to_lists
from headscope.errors import EmptyText, InputTooLong, InvalidRequest, StartupError, UnknownHead
from headscope.model.loading import (
    Checkpoint,
    ModelFiles,
    Tokenizer,
    load_model,
    resolve_model_files,
    sha256_of_files,
)
from headscope.model.runner import ModelRunner, SequenceArrays
from headscope.schemas import (
    ActivityRequest,
    ActivityResponse,
    AnalyzeRequest,
    AnalyzeResponse,
    AttentionRequest,
    AttentionResponse,
    ModelInfo,
    TagRequest,
    TagResponse,
    Token,
)
from headscope.settings import Settings
from headscope.tagging.base import Alignment, Tagger
from headscope.tagging.child import TaggerProcess
from headscope.tagging.nltk_tagger import WORD_SPAN_CACHE_BYTES, PosTagger

if TYPE_CHECKING:
    from headscope.analysis.probes.store import ProbeRun

log = logging.getLogger("headscope.runtime")


@dataclass(frozen=True)
class Encoded:
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


# Ordinary English runs ~4.5 characters a token, so a prefix of 8 characters per allowed token
# holds more than `max_tokens` tokens of any ordinary over-long text: tokenizing it is enough.
PREFIX_CHARS_PER_TOKEN = 8


def _word_end_before(text: str, position: int) -> int:
    """The last index <= position where non-whitespace meets whitespace, or 0 if none."""
    for cut in range(min(position, len(text) - 1), 0, -1):
        if text[cut].isspace() and not text[cut - 1].isspace():
            return cut
    return 0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        files: ModelFiles,
        model: Checkpoint,
        tokenizer: Tokenizer,
        tagger: Tagger,
        weights_sha256: str,
    ) -> None:
        self.settings = settings
        self.files = files
        self.model = model
        self.tokenizer = tokenizer
        self.tagger = tagger
        self.runner = ModelRunner(model)
        self.engine = self.runner.engine  # for tests and benchmarks, which speak tensors
        self.geometry = self.runner.geometry
        self.weights_sha256 = weights_sha256
        if settings.max_tokens > self.geometry.max_positions:
            raise StartupError(
                f"max_tokens={settings.max_tokens} exceeds the model's "
                f"max_position_embeddings={self.geometry.max_positions}."
            )
        self.max_tokens = settings.max_tokens
        self.probes: ProbeRun | None = None  # set by the probes loader when a run is loaded
        self.cache = AnalysisCache(getattr(settings, "analysis_cache_mb", 0) * 2**20)
        self.probes_reason: str | None = "No probe run loaded."

    def close(self) -> None:
        """Stop what the runtime started (the tagger's child process)."""
        self.tagger.close()

    # -- model facts ---------------------------------------------------------------------------

    def info(self) -> ModelInfo:
        g = self.geometry
        return ModelInfo(
            model_id=self.files.model_id,
            architecture=(self.model.config.architectures or ("GPTNeoModel",))[0],
            n_layers=g.n_layers,
            n_heads=g.n_heads,
            d_head=g.d_head,
            d_model=g.d_model,
            max_tokens=self.max_tokens,
            max_position_embeddings=g.max_positions,
            attention_layers=list(g.attention_layers),  # type: ignore[arg-type]
            window_size=g.window_size,
            weights_sha256=self.weights_sha256,
        )

    @property
    def tokenizer_identity(self) -> dict[str, object]:
        return {
            "class": type(self.tokenizer).__name__,
            "vocab_size": len(self.tokenizer),
            "name_or_path": str(self.tokenizer.name_or_path),
        }

    # -- input checks --------------------------------------------------------------------------

    @functools.cached_property
    def _longest_token_chars(self) -> int | None:
        """Most characters one token can cover, when the tokenizer guarantees a bound.

        Byte-level BPE (GPT-2's, every GPT-Neo's): a token covers the bytes its vocabulary
        entry spells, one symbol per byte, and a character is at least one byte.
        """
        if type(self.tokenizer.backend.pre_tokenizer).__name__ != "ByteLevel":
            return None
        return max(len(token) for token in self.tokenizer.get_vocab())

    def _too_long(self, at_least: int, how: str) -> InputTooLong:
        return InputTooLong(
            f"text has more than {self.max_tokens} tokens (at least {at_least}: {how}); "
            f"the limit is {self.max_tokens}",
            detail={"tokens_at_least": at_least, "max_tokens": self.max_tokens},
        )

    def encode(self, text: str) -> Encoded:
        """Tokenize, enforcing the token limit before any model work.

        Tokenizing takes time linear in the text, and a body may hold far more than `max_tokens`
        tokens, so a text that is surely too long is refused after a bounded look at it: by its
        length, or by the tokens of a prefix. The 413 then says "more than max_tokens" with the
        count actually established, never a guessed total.
        """
        if not text or text.isspace():
            raise EmptyText("text is empty or whitespace only")
        limit = self.max_tokens
        longest = self._longest_token_chars
        if longest is not None:
            at_least = -(-len(text) // longest)  # ceil: tokens >= characters / longest
            if at_least > limit:
                raise self._too_long(
                    at_least, f"{len(text)} characters, at most {longest} per token"
                )
            prefix_chars = limit * PREFIX_CHARS_PER_TOKEN
            cut = _word_end_before(text, prefix_chars) if len(text) > prefix_chars else 0
            if cut:
                # The prefix ends where a word meets whitespace, which no pre-token crosses, so
                # its tokens are exactly the text's first ones.
                counted = len(self.tokenizer(text[:cut], add_special_tokens=False).input_ids)
                if counted > limit:
                    raise self._too_long(counted, f"counted in its first {cut} characters")
        encoding = self.tokenizer(text, add_special_tokens=False)
        ids = encoding.input_ids
        if len(ids) > limit:
            raise InputTooLong(
                f"text has {len(ids)} tokens; the limit is {limit}",
                detail={"tokens": len(ids), "max_tokens": limit},
            )
        return Encoded(text, ids, encoding.offset_mapping)

    def prefetch_tags(self, text: str) -> None:
        """Let the tagger start on the text's words now (a hint; see TaggerProcess.prefetch).
        Texts that `encode` will refuse at a glance are not sent."""
        if text and not text.isspace() and len(text) <= self.max_tokens * PREFIX_CHARS_PER_TOKEN:
            self.tagger.prefetch(text)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.geometry.n_layers:
            raise UnknownHead(
                f"layer {layer} does not exist; layers are 0..{self.geometry.n_layers - 1}",
                detail={"layer": layer},
            )

    def check_head(self, layer: int, head: int) -> None:
        self.check_layer(layer)
        if not 0 <= head < self.geometry.n_heads:
            raise UnknownHead(
                f"head {head} does not exist; heads are 0..{self.geometry.n_heads - 1}",
                detail={"head": head},
            )

    def _selection(self, values: Sequence[int] | None, count: int, what: str) -> list[int]:
        if values is None:
            return list(range(count))
        if not values:
            raise InvalidRequest(f"{what} is empty; leave it out to mean all")
        for value in values:
            if not 0 <= value < count:
                raise UnknownHead(
                    f"{what[:-1]} {value} does not exist; {what} are 0..{count - 1}",
                    detail={what: value},
                )
        return list(values)

    # -- building blocks -----------------------------------------------------------------------

    def tokens(self, encoded: Encoded, tags: Sequence[str] | None = None) -> list[Token]:
        return [
            Token(
                index=index,
                id=token_id,
                text=encoded.text[start:end],
                start=start,
                end=end,
                tag=tags[index] if tags is not None else None,
            )
            for index, (token_id, (start, end)) in enumerate(
                zip(encoded.ids, encoded.offsets, strict=True)
            )
        ]

    def tags(self, encoded: Encoded, alignment: Alignment = "overlap") -> list[str]:
        return self.tagger.tag_tokens(encoded.text, encoded.offsets, alignment)

    def forward(
        self,
        encoded: Encoded,
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        vectors: bool = False,
    ) -> SequenceArrays:
        return self.runner.forward(
            encoded.ids, last_layer=last_layer, patterns=patterns, vectors=vectors
        )

    # -- the API's questions, as payloads -------------------------------------------------------
    # A payload is the response's JSON fields with numpy float32 arrays where the numbers are.
    # The routes encode it straight to JSON/safetensors/npy (headscope.encoding); the methods
    # below it (tag, activity, ...) turn the same payload into the pydantic models.

    def token_dicts(self, encoded: Encoded, tags: Sequence[str] | None = None) -> list[dict]:
        """The tokens as plain dicts (the Token schema's fields, in its order)."""
        text = encoded.text
        return [
            {
                "index": index,
                "id": token_id,
                "text": text[start:end],
                "start": start,
                "end": end,
                "tag": tags[index] if tags is not None else None,
            }
            for index, (token_id, (start, end)) in enumerate(
                zip(encoded.ids, encoded.offsets, strict=True)
            )
        ]

    def _cached(self, key: tuple, compute: Callable[[], dict]) -> dict:
        # The fingerprint is part of the key, so a cache can never answer for other weights.
        return self.cache.get_or_compute((self.weights_sha256, *key), compute)

    def _cached_with_tags(
        self,
        key: tuple,
        text: str,
        alignment: Alignment,
        work: Callable[[Encoded], Callable[[list[str]], dict]],
    ) -> dict | Awaiting[dict]:
        """The cached payload for `key`, or: send the text to the tagger, do `work(encoded)`
        meanwhile (what needs no tags), and finish with the function it returns, which takes the
        tags. When they are not there by then, an Awaiting: the pool gives the analysis thread
        back until they are, so no analysis slot waits on the tagger."""
        key = (self.weights_sha256, *key)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        encoded = self.encode(text)
        tags = self.tagger.submit_tag_tokens(encoded.text, encoded.offsets, alignment)
        finish_with_tags = work(encoded)

        def finish(tag_list: list[str]) -> dict:
            payload = finish_with_tags(tag_list)
            self.cache.put(key, payload)
            return payload

        return finish(tags.result()) if tags.done() else Awaiting(tags, finish)

    def tag_payload(self, request: TagRequest) -> dict | Awaiting[dict]:
        def work(encoded: Encoded) -> Callable[[list[str]], dict]:
            return lambda tags: {"tokens": self.token_dicts(encoded, tags)}

        key = ("tag", request.text, request.alignment)
        return self._cached_with_tags(key, request.text, request.alignment, work)

    def activity_payload(self, request: ActivityRequest) -> dict:
        g = self.geometry
        layers = self._selection(request.layers, g.n_layers, "layers")
        heads = self._selection(request.heads, g.n_heads, "heads")

        def compute() -> dict:
            encoded = self.encode(request.text)
            output = self.forward(encoded, last_layer=max(layers))
            activity = output.activity[layers][:, heads]  # [layer, head, token]
            return {
                "tokens": self.token_dicts(encoded),
                "layers": layers,
                "heads": heads,
                "activity": np.ascontiguousarray(activity),
            }

        return self._cached(("activity", request.text, tuple(layers), tuple(heads)), compute)

    def attention_payload(self, request: AttentionRequest) -> dict:
        self.check_head(request.layer, request.head)

        def compute() -> dict:
            encoded = self.encode(request.text)
            if request.query is not None and not 0 <= request.query < len(encoded):
                raise InvalidRequest(
                    f"query {request.query} is outside the text's {len(encoded)} tokens",
                    detail={"query": request.query, "tokens": len(encoded)},
                )
            head = (request.layer, request.head)
            output = self.forward(encoded, last_layer=request.layer, patterns=[head])
            pattern = output.patterns[head]  # [q, k]
            if request.query is not None:
                pattern = pattern[request.query : request.query + 1].copy()
            return {
                "tokens": self.token_dicts(encoded),
                "layer": request.layer,
                "head": request.head,
                "query": request.query,
                "pattern": np.ascontiguousarray(pattern),
            }

        key = ("attention", request.text, request.layer, request.head, request.query)
        return self._cached(key, compute)

    def analyze_payload(self, request: AnalyzeRequest) -> dict | Awaiting[dict]:
        heads = [(ref.layer, ref.head) for ref in request.patterns]
        for layer, head in heads:
            self.check_head(layer, head)

        def work(encoded: Encoded) -> Callable[[list[str]], dict]:
            # With a tagger process, the words are tagged there while the forward pass runs here.
            output = self.forward(encoded, patterns=heads)
            return lambda tags: {
                "tokens": self.token_dicts(encoded, tags),
                "activity": np.ascontiguousarray(output.activity),  # [layer, head, token]
                "patterns": [
                    {
                        "layer": layer,
                        "head": head,
                        "pattern": np.ascontiguousarray(output.patterns[(layer, head)]),
                    }
                    for layer, head in heads
                ],
            }

        key = ("analyze", request.text, tuple(heads))
        return self._cached_with_tags(key, request.text, "overlap", work)

    def encoded(
        self,
        payload_of: Callable[[Any], dict | Awaiting[dict]],
        request: Any,
        media_type: str = JSON,
        single_array: str | None = None,
    ) -> bytes | Awaiting[bytes]:
        """A payload encoded as `media_type`, at the request's `dtype`/`decimals`: what routes
        send. Runs in the analysis pool, so encoding never blocks the event loop."""
        precision = Precision(
            dtype=getattr(request, "dtype", "float32"), decimals=getattr(request, "decimals", None)
        )
        sparsity = Sparsity(
            top_k=getattr(request, "top_k", None), threshold=getattr(request, "threshold", None)
        )

        def encoded_payload(payload: dict) -> bytes:
            return encode(sparsity.sparsify(payload), media_type, precision, single_array)

        payload = payload_of(request)
        if isinstance(payload, Awaiting):
            then = payload.then
            return Awaiting(payload.future, lambda tags: encoded_payload(then(tags)))
        return encoded_payload(payload)

    # -- the API's questions, as pydantic models (the plain path) --------------------------------

    def tag(self, request: TagRequest) -> TagResponse:
        return TagResponse.model_validate(resolved(self.tag_payload(request)))

    def activity(self, request: ActivityRequest) -> ActivityResponse:
        return ActivityResponse.model_validate(to_lists(self.activity_payload(request)))

    def attention(self, request: AttentionRequest) -> AttentionResponse:
        sparsity = Sparsity(top_k=request.top_k, threshold=request.threshold)
        return AttentionResponse.model_validate(
            to_lists(sparsity.sparsify(self.attention_payload(request)))
        )

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        sparsity = Sparsity(top_k=request.top_k, threshold=request.threshold)
        return AnalyzeResponse.model_validate(
            to_lists(sparsity.sparsify(resolved(self.analyze_payload(request))))
        )


def load_runtime(settings: Settings, *, load_probes: bool = True) -> Runtime:
    """Load everything once; raise StartupError naming what is missing or broken.

    `load_probes=False` skips the probe run (the probe trainer loads the model this way)."""
    files = resolve_model_files(settings.model, settings.tokenizer)
    native_cache = getattr(settings, "kernel_cache", None)
    if getattr(settings, "tagger_process", False):
        tagger: Tagger = TaggerProcess(  # loads while the model does
            WORD_SPAN_CACHE_BYTES, native_cache=native_cache
        )
    else:
        tagger = PosTagger(native_cache=native_cache)
    try:
        model, tokenizer = load_model(files, torch_threads=settings.torch_threads)
        weights_sha256 = sha256_of_files(files.weight_files)
        if isinstance(tagger, TaggerProcess):
            tagger.wait_ready()
        runtime = Runtime(settings, files, model, tokenizer, tagger, weights_sha256)
        runtime.runner.attach_native(
            getattr(settings, "attention_kernel", "auto"), getattr(settings, "kernel_cache", None)
        )
        log.info(
            "Loaded %s (%d layers x %d heads, weights sha256 %s…), max_tokens=%d",
            files.model_id,
            runtime.geometry.n_layers,
            runtime.geometry.n_heads,
            weights_sha256[:12],
            runtime.max_tokens,
        )
        if load_probes:
            from headscope.analysis.probes.loader import attach_probes

            attach_probes(runtime, settings)
    except BaseException:
        tagger.close()  # a start that fails leaves no child behind
        raise
    return runtime
