"""Loading without transformers: config.json read as Hugging Face's GPTNeoConfig reads it, the
weights equal to GPTNeoModel's own (with or without the "transformer." prefix, safetensors,
pytorch_model.bin or shards), and every broken checkpoint refused naming the file and the field
or tensor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPTNeoConfig, GPTNeoModel
from transformers.activations import ACT2FN

from headscope.errors import StartupError
from headscope.model.engine import ACTIVATIONS
from headscope.model.loading import (
    REQUIRED_SIZES,
    SUPPORTED_ACTIVATIONS,
    expected_shapes,
    load_weights,
    read_config,
    resolve_model_files,
    weight_files_of,
)
from tests.helpers import CONFIG_1M, STANDIN_DIR, server_env


@pytest.fixture()
def model_dir(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(STANDIN_DIR, target)
    return target


def edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for field, value in changes.items():
        if value is None:
            config.pop(field, None)
        else:
            config[field] = value
    path.write_text(json.dumps(config))


# -- config.json -------------------------------------------------------------------------------


@pytest.mark.parametrize("config_dir", [STANDIN_DIR, CONFIG_1M.parent])
def test_config_reads_as_hugging_face_reads_it(config_dir):
    ours = read_config(config_dir / "config.json")
    theirs = GPTNeoConfig.from_pretrained(config_dir)
    for field in (*REQUIRED_SIZES, "layer_norm_epsilon", "activation_function"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert list(ours.attention_layers) == theirs.attention_layers
    assert list(ours.architectures) == theirs.architectures
    assert ours.intermediate_size == 4 * ours.hidden_size  # null in both configs


def test_attention_layers_come_from_attention_types_when_absent(model_dir):
    edit_config(model_dir, attention_layers=None, attention_types=[[["local", "global"], 4]])
    ours = read_config(model_dir / "config.json")
    assert list(ours.attention_layers) == GPTNeoConfig.from_pretrained(model_dir).attention_layers
    assert ours.attention_layers[:2] == ("local", "global")


def test_explicit_attention_layers_win_as_in_hugging_face(model_dir):
    edit_config(model_dir, attention_layers=["local"] * 8)
    ours = read_config(model_dir / "config.json")
    assert list(ours.attention_layers) == GPTNeoConfig.from_pretrained(model_dir).attention_layers
    assert ours.attention_layers == ("local",) * 8


@pytest.mark.parametrize("field", REQUIRED_SIZES)
def test_a_missing_size_is_named(model_dir, field):
    edit_config(model_dir, **{field: None})
    config_path = model_dir / "config.json"
    with pytest.raises(StartupError, match=f"'{field}'") as caught:
        read_config(config_path)
    assert str(config_path) in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"attention_layers": None, "attention_types": None}, "attention_types"),
        ({"attention_layers": None, "attention_types": [[["global"], 3]]}, "attention_types"),
        ({"attention_layers": ["global", "sparse"] * 4}, "attention_layers"),
        ({"num_layers": True}, "num_layers"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_heads": 5}, "num_heads"),
        ({"window_size": "256"}, "window_size"),
        ({"intermediate_size": 1.5}, "intermediate_size"),
        ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
        ({"activation_function": "tanh"}, "activation_function"),
        ({"architectures": "GPTNeoModel"}, "architectures"),
        ({"model_type": "gpt2"}, "gpt2"),
    ],
)
def test_a_bad_field_is_named(model_dir, changes, field):
    edit_config(model_dir, **changes)
    config_path = model_dir / "config.json"
    with pytest.raises(StartupError, match=field) as caught:
        read_config(config_path)
    assert str(config_path) in str(caught.value)


def test_hugging_face_defaults_fill_what_it_fills(model_dir):
    edit_config(model_dir, layer_norm_epsilon=None, activation_function=None, architectures=None)
    ours = read_config(model_dir / "config.json")
    theirs = GPTNeoConfig.from_pretrained(model_dir)
    assert ours.layer_norm_epsilon == theirs.layer_norm_epsilon
    assert ours.activation_function == theirs.activation_function
    assert ours.architectures == ()


def test_every_supported_activation_is_hugging_faces():
    assert set(ACTIVATIONS) == set(SUPPORTED_ACTIVATIONS)
    x = torch.linspace(-6, 6, 10001)
    for name, (fast, reference) in ACTIVATIONS.items():
        expected = ACT2FN[name](x)
        assert torch.equal(reference(x), expected), name
        assert (fast(x) - expected).abs().max().item() <= 1e-6, name


# -- weights -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_state():
    """GPTNeoModel's own tensors for the stand-in, loaded by transformers."""
    model = GPTNeoModel.from_pretrained(STANDIN_DIR, attn_implementation="eager")
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def assert_loads_as_hugging_face(directory, hf_state) -> None:
    files = resolve_model_files(str(directory))
    tensors = load_weights(files.config, files.weight_files)
    assert tensors.keys() == expected_shapes(files.config).keys()
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, hf_state[name]), name


def stored_tensors() -> dict[str, torch.Tensor]:
    return load_file(STANDIN_DIR / "model.safetensors")  # "transformer."-prefixed names


def test_causal_lm_checkpoint_loads_as_hugging_face(hf_state):
    assert all(name.startswith("transformer.") for name in stored_tensors())
    assert_loads_as_hugging_face(STANDIN_DIR, hf_state)


def test_base_model_names_and_pytorch_bin_load_the_same(model_dir, hf_state):
    """A GPTNeoModel checkpoint (no prefix) saved as pytorch_model.bin, with an LM head and the
    attention-mask buffers old checkpoints carry: the same tensors."""
    state = {name.removeprefix("transformer."): t for name, t in stored_tensors().items()}
    state["lm_head.weight"] = state["wte.weight"].clone()
    state["h.0.attn.attention.bias"] = torch.tril(torch.ones(1, 1, 2048, 2048, dtype=torch.bool))
    state["h.0.attn.attention.masked_bias"] = torch.tensor(-1e9)
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    assert weight_files_of(model_dir) == (model_dir / "pytorch_model.bin",)
    assert_loads_as_hugging_face(model_dir, hf_state)


def test_sharded_half_precision_checkpoint_loads_as_float32(model_dir, hf_state):
    state = stored_tensors()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:50],
        "model-00002-of-00002.safetensors": names[50:],
    }
    for shard, shard_names in shards.items():
        save_file({name: state[name] for name in shard_names}, model_dir / shard)
    index = {"weight_map": {name: shard for shard, group in shards.items() for name in group}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    (model_dir / "model.safetensors").unlink()
    assert_loads_as_hugging_face(model_dir, hf_state)

    half = {name: tensor.half() for name, tensor in state.items()}
    save_file(half, model_dir / "model.safetensors")
    files = resolve_model_files(str(model_dir))
    assert files.weight_files == (model_dir / "model.safetensors",)
    tensors = load_weights(files.config, files.weight_files)
    assert tensors["wte.weight"].dtype == torch.float32
    assert torch.equal(tensors["wte.weight"], half["transformer.wte.weight"].float())


def test_a_missing_tensor_is_named(model_dir):
    state = stored_tensors()
    del state["transformer.h.3.mlp.c_fc.bias"]
    save_file(state, model_dir / "model.safetensors")
    files = resolve_model_files(str(model_dir))
    with pytest.raises(StartupError, match=r"h\.3\.mlp\.c_fc\.bias") as caught:
        load_weights(files.config, files.weight_files)
    assert str(model_dir / "model.safetensors") in str(caught.value)


def test_a_misshapen_tensor_is_named(model_dir):
    state = stored_tensors()
    state["transformer.h.5.attn.attention.k_proj.weight"] = torch.zeros(64, 32)
    save_file(state, model_dir / "model.safetensors")
    files = resolve_model_files(str(model_dir))
    with pytest.raises(StartupError, match=r"h\.5\.attn\.attention\.k_proj\.weight") as caught:
        load_weights(files.config, files.weight_files)
    assert "(64, 32)" in str(caught.value) and "(64, 64)" in str(caught.value)
    assert str(model_dir / "model.safetensors") in str(caught.value)


def test_weights_that_disagree_with_the_config_are_named(model_dir):
    edit_config(model_dir, vocab_size=50000)
    files = resolve_model_files(str(model_dir))
    with pytest.raises(StartupError, match=r"wte\.weight.*\(50257, 64\).*\(50000, 64\)"):
        load_weights(files.config, files.weight_files)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_corrupt_weight_file_is_named(model_dir, name):
    (model_dir / "model.safetensors").unlink()
    path = model_dir / name
    path.write_bytes(b"\x00garbage" * 1000)
    files = resolve_model_files(str(model_dir))
    with pytest.raises(StartupError, match="Could not load the weights") as caught:
        load_weights(files.config, files.weight_files)
    assert str(path) in str(caught.value)


def test_a_broken_shard_index_is_named(model_dir):
    (model_dir / "model.safetensors").unlink()
    index = model_dir / "model.safetensors.index.json"
    index.write_text("{}")
    with pytest.raises(StartupError, match=str(index)):
        resolve_model_files(str(model_dir))


# -- the server's imports ----------------------------------------------------------------------

SERVER_IMPORTS = """
import sys
from fastapi.testclient import TestClient
from headscope.app import create_app
from headscope.settings import Settings

settings = Settings(model=sys.argv[1], allow_missing_probes=True, store=sys.argv[2])
with TestClient(create_app(settings)) as client:
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/analyze", json={"text": "Lily said, 'Hi!'"}).status_code == 200
heavy = ("transformers", "matplotlib", "nltk")
print(sorted(name for name in sys.modules if name.split(".")[0] in heavy))
"""


def test_the_server_imports_neither_transformers_nor_matplotlib_nor_nltk(tmp_path):
    """Starting the app (its lifespan loads the runtime) and answering an analysis leaves
    transformers and matplotlib unimported (they cost seconds and ~150 MB), and nltk too: the
    tagger process tags."""
    result = subprocess.run(
        [sys.executable, "-c", SERVER_IMPORTS, str(STANDIN_DIR), str(tmp_path)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
