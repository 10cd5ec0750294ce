"""Bootstrap confidence intervals over sequences for the corpus statistics.

Every corpus statistic is a ratio of sums over tokens (a mean activity, an attention mass per
query), and tokens of one story are not independent, so the unit resampled is the sequence: draw
the analysed sequences with replacement, recompute the sums and the statistic, repeat, and take
the percentiles (Efron's percentile interval). Each resample is a vector of counts per sequence
(a multinomial draw), so the resampled sums of any per-sequence array are one matrix product.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headscope.schemas import GridInterval

LEVEL = 0.95
RESAMPLES = 1000
# Below these, an interval (and a mean) says little: the corpus responses carry a warning.
MIN_SUPPORT_TOKENS = 20
MIN_SUPPORT_SEQUENCES = 5
METHOD = (
    "percentile bootstrap over sequences: the analysed sequences drawn with replacement "
    f"{RESAMPLES} times (seeded by the request's seed), the statistic recomputed from the "
    "resampled sums each time"
)


@dataclass(frozen=True)
class Resampler:
    """Seeded resamples of S sequences: counts[b, s] = how often draw b took sequence s."""

    counts: np.ndarray  # [resample, sequence], float64

    @classmethod
    def of(cls, n_sequences: int, seed: int, resamples: int = RESAMPLES) -> Resampler:
        rng = np.random.default_rng([seed, n_sequences])
        shares = np.full(n_sequences, 1.0 / n_sequences)
        counts = rng.multinomial(n_sequences, shares, size=resamples).astype(np.float64)
        return cls(counts)

    def sums(self, per_sequence: np.ndarray) -> np.ndarray:
        """[sequence, *shape] -> [resample, *shape]: the sums over each resample's sequences."""
        per_sequence = np.asarray(per_sequence, dtype=np.float64)
        flat = per_sequence.reshape(per_sequence.shape[0], -1)
        return (self.counts @ flat).reshape(self.counts.shape[0], *per_sequence.shape[1:])

    def interval(
        self,
        statistic: Callable[..., np.ndarray],
        *per_sequence: np.ndarray,
        level: float = LEVEL,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of `statistic(*sums)` over the resamples; NaN where the statistic is
        undefined in more than half of them (e.g. a tag absent from most draws)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            values = statistic(*(self.sums(array) for array in per_sequence))  # [resample, ...]
        defined = np.isfinite(values)
        tail = (1.0 - level) / 2.0
        masked = np.where(defined, values, np.nan)
        with warnings.catch_warnings():  # a statistic undefined in every resample stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(masked, [tail, 1.0 - tail], axis=0)
        enough = defined.mean(axis=0) >= 0.5
        return np.where(enough, low, np.nan), np.where(enough, high, np.nan)


def support_warning(tokens: int, sequences: int, what: str) -> str | None:
    """A sentence for the response's `warning` when the statistic rests on little data."""
    if tokens < MIN_SUPPORT_TOKENS or sequences < MIN_SUPPORT_SEQUENCES:
        return (
            f"small support: {what} rests on {tokens} token(s) from {sequences} sequence(s) "
            f"(fewer than {MIN_SUPPORT_TOKENS} tokens or {MIN_SUPPORT_SEQUENCES} sequences); "
            "treat it and its interval as anecdotal, and draw more sequences"
        )
    return None


def mean_of(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[resample, ...] / [resample] (or the same shape), broadcast over trailing axes."""
    while counts.ndim < sums.ndim:
        counts = counts[..., None]
    return sums / counts


def finite_or_none(value: float) -> float | None:
    """A bound as JSON gives it: null where the statistic is undefined (NaN, inf)."""
    return float(value) if np.isfinite(value) else None


def grid_interval(bounds: tuple[np.ndarray, np.ndarray]) -> GridInterval:
    """(low, high) [layer, head] arrays as the responses' GridInterval."""
    low, high = bounds
    return GridInterval(
        low=[[finite_or_none(v) for v in row] for row in low],
        high=[[finite_or_none(v) for v in row] for row in high],
    )
