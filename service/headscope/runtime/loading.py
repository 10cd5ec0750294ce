"""Find, check and load a GPT-Neo checkpoint and its tokenizer, from a directory or the hub."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from headscope.errors import StartupError

log = logging.getLogger("headscope.loading")

SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
HOW_TO_POINT_LOCAL = (
    "Point --model (or HEADSCOPE_MODEL) at a local directory in the hub layout: config.json, "
    "model.safetensors (or pytorch_model.bin), vocab.json and merges.txt (or tokenizer.json)."
)


@dataclass(frozen=True)
class ModelFiles:
    model_id: str
    directory: Path
    weight_files: tuple[Path, ...]
    tokenizer_directory: Path


def _fetch_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one clear startup message
        raise StartupError(
            f"Could not get '{repo_id}' from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). {HOW_TO_POINT_LOCAL}"
        ) from err


def _resolve_directory(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise StartupError(f"Model directory '{model}' does not exist or is not a directory.")
    return _fetch_from_hub(model)


def weight_files_of(directory: Path) -> tuple[Path, ...]:
    for name in SINGLE_WEIGHT_FILES:
        if (directory / name).is_file():
            return (directory / name,)
    for name in SHARD_INDEX_FILES:
        index = directory / name
        if index.is_file():
            shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in shard_names if not (directory / n).is_file()]
            if missing:
                raise StartupError(
                    f"Weight shard(s) missing in '{directory}': {', '.join(missing)}"
                )
            return tuple(directory / n for n in shard_names)
    raise StartupError(
        f"No weights in '{directory}': expected one of {', '.join(SINGLE_WEIGHT_FILES)} "
        f"(or a sharded index). {HOW_TO_POINT_LOCAL}"
    )


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (
        (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    )


def resolve_model_files(model: str, tokenizer: str | None = None) -> ModelFiles:
    """Locate config, weights and tokenizer; raise StartupError naming whatever is missing."""
    directory = _resolve_directory(model)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise StartupError(f"'{config_path}' is missing. {HOW_TO_POINT_LOCAL}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise StartupError(f"'{config_path}' is not valid JSON: {err}") from err
    if config.get("model_type") != "gpt_neo":
        raise StartupError(
            f"'{model}' is a '{config.get('model_type')}' model; headscope supports GPT-Neo "
            "checkpoints only (the TinyStories family)."
        )
    weights = weight_files_of(directory)

    tokenizer_directory = _resolve_directory(tokenizer) if tokenizer is not None else directory
    if not _has_tokenizer(tokenizer_directory):
        raise StartupError(
            f"No tokenizer files in '{tokenizer_directory}': expected tokenizer.json, or "
            "vocab.json and merges.txt. Add them, or point --tokenizer (HEADSCOPE_TOKENIZER) at a "
            "directory that has them."
        )
    return ModelFiles(model, directory, weights, tokenizer_directory)


def sha256_of_files(paths: tuple[Path, ...] | list[Path]) -> str:
    """One digest over the files' bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(files: ModelFiles):  # -> (GPTNeoModel, tokenizer)
    """Load the base model (no LM head: nothing here needs logits) in inference mode."""
    import torch
    from transformers import AutoTokenizer, GPTNeoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = GPTNeoModel.from_pretrained(
            files.directory, attn_implementation="eager", dtype=torch.float32
        )
    except Exception as err:  # noqa: BLE001 - a corrupt weight file must name the file, not crash
        names = ", ".join(str(p) for p in files.weight_files)
        raise StartupError(
            f"Could not load the weights in {names}: {type(err).__name__}: {err}"
        ) from err
    model.eval()
    model.requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.tokenizer_directory)
    except Exception as err:  # noqa: BLE001
        raise StartupError(
            f"Could not load the tokenizer in '{files.tokenizer_directory}': {err}"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise StartupError(
            f"The tokenizer in '{files.tokenizer_directory}' has no character offsets (not a fast "
            "tokenizer); headscope needs them to align tokens with words."
        )
    return model, tokenizer
