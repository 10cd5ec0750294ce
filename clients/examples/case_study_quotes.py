"""The paper's case study 1 with the client only: heads that track quotations.

1. Rank the heads by two things, as GET /v1/heads/rank does for a tag: how well their **key**
   vectors recognise quote marks (held-out F1 of the probes for `` and '', averaged over the tags
   with at least MIN_SUPPORT held-out tokens: F1 on a handful of tokens is noise), and how much
   more active they are inside quotations than outside over the server's corpus
   (POST /v1/corpus/quotes). The combined score is the mean of the two percentile ranks.
2. For the best head, compare its activity on tokens **inside** a quotation with tokens outside
   (tags from POST /v1/tag locate the quotation, POST /v1/activity gives the head's activity).
3. And how much attention tokens inside the quotation pay to its opening quote mark
   (POST /v1/attention).

Run it against a server that has probes loaded (and a corpus):

    python clients/examples/case_study_quotes.py --url http://127.0.0.1:8000

On the real TinyStories-1M the paper finds L2H0; on other models (or the tests' stand-in) the
head and the numbers differ.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from headscope_client import Client, ProbeVector, Token, UnavailableError, head_name

DEFAULT_TEXT = (
    'Lily saw a big dog in the park. She said, "Can I pet the dog, Mom? He looks so soft." '
    "Her mom smiled and nodded. Lily was very happy."
)
OPENING, CLOSING = "``", "''"
MIN_SUPPORT = 20  # held-out tokens a quote tag needs before its F1 counts
CORPUS_SEQUENCES = 100


@dataclass
class ScoredHead:
    layer: int
    head: int
    f1: dict[str, float]  # per quote tag scored (those with enough held-out support)
    lift: float  # mean activity inside quotations / outside, over the corpus draw
    score: float = 0.0  # mean of the F1 and lift percentile ranks: 1 = best on both

    @property
    def probe_score(self) -> float | None:
        return sum(self.f1.values()) / len(self.f1) if self.f1 else None

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)


@dataclass
class CaseStudy:
    probe_run: str
    vector: str
    skipped_tags: dict[str, str]  # quote tags not scored, and why
    ranking: list[ScoredHead]  # best first
    text: str
    tokens: list[Token]
    inside: list[bool]  # per token: strictly inside a quotation
    activity: list[float]  # per token, of the best head
    mean_inside: float
    mean_outside: float
    attention_to_opening: float  # mean over inside tokens

    @property
    def head(self) -> ScoredHead:
        return self.ranking[0]

    @property
    def ratio(self) -> float:
        return self.mean_inside / self.mean_outside


@dataclass
class Quotations:
    inside: list[bool]  # per token: strictly inside a quotation
    outside: list[bool]  # per token: outside every quotation, and not a quote mark
    opening: dict[int, int]  # token inside -> the token of its quotation's opening mark


def find_quotations(tokens: list[Token]) -> Quotations:
    """A quotation opens at a token tagged `` and closes at the next token holding a quote mark:
    tagged '', or a '"' merged into punctuation (GPT-2 has tokens such as '."', which the tagger
    files under the punctuation's tag). Quote-mark tokens are neither inside nor outside."""
    inside, outside = [False] * len(tokens), [False] * len(tokens)
    opening: dict[int, int] = {}
    opened: int | None = None
    for index, token in enumerate(tokens):
        is_mark = token.tag in (OPENING, CLOSING) or '"' in token.text
        if opened is not None and not is_mark:
            inside[index], opening[index] = True, opened
        elif opened is None and not is_mark:
            outside[index] = True
        elif token.tag == OPENING or opened is None:
            opened = index  # an opening mark (or a stray one: treated as opening)
        else:
            opened = None
    return Quotations(inside, outside, opening)


def percentiles(values: np.ndarray) -> np.ndarray:
    """1 - (rank - 1) / (n - 1) with competition ranks, 1 = highest: the server's combination."""
    ranks = 1 + (values[None, :] > values[:, None]).sum(axis=1)
    return 1 - (ranks - 1) / max(len(values) - 1, 1)


def rank_quote_heads(
    client: Client, vector: ProbeVector = "key", n_sequences: int = CORPUS_SEQUENCES
) -> tuple[str, dict[str, str], list[ScoredHead]]:
    """Heads ranked by the mean F1 of their `vector` probes over the quote tags with enough
    held-out support, combined with their activity lift inside quotations over the corpus."""
    run = client.probes()
    grids: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for tag in (OPENING, CLOSING):
        if tag not in run.tags:
            skipped[tag] = "not among the probe run's tags"
            continue
        scores = client.probe_scores(vector, tag, metric="f1")
        if (scores.support or 0) < MIN_SUPPORT:
            skipped[tag] = f"{scores.support or 0} held-out tokens (< {MIN_SUPPORT})"
            continue
        grids[tag] = np.nan_to_num(scores.to_numpy())  # [layer, head]
    lift = client.quotes(n_sequences=n_sequences).to_numpy("ratio")  # [layer, head]
    n_layers, n_heads = lift.shape
    heads = [
        ScoredHead(
            layer,
            head,
            {tag: float(grid[layer, head]) for tag, grid in grids.items()},
            float(lift[layer, head]),
        )
        for layer in range(n_layers)
        for head in range(n_heads)
    ]
    lift_part = percentiles(np.array([h.lift for h in heads]))
    if grids:
        probe_part = percentiles(np.array([h.probe_score for h in heads]))
        combined = (probe_part + lift_part) / 2
    else:  # no quote tag has the support to score heads: rank by the corpus lift alone
        combined = lift_part
    for scored, value in zip(heads, combined, strict=True):
        scored.score = float(value)
    heads.sort(key=lambda h: (-h.score, -(h.probe_score or 0.0), -h.lift, h.layer, h.head))
    return run.run_id, skipped, heads


def run(
    client: Client,
    text: str = DEFAULT_TEXT,
    vector: ProbeVector = "key",
    n_sequences: int = CORPUS_SEQUENCES,
) -> CaseStudy:
    probe_run, skipped_tags, ranking = rank_quote_heads(client, vector, n_sequences)
    best = ranking[0]

    tokens = client.tag(text).tokens
    quotations = find_quotations(tokens)
    if not any(quotations.inside) or not any(quotations.outside):
        raise ValueError("the text needs a quotation (words between double quotes) and more")

    # Arrays travel as safetensors: float32 straight into numpy, no JSON lists to walk.
    activity = client.activity(
        text, layers=[best.layer], heads=[best.head], format="safetensors"
    ).to_numpy()[0, 0]  # [token]
    pattern = client.attention(
        text, best.layer, best.head, format="safetensors"
    ).to_numpy()  # [query, key]
    queries, keys = list(quotations.opening), list(quotations.opening.values())
    to_opening = pattern[queries, keys]

    return CaseStudy(
        probe_run=probe_run,
        vector=vector,
        skipped_tags=skipped_tags,
        ranking=ranking,
        text=text,
        tokens=tokens,
        inside=quotations.inside,
        activity=activity.tolist(),
        mean_inside=float(activity[quotations.inside].mean()),
        mean_outside=float(activity[quotations.outside].mean()),
        attention_to_opening=float(to_opening.mean()),
    )


def report(study: CaseStudy, top: int = 5) -> str:
    tags = list(study.head.f1)
    lines = [
        f"Heads that track quotations: {study.vector}-probe F1 on quote marks (probe run "
        f"{study.probe_run}, held-out) and activity inside / outside quotations (corpus), "
        "combined by percentile rank:",
        "  rank  head   "
        + "".join(f"{'F1(' + tag + ')':>8}" for tag in tags)
        + "  inside/outside  combined",
    ]
    for rank, scored in enumerate(study.ranking[:top], start=1):
        f1 = "".join(f"{scored.f1[tag]:8.3f}" for tag in tags)
        lines.append(f"  {rank:>4}  {scored.name:<6}{f1}  {scored.lift:14.2f}  {scored.score:8.3f}")
    for tag, why in study.skipped_tags.items():
        lines.append(f"  ({tag} not scored: {why})")
    head = study.head.name
    lines += [
        "",
        f"{head} on: {study.text}",
        f"  mean activity inside the quotation:  {study.mean_inside:.4f} "
        f"({sum(study.inside)} tokens)",
        f"  mean activity outside:               {study.mean_outside:.4f}",
        f"  inside / outside:                    {study.ratio:.2f}",
        f"  attention from inside to the opening quote mark: {study.attention_to_opening:.3f}",
        "",
        f"  token            {head} activity",
    ]
    peak = max(study.activity) or 1.0
    for token, flag, value in zip(study.tokens, study.inside, study.activity, strict=True):
        bar = "#" * round(20 * value / peak)
        lines.append(f"  {'>' if flag else ' '} {token.text!r:<14} {value:8.4f} {bar}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="server URL (default: $HEADSCOPE_URL)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="a text with a quotation")
    parser.add_argument("--vector", default="key", choices=["key", "query", "value"])
    parser.add_argument("--top", type=int, default=5, help="heads to list")
    parser.add_argument(
        "--n-sequences",
        type=int,
        default=CORPUS_SEQUENCES,
        help="corpus sequences behind the inside/outside lift",
    )
    args = parser.parse_args(argv)
    with Client(args.url) as client:
        try:
            study = run(client, args.text, args.vector, args.n_sequences)
        except UnavailableError as err:
            if err.code == "probes_not_loaded":
                print(f"train probes first: {err.message}", file=sys.stderr)
            else:
                print(f"the server cannot answer: {err.message}", file=sys.stderr)
            return 1
    print(report(study, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
