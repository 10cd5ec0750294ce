"""Every single-head ablation of one text: headscope against one hooked HF forward per head.

Task: the next-token loss at every position of one 128-token text of the shared sample, clean
and with each of the model's heads ablated alone (zero ablation: 128 variants on the 8 x 16
stand-in). Tools:

- headscope: ModelRunner.single_head_losses (headscope.model.ablation): one batch whose row 0
  is the clean text; the variants of layer L join it at L as copies of the clean residual
  stream, so the shared prefix is computed once and every layer is one batched block call;
  then the LM head and logsumexp in chunks of (variant, position) rows;
- HF: GPTNeoForCausalLM with a forward pre-hook on that layer's out_proj zeroing the head's
  slice of z, one forward per head (plus the clean one), losses by cross_entropy: what a user
  of plain transformers writes.

Both compute the full [position, vocab] logits for every variant; the losses are checked
against each other (max abs difference) so the comparison is of the same numbers. Prints a
markdown table; `--quick` times one run of each.
"""

from __future__ import annotations

import argparse
import time

import common
import torch

LENGTH = 128


def text_ids() -> list[int]:
    return common.story_sequences(1, min_tokens=LENGTH, max_tokens=LENGTH)[0]


def headscope_losses(runner, ids, heads):
    clean, ablated = runner.single_head_losses(ids, heads)
    return torch.from_numpy(clean), torch.from_numpy(ablated)  # [position], [head, position]


def hf_losses(model, ids, heads):
    d_head = model.config.hidden_size // model.config.num_heads
    input_ids = torch.tensor([ids])
    targets = input_ids[0, 1:]

    def loss() -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")

    clean = loss()
    ablated = []
    for layer, head in heads:

        def zero_head(_module, args, head=head):
            z = args[0].clone()
            z[..., head * d_head : (head + 1) * d_head] = 0.0
            return (z,)

        out_proj = model.transformer.h[layer].attn.attention.out_proj
        hook = out_proj.register_forward_pre_hook(zero_head)
        try:
            ablated.append(loss())
        finally:
            hook.remove()
    return clean, torch.stack(ablated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed run of each")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import GPTNeoForCausalLM

    from headscope.model.loading import load_model, resolve_model_files
    from headscope.model.runner import ModelRunner

    checkpoint, _ = load_model(resolve_model_files(str(common.STANDIN_DIR)))
    runner = ModelRunner(checkpoint)
    model = GPTNeoForCausalLM.from_pretrained(
        common.STANDIN_DIR, attn_implementation="eager"
    ).eval()
    g = runner.geometry
    heads = [(layer, head) for layer in range(g.n_layers) for head in range(g.n_heads)]
    ids = text_ids()

    ours_clean, ours = headscope_losses(runner, ids, heads)
    theirs_clean, theirs = hf_losses(model, ids, heads)
    difference = max(
        (ours - theirs).abs().max().item(), (ours_clean - theirs_clean).abs().max().item()
    )

    def timed(function) -> float:
        if args.quick:
            start = time.perf_counter()
            function()
            return time.perf_counter() - start
        return common.best_of(function, repeats=3)

    ours_s = timed(lambda: headscope_losses(runner, ids, heads))
    theirs_s = timed(lambda: hf_losses(model, ids, heads))
    print(f"{len(heads)} single-head ablations of one {len(ids)}-token text, torch threads "
          f"{args.threads}; {common.machine_description()}")  # fmt: skip
    print(f"max |loss difference| headscope vs HF: {difference:.2e}\n")
    rows = [
        ["headscope (shared prefix, batched variants)", ours_s, theirs_s / ours_s],
        [f"HF, {len(heads) + 1} hooked forwards", theirs_s, 1.0],
    ]
    print(common.markdown_table(["tool", "seconds", "speed-up vs HF"], rows))


if __name__ == "__main__":
    main()
