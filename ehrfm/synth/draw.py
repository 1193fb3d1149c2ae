"""Per-patient random numbers: one numpy ``Generator`` per (seed, patient index), served as scalars.

Why: a patient's data must depend only on (seed, index) so that a population of N patients is a prefix
of a population of M > N patients with the same seed, and scalar draws from numpy are slow (~1 us each),
so they are drawn in blocks and handed out from Python lists.
"""

from __future__ import annotations

import math

import numpy as np

_BLOCK = 256


class Draw:
    """Deterministic scalar random draws for one patient."""

    __slots__ = ("_gen", "_u", "_ui", "_z", "_zi")

    def __init__(self, seed: int, index: int, stream: int = 0x5EED) -> None:
        # SeedSequence over (stream tag, seed, index): independent streams per patient; the tag is the
        # site's (ehrfm.synth.site), so site B's patient i is not site A's patient i shifted
        self._gen = np.random.default_rng([int(stream), int(seed), int(index)])
        self._u: list[float] = []
        self._ui = 0
        self._z: list[float] = []
        self._zi = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """A uniform draw in [low, high)."""
        if self._ui >= len(self._u):
            self._u = self._gen.random(_BLOCK).tolist()
            self._ui = 0
        u = self._u[self._ui]
        self._ui += 1
        return low + (high - low) * u

    def normal(self, mean: float = 0.0, sd: float = 1.0) -> float:
        """A normal draw."""
        if self._zi >= len(self._z):
            self._z = self._gen.standard_normal(_BLOCK).tolist()
            self._zi = 0
        z = self._z[self._zi]
        self._zi += 1
        return mean + sd * z

    def bernoulli(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.uniform() < p

    def exponential(self, mean: float) -> float:
        """An exponential draw with the given mean."""
        return -mean * math.log(1.0 - self.uniform())

    def lognormal(self, median: float, sigma: float) -> float:
        """A log-normal draw with the given median and log-scale sd."""
        return median * math.exp(self.normal(0.0, sigma))

    def choice(self, items: tuple[str, ...], weights: tuple[float, ...]) -> str:
        """One of ``items`` with probabilities proportional to ``weights``."""
        u = self.uniform(0.0, sum(weights))
        acc = 0.0
        for item, w in zip(items, weights, strict=True):
            acc += w
            if u < acc:
                return item
        return items[-1]

    def poisson_times(self, start: float, end: float, rate_per_day: float) -> list[float]:
        """Event times of a homogeneous Poisson process on [start, end) (same unit as start/end: days)."""
        times: list[float] = []
        if rate_per_day <= 0:
            return times
        t = start + self.exponential(1.0 / rate_per_day)
        while t < end:
            times.append(t)
            t += self.exponential(1.0 / rate_per_day)
        return times
