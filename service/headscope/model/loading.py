"""Find, check and load a GPT-Neo checkpoint and its tokenizer, from a directory or the hub.

Without Hugging Face transformers: importing its GPT-Neo model is slow and large
(bench/README.md), and the engine only needs the weights as plain tensors. So config.json is read
into `ModelConfig`, the weights with safetensors (or torch.load with weights_only for
pytorch_model.bin), and the tokenizer with the `tokenizers` library that transformers' own fast
tokenizers run on. The tests check all three against transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.errors import StartupError

if TYPE_CHECKING:
    import tokenizers
    from torch import Tensor

log = logging.getLogger("headscope.loading")

SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
HOW_TO_POINT_LOCAL = (
    "Point --model (or HEADSCOPE_MODEL) at a local directory in the hub layout: config.json, "
    "model.safetensors (or pytorch_model.bin), vocab.json and merges.txt (or tokenizer.json)."
)


@dataclass(frozen=True)
class ModelConfig:
    """The GPT-Neo facts headscope reads from config.json."""

    num_layers: int
    num_heads: int
    hidden_size: int
    window_size: int
    attention_layers: tuple[str, ...]  # "global" or "local", one per layer
    max_position_embeddings: int
    layer_norm_epsilon: float
    activation_function: str
    intermediate_size: int
    vocab_size: int
    architectures: tuple[str, ...]


@dataclass(frozen=True)
class ModelFiles:
    model_id: str
    directory: Path
    weight_files: tuple[Path, ...]
    tokenizer_directory: Path
    config: ModelConfig


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model: its config and the float32 tensors the engine reads, named as in
    GPTNeoModel's state dict (`wte.weight`, `h.0.ln_1.weight`, ...)."""

    config: ModelConfig
    tensors: dict[str, Tensor]


def _fetch_from_hub(repo_id: str) -> Path:
    from headscope.hub import snapshot

    return snapshot(repo_id, HUB_PATTERNS, HOW_TO_POINT_LOCAL)


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
            try:
                shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise StartupError(
                    f"'{index}' is not a weight index ({type(err).__name__}: {err})."
                ) from err
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


# Sizes config.json must give: Hugging Face fills a missing one with GPT-Neo 1.3B's, which would
# silently misread a small model.
REQUIRED_SIZES = (
    "num_layers",
    "num_heads",
    "hidden_size",
    "window_size",
    "max_position_embeddings",
    "vocab_size",
)
# Fields config.json may leave out; as in Hugging Face's GPTNeoConfig, they then take these.
HF_DEFAULTS = {"layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
ATTENTION_KINDS = ("global", "local")
# Hugging Face's names (ACT2FN) for the activations the engine computes (engine.ACTIVATIONS).
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu", "swish")


def _expand_attention_types(attention_types: Any) -> list[str]:
    """[[["global", "local"], 4]] -> global, local, global, local, ... (as GPTNeoConfig does)."""
    layers: list[str] = []
    for kinds, repeat in attention_types:
        for _ in range(repeat):
            layers.extend(kinds)
    return layers


def read_config(config_path: Path) -> ModelConfig:
    """config.json as a ModelConfig; StartupError naming the file and the field when it is not a
    GPT-Neo config headscope can run."""
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise StartupError(f"'{config_path}' is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise StartupError(f"'{config_path}' is not a JSON object.")
    if raw.get("model_type") != "gpt_neo":
        raise StartupError(
            f"'{config_path}' describes a '{raw.get('model_type')}' model; headscope supports "
            "GPT-Neo checkpoints only (the TinyStories family)."
        )

    def invalid(field: str, expected: str) -> StartupError:
        if field not in raw:
            return StartupError(f"'{config_path}' has no '{field}' ({expected}).")
        return StartupError(f"'{config_path}': '{field}' is {raw[field]!r}; expected {expected}.")

    def size(field: str) -> int:
        value = raw.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(field, "a positive integer")
        return value

    sizes = {field: size(field) for field in REQUIRED_SIZES}
    if sizes["hidden_size"] % sizes["num_heads"]:
        raise invalid("num_heads", f"a divisor of hidden_size={sizes['hidden_size']}")

    # An explicit attention_layers wins over attention_types, as in Hugging Face's GPTNeoConfig.
    if "attention_layers" in raw:
        field, attention_layers = "attention_layers", raw["attention_layers"]
    else:
        field = "attention_types"
        try:
            attention_layers = _expand_attention_types(raw["attention_types"])
        except (KeyError, TypeError, ValueError):
            raise invalid(field, 'a list like [[["global", "local"], 4]]') from None
    if (
        not isinstance(attention_layers, list)
        or len(attention_layers) != sizes["num_layers"]
        or any(kind not in ATTENTION_KINDS for kind in attention_layers)
    ):
        raise invalid(field, f"'global'/'local' for each of the {sizes['num_layers']} layers")

    intermediate_size = raw.get("intermediate_size")
    if intermediate_size is None:
        intermediate_size = 4 * sizes["hidden_size"]  # GPT-Neo's MLP width when none is given
    elif (
        isinstance(intermediate_size, bool)
        or not isinstance(intermediate_size, int)
        or intermediate_size < 1
    ):
        raise invalid("intermediate_size", "a positive integer or null")
    epsilon = raw.get("layer_norm_epsilon", HF_DEFAULTS["layer_norm_epsilon"])
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or epsilon <= 0:
        raise invalid("layer_norm_epsilon", "a positive number")
    activation = raw.get("activation_function", HF_DEFAULTS["activation_function"])
    if activation not in SUPPORTED_ACTIVATIONS:
        raise invalid("activation_function", f"one of {', '.join(SUPPORTED_ACTIVATIONS)}")
    if raw.get("tie_word_embeddings", True) is not True:
        # The engine computes logits with wte as the LM head, as every TinyStories model ties it.
        raise invalid("tie_word_embeddings", "true (an LM head tied to the embedding)")
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise invalid("architectures", "a list of class names")

    return ModelConfig(
        **sizes,
        attention_layers=tuple(attention_layers),
        layer_norm_epsilon=float(epsilon),
        activation_function=activation,
        intermediate_size=intermediate_size,
        architectures=tuple(architectures),
    )


def resolve_model_files(model: str, tokenizer: str | None = None) -> ModelFiles:
    """Locate config, weights and tokenizer; raise StartupError naming whatever is missing."""
    directory = _resolve_directory(model)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise StartupError(f"'{config_path}' is missing. {HOW_TO_POINT_LOCAL}")
    config = read_config(config_path)
    weights = weight_files_of(directory)

    tokenizer_directory = _resolve_directory(tokenizer) if tokenizer is not None else directory
    if not _has_tokenizer(tokenizer_directory):
        raise StartupError(
            f"No tokenizer files in '{tokenizer_directory}': expected tokenizer.json, or "
            "vocab.json and merges.txt. Add them, or point --tokenizer (HEADSCOPE_TOKENIZER) at a "
            "directory that has them."
        )
    return ModelFiles(model, directory, weights, tokenizer_directory, config)


def sha256_of_files(paths: tuple[Path, ...] | list[Path]) -> str:
    """One digest over the files' bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- weights -------------------------------------------------------------------------------------

# GPTNeoForCausalLM's checkpoints (the hub's) name the base model's tensors "transformer.*";
# GPTNeoModel's do not. Either loads; lm_head.* (tied to wte: the logits are computed from wte)
# and the attention-mask buffers old checkpoints carry (attn.attention.bias / masked_bias) are
# not needed and never read.
CAUSAL_LM_PREFIX = "transformer."


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the engine reads, by GPTNeoModel state-dict name, with its shape."""
    d_model, inner = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (config.vocab_size, d_model),
        "wpe.weight": (config.max_position_embeddings, d_model),
        # The final LayerNorm, before the (tied) LM head: read for logits and ablation.
        "ln_f.weight": (d_model,),
        "ln_f.bias": (d_model,),
    }
    for layer in range(config.num_layers):
        block = f"h.{layer}."
        shapes |= {
            block + "ln_1.weight": (d_model,),
            block + "ln_1.bias": (d_model,),
            block + "attn.attention.q_proj.weight": (d_model, d_model),
            block + "attn.attention.k_proj.weight": (d_model, d_model),
            block + "attn.attention.v_proj.weight": (d_model, d_model),
            block + "attn.attention.out_proj.weight": (d_model, d_model),
            block + "attn.attention.out_proj.bias": (d_model,),
            block + "ln_2.weight": (d_model,),
            block + "ln_2.bias": (d_model,),
            block + "mlp.c_fc.weight": (inner, d_model),
            block + "mlp.c_fc.bias": (inner,),
            block + "mlp.c_proj.weight": (d_model, inner),
            block + "mlp.c_proj.bias": (d_model,),
        }
    return shapes


def _stored_tensors(path: Path, wanted: dict[str, tuple[int, ...]]) -> Iterator[tuple[str, Any]]:
    """(state-dict name, tensor as stored) for each wanted tensor in one weight file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for stored_name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                name = stored_name.removeprefix(CAUSAL_LM_PREFIX)
                if name in wanted:
                    yield name, handle.get_tensor(stored_name)
        return
    import torch

    # weights_only: the file is unpickled with tensors and plain containers only, no code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
    for stored_name, tensor in state.items():
        name = str(stored_name).removeprefix(CAUSAL_LM_PREFIX)
        if name in wanted:
            yield name, tensor


def load_weights(config: ModelConfig, weight_files: tuple[Path, ...]) -> dict[str, Tensor]:
    """The engine's tensors, as float32; StartupError naming the file and the tensor when one is
    unreadable, missing or not the shape config.json implies."""
    import torch

    wanted = expected_shapes(config)
    tensors: dict[str, Tensor] = {}
    for path in weight_files:
        try:
            for name, tensor in _stored_tensors(path, wanted):
                if not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"'{name}' is a {type(tensor).__name__}, not a tensor")
                tensors[name] = tensor.to(torch.float32).contiguous()
        except Exception as err:  # noqa: BLE001 - a corrupt weight file must name the file, not crash
            raise StartupError(
                f"Could not load the weights in '{path}': {type(err).__name__}: {err}"
            ) from err
    where = ", ".join(f"'{path}'" for path in weight_files)
    for name, shape in wanted.items():
        if name not in tensors:
            raise StartupError(
                f"The weights in {where} have no tensor '{name}' (nor "
                f"'{CAUSAL_LM_PREFIX}{name}'): not a complete GPT-Neo checkpoint."
            )
        if tuple(tensors[name].shape) != shape:
            raise StartupError(
                f"Tensor '{name}' in {where} has shape {tuple(tensors[name].shape)}; "
                f"config.json implies {shape}."
            )
    return tensors


# -- tokenizer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokenized:
    """A text's token ids and their character offsets into it; also readable by key, as
    Hugging Face's BatchEncoding is (`encoding["input_ids"]`)."""

    input_ids: list[int]
    offset_mapping: list[tuple[int, int]]

    def __getitem__(self, key: str) -> list:
        if key not in ("input_ids", "offset_mapping"):
            raise KeyError(key)
        return getattr(self, key)


class Tokenizer:
    """A `tokenizers` tokenizer with the part of Hugging Face's tokenizer API headscope uses."""

    def __init__(self, backend: tokenizers.Tokenizer, name_or_path: str) -> None:
        self.backend = backend
        self.name_or_path = name_or_path

    def __call__(self, text: str, add_special_tokens: bool = True) -> Tokenized:
        """Token ids and character offsets (always: headscope aligns tokens with words)."""
        # encode_batch releases the GIL while it works (encode holds it): the same encoding, with
        # other requests' Python running meanwhile.
        (encoding,) = self.backend.encode_batch([text], add_special_tokens=add_special_tokens)
        return Tokenized(encoding.ids, encoding.offsets)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


# The special-token fields of tokenizer_config.json / special_tokens_map.json. Tokens new to the
# vocabulary get the next ids in this order, as in transformers. GPT-2's tokenizer class makes
# the first three <|endoftext|> when the files leave them out.
SPECIAL_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")  # fmt: skip
GPT2_SPECIAL_TOKEN = "<|endoftext|>"


def _json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else {}


def _special_tokens(directory: Path, tokenizer_config: dict) -> list:
    """The special tokens Hugging Face's GPT-2 tokenizer would register for this directory."""
    from tokenizers import AddedToken

    def added_token(value: Any) -> AddedToken | None:
        if isinstance(value, str):
            return AddedToken(value, special=True, normalized=False)
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            options = ("single_word", "lstrip", "rstrip", "normalized")
            return AddedToken(
                value["content"],
                special=True,
                **{option: bool(value.get(option, False)) for option in options},
            )
        return None

    declared = {
        **{field: GPT2_SPECIAL_TOKEN for field in SPECIAL_TOKEN_FIELDS[:3]},
        **_json_object(directory / "special_tokens_map.json"),
        **tokenizer_config,
    }
    values = [
        entry
        for _, entry in sorted(
            (int(token_id), entry)
            for token_id, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items()
        )
    ]
    values += [declared.get(field) for field in SPECIAL_TOKEN_FIELDS]
    values += list(declared.get("additional_special_tokens") or [])
    return [token for token in map(added_token, values) if token is not None]


def _byte_level_bpe(directory: Path) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, built as transformers builds it."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors

    tokenizer_config = _json_object(directory / "tokenizer_config.json")
    backend = Backend(
        models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(tokenizer_config.get("add_prefix_space", False))
    )
    backend.decoder = decoders.ByteLevel()
    # Offsets keep a token's leading space (" cat" covers the space), as in transformers.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens(_special_tokens(directory, tokenizer_config))
    return backend


def load_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json when the directory has one, else vocab.json + merges.txt."""
    from tokenizers import Tokenizer as Backend

    try:
        if (directory / "tokenizer.json").is_file():
            backend = Backend.from_file(str(directory / "tokenizer.json"))
        else:
            backend = _byte_level_bpe(directory)
    except Exception as err:  # noqa: BLE001 - unreadable tokenizer files must name the directory
        raise StartupError(
            f"Could not load the tokenizer in '{directory}': {type(err).__name__}: {err}"
        ) from err
    return Tokenizer(backend, str(directory))


def load_model(
    files: ModelFiles, *, torch_threads: int | None = None
) -> tuple[Checkpoint, Tokenizer]:
    """The weights the analysis reads (the LM head is wte, tied) and the tokenizer;
    `torch_threads` (when set) is torch's intra-op thread count for this process."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    tensors = load_weights(files.config, files.weight_files)
    return Checkpoint(files.config, tensors), load_tokenizer(files.tokenizer_directory)
