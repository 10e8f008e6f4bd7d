"""Paired bootstrap intervals: how sure the study is that one arm beats another.

Two arms evaluated on the same held-out windows (or the same task examples) give paired values; the study
compares them through the difference `b - a` per unit. Units are resampled with replacement, the mean difference
is recomputed for each resample, and the central `confidence` share of those means is the interval (the
percentile bootstrap, Efron and Tibshirani 1993, ch. 13). With several seeds the resampling has two levels: the
seeds are resampled, then the units, the same unit indices for every seed of a resample, so the interval also
carries the seed-to-seed spread.

A comparison is decided by its interval, never by a threshold: when the whole interval lies on one side of zero
the arm ahead there "beats" the other; when it contains zero the two are a "tie" at this sample size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD = (
    "paired percentile bootstrap of the mean difference over the same held-out units (windows or task examples); "
    "with several seeds, seeds are resampled first, then units"
)


@dataclass(frozen=True)
class Interval:
    """A mean paired difference `b - a` and its bootstrap interval.

    Attributes:
        mean: the observed mean difference (over seeds and units).
        low: lower end of the interval.
        high: upper end of the interval.
        confidence: the interval's coverage, e.g. 0.95.
        units: units per seed (windows or examples).
        seeds: seeds the difference is averaged over.
        seed_spread: standard deviation of the per-seed mean differences (None with one seed).
    """

    mean: float
    low: float
    high: float
    confidence: float
    units: int
    seeds: int
    seed_spread: float | None = None

    @property
    def verdict(self) -> str:
        """ "b higher" when the interval lies above zero, "a higher" below, else "tie"."""
        if self.low > 0:
            return "b higher"
        if self.high < 0:
            return "a higher"
        return "tie"

    def text(self, digits: int = 3) -> str:
        """E.g. `+0.123 [+0.101, +0.145]` (95% interval)."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "units": self.units,
            "seeds": self.seeds,
            "seed_spread": self.seed_spread,
        }


def paired_interval(
    a: np.ndarray | list, b: np.ndarray | list, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """The bootstrap interval of the mean of `b - a` over paired units.

    Args:
        a: values of arm A, shape `(units,)` for one seed or `(seeds, units)`; unit `j` of every seed is the same
            window or example.
        b: values of arm B on the same units, same shape.
        resamples: bootstrap resamples.
        confidence: coverage of the interval.
        seed: seed of the resampling (the interval is reproducible).

    Raises:
        ValueError: shapes differ, no unit, a non-finite value, or invalid `resamples` / `confidence`.
    """
    diff = _paired_differences(a, b)
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples={resamples!r} must be a positive integer, e.g. 2000.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95.")
    seeds, units = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for k in range(resamples):
        rows = rng.integers(0, seeds, size=seeds) if seeds > 1 else np.zeros(1, dtype=np.int64)
        cols = rng.integers(0, units, size=units)
        means[k] = diff[np.ix_(rows, cols)].mean()
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    per_seed = diff.mean(axis=1)
    return Interval(
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        units=units,
        seeds=seeds,
        seed_spread=float(per_seed.std(ddof=1)) if seeds > 1 else None,
    )


def _paired_differences(a, b) -> np.ndarray:
    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if left.shape != right.shape:
        raise ValueError(
            f"Paired values need the same shape, got {left.shape} and {right.shape}: both arms must be evaluated on "
            "the same windows or examples (same settings), once per seed."
        )
    if left.ndim == 1:
        left, right = left[None, :], right[None, :]
    if left.ndim != 2 or left.shape[1] == 0:
        raise ValueError(f"Paired values must be (units,) or (seeds, units) with at least one unit, got {left.shape}.")
    diff = right - left
    if not np.isfinite(diff).all():
        raise ValueError("Paired values contain NaN or infinity; a model diverged or a record is damaged.")
    return diff
