"""Shared test helpers: paths to ../shared, model directories, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from headscope import launcher
from headscope.launcher import free_port, wait_until_ready

if TYPE_CHECKING:
    import uvicorn

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADSCOPE_SHARED", REPO.parent / "shared")).resolve()
ASSETS = SHARED / "assets"
STANDIN_DIR = ASSETS / "standin-trained"
CONFIG_1M = ASSETS / "tinystories-1m" / "config.json"
TOKENIZER_DIR = ASSETS / "gpt2-tokenizer"
NLTK_DATA = ASSETS / "nltk_data"
CORPUS = SHARED / "data" / "tinystories-valid-sample.txt"


def make_random_model_dir(target: Path, seed: int = 0) -> Path:
    """TinyStories-1M's exact config with random weights (fixed seed) + the real tokenizer,
    saved in the hub layout so from_pretrained(dir) runs the real loading path."""
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    config = GPTNeoConfig.from_pretrained(CONFIG_1M.parent)
    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    return target


# The GPT-Neo TinyStories family: 16 heads each, head size hidden / 16 (the 1M model's is 4).
# name -> (layers, hidden): 1M (8 x 64), 33M (4 x 768), and the one-layer hidden-1024 model.
FAMILY = {"1M": (8, 64), "33M": (4, 768), "1Layer-1024": (1, 1024)}


def make_family_model_dir(target: Path, layers: int, hidden: int, seed: int = 0) -> Path:
    """A TinyStories-family geometry (TinyStories-1M's config with `layers` and `hidden`, 16
    heads, global and local layers alternating) with random weights (fixed seed) + the real
    tokenizer, saved in the hub layout.

    The weights are drawn directly (the model built on the meta device for its parameter names
    and shapes): Hugging Face's own initialisation of a 33M model takes most of a minute on a
    small CPU."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    raw = json.loads(CONFIG_1M.read_text())
    kinds = ["global", "local"] if layers % 2 == 0 else ["global"]
    raw |= {
        "num_layers": layers,
        "hidden_size": hidden,
        "attention_types": [[kinds, layers // len(kinds)]],
    }
    skip = ("architectures", "attention_layers")  # the config expands attention_types itself
    config = GPTNeoConfig(**{k: v for k, v in raw.items() if k not in skip})
    config.architectures = raw["architectures"]
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in GPTNeoForCausalLM(config).named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        values = torch.randn(shape, generator=generator)
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_f.weight" in name:
            values = 1.0 + 0.1 * values
        else:
            values = 0.02 * values
        tensors[name] = values.contiguous()
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(target)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    return target


class ServerThread:
    """A real uvicorn server running an app in a background thread: on 127.0.0.1, a free port,
    with uvicorn's defaults and `options`, or as a ready-made `config` says."""

    def __init__(
        self, app, config: uvicorn.Config | None = None, stop_timeout: float = 10.0, **options
    ) -> None:
        import uvicorn

        self.app = app
        self.config = config or uvicorn.Config(
            app, host="127.0.0.1", port=free_port(), log_level="warning", **options
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.stop_timeout = stop_timeout

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until_ready(self.base_url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.stop_timeout)


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NLTK_DATA": str(NLTK_DATA), "HF_HUB_OFFLINE": "1", "HEADSCOPE_OFFLINE": "1"})
    env.update(extra)
    return env


def serve_process(
    *args: str, env: dict[str, str] | None = None, ready_timeout: float = 60.0
) -> AbstractContextManager[tuple[str, subprocess.Popen]]:
    """`headscope serve` as a real subprocess on a free port, in the tests' offline environment;
    yields (base_url, process)."""
    return launcher.serve_process(*args, env=env or server_env(), ready_timeout=ready_timeout)
