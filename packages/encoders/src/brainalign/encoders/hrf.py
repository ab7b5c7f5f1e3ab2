"""Haemodynamic response functions and convolution of regressors with them."""

from __future__ import annotations

import math

import numpy as np


def spm_hrf(tr: float, *, oversampling: int = 16, duration: float = 32.0) -> np.ndarray:
    """The SPM canonical double-gamma HRF sampled every ``tr`` seconds, unit sum.

    ``h(t) = g(t; 6, 1) - g(t; 16, 1) / 6`` with ``g(t; k, 1) = t^(k-1) e^-t / (k-1)!``:
    a peak near 5 s and an undershoot near 15 s.

    Returns
    -------
    (ceil(duration / tr),) array
    """
    if tr <= 0:
        raise ValueError(f"tr: expected a positive repetition time in seconds, got {tr}")
    dt = tr / oversampling
    t = np.arange(0.0, duration, dt)

    def gamma_pdf(k: float) -> np.ndarray:
        return t ** (k - 1) * np.exp(-t) / math.gamma(k)

    h = gamma_pdf(6.0) - gamma_pdf(16.0) / 6.0
    h = h[::oversampling]
    return h / h.sum()


def convolve_hrf(X, tr: float, groups=None) -> np.ndarray:
    """Convolve each column of ``X (n_samples, n_features)`` with :func:`spm_hrf`, causally and
    run by run (``groups``: optional run label per sample; runs must be contiguous)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X: expected (n_samples, n_features), got shape {X.shape}")
    h = spm_hrf(tr)
    out = np.empty_like(X)
    g = np.zeros(len(X)) if groups is None else np.asarray(groups)
    if g.shape != (len(X),):
        raise ValueError(f"groups: expected shape ({len(X)},), got {g.shape}")
    change = np.flatnonzero(g[1:] != g[:-1]) + 1
    for a, b in zip(np.r_[0, change], np.r_[change, len(X)], strict=True):
        for j in range(X.shape[1]):
            out[a:b, j] = np.convolve(X[a:b, j], h)[: b - a]
    return out
