"""The TinyStories family: each geometry (16 heads of size hidden / 16, 1-8 layers) as a
random-weight model saved in the hub layout, loaded by the real loading path, against Hugging
Face's own forward pass to 1e-5: patterns, activity, logits, and zero / mean ablation against a
forward pre-hook on out_proj. The C kernel computes heads of size 4 only: for the other
geometries it declines and the engine falls back to the torch backend."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoForCausalLM

from headscope.model.ablation import ablation_values, head_mask, single_head_ablations
from headscope.model.backends.base import Ablation, ForwardRequest
from headscope.model.engine import AnalysisEngine
from headscope.model.loading import load_model, resolve_model_files
from tests.helpers import FAMILY, make_family_model_dir

TOLERANCE = 1e-5
LENGTH = 270  # past the 256-token local window
# The LM head of a wide model is the costly part: logits are compared at the last positions of
# the long text (the final hidden states at all), and ablations run on its first SHORT tokens.
LOGIT_POSITIONS = 16
SHORT = 40


class Family:
    """One geometry: our engine (native kernel attached) and HF's model on the same files."""

    def __init__(self, directory, attention_kernel) -> None:
        files = resolve_model_files(str(directory))
        checkpoint, _ = load_model(files)
        self.engine = AnalysisEngine(checkpoint.config, checkpoint.tensors)
        self.engine.use_kernel(attention_kernel)
        self.hf = GPTNeoForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
        generator = torch.Generator().manual_seed(1)
        self.input_ids = torch.randint(0, 50257, (1, LENGTH), generator=generator)
        self.z_inputs: dict[int, torch.Tensor] = {}
        hooks = [
            block.attn.attention.out_proj.register_forward_pre_hook(
                lambda _module, args, layer=layer: self.z_inputs.__setitem__(layer, args[0])
            )
            for layer, block in enumerate(self.hf.transformer.h)
        ]
        with torch.no_grad():
            result = self.hf(
                self.input_ids,
                output_attentions=True,
                output_hidden_states=True,
                logits_to_keep=LOGIT_POSITIONS,
            )
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            self.short_logits = self.hf(self.input_ids[:, :SHORT]).logits
        self.attentions = result.attentions
        self.final = result.hidden_states[-1]  # after ln_f: what the LM head reads
        self.last_logits = result.logits  # [1, LOGIT_POSITIONS, vocab]

    def hooked_logits(self, heads, replacement: torch.Tensor | None) -> torch.Tensor:
        """HF's logits with each (layer, head)'s slice of out_proj's input replaced by zeros
        or by `replacement[layer, head]`."""
        g = self.engine.geometry

        def replace(layer):
            def hook(_module, args):
                z = args[0].clone()  # [batch, token, head * d_head]
                for ablated_layer, head in heads:
                    if ablated_layer == layer:
                        part = slice(head * g.d_head, (head + 1) * g.d_head)
                        z[..., part] = 0.0 if replacement is None else replacement[layer, head]
                return (z,)

            return hook

        hooks = [
            block.attn.attention.out_proj.register_forward_pre_hook(replace(layer))
            for layer, block in enumerate(self.hf.transformer.h)
        ]
        try:
            with torch.no_grad():
                return self.hf(self.input_ids[:, :SHORT]).logits
        finally:
            for hook in hooks:
                hook.remove()


@pytest.fixture(scope="module", params=list(FAMILY))
def family(request, tmp_path_factory, attention_kernel):
    layers, hidden = FAMILY[request.param]
    directory = make_family_model_dir(
        tmp_path_factory.mktemp(f"family-{request.param}"), layers, hidden
    )
    return Family(directory, attention_kernel)


def backends(family):
    return [backend.name for backend in family.engine.backends]


def test_the_geometry_is_read_from_the_files(family):
    g = family.engine.geometry
    config = family.hf.config
    assert (g.n_layers, g.n_heads, g.d_model) == (config.num_layers, 16, config.hidden_size)
    assert g.d_head == config.hidden_size // 16
    plain = family.engine.backend_for(ForwardRequest(last_layer=g.n_layers - 1))
    # The C kernel computes heads of size 4 only; other geometries fall back to torch.
    assert plain.name == ("native" if g.d_head == 4 else "torch")


def test_patterns_activity_and_logits_match_hf(family):
    g = family.engine.geometry
    for backend in backends(family):
        if backend == "native" and g.d_head != 4:
            continue
        output = family.engine.run(family.input_ids, all_patterns=True, final=True, backend=backend)
        for layer in range(g.n_layers):
            pattern_diff = (output.all_patterns[:, layer] - family.attentions[layer]).abs().max()
            assert pattern_diff.item() <= TOLERANCE, (backend, layer)
            # Activity: the norm of each head's z slice through its W_O columns, from HF's z.
            w_o = family.hf.transformer.h[layer].attn.attention.out_proj.weight
            z = family.z_inputs[layer].view(1, LENGTH, g.n_heads, g.d_head)
            w_heads = w_o.view(g.d_model, g.n_heads, g.d_head)
            contribution = torch.einsum("bthd,mhd->bhtm", z, w_heads)
            want = contribution.norm(dim=-1)  # [batch, head, token]
            activity_diff = (output.activity[:, layer] - want).abs().max().item()
            assert activity_diff <= TOLERANCE, (backend, layer)
        assert (output.final - family.final).abs().max().item() <= TOLERANCE, backend
        logits = family.engine.logits(output.final[:, -LOGIT_POSITIONS:])
        assert (logits - family.last_logits).abs().max().item() <= TOLERANCE, backend


def ablated_heads(g) -> list[tuple[int, int]]:
    return [(0, 3), (g.n_layers - 1, g.n_heads - 1), (g.n_layers // 2, 0)]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_matches_a_pre_hook_on_out_proj(family, mode):
    g = family.engine.geometry
    heads = ablated_heads(g)
    generator = torch.Generator().manual_seed(2)
    mean_z = (
        torch.randn(g.n_layers, g.n_heads, g.d_head, generator=generator)
        if mode == "mean"
        else None
    )
    want = family.hooked_logits(heads, mean_z)
    assert (want - family.short_logits).abs().max().item() > 100 * TOLERANCE  # it matters
    ablation = Ablation(head_mask(family.engine, heads), ablation_values(family.engine, mean_z))
    for backend in ("torch", "reference"):
        output = family.engine.run(
            family.input_ids[:, :SHORT], final=True, ablation=ablation, backend=backend
        )
        diff = (family.engine.logits(output.final) - want).abs().max().item()
        assert diff <= TOLERANCE, backend


def test_ablating_nothing_is_the_plain_forward(family):
    nothing = Ablation(head_mask(family.engine, []), ablation_values(family.engine, None))
    output = family.engine.run(family.input_ids[:, :SHORT], final=True, ablation=nothing)
    diff = (family.engine.logits(output.final) - family.short_logits).abs().max().item()
    assert diff <= TOLERANCE


def test_batched_single_head_ablations_match_one_hooked_forward_each(family):
    g = family.engine.geometry
    heads = ablated_heads(g) + [(0, 0)]
    values = ablation_values(family.engine, None)
    clean, ablated = single_head_ablations(
        family.engine, family.input_ids[:, :SHORT], heads, values
    )
    assert (family.engine.logits(clean) - family.short_logits[0]).abs().max().item() <= TOLERANCE
    for index, head in enumerate(heads):
        want = family.hooked_logits([head], None)[0]
        diff = (family.engine.logits(ablated[index]) - want).abs().max().item()
        assert diff <= TOLERANCE, head
