"""Punkt and Treebank, sped up: every use of NLTK's private names in headscope is in this module.

nltk wraps each of its regexes in a guard (nltk.redos.TimedPattern) that runs every match under a
wall-clock timeout, there to stop caller-supplied patterns from backtracking forever. Punkt's and
Treebank's patterns are NLTK's own, linear in the text, and texts here are bounded by max_tokens;
the guard was most of their time. Here the same compiled patterns run without it, in the same
order, and Treebank's rules are skipped when the text lacks what they need to match. What that
takes from NLTK's insides: TimedPattern's `_rx`, Punkt's `_lang_vars` (with its `_re_*` slots and
a `__class__` swap for a class attribute), its `_Token` class and module-level `_re_non_punct`,
PunktToken's `_RE_*` patterns, and the Treebank rule table below, written for NLTK's patterns.

So it is used only where it was checked: for an nltk within NLTK_VERSIONS (pinned to the same
range in pyproject.toml), and when, at load, the sped-up tokenizers give stock NLTK's sentences and
words on CHECK_TEXTS. Otherwise stock NLTK tokenizes, with one log line saying why.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("headscope.tagging")

# The nltk releases these speed-ups were written for and tested on: from the first, inclusive,
# to the second, exclusive, by (major, minor).
NLTK_VERSIONS = ((3, 10), (3, 11))

# Texts the sped-up tokenizers must split exactly as stock NLTK at load: each Treebank rule and
# its precheck, contractions in both cases and with the letters `re` matches case-insensitively
# to ASCII ones (dotless ı, long ſ, Kelvin K), and Punkt's abbreviations, ellipses, initials,
# numbers and quotes at sentence ends.
CHECK_TEXTS = (
    'Tom said, "I like the lake." Then he ran.\n\nShe smiled. The end',
    "He said \"no\" -- and (then) [left] {quietly} <now>... can't won't gonna",
    "``Quoted'' and \u201ccurly\u201d and \u2018single\u2019 quotes; 'tis 'em",
    "It cost $3.88, or 12,000 yen: 50% off! Wasn't it?! Mr. Smith's dog's toys.",
    "caf\u00e9 na\u00efve stra\u00dfe \U0001f642 \u65e5\u672c -- --- ---- a--b",
    "I'M GONNA WANNA GIMME LEMME 'TWAS D'YE MORE'N cannot Cannot gotta",
    "G\u0131MME 'T\u0130S 'TWA\u017f 'ti\u017f CANNOT d'YE More'N wanna x \u212aelvin",
    "Dr. J. R. Smith arrived at 5 p.m. on Jan. 3. He left... Then? No! (Yes.) 'Ok.'",
    "The U.S.A. is big. e.g. this one: 1. first; 2. second @home #tag & more",
    "",
    "   ",
)


def _nltk_version(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = re.match(r"\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class Tokenizers:
    """Sentences (span_tokenize) and words (tokenize), and whether they are the sped-up ones."""

    sentences: Any
    words: Any
    sped_up: bool


def tokenizers(nltk: Any, make_splitter: Callable[[], Any]) -> Tokenizers:
    """The sped-up Punkt splitter and Treebank tokenizer where checked against stock NLTK here,
    else stock ones. `make_splitter` makes a fresh Punkt splitter of the kind to use."""
    stock = Tokenizers(make_splitter(), nltk.tokenize.TreebankWordTokenizer(), sped_up=False)
    low, high = NLTK_VERSIONS
    if not low <= _nltk_version(nltk.__version__) < high:
        log.info(
            "nltk %s is outside %s-%s, the range the tagger's speed-ups were checked on; "
            "tokenizing with stock NLTK",
            nltk.__version__,
            ".".join(map(str, low)),
            ".".join(map(str, high)),
        )
        return stock
    try:
        splitter = make_splitter()
        _drop_match_timeouts(splitter)
        fast = Tokenizers(splitter, PrecheckedTreebank(treebank_without_match_timeouts(nltk)), True)
        disagreement = _first_disagreement(fast, stock)
    except Exception as err:  # noqa: BLE001 - any failure of the speed-ups means stock NLTK
        disagreement = f"{type(err).__name__}: {err}"
    if disagreement is not None:
        log.warning(
            "The tagger's speed-ups disagree with stock nltk %s (%s); tokenizing with stock NLTK",
            nltk.__version__,
            disagreement,
        )
        return stock
    return fast


def _first_disagreement(fast: Tokenizers, stock: Tokenizers) -> str | None:
    """Where the sped-up tokenizers split a check text otherwise than stock NLTK, or None."""
    for text in CHECK_TEXTS:
        spans = list(stock.sentences.span_tokenize(text))
        if list(fast.sentences.span_tokenize(text)) != spans:
            return f"sentences of {text!r}"
        for piece in [text, *(text[start:end] for start, end in spans)]:
            if fast.words.tokenize(piece) != stock.words.tokenize(piece):
                return f"words of {piece!r}"
    return None


def _unguarded(pattern):
    """The compiled pattern inside nltk's ReDoS guard (nltk.redos.TimedPattern), else `pattern`."""
    return getattr(pattern, "_rx", pattern)


def treebank_without_match_timeouts(nltk: Any) -> Any:
    """NLTK's Treebank word tokenizer on its own compiled patterns, minus nltk.redos's guard."""
    tokenizer = nltk.tokenize.TreebankWordTokenizer()
    for name in dir(tokenizer):
        rules = getattr(tokenizer, name)
        if not name.isupper() or not isinstance(rules, (list, tuple)) or not rules:
            continue
        if isinstance(rules, tuple) and len(rules) == 2 and isinstance(rules[1], str):
            setattr(tokenizer, name, (_unguarded(rules[0]), rules[1]))  # one (pattern, repl)
        elif all(isinstance(rule, tuple) and len(rule) == 2 for rule in rules):
            setattr(tokenizer, name, [(_unguarded(rule), repl) for rule, repl in rules])
        else:
            setattr(tokenizer, name, [_unguarded(rule) for rule in rules])
    return tokenizer


# What a Treebank rule needs in the text to match at all, by the rule's pattern: characters (any
# one of them), or for the case-insensitive contractions a piece of the word in lower case whose
# letters have no case-insensitive equivalents other than their ASCII upper case (no i, k or s,
# which `re` also matches to "ı", "K" and "ſ"). A rule whose pattern is not listed always runs.
TREEBANK_NEEDS_ANY_CHAR = {
    r"^\"": '"',
    r"(``)": "`",
    r"([ \(\[{<])(\"|\'{2})": "\"'",
    r"([:,])([^\d])": ":,",
    r"([:,])$": ":,",
    r"\.\.\.": ".",
    r"[;@#$%&]": ";@#$%&",
    r"([^\.])(\.)([\]\)}>" + '"' + r"\']*)\s*$": ".",
    r"[?!]": "?!",
    r"([^'])' ": "'",
    r"[\]\[\(\)\{\}\<\>]": "][(){}<>",
    r"--": "-",
    r"''": "'",
    r'"': '"',
    r"([^' ])('[sS]|'[mM]|'[dD]|') ": "'",
    r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": "'",
}
TREEBANK_NEEDS_LOWERED = {
    r"(?i)\b(can)(?#X)(not)\b": "cannot",
    r"(?i)\b(d)(?#X)('ye)\b": "d'ye",
    r"(?i)\b(gim)(?#X)(me)\b": "mme",
    r"(?i)\b(gon)(?#X)(na)\b": "gonna",
    r"(?i)\b(got)(?#X)(ta)\b": "gotta",
    r"(?i)\b(lem)(?#X)(me)\b": "lemme",
    r"(?i)\b(more)(?#X)('n)\b": "more'n",
    r"(?i)\b(wan)(?#X)(na)(?=\s)": "wanna",
    r"(?i) ('t)(?#X)(is)\b": "'t",
    r"(?i) ('t)(?#X)(was)\b": "'tw",
}


def _char_test(chars: str | None) -> str | frozenset[str] | None:
    """One character as itself (a substring test), several as a set (one pass over the text)."""
    return chars if chars is None or len(chars) == 1 else frozenset(chars)


class PrecheckedTreebank:
    """TreebankWordTokenizer.tokenize, rule for rule, skipping the rules that cannot match.

    A sentence of ordinary prose meets 26 rules, of which a few can match, and a regex call that
    finds nothing still costs far more than a substring test. A rule runs whenever the text holds
    what its pattern needs (TREEBANK_NEEDS_*), so the words are NLTK's.
    """

    def __init__(self, tokenizer: Any) -> None:
        def checked(rules):
            return [
                (pattern, replacement, _char_test(TREEBANK_NEEDS_ANY_CHAR.get(pattern.pattern)))
                for pattern, replacement in rules
            ]

        self.before_padding = checked(
            [*tokenizer.STARTING_QUOTES, *tokenizer.PUNCTUATION, tokenizer.PARENS_BRACKETS,
             tokenizer.DOUBLE_DASHES]
        )  # fmt: skip
        self.ending_quotes = checked(tokenizer.ENDING_QUOTES)
        self.contractions = [
            (pattern, r" \1 \2 ", TREEBANK_NEEDS_LOWERED.get(pattern.pattern))
            for pattern in [*tokenizer.CONTRACTIONS2, *tokenizer.CONTRACTIONS3]
        ]

    @staticmethod
    def _apply(rules, text: str) -> str:
        for pattern, replacement, needs in rules:
            if needs is not None and (
                needs not in text if type(needs) is str else needs.isdisjoint(text)
            ):
                continue  # nothing it needs is in the text: it would change nothing
            text = pattern.sub(replacement, text)
        return text

    def tokenize(self, text: str) -> list[str]:
        text = self._apply(self.before_padding, text)
        text = self._apply(self.ending_quotes, " " + text + " ")
        lowered = text.lower()
        for pattern, replacement, needs in self.contractions:
            if needs is None or needs in lowered:
                text = pattern.sub(replacement, text)
                lowered = text.lower()
        return text.split()


@functools.cache
def _unguarded_punkt_token() -> type:
    """Punkt's token class with its pattern properties on the same compiled patterns, unguarded.

    Punkt builds a token for each word (twice per text) and types it with a guarded `sub`. The
    properties are NLTK's own code, copied where it names a module-level pattern.
    """
    from nltk.tokenize import punkt

    non_punct = _unguarded(punkt._re_non_punct)

    class UnguardedPunktToken(punkt.PunktToken):
        _RE_ELLIPSIS = _unguarded(punkt.PunktToken._RE_ELLIPSIS)
        _RE_NUMERIC = _unguarded(punkt.PunktToken._RE_NUMERIC)
        _RE_INITIAL = _unguarded(punkt.PunktToken._RE_INITIAL)
        _RE_ALPHA = _unguarded(punkt.PunktToken._RE_ALPHA)

        @property
        def is_non_punct(self):
            return non_punct.search(self.type)

    return UnguardedPunktToken


def _drop_match_timeouts(splitter: Any) -> None:
    """The same for the patterns a Punkt splitter uses: its language variables' (per instance)
    and its tokens' (a subclass with unguarded patterns, which the splitter builds instead)."""
    lang_vars = getattr(splitter, "_lang_vars", None)
    for build, slot in (
        ("_word_tokenizer_re", "_re_word_tokenizer"),
        ("period_context_re", "_re_period_context"),
    ):
        if lang_vars is not None and hasattr(lang_vars, build):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(lang_vars, slot, _unguarded(getattr(lang_vars, build)()))
    if lang_vars is not None and hasattr(lang_vars, "re_boundary_realignment"):
        # A class attribute, and the class has __slots__: the instance moves to a subclass that
        # holds the unguarded pattern (same slots, so it keeps its state).
        lang_vars.__class__ = type(
            type(lang_vars).__name__,
            (type(lang_vars),),
            {
                "__slots__": (),
                "re_boundary_realignment": _unguarded(lang_vars.re_boundary_realignment),
            },
        )
    if getattr(splitter, "_Token", None) is not None:
        from nltk.tokenize import punkt

        if splitter._Token is punkt.PunktToken:
            splitter._Token = _unguarded_punkt_token()
