"""The analysis pass against the tools a user would otherwise pick, same weights and texts.

Task: "all heads' activity + all attention patterns" for 64 sequences of the shared TinyStories
sample (consecutive paragraphs joined to 128+ tokens: natural, mixed lengths), batch 1 and
batched (sequences of similar length, right-padded; the same batches for every tool). Tools:

- headscope: AnalysisEngine.run(all_patterns=True) (activity comes with every run), on each
  backend: native (the C kernels, as served), torch, and the op-by-op reference;
- HF: GPTNeoForCausalLM(ids, output_attentions=True), activity from a pre-hook on each
  out_proj (z of every head x its W_O slice, L2 norm): what a user of plain transformers writes;
- TransformerLens 4: TransformerBridge.boot_transformers(dir) (no compatibility mode, so raw
  W_O as headscope uses), run_with_cache(tokens), activity from cache.stack_head_results(),
  patterns from the cache's hook_pattern entries (only when transformer_lens is installed:
  the .venv-bench environment);
- the paper's way: one hooked HF forward per head (128 per batch), each keeping that head's
  activity and pattern; timed on a subset, as tokens/s.

Each tool's activity is checked against headscope's (max abs difference) so the comparison is
of the same numbers. `python bench/bench_engine.py` prints a markdown table (the short
comparison of issue 2 is `--quick`: headscope vs HF on one text).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import common
import torch

SEQUENCES = 64
PAPER_SUBSET = 4


def load_headscope():
    """The engine as the server builds it: the native backend attached (the other backends are
    run by name, each as its own row, so the C kernel's share of the speed-up is visible)."""
    from headscope.model.backends.native import load_attention_kernel
    from headscope.model.engine import AnalysisEngine
    from headscope.model.loading import load_model, resolve_model_files

    model, _ = load_model(resolve_model_files(str(common.STANDIN_DIR)))
    engine = AnalysisEngine(model.config, model.tensors)
    engine.use_kernel(load_attention_kernel("c"))
    return engine


def load_hf():
    from transformers import GPTNeoForCausalLM

    model = GPTNeoForCausalLM.from_pretrained(common.STANDIN_DIR, attn_implementation="eager")
    return model.eval()


def load_tl():
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    import logging

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    return TransformerBridge.boot_transformers(str(common.STANDIN_DIR), device="cpu")


# -- one function per tool: ids [batch, token] -> (activity [b, l, h, t], patterns [b,l,h,q,k]) --


def headscope_analysis(engine, backend: str | None = None) -> Callable:
    def analyse(ids: torch.Tensor):
        output = engine.run(ids, all_patterns=True, backend=backend)
        return output.activity, output.all_patterns

    return analyse


def hf_analysis(model) -> Callable:
    config = model.config
    n_heads, d_model = config.num_heads, config.hidden_size
    d_head = d_model // n_heads
    w_o_by_head = [  # [head, d_head, d_model]
        block.attn.attention.out_proj.weight.detach()
        .view(d_model, n_heads, d_head)
        .permute(1, 2, 0)
        for block in model.transformer.h
    ]
    captured: dict[int, torch.Tensor] = {}

    def capture(layer):
        def hook(_module, inputs):
            z = inputs[0].view(*inputs[0].shape[:-1], n_heads, d_head)  # [b, t, h, d_head]
            contribution = torch.einsum("bthd,hdm->bhtm", z, w_o_by_head[layer])
            captured[layer] = contribution.norm(dim=-1)  # [b, h, t]

        return hook

    for layer, block in enumerate(model.transformer.h):
        block.attn.attention.out_proj.register_forward_pre_hook(capture(layer))

    def analyse(ids: torch.Tensor):
        with torch.inference_mode():
            output = model(ids, output_attentions=True)
        activity = torch.stack([captured[layer] for layer in range(len(captured))], dim=1)
        return activity, torch.stack(output.attentions, dim=1)

    return analyse


def tl_analysis(bridge) -> Callable:
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads

    def analyse(ids: torch.Tensor):
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(ids)
            results = cache.stack_head_results(layer=-1)  # [layer*head, b, t, d_model]
            activity = results.norm(dim=-1).view(n_layers, n_heads, *ids.shape).permute(2, 0, 1, 3)
            patterns = torch.stack(
                [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)], dim=1
            )
        return activity, patterns

    return analyse


def paper_analysis(model) -> Callable:
    """One forward per head, a hook keeping that head's contribution norm (the paper's loop)."""
    config = model.config
    n_layers, n_heads, d_model = config.num_layers, config.num_heads, config.hidden_size
    d_head = d_model // n_heads

    def analyse(ids: torch.Tensor):
        activity = torch.empty(ids.shape[0], n_layers, n_heads, ids.shape[1])
        patterns = torch.empty(ids.shape[0], n_layers, n_heads, ids.shape[1], ids.shape[1])
        for layer in range(n_layers):
            out_proj = model.transformer.h[layer].attn.attention.out_proj
            for head in range(n_heads):
                columns = slice(head * d_head, (head + 1) * d_head)

                def hook(module, inputs, head=head, layer=layer, columns=columns):
                    z = inputs[0][..., columns]  # [b, t, d_head]
                    contribution = z @ module.weight[:, columns].T  # [b, t, d_model]
                    activity[:, layer, head] = contribution.norm(dim=-1)

                handle = out_proj.register_forward_pre_hook(hook)
                try:
                    with torch.inference_mode():
                        output = model(ids, output_attentions=True)
                finally:
                    handle.remove()
                patterns[:, layer, head] = output.attentions[layer][:, head]
        return activity, patterns

    return analyse


# -- timing -------------------------------------------------------------------------------------


def batches(sequences: Sequence[Sequence[int]], batched: bool) -> list[tuple[torch.Tensor, list]]:
    from headscope.model.batching import ALL_PATTERNS_BATCH_TOKENS, length_groups, pad_batch

    if not batched:
        return [(torch.tensor([ids]), [len(ids)]) for ids in sequences]
    # The engine's own all-pattern batch size (its best measured), for every tool alike.
    groups = length_groups(
        [len(ids) for ids in sequences], max_batch_tokens=ALL_PATTERNS_BATCH_TOKENS
    )
    return [
        (pad_batch([sequences[i] for i in group]), [len(sequences[i]) for i in group])
        for group in groups
    ]


def time_tool(analyse: Callable, work: list[tuple[torch.Tensor, list]], repeats: int) -> float:
    """Seconds for the whole workload (fastest of `repeats`)."""

    def run_all():
        for ids, _ in work:
            analyse(ids)

    return common.best_of(run_all, repeats)


def activity_difference(analyse, reference, work) -> float:
    """Max |activity - headscope's| over the real (unpadded) tokens of the first batch."""
    ids, lengths = work[0]
    mine, _ = analyse(ids)
    theirs, _ = reference(ids)
    return max(
        (mine[row, ..., :length] - theirs[row, ..., :length]).abs().max().item()
        for row, length in enumerate(lengths)
    )


def quick(threads: int) -> None:
    """Issue 2's comparison: the analysis pass vs HF output_attentions on one text."""
    torch.set_num_threads(threads)
    engine, hf = load_headscope(), load_hf()
    ids = torch.tensor([common.story_sequences(1)[0]])
    with torch.inference_mode():
        hf_seconds = common.best_of(lambda: hf(ids, output_attentions=True), 10)
    ours = common.best_of(lambda: engine.run(ids, all_patterns=True), 10)
    print(f"{ids.shape[1]} tokens, {threads} thread(s), best of 10:")
    print(f"  HF GPTNeoForCausalLM(output_attentions=True): {hf_seconds * 1e3:8.2f} ms")
    print(f"  headscope engine (activity + all patterns):   {ours * 1e3:8.2f} ms")
    print(f"  ratio: {hf_seconds / ours:.1f}x")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sequences", type=int, default=SEQUENCES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-subset", type=int, default=PAPER_SUBSET)
    parser.add_argument("--quick", action="store_true", help="issue 2's one-text comparison")
    parser.add_argument("--json", type=str, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.quick:
        quick(args.threads)
        return {}
    torch.set_num_threads(args.threads)

    sequences = common.story_sequences(args.sequences)
    tokens = sum(len(ids) for ids in sequences)
    engine = load_headscope()
    reference = headscope_analysis(engine)
    tools: list[tuple[str, Callable, list]] = [
        ("headscope", reference, sequences),
        ("headscope, torch backend (no C kernel)", headscope_analysis(engine, "torch"), sequences),
        ("headscope, reference backend", headscope_analysis(engine, "reference"), sequences),
        ("HF output_attentions (+ out_proj hooks)", hf_analysis(load_hf()), sequences),
    ]
    bridge = load_tl()
    if bridge is not None:
        tools.append(("TransformerLens 4 run_with_cache", tl_analysis(bridge), sequences))
    subset = sequences[: args.paper_subset]
    tools.append(
        (f"paper: 1 forward per head ({len(subset)} seqs)", paper_analysis(load_hf()), subset)
    )

    rows, results = [], {}
    for name, analyse, workload in tools:
        workload_tokens = sum(len(ids) for ids in workload)
        entry = {"tokens": workload_tokens}
        for mode in ("batch 1", "batched"):
            work = batches(workload, batched=mode == "batched")
            repeats = 1 if name.startswith("paper") else args.repeats
            start = time.perf_counter()
            seconds = time_tool(analyse, work, repeats)
            entry[mode] = workload_tokens / seconds
            entry[f"{mode} wall s"] = time.perf_counter() - start
        entry["activity max diff"] = activity_difference(
            analyse, reference, batches(workload, True)
        )
        results[name] = entry
    ours = results["headscope"]
    for name, entry in results.items():
        rows.append(
            [
                name,
                entry["batch 1"],
                entry["batched"],
                ours["batch 1"] / entry["batch 1"],
                ours["batched"] / entry["batched"],
                f"{entry['activity max diff']:.1e}",
            ]
        )
    print(
        f"\n### Analysis throughput: all heads' activity + all patterns, {len(sequences)} "
        f"sequences ({tokens} tokens, {tokens / len(sequences):.0f} on average), "
        f"{args.threads} torch thread(s)\n"
    )
    print(
        common.markdown_table(
            [
                "tool",
                "tokens/s batch 1",
                "tokens/s batched",
                "headscope is x faster (batch 1)",
                "headscope is x faster (batched)",
                "activity max diff vs headscope",
            ],
            rows,
        )
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "tools": results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
