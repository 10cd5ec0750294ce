"""Service settings: one pydantic-settings model, env prefix HEADSCOPE_, mirrored by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "roneneldan/TinyStories-1M"
# The TinyStories models were trained on 512-token sequences; their config allows 2048 positions,
# but activations past 512 never saw training.
DEFAULT_MAX_TOKENS = 512


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEADSCOPE_", extra="ignore")

    model: str = Field(
        default=DEFAULT_MODEL,
        description="Hub id or local directory (config.json, weights, tokenizer files).",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Hub id or directory of the tokenizer, when the model directory has none.",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, description="Port to bind.")
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS,
        ge=1,
        description="Most tokens per request; at most the config's max_position_embeddings.",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="Largest request body.")
    max_response_bytes: int = Field(
        default=64 * 2**20,
        ge=1024,
        description="Largest response one request may ask for, estimated from the request "
        "before any work (patterns, layers and heads x tokens x bytes per number in the chosen "
        "format); past it, 413.",
    )
    max_unsent_response_bytes: int = Field(
        default=256 * 2**20,
        ge=0,
        description="Response bytes that may wait for clients reading slowly (or not at all); "
        "past it, new analyses are refused with 429 until those clients read or time out.",
    )
    write_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a response may wait for its client to read any of it before the "
        "connection is closed.",
    )
    max_connections: int = Field(
        default=1000,
        ge=8,
        description="Open connections at most. Past it, the oldest connection with no request "
        "in progress (idle, or still sending its request) is closed to make room; when every "
        "one is busy, the new one gets 503.",
    )
    request_head_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send a request's head (from connecting, or "
        "from the previous answer); past it, 408 and the connection is closed.",
    )
    request_body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request has to send its body after its head; past it, 408 and "
        "the connection is closed.",
    )
    max_concurrency: int = Field(default=2, ge=1, description="Analyses running at once.")
    max_queue: int = Field(
        default=64, ge=0, description="Analyses waiting beyond those running; past it, 429."
    )
    torch_threads: int | None = Field(
        default=1,
        ge=1,
        description="torch intra-op threads per analysis. 1 (default) suits a small box: "
        "`max_concurrency` analyses already run in parallel, and more threads per analysis "
        "contend for the same cores (measured: tiny ops 5-15x slower with 2 threads on 2 "
        "busy cores). Unset: torch's own choice.",
    )
    attention_kernel: Literal["auto", "c", "torch"] = Field(
        default="auto",
        description="Attention arithmetic: 'c' the fused C kernel (built at first start with the "
        "machine's C compiler, cached in `kernel_cache`; refuse to start without it), 'torch' "
        "torch ops only, 'auto' the kernel where it builds, else torch (same numbers to 1e-5).",
    )
    kernel_cache: Path | None = Field(
        default=None,
        description="Folder for the built C libraries: the attention kernel and the tagger's word "
        "loop (default: ~/.cache/headscope/kernels, or under XDG_CACHE_HOME).",
    )
    tagger_process: bool = Field(
        default=True,
        description="Tag in a child process (no torch, ~100 MB), beside the forward pass and "
        "without holding the server's GIL; off: tag in the server process.",
    )
    analysis_cache_mb: int = Field(
        default=64,
        ge=0,
        description="Memory for cached analysis results (LRU by model fingerprint, endpoint, "
        "text and options); 0 turns the cache off.",
    )
    heap_trim_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between returns of memory freed by analyses to the OS "
        "(glibc malloc_trim, after an analysis); 0 turns it off.",
    )
    probes: Path | None = Field(
        default=None, description="Probe run folder to load (default: newest matching run)."
    )
    store: Path = Field(default=Path("models_store"), description="Folder that holds probe runs.")
    allow_missing_probes: bool = Field(
        default=False,
        description="Start without probes when the probe run is missing, corrupt or for another "
        "model (probe endpoints then answer 503 with the reason) instead of refusing to start.",
    )
    train_probes_if_missing: bool = Field(
        default=True,
        description="Train the default probe run at startup when the store has none for the "
        "loaded model (progress in the log; later starts load it); off: start without probes.",
    )
    probes_max_sequences: int = Field(
        default=200,
        ge=1,
        description="Sequences per split (train and test) when probes are trained at startup; "
        "the paper used 200 + 200.",
    )
    corpus: str | None = Field(
        default=None,
        description="Text file of TinyStories sequences for corpus endpoints and probe training "
        "(default: the validation split from the hub).",
    )
    corpus_max_sequences: int = Field(
        default=1000,
        ge=1,
        description="Most sequences one corpus request may analyse (`texts` over it: 413; "
        "`n_sequences` over it: 422).",
    )
    corpus_max_tokens: int = Field(
        default=100_000,
        ge=1,
        description="Most tokens, summed over all sequences, one corpus request may analyse (413).",
    )
    corpus_cache_size: int = Field(
        default=64,
        ge=0,
        description="Corpus results kept in memory (LRU, per model and request); 0 turns it off.",
    )
    jobs_dir: Path | None = Field(
        default=None,
        description="Folder of finished `headscope corpus run` jobs (each job's --out in a "
        "folder of its own) that GET /v1/corpus/jobs serves.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but health and docs needs this bearer key."
    )
    max_headers: int = Field(
        default=100, ge=1, description="Most headers one request may send; past it, 431."
    )
    max_header_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Most bytes of request headers (names + values); past it, 431 (and a head "
        "still arriving past it is cut off with 400).",
    )
    keep_alive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open."
    )
    drain_timeout: int = Field(
        default=20,
        ge=0,
        description="On SIGTERM/SIGINT: seconds in-flight requests get to finish (new connections "
        "are refused meanwhile) before the server closes them and exits.",
    )
    log_level: str = Field(default="info", description="Log level.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_no_key(cls, value: object) -> object:
        # `HEADSCOPE_API_KEY=` (e.g. docker compose's `${HEADSCOPE_API_KEY:-}`) means "no key",
        # never "the empty key", which an empty bearer header would match.
        if isinstance(value, str) and not value.strip():
            return None
        # A key read from a file often ends in a newline; no client can send one in a header,
        # so such a key would lock everyone out. Refused (not stripped), so the operator knows
        # exactly which key is in force. The message never repeats the key.
        if isinstance(value, str) and value != value.strip():
            raise ValueError(
                "the API key starts or ends with whitespace (a trailing newline?); "
                "remove it from HEADSCOPE_API_KEY"
            )
        return value
