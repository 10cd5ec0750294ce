"""Candidate fast backends for the analysis pass, measured side by side (issue 13, "Measure
before keeping C").

Task: "all heads' activity (+ all attention patterns) for one sequence": windows of exactly 128
and 512 tokens of the shared TinyStories sample, batch 1 and a batch of 8, on 1 and 2 torch
threads, on the stand-in weights loaded by headscope's own loading path. Candidates:

- headscope's engine as served (attention_kernel=auto: the native C backend where it builds);
- headscope's engine on its torch path (attention_kernel=torch);
- torch.compile of `PlainAnalysis` below, a plain PyTorch module of the same forward pass
  (inductor, CPU);
- onnxruntime (CPU execution provider) on an ONNX export of the same `PlainAnalysis`, with
  dynamic batch and sequence length, outputs activity [batch, layer, head, token] (and
  patterns [batch, layer, head, q, k]).

Every candidate's activity and patterns are checked against the engine's reference path
(`run(plain=True)`); a candidate counts only within 1e-5. Candidates run interleaved,
round-robin, so a busy phase of the shared box hits them all alike; the table reports medians,
the warm-up / compile time on its own, and the load average at the start and the end.

`python bench/bench_backends.py` prints a markdown table per thread count and names the
simplest backend within 20 % of the fastest. torch.compile and onnxruntime rows appear when
their pieces are there: onnxruntime and onnxscript come with the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LENGTHS = (128, 512)
BATCHES = (1, 8)
THREADS = (1, 2)
TOLERANCE = 1e-5
# "The simplest backend within 20 % of the fastest" is the decision issue 13 asks for.
WITHIN = 0.20
# A pattern output bigger than this is left out of the grid (8 x 512 tokens: 1 GiB a call).
MAX_PATTERN_BYTES = 256 * 2**20


class PlainAnalysis(nn.Module):
    """GPT-Neo's forward pass as plain PyTorch ops, keeping each head's activity (the L2 norm of
    its contribution z_h · W_O[:, h-slice]ᵀ) and, when asked at construction, every pattern.

    The engine's reference math, written without Python branches on the input so that
    torch.compile and the ONNX exporter see one graph for any batch and length. No LM head.
    """

    def __init__(self, config, tensors, *, keep_patterns: bool) -> None:
        super().__init__()
        self.keep_patterns = keep_patterns
        self.n_heads = config.num_heads
        self.d_head = config.hidden_size // config.num_heads
        self.eps = config.layer_norm_epsilon
        # Keys a query may see on each layer, counting itself; a global layer sees them all.
        self.windows = [
            config.window_size if kind == "local" else config.max_position_embeddings
            for kind in config.attention_layers
        ]
        self.wte = nn.Parameter(tensors["wte.weight"], requires_grad=False)  # [vocab, d_model]
        self.wpe = nn.Parameter(tensors["wpe.weight"], requires_grad=False)  # [pos, d_model]
        d_model = config.hidden_size

        def weight(layer: int, name: str) -> nn.Parameter:
            return nn.Parameter(tensors[f"h.{layer}.{name}"], requires_grad=False)

        self.blocks = nn.ModuleList()
        for layer in range(config.num_layers):
            block = nn.Module()
            for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
                block.register_parameter(name.replace(".", "_"), weight(layer, name))
            for short, name in (
                ("w_q", "attn.attention.q_proj.weight"),
                ("w_k", "attn.attention.k_proj.weight"),
                ("w_v", "attn.attention.v_proj.weight"),
                ("b_o", "attn.attention.out_proj.bias"),
                ("w_fc", "mlp.c_fc.weight"),
                ("b_fc", "mlp.c_fc.bias"),
                ("w_proj", "mlp.c_proj.weight"),
                ("b_proj", "mlp.c_proj.bias"),
            ):
                block.register_parameter(short, weight(layer, name))
            w_o = tensors[f"h.{layer}.attn.attention.out_proj.weight"]  # [d_model, head * d]
            # Head h reads out_proj's input columns h*d_head:(h+1)*d_head.
            block.register_parameter(
                "w_o_by_head",  # [head, d_head, d_model]
                nn.Parameter(
                    w_o.view(d_model, self.n_heads, self.d_head).permute(1, 2, 0).contiguous(),
                    requires_grad=False,
                ),
            )
            self.blocks.append(block)

    def forward(self, ids: Tensor) -> tuple[Tensor, ...]:  # ids: [batch, token]
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device)
        hidden = self.wte[ids] + self.wpe[positions]  # [batch, token, d_model]
        offsets = positions[:, None] - positions[None, :]  # [q, k]: q - k
        activities, patterns = [], []
        last = len(self.blocks) - 1
        for layer, (block, window) in enumerate(zip(self.blocks, self.windows, strict=True)):
            normed = F.layer_norm(
                hidden, hidden.shape[-1:], block.ln_1_weight, block.ln_1_bias, self.eps
            )
            query, key, value = (
                F.linear(normed, w).view(batch, length, self.n_heads, self.d_head).transpose(1, 2)
                for w in (block.w_q, block.w_k, block.w_v)
            )  # each [batch, head, token, d_head]
            # GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it.
            scores = query @ key.transpose(-1, -2)  # [batch, head, q, k]
            visible = (offsets >= 0) & (offsets < window)
            scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
            pattern = torch.softmax(scores, dim=-1)
            z = pattern @ value  # [batch, head, token, d_head]
            contribution = z @ block.w_o_by_head  # [batch, head, token, d_model]
            activities.append(torch.linalg.vector_norm(contribution, dim=-1))
            if self.keep_patterns:
                patterns.append(pattern)
            if layer == last:
                break  # activity needs no MLP after the last attention
            hidden = hidden + contribution.sum(dim=1) + block.b_o
            normed = F.layer_norm(
                hidden, hidden.shape[-1:], block.ln_2_weight, block.ln_2_bias, self.eps
            )
            inner = F.gelu(F.linear(normed, block.w_fc, block.b_fc), approximate="tanh")
            hidden = hidden + F.linear(inner, block.w_proj, block.b_proj)
        activity = torch.stack(activities, dim=1)  # [batch, layer, head, token]
        if self.keep_patterns:
            return activity, torch.stack(patterns, dim=1)  # [batch, layer, head, q, k]
        return (activity,)


# -- the candidates: each prepares, for a thread count and a task, ids -> (activity, patterns) ---

Analyse = Callable[[Tensor], tuple[Tensor, Tensor | None]]


@dataclass
class Candidate:
    name: str
    # Why it ranks where it does among the candidates, simplest first (the decision's tie-break).
    simplicity: str
    prepare: Callable[[int, bool], Analyse]
    notes: list[str] = field(default_factory=list)


def load_checkpoint():
    from headscope.model.loading import load_model, resolve_model_files

    checkpoint, _ = load_model(resolve_model_files(str(common.STANDIN_DIR)))
    return checkpoint


def load_engine(checkpoint, attention_kernel: str):
    """The engine as the server builds it for `attention_kernel` ("auto" or "torch")."""
    from headscope.model.backends.native import load_attention_kernel
    from headscope.model.engine import AnalysisEngine

    engine = AnalysisEngine(checkpoint.config, checkpoint.tensors)
    engine.use_kernel(load_attention_kernel(attention_kernel))
    return engine


def engine_candidate(engine, name: str, simplicity: str) -> Candidate:
    def prepare(_threads: int, keep_patterns: bool) -> Analyse:
        def analyse(ids: Tensor):
            output = engine.run(ids, all_patterns=keep_patterns)
            return output.activity, output.all_patterns

        return analyse

    return Candidate(name, simplicity, prepare)


def compiled_candidate(checkpoint, dynamic: bool) -> Candidate:
    """torch.compile of PlainAnalysis, inductor first; where inductor fails here, the next
    option down the list (each failure is recorded in the candidate's notes)."""
    options = [
        {},
        {"mode": "max-autotune-no-cudagraphs"},
        {"backend": "aot_eager"},
    ]
    notes: list[str] = []

    def prepare(_threads: int, keep_patterns: bool) -> Analyse:
        # Inductor's C++ fixes its OpenMP thread count when it compiles: start afresh per count.
        torch._dynamo.reset()
        module = PlainAnalysis(checkpoint.config, checkpoint.tensors, keep_patterns=keep_patterns)
        probe = torch.zeros(1, 16, dtype=torch.long)
        for option in options:
            compiled = torch.compile(module, dynamic=dynamic, **option)
            try:
                with torch.inference_mode():
                    compiled(probe)
            except Exception as err:  # noqa: BLE001 - any compiler failure moves to the next option
                note = f"torch.compile({option or 'default inductor'}) failed: {type(err).__name__}"
                notes.append(f"{note}: {str(err).splitlines()[0][:300]}")
                torch._dynamo.reset()
                continue
            worked = f"torch.compile({option or 'default inductor'}) compiled"
            if worked not in notes:
                notes.append(worked)

            def analyse(ids: Tensor, compiled=compiled):
                with torch.inference_mode():
                    outputs = compiled(ids)
                return outputs[0], outputs[1] if keep_patterns else None

            return analyse
        raise RuntimeError("no torch.compile option worked here")

    return Candidate(
        f"torch.compile (plain module, dynamic={dynamic})",
        "plain PyTorch, one formula; needs a C++ compiler at startup and compiles per shape",
        prepare,
        notes,
    )


def onnx_candidate(checkpoint, workdir: Path, opset: int) -> Candidate | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    exported: dict[bool, Path] = {}

    def export(keep_patterns: bool) -> Path:
        if keep_patterns not in exported:
            module = PlainAnalysis(
                checkpoint.config, checkpoint.tensors, keep_patterns=keep_patterns
            ).eval()
            path = workdir / f"plain-analysis-{'patterns' if keep_patterns else 'activity'}.onnx"
            batch, token = torch.export.Dim("batch"), torch.export.Dim("token", min=2, max=2048)
            torch.onnx.export(
                module,
                (torch.zeros(2, 16, dtype=torch.long),),
                str(path),
                input_names=["ids"],
                output_names=["activity", "patterns"] if keep_patterns else ["activity"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"ids": {0: batch, 1: token}},
                external_data=False,
            )
            exported[keep_patterns] = path
        return exported[keep_patterns]

    def prepare(threads: int, keep_patterns: bool) -> Analyse:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Pool threads that spin between calls would take the core from the candidate timed
        # next on this shared box.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(export(keep_patterns)), options, providers=["CPUExecutionProvider"]
        )

        def analyse(ids: Tensor):
            outputs = session.run(None, {"ids": ids.numpy()})
            activity = torch.from_numpy(outputs[0])
            return activity, torch.from_numpy(outputs[1]) if keep_patterns else None

        return analyse

    return Candidate(
        f"onnxruntime {onnxruntime.__version__} (CPU EP, ONNX opset {opset})",
        "plain PyTorch exported once; a second runtime and the exporter's dependencies",
        prepare,
    )


# -- the grid, interleaved ------------------------------------------------------------------------


@dataclass
class Cell:
    task: str  # "activity" or "activity + patterns"
    length: int
    batch: int

    @property
    def keep_patterns(self) -> bool:
        return self.task != "activity"


def grid(lengths: Sequence[int], batches: Sequence[int], with_patterns: bool) -> list[Cell]:
    cells = []
    for task in ("activity", "activity + patterns") if with_patterns else ("activity",):
        for length in lengths:
            for batch in batches:
                cell = Cell(task, length, batch)
                patterns_bytes = 4 * 8 * 16 * batch * length * length
                if cell.keep_patterns and patterns_bytes > MAX_PATTERN_BYTES:
                    continue
                cells.append(cell)
    return cells


def inputs_for(length: int, batch: int, count: int) -> list[Tensor]:
    """`count` batches of distinct windows of exactly `length` tokens of the sample."""
    tok = common.tokenizer()
    windows = [tok(text).input_ids for text in common.window_texts(length, batch * count)]
    return [torch.tensor(windows[i * batch : (i + 1) * batch]) for i in range(count)]


def max_difference(mine: Tensor | None, reference: Tensor | None) -> float:
    if reference is None:
        return float("nan")
    if mine is None:
        return float("inf")
    return (mine.float() - reference).abs().max().item()


def run_threads(
    threads: int,
    candidates: list[Candidate],
    reference_engine,
    cells: list[Cell],
    repeats: int,
    inputs: dict[tuple[int, int], list[Tensor]],
) -> list[dict]:
    torch.set_num_threads(threads)
    results = []
    prepared: dict[tuple[str, bool], Analyse | None] = {}
    setup_seconds: dict[tuple[str, bool], float] = {}
    for cell in cells:
        work = inputs[(cell.length, cell.batch)]
        reference = reference_engine.run(work[0], all_patterns=cell.keep_patterns, plain=True)
        entries = {}
        for candidate in candidates:
            key = (candidate.name, cell.keep_patterns)
            setup = 0.0
            if key not in prepared:
                start = time.perf_counter()
                try:
                    prepared[key] = candidate.prepare(threads, cell.keep_patterns)
                except Exception as err:  # noqa: BLE001 - a candidate that cannot run is reported
                    candidate.notes.append(f"{threads} thread(s): {type(err).__name__}: {err}")
                    traceback.print_exc()
                    prepared[key] = None
                setup = setup_seconds[key] = time.perf_counter() - start
            analyse = prepared[key]
            if analyse is None:
                continue
            start = time.perf_counter()
            activity, patterns = analyse(work[0])
            first_call = time.perf_counter() - start
            entries[candidate.name] = {
                "candidate": candidate,
                "analyse": analyse,
                "setup s": setup_seconds[key],
                "first call s": first_call,
                # What this cell waited before its first answer: the one-time setup (export,
                # session, first compile) where this cell was the first to need it.
                "warm-up s": setup + first_call,
                "activity diff": max_difference(activity, reference.activity),
                "patterns diff": max_difference(
                    patterns if cell.keep_patterns else None, reference.all_patterns
                ),
                "times": [],
                "cpu times": [],
            }
        # Round-robin: every candidate once per round, the starting one rotating, so a busy
        # phase of the box falls on all of them alike.
        order = list(entries)
        for round_index in range(repeats):
            ids = work[round_index % len(work)]
            shift = round_index % len(order)
            for name in order[shift:] + order[:shift]:
                start, cpu_start = time.perf_counter(), time.process_time()
                entries[name]["analyse"](ids)
                entries[name]["times"].append(time.perf_counter() - start)
                entries[name]["cpu times"].append(time.process_time() - cpu_start)
        for name, entry in entries.items():
            seconds = statistics.median(entry["times"])
            diffs = [entry["activity diff"]]
            if cell.keep_patterns:
                diffs.append(entry["patterns diff"])
            results.append(
                {
                    "threads": threads,
                    "task": cell.task,
                    "tokens": cell.length,
                    "batch": cell.batch,
                    "candidate": name,
                    "simplicity rank": candidates.index(entry["candidate"]),
                    "median ms": seconds * 1e3,
                    # CPU time of the whole process (all its threads): on a box other work keeps
                    # busy, what a call costs rather than how long it waited for a core.
                    "median CPU ms": statistics.median(entry["cpu times"]) * 1e3,
                    "tokens/s": cell.length * cell.batch / seconds,
                    "setup s": entry["setup s"],
                    "first call s": entry["first call s"],
                    "warm-up s": entry["warm-up s"],
                    "activity diff": entry["activity diff"],
                    "patterns diff": entry["patterns diff"],
                    "counts": all(diff <= TOLERANCE for diff in diffs),
                    "times ms": [t * 1e3 for t in entry["times"]],
                }
            )
    return results


def decide(rows: list[dict]) -> dict:
    """Per cell: the fastest counted candidate and the simplest within WITHIN of it."""
    for row in rows:
        same_cell = [
            other
            for other in rows
            if other["counts"]
            and (other["threads"], other["task"], other["tokens"], other["batch"])
            == (row["threads"], row["task"], row["tokens"], row["batch"])
        ]
        fastest = min(other["median ms"] for other in same_cell) if same_cell else float("nan")
        row["x fastest"] = row["median ms"] / fastest
        row["within"] = row["counts"] and row["x fastest"] <= 1 + WITHIN
    decisions: dict = {}
    for row in rows:
        cell = (row["threads"], row["task"], row["tokens"], row["batch"])
        if row["within"] and (
            cell not in decisions or row["simplicity rank"] < decisions[cell]["simplicity rank"]
        ):
            decisions[cell] = row
    return decisions


def print_tables(rows: list[dict], decisions: dict, candidates: list[Candidate]) -> None:
    for threads in sorted({row["threads"] for row in rows}):
        print(f"\n### {threads} torch thread(s): median of the interleaved calls\n")
        table = []
        for row in rows:
            if row["threads"] != threads:
                continue
            cell = (row["threads"], row["task"], row["tokens"], row["batch"])
            chosen = decisions.get(cell, {}).get("candidate") == row["candidate"]
            table.append(
                [
                    row["task"],
                    row["tokens"],
                    row["batch"],
                    row["candidate"] + (" **(kept)**" if chosen else ""),
                    row["tokens/s"],
                    row["median ms"],
                    row["median CPU ms"],
                    f"{row['x fastest']:.2f}",
                    f"{row['activity diff']:.1e}",
                    "-" if row["patterns diff"] != row["patterns diff"] else
                    f"{row['patterns diff']:.1e}",
                    f"{row['warm-up s']:.2f}",
                    "yes" if row["counts"] else "NO",
                ]
            )  # fmt: skip
        print(
            common.markdown_table(
                [
                    "task",
                    "tokens",
                    "batch",
                    "candidate",
                    "tokens/s",
                    "ms per call",
                    "CPU ms per call",
                    "x fastest",
                    "activity max diff",
                    "patterns max diff",
                    "warm-up s (setup + 1st call)",
                    f"≤ {TOLERANCE:.0e}",
                ],
                table,
            )
        )
    print("\nSimplest first (the tie-break of the decision):")
    for rank, candidate in enumerate(candidates, 1):
        print(f"{rank}. {candidate.name}: {candidate.simplicity}")
    setups = {(row["candidate"], row["task"], row["threads"]): row["setup s"] for row in rows}
    print("\nOne-time setup per thread count, s (load / export / session / compile probe):")
    for (name, task, threads), seconds in sorted(setups.items()):
        print(f"- {name}, {task}, {threads} thread(s): {seconds:.2f}")
    for candidate in candidates:
        for note in candidate.notes:
            print(f"- note, {candidate.name}: {note}")


def summary(decisions: dict) -> str:
    kept: dict[str, list[str]] = {}
    for (threads, task, tokens, batch), row in sorted(decisions.items()):
        kept.setdefault(row["candidate"], []).append(f"{task} {tokens}x{batch} @{threads}t")
    lines = [f"- {name}: {len(cells)} cell(s): {', '.join(cells)}" for name, cells in kept.items()]
    return "Simplest within 20 % of the fastest, per cell:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default=",".join(map(str, THREADS)))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per cell")
    parser.add_argument("--no-patterns", action="store_true", help="activity only")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--compile", default="dynamic", choices=("dynamic", "static", "both", "none")
    )
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--json", type=str, default=None, help="also write results here")
    args = parser.parse_args(argv)
    threads_list = [int(value) for value in args.threads.split(",")]
    lengths = [int(value) for value in args.lengths.split(",")]
    batches = [int(value) for value in args.batches.split(",")]

    print(f"Machine at the start: {common.machine_description()}")
    print(f"Weights: {common.STANDIN_DIR} (stand-in, not TinyStories-1M); texts: windows of "
          f"{common.CORPUS.name}")  # fmt: skip
    checkpoint = load_checkpoint()
    native = load_engine(checkpoint, "auto")
    torch_path = load_engine(checkpoint, "torch")
    candidates = [
        engine_candidate(
            torch_path,
            "engine, torch path (attention_kernel=torch)",
            "the engine's own torch ops: no compiler, no extra runtime",
        )
    ]
    if args.compile in ("dynamic", "both"):
        candidates.append(compiled_candidate(checkpoint, dynamic=True))
    if args.compile in ("static", "both"):
        candidates.append(compiled_candidate(checkpoint, dynamic=False))
    # Removed when the run ends (or by its finalizer, should the run fail).
    workdir = tempfile.TemporaryDirectory(prefix="headscope-onnx-")
    onnx = None if args.no_onnx else onnx_candidate(checkpoint, Path(workdir.name), args.opset)
    if onnx is not None:
        candidates.append(onnx)
    elif not args.no_onnx:
        print("(onnxruntime not installed: its row is left out; pip install -e '.[bench]')")
    kernel = "native C" if native.kernel is not None else "NO KERNEL: torch path"
    candidates.append(
        engine_candidate(
            native,
            f"engine, attention_kernel=auto ({kernel})",
            "hand-written C (attention, LayerNorm, GELU, whole blocks) beside the torch path",
        )
    )

    cells = grid(lengths, batches, with_patterns=not args.no_patterns)
    count = max(1, min(4, args.repeats))
    inputs = {
        (length, batch): inputs_for(length, batch, count) for length in lengths for batch in batches
    }
    command = " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[dict] = []
    for threads in threads_list:
        rows += run_threads(threads, candidates, torch_path, cells, args.repeats, inputs)
        # Each thread count's table as soon as it is measured, the last one with them all.
        decisions = decide(rows)
        print(
            f"\nCommand: python bench/bench_backends.py {command}".rstrip()
            + f"; {args.repeats} interleaved rounds per cell; tokens/s = tokens per call / median"
        )
        print_tables(rows, decisions, candidates)
        print()
        print(summary(decisions))
        print(f"\nMachine now: {common.machine_description()}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    workdir.cleanup()
    return rows


if __name__ == "__main__":
    main()
