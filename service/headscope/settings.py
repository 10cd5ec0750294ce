"""Service settings: one pydantic-settings model, env prefix HEADSCOPE_, mirrored by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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
    max_concurrency: int = Field(default=2, ge=1, description="Analyses running at once.")
    max_queue: int = Field(
        default=64, ge=0, description="Analyses waiting beyond those running; past it, 429."
    )
    torch_threads: int | None = Field(
        default=None, description="torch intra-op threads (default: torch's own choice)."
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
        default=False, description="Train a default probe run at startup when none matches."
    )
    corpus: str | None = Field(
        default=None,
        description="Text file of TinyStories sequences for corpus endpoints and probe training "
        "(default: the validation split from the hub).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but health and docs needs this bearer key."
    )
    log_level: str = Field(default="info", description="Log level.")
