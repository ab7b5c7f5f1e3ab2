"""Finite-impulse-response (FIR) delays of feature time series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .validation import as_float_array


def delay(X, delays: Sequence[int], groups=None) -> np.ndarray:
    """Stack time-shifted copies of ``X`` so a linear model can learn a haemodynamic response.

    ``out[t, k*p:(k+1)*p] = X[t - delays[k]]`` when sample ``t - delays[k]`` belongs to the same
    run as ``t``, else 0. A positive delay makes a response at time ``t`` depend on stimuli that
    came ``d`` samples earlier. Shifts never bleed across run boundaries.

    Parameters
    ----------
    X : (n_samples, n_features) feature time series, runs concatenated.
    delays : integer delays in samples (TRs), e.g. ``(1, 2, 3, 4)``; may be 0 or negative.
    groups : optional (n_samples,) run labels; each run must be one contiguous stretch.

    Returns
    -------
    (n_samples, n_features * len(delays)) array, delay blocks in the order given.
    """
    X = as_float_array("X", X, ndim=2, finite=False)
    d = np.asarray(delays)
    if d.ndim != 1 or d.size == 0 or d.dtype.kind not in "iu":
        raise ValueError(
            f"delays: expected a non-empty 1-D sequence of integers, got {list(np.atleast_1d(d))}"
        )
    n, p = X.shape
    if groups is None:
        bounds = [(0, n)]
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups: expected shape ({n},) to match X, got {g.shape}")
        change = np.flatnonzero(g[1:] != g[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [n]])
        if len(set(g[starts].tolist())) != len(starts):
            raise ValueError("groups: each run must occupy one contiguous stretch of samples")
        bounds = list(zip(starts.tolist(), ends.tolist(), strict=True))
    out = np.zeros((n, p * d.size), dtype=X.dtype)
    for k, dk in enumerate(d.tolist()):
        cols = slice(k * p, (k + 1) * p)
        for a, b in bounds:
            if dk >= 0:
                if dk < b - a:
                    out[a + dk : b, cols] = X[a : b - dk]
            elif -dk < b - a:
                out[a : b + dk, cols] = X[a - dk : b]
    return out
