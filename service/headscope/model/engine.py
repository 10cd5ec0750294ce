"""The analysis forward pass: per layer and head, keys, queries, values, attention patterns,
z = pattern · values, contributions z_h · W_O[:, h-slice]ᵀ and their L2 norms (activity).

A second implementation of GPT-Neo's attention, written from the weights, so its numbers can be
checked against Hugging Face's own forward pass. It stops after the last layer asked for and never
computes the LM head.

The engine is a short layer loop: embeddings, then one block at a time through a backend
(headscope.model.backends), collecting what the request keeps. Three backends compute the same
numbers (tested against HF and each other to 1e-5):
- `reference`: op by op, as the checkpoint stores the weights;
- `torch`: the same arithmetic in fewer, larger torch kernels;
- `native`: the C kernels (attached with `use_kernel`), heads of size 4 only.
Each backend says what it cannot compute, and the engine then takes the next one in that order
(native, torch, reference), so a request is never answered by a backend that would get it wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from headscope.model.activity import ACTIVITY, ActivityFormula
from headscope.model.backends.base import (
    ACTIVATIONS,
    Ablation,
    Backend,
    ForwardRequest,
    Geometry,
    LayerWeights,
)
from headscope.model.backends.native import AttentionKernel, NativeBackend
from headscope.model.backends.reference import ReferenceBackend
from headscope.model.backends.torch_fast import TorchBackend
from headscope.model.loading import ModelConfig
from headscope.model.stopping import AnalysisStopped, stop_signal

__all__ = ["ACTIVATIONS", "Ablation", "AnalysisEngine", "EngineOutput", "Geometry"]

log = logging.getLogger("headscope.engine")


@dataclass
class EngineOutput:
    """Results for a batch of right-padded sequences; positions past a sequence's length are junk.

    Only what was asked for is filled in; layers past `last_layer` are absent. `all_patterns` is
    a view of a [layer, batch, ...] buffer (not contiguous for batch > 1).
    """

    activity: Tensor  # [batch, layer, head, token]
    patterns: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (l, h) -> [batch, q, k]
    all_patterns: Tensor | None = None  # [batch, layer, head, q, k]
    keys: Tensor | None = None  # [batch, layer, head, token, d_head]
    queries: Tensor | None = None  # [batch, layer, head, token, d_head]
    values: Tensor | None = None  # [batch, layer, head, token, d_head]
    contributions: Tensor | None = None  # [batch, layer, head, token, d_model]
    attention_outputs: Tensor | None = None  # [batch, layer, token, d_model], incl. out_proj bias
    z: Tensor | None = None  # [batch, layer, head, token, d_head], after any ablation
    final: Tensor | None = None  # [batch, token, d_model]: ln_f of the last residual stream


class AnalysisEngine:
    def __init__(
        self,
        config: ModelConfig,
        tensors: Mapping[str, Tensor],
        *,
        activity: ActivityFormula = ACTIVITY,
    ) -> None:
        """`tensors`: float32, named as in GPTNeoModel's state dict (`h.0.ln_1.weight`, ...);
        `activity`: what activity means (headscope.model.activity)."""
        self.config = config
        self.tensors = tensors
        self.geometry = Geometry.of(config)
        self.activity = activity
        self.layers = [
            LayerWeights.of(config, tensors, layer) for layer in range(self.geometry.n_layers)
        ]
        self._wte = tensors["wte.weight"]  # [vocab, d_model]
        self._wpe = tensors["wpe.weight"]  # [position, d_model]
        self._activation, reference_activation = ACTIVATIONS[config.activation_function]
        self.reference = ReferenceBackend(
            self.geometry, self.layers, reference_activation, activity
        )
        self.torch = TorchBackend(self.geometry, self.layers, self._activation, activity)
        self.native: NativeBackend | None = None
        # Threads for backends that split a batch into parts, by count, made on first use.
        self._part_pools: dict[int, ThreadPoolExecutor] = {}
        self._part_pools_lock = threading.Lock()

    # -- backends ---------------------------------------------------------------------------------

    def use_kernel(self, kernel: AttentionKernel | None, *, whole_blocks: bool = True) -> None:
        """Prefer the native backend over these C kernels (None: the torch backend). Whole blocks
        go in one C call (`whole_blocks`) where the kernel offers it and the model's activation
        is the tanh-GELU (the kernel's own); otherwise the kernels are called one by one, with
        the same results bit for bit."""
        self.native = None
        if kernel is not None:
            self.native = NativeBackend(
                self.geometry, self.layers, self._activation, self.activity, kernel,
                whole_blocks=whole_blocks,
            )  # fmt: skip
            reason = self.native.unsupported(None)
            if reason is not None:
                log.info("The native backend computes nothing for this model (%s)", reason)

    @property
    def kernel(self) -> AttentionKernel | None:
        return self.native.kernel if self.native is not None else None

    @property
    def whole_blocks(self) -> bool:
        """Whether a single-threaded native pass runs each block in one kernel call."""
        return self.native is not None and self.native.blocks is not None

    @property
    def backends(self) -> list[Backend]:
        """The backends in the order the engine prefers them."""
        preferred: list[Backend] = [self.torch, self.reference]
        return [self.native, *preferred] if self.native is not None else preferred

    def backend_for(self, request: ForwardRequest, name: str | None = None) -> Backend:
        """The first backend (from `name`'s on, when given) that can compute `request`."""
        candidates = self.backends
        if name is not None:
            names = [backend.name for backend in candidates]
            if name not in names:
                raise ValueError(f"no backend {name!r} attached; these are: {', '.join(names)}")
            candidates = candidates[names.index(name) :]
        for backend in candidates:
            reason = backend.unsupported(request)
            if reason is None:
                return backend
            log.debug("Backend %s passes: %s", backend.name, reason)
        raise AssertionError("the reference backend computes every request")

    # -- the forward pass -------------------------------------------------------------------------

    def causal_mask(self, layer: int, length: int) -> Tensor:
        """[q, k] True where query q may see key k."""
        return self.geometry.causal_mask(layer, length)

    def run(
        self,
        input_ids: Tensor,  # [batch, token], right-padded
        *,
        last_layer: int | None = None,
        patterns: Iterable[tuple[int, int]] = (),
        all_patterns: bool = False,
        vectors: bool = False,
        contributions: bool = False,
        z: bool = False,
        final: bool = False,
        ablation: Ablation | None = None,
        backend: str | None = None,
    ) -> EngineOutput:
        """One forward pass up to `last_layer` (default: the last), keeping what was asked for.

        `final`: the whole model, to the last LayerNorm (`EngineOutput.final`; `logits` turns it
        into logits). `ablation`: heads whose z is replaced before W_O, per sequence.
        `backend` names the backend to start from ("reference", "torch", "native"); by default
        the preferred one that can compute the request."""
        if final and last_layer not in (None, self.geometry.n_layers - 1):
            raise ValueError("the final residual stream needs every layer")
        request = ForwardRequest(
            last_layer=self.geometry.n_layers - 1 if last_layer is None else last_layer,
            patterns=frozenset(patterns),
            all_patterns=all_patterns,
            vectors=vectors,
            contributions=contributions,
            z=z,
            final=final,
            ablation=ablation,
        )
        chosen = self.backend_for(request, backend)
        stop = stop_signal()  # read here: the part threads below do not share this context
        with torch.inference_mode():
            batch, length = input_ids.shape
            parts = chosen.parts(batch, length, request)
            if parts > 1:
                return self._run_in_parts(chosen, input_ids, request, parts, stop)
            return self._forward(chosen, input_ids, request, stop=stop)

    def _run_in_parts(
        self,
        backend: Backend,
        input_ids: Tensor,
        request: ForwardRequest,
        parts: int,
        stop: threading.Event | None,
    ) -> EngineOutput:
        """The batch in `parts` contiguous shares, each a one-thread pass on its own thread,
        writing into shared buffers (activity and all patterns only)."""
        g = self.geometry
        batch, length = input_ids.shape
        n_layers = request.last_layer + 1
        activity = torch.empty(n_layers, batch, g.n_heads, length)
        pattern_store = (
            torch.empty(n_layers, batch, g.n_heads, length, length)
            if request.all_patterns
            else None
        )
        shares = [share for share in torch.arange(batch).tensor_split(parts) if len(share)]

        def run_share(share: Tensor) -> None:
            first, end = int(share[0]), int(share[-1]) + 1
            with torch.inference_mode():  # per thread
                self._forward(
                    backend,
                    input_ids[first:end],
                    request,
                    one_thread=True,
                    stop=stop,
                    activity=activity[:, first:end],
                    pattern_store=None if pattern_store is None else pattern_store[:, first:end],
                )

        if len(shares) == 1:
            run_share(shares[0])
        else:
            pool = self._part_pool(len(shares))
            for done in [pool.submit(run_share, share) for share in shares]:
                done.result()
        return EngineOutput(
            activity=activity.transpose(0, 1).contiguous(),
            all_patterns=pattern_store.transpose(0, 1) if pattern_store is not None else None,
        )

    def _part_pool(self, threads: int) -> ThreadPoolExecutor:
        with self._part_pools_lock:
            if threads not in self._part_pools:
                self._part_pools[threads] = ThreadPoolExecutor(
                    threads, thread_name_prefix="engine-part"
                )
            return self._part_pools[threads]

    def _forward(
        self,
        backend: Backend,
        input_ids: Tensor,
        request: ForwardRequest,
        *,
        one_thread: bool = False,
        stop: threading.Event | None = None,
        activity: Tensor | None = None,
        pattern_store: Tensor | None = None,
    ) -> EngineOutput:
        """The layer loop, which ends early with AnalysisStopped once `stop` is set.
        `activity` and `pattern_store` ([layer, batch, ...] views of a larger batch's buffers)
        receive the results when given."""
        g = self.geometry
        batch, length = input_ids.shape
        n_layers = request.last_layer + 1
        hidden = self.embed(input_ids)  # [batch, token, d_model]
        if activity is None:
            activity = torch.empty(n_layers, batch, g.n_heads, length)  # [layer, b, head, token]
        # Patterns are written straight into their final home: no per-layer list, no stack copy.
        if pattern_store is None and request.all_patterns:
            pattern_store = torch.empty(n_layers, batch, g.n_heads, length, length)
        kept_patterns: dict[tuple[int, int], Tensor] = {}
        keys, queries, values, contributions, attention_outputs, zs = [], [], [], [], [], []

        layers = backend.start(hidden, request, one_thread=one_thread)
        for layer in range(n_layers):
            if stop is not None and stop.is_set():
                raise AnalysisStopped(f"stopped before L{layer}: nobody waits for the answer")
            pattern_heads = request.pattern_heads(layer, g.n_heads)
            patterns = pattern_store[layer] if pattern_store is not None else None
            if patterns is None and pattern_heads:
                patterns = torch.empty(batch, len(pattern_heads), length, length)
            output = layers.block(
                layer,
                activity[layer],
                patterns,
                pattern_heads,
                last=layer == request.last_layer and not request.final,
            )
            for position, head in enumerate(pattern_heads):
                if (layer, head) in request.patterns:
                    # A view: the buffer holds only kept heads (or is the all-pattern output).
                    kept_patterns[(layer, head)] = patterns[:, position]  # type: ignore[index]
            if request.vectors:
                keys.append(output.key)
                queries.append(output.query)
                values.append(output.value)
            if request.contributions:
                contributions.append(output.contribution)
                attention_outputs.append(output.attention_output)
            if request.z:
                zs.append(output.z)

        def stack(tensors: list) -> Tensor | None:
            return torch.stack(tensors, dim=1) if tensors else None

        return EngineOutput(
            activity=activity.transpose(0, 1).contiguous(),
            patterns=kept_patterns,
            all_patterns=pattern_store.transpose(0, 1) if pattern_store is not None else None,
            keys=stack(keys),
            queries=stack(queries),
            values=stack(values),
            contributions=stack(contributions),
            attention_outputs=stack(attention_outputs),
            z=stack(zs),
            final=self.final_norm(layers.residual()) if request.final else None,
        )

    # -- logits and ablation ----------------------------------------------------------------------

    def embed(self, input_ids: Tensor) -> Tensor:
        """[batch, token] -> [batch, token, d_model]: token plus position embeddings."""
        return F.embedding(input_ids, self._wte) + self._wpe[: input_ids.shape[1]]

    def final_norm(self, residual: Tensor) -> Tensor:
        """ln_f of the residual stream after the last block: [..., d_model]."""
        return F.layer_norm(
            residual,
            (self.geometry.d_model,),
            self.tensors["ln_f.weight"],
            self.tensors["ln_f.bias"],
            self.config.layer_norm_epsilon,
        )

    def logits(self, final: Tensor) -> Tensor:
        """[..., d_model] -> [..., vocab]: the LM head, which every TinyStories model ties to the
        token embedding (loading refuses a config that unties it)."""
        return torch.matmul(final, self._wte.t())
