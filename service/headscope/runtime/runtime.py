"""The Runtime object: tokenizer + tagger + analysis engine + limits, shared by all routes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from headscope.errors import EmptyText, InputTooLong, InvalidRequest, StartupError, UnknownHead
from headscope.runtime.engine import AnalysisEngine, EngineOutput
from headscope.runtime.loading import ModelFiles, load_model, resolve_model_files, sha256_of_files
from headscope.runtime.tagging import PosTagger
from headscope.schemas import (
    ActivityRequest,
    ActivityResponse,
    AnalyzeRequest,
    AnalyzeResponse,
    AttentionRequest,
    AttentionResponse,
    HeadPattern,
    ModelInfo,
    TagRequest,
    TagResponse,
    Token,
)
from headscope.settings import Settings

log = logging.getLogger("headscope.runtime")


@dataclass(frozen=True)
class Encoded:
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        files: ModelFiles,
        model,
        tokenizer,
        tagger: PosTagger,
        weights_sha256: str,
    ) -> None:
        self.settings = settings
        self.files = files
        self.model = model
        self.tokenizer = tokenizer
        self.tagger = tagger
        self.engine = AnalysisEngine(model)
        self.geometry = self.engine.geometry
        self.weights_sha256 = weights_sha256
        if settings.max_tokens > self.geometry.max_positions:
            raise StartupError(
                f"max_tokens={settings.max_tokens} exceeds the model's "
                f"max_position_embeddings={self.geometry.max_positions}."
            )
        self.max_tokens = settings.max_tokens
        self.probes = None  # set by the probes loader when a run is loaded
        self.probes_reason: str | None = "No probe run loaded."

    # -- model facts ---------------------------------------------------------------------------

    def info(self) -> ModelInfo:
        g = self.geometry
        return ModelInfo(
            model_id=self.files.model_id,
            architecture=(self.model.config.architectures or ["GPTNeoModel"])[0],
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

    def encode(self, text: str) -> Encoded:
        """Tokenize, enforcing the token limit before any model work."""
        if not text.strip():
            raise EmptyText("text is empty or whitespace only")
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        if len(ids) > self.max_tokens:
            raise InputTooLong(
                f"text has {len(ids)} tokens; the limit is {self.max_tokens}",
                detail={"tokens": len(ids), "max_tokens": self.max_tokens},
            )
        return Encoded(text, ids, [tuple(pair) for pair in encoding["offset_mapping"]])

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

    def tags(self, encoded: Encoded, alignment: str = "overlap") -> list[str]:
        return self.tagger.tag_tokens(encoded.text, encoded.offsets, alignment)

    def forward(
        self,
        encoded: Encoded,
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        vectors: bool = False,
    ) -> EngineOutput:
        input_ids = torch.tensor([encoded.ids], dtype=torch.long)
        return self.engine.run(input_ids, last_layer=last_layer, patterns=patterns, vectors=vectors)

    # -- the API's questions ---------------------------------------------------------------------

    def tag(self, request: TagRequest) -> TagResponse:
        encoded = self.encode(request.text)
        return TagResponse(tokens=self.tokens(encoded, self.tags(encoded, request.alignment)))

    def activity(self, request: ActivityRequest) -> ActivityResponse:
        g = self.geometry
        layers = self._selection(request.layers, g.n_layers, "layers")
        heads = self._selection(request.heads, g.n_heads, "heads")
        encoded = self.encode(request.text)
        output = self.forward(encoded, last_layer=max(layers))
        activity = output.activity[0][layers][:, heads]  # [layer, head, token]
        return ActivityResponse(
            tokens=self.tokens(encoded), layers=layers, heads=heads, activity=activity.tolist()
        )

    def attention(self, request: AttentionRequest) -> AttentionResponse:
        self.check_head(request.layer, request.head)
        encoded = self.encode(request.text)
        if request.query is not None and not 0 <= request.query < len(encoded):
            raise InvalidRequest(
                f"query {request.query} is outside the text's {len(encoded)} tokens",
                detail={"query": request.query, "tokens": len(encoded)},
            )
        head = (request.layer, request.head)
        output = self.forward(encoded, last_layer=request.layer, patterns=[head])
        pattern = output.patterns[head][0]  # [q, k]
        if request.query is not None:
            pattern = pattern[request.query : request.query + 1]
        return AttentionResponse(
            tokens=self.tokens(encoded),
            layer=request.layer,
            head=request.head,
            query=request.query,
            pattern=pattern.tolist(),
        )

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        heads = [(ref.layer, ref.head) for ref in request.patterns]
        for layer, head in heads:
            self.check_head(layer, head)
        encoded = self.encode(request.text)
        output = self.forward(encoded, patterns=heads)
        return AnalyzeResponse(
            tokens=self.tokens(encoded, self.tags(encoded)),
            activity=output.activity[0].tolist(),
            patterns=[
                HeadPattern(
                    layer=layer, head=head, pattern=output.patterns[(layer, head)][0].tolist()
                )
                for layer, head in heads
            ],
        )


def load_runtime(settings: Settings) -> Runtime:
    """Load everything once; raise StartupError naming what is missing or broken."""
    files = resolve_model_files(settings.model, settings.tokenizer)
    tagger = PosTagger()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    model, tokenizer = load_model(files)
    weights_sha256 = sha256_of_files(files.weight_files)
    runtime = Runtime(settings, files, model, tokenizer, tagger, weights_sha256)
    log.info(
        "Loaded %s (%d layers x %d heads, weights sha256 %s…), max_tokens=%d",
        files.model_id,
        runtime.geometry.n_layers,
        runtime.geometry.n_heads,
        weights_sha256[:12],
        runtime.max_tokens,
    )
    return runtime
