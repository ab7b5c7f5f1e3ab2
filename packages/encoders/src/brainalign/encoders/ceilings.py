"""Noise ceilings: how much of a response is predictable at all, and scores relative to it.

* :func:`spearman_brown` — reliability of a ``k``-fold longer measurement,
  ``k r / (1 + (k - 1) r)``.
* :func:`split_half_ceiling` — correlation between the mean responses of two halves of the
  repeated presentations, Spearman–Brown-corrected to all repeats. For ``y_k = s + e_k``
  (``m`` repeats, signal variance ``σs²``, noise ``σe²``) it estimates the reliability of the
  ``m``-repeat mean, ``σs² / (σs² + σe² / m)``: the ceiling of the R² (and, square-rooted,
  of the Pearson r) of any model predicting the mean response.
* :func:`explainable_variance` — bias-corrected explainable variance of single repeats, as in
  the voxelwise-modelling tutorials (gallantlab): ``ev = Var_t(mean_k y) / mean_k Var_t(y)``
  corrected by ``ev - (1 - ev) / (m - 1)``, which estimates ``σs² / (σs² + σe²)`` without bias.
* :func:`subject_pool_ceiling` — Brain-Score's ceiling extrapolation: predict each held-out
  subject from pools of ``x`` other subjects, fit ``v(x) = v0 (1 - exp(-x / tau))`` to the
  mean score per pool size, bootstrap; the ceiling is ``v0`` (the score with infinitely many
  subjects). The exponential is a heuristic: for exchangeable subjects ``y = s + e`` the
  pool-mean correlation is exactly ``r(x)^-2 = A + B / x`` and the exponential, which saturates
  too early, underestimates the limit ``A^-1/2``; ``extrapolation="inverse"`` fits that
  exact form instead.
* :func:`normalize` — ``score / ceiling`` where the ceiling is reliable.
"""

from __future__ import annotations

from itertools import combinations
from math import comb
from typing import NamedTuple

import numpy as np

from .validation import as_float_array


def spearman_brown(r, factor=2.0):
    """Spearman–Brown prophecy: reliability ``k r / (1 + (k - 1) r)`` of ``factor``-times more data.

    Parameters
    ----------
    r : array of reliabilities (correlations) of the shorter measurement.
    factor : ``k``, the length ratio (2 for split halves).
    """
    r = np.asarray(r, dtype=np.float64)
    k = float(factor)
    if k <= 0:
        raise ValueError(f"factor: expected a positive length ratio, got {factor}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return k * r / (1.0 + (k - 1.0) * r)


def _corr_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column along axis -2 (samples), 0 where a column is constant."""
    a = a - a.mean(-2, keepdims=True)
    b = b - b.mean(-2, keepdims=True)
    num = (a * b).sum(-2)
    den = np.sqrt((a * a).sum(-2) * (b * b).sum(-2))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _check_repeats(repeats) -> np.ndarray:
    data = as_float_array("repeats", repeats, ndim=(2, 3)).astype(np.float64)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.shape[0] < 2:
        raise ValueError(f"repeats: expected at least 2 repeats (axis 0), got {data.shape[0]}")
    if data.shape[1] < 3:
        raise ValueError(f"repeats: expected at least 3 samples (axis 1), got {data.shape[1]}")
    return data


def split_half_ceiling(repeats, *, n_splits: int = 100, random_state=None) -> np.ndarray:
    """Split-half reliability of the mean response, Spearman–Brown-corrected to all repeats.

    The repeats are split at random into two halves (``floor(m/2)`` and the rest), the
    per-target Pearson r between the two half means is Spearman–Brown-corrected with factor
    ``m / floor(m/2)`` (2 for even ``m``), and the corrected values are averaged over splits.

    Parameters
    ----------
    repeats : (n_repeats, n_samples, n_targets) responses to repeated presentations, or
        (n_repeats, n_samples) for one target.
    n_splits : random splits averaged (all distinct splits when there are fewer).

    Returns
    -------
    (n_targets,) reliability of the ``n_repeats`` mean: the ceiling of R²; ``sqrt`` of it is the
    ceiling of Pearson r.
    """
    data = _check_repeats(repeats)
    m = data.shape[0]
    h = m // 2
    rng = np.random.default_rng(random_state)
    if comb(m, h) <= 4 * n_splits:
        # enumerate; for even m keep one of each complementary pair
        all_splits = [c for c in combinations(range(m), h) if 0 in c or 2 * h != m]
        if len(all_splits) > n_splits:
            pick = rng.choice(len(all_splits), size=n_splits, replace=False)
            all_splits = [all_splits[i] for i in sorted(pick)]
    else:
        all_splits = [tuple(rng.permutation(m)[:h]) for _ in range(n_splits)]
    rs = []
    for first in all_splits:
        mask = np.zeros(m, dtype=bool)
        mask[list(first)] = True
        rs.append(_corr_cols(data[mask].mean(0), data[~mask].mean(0)))
    return spearman_brown(np.mean(rs, axis=0), m / h)


def explainable_variance(repeats, *, bias_correction: bool = True, zscore: bool = True) -> np.ndarray:
    """Explainable variance of single repeats, as in the voxelwise-modelling tutorials.

    ``ev = Var_t(mean_k y_k) / mean_k Var_t(y_k)``; with ``bias_correction``,
    ``ev - (1 - ev) / (m - 1)``, whose expectation is ``σs² / (σs² + σe²)`` for
    ``y_k = s + e_k``.

    Parameters
    ----------
    repeats : (n_repeats, n_samples, n_targets) or (n_repeats, n_samples).
    bias_correction : remove the noise left in the mean of ``m`` repeats.
    zscore : z-score every repeat over samples first (as the tutorials do).

    Returns
    -------
    (n_targets,) fraction of the single-repeat variance that is stimulus-driven.
    """
    data = _check_repeats(repeats)
    if zscore:
        sd = data.std(1, keepdims=True)
        data = (data - data.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    mean_var = data.var(1).mean(0)
    var_mean = data.mean(0).var(0)
    ev = var_mean / np.where(mean_var > 0, mean_var, 1.0)
    if bias_correction:
        ev = ev - (1.0 - ev) / (data.shape[0] - 1)
    return ev


class SubjectPoolCeiling(NamedTuple):
    """Result of :func:`subject_pool_ceiling`.

    Attributes
    ----------
    ceiling : (n_targets,) median over bootstraps of the asymptote ``v0``.
    ci : (2, n_targets) bootstrap percentile interval of ``v0`` (``ci`` level of the call).
    v0 : (n_bootstrap, n_targets) bootstrap asymptotes.
    tau : (n_targets,) median over bootstraps of ``tau`` (``"inverse"``: of ``B / A``, the pool
        size at which the squared score reaches half its limit).
    pool_sizes : (n_sizes,) pool sizes ``x`` (1 .. n_subjects - 1).
    scores : (n_sizes, n_targets) mean score per pool size.
    """

    ceiling: np.ndarray
    ci: np.ndarray
    v0: np.ndarray
    tau: np.ndarray
    pool_sizes: np.ndarray
    scores: np.ndarray


def fit_saturation(x, y, *, taus=None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of ``y ≈ v0 (1 - exp(-x / tau))``, vectorised over columns.

    For a fixed ``tau`` the best ``v0`` is linear, ``v0 = f'y / f'f`` with
    ``f = 1 - exp(-x / tau)``; ``tau`` is chosen on a log grid and refined by golden-section
    search around the best grid point.

    Parameters
    ----------
    x : (n_points,) positive abscissae (pool sizes).
    y : (n_points, ...) values to fit.
    taus : optional (n_taus,) grid of ``tau`` (default ``logspace(-2, 3, 200)``).

    Returns
    -------
    v0, tau : arrays of shape ``y.shape[1:]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    flat = y.reshape(y.shape[0], -1)
    grid = np.logspace(-2, 3, 200) if taus is None else np.asarray(taus, dtype=np.float64)

    def sse_v0(tau):  # tau: (c,) or scalar -> sse (c,), v0 (c,)
        f = 1.0 - np.exp(-x[:, None] / np.asarray(tau)[None, ...])  # (n, c)
        v0 = (f * flat).sum(0) / (f * f).sum(0)
        return ((flat - v0 * f) ** 2).sum(0), v0

    sse = np.stack([sse_v0(np.full(flat.shape[1], t))[0] for t in grid])  # (n_taus, c)
    k = np.argmin(sse, axis=0)
    lo = np.log(grid[np.maximum(k - 1, 0)])
    hi = np.log(grid[np.minimum(k + 1, grid.size - 1)])
    g = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a = hi - g * (hi - lo)
        b = lo + g * (hi - lo)
        fa, fb = sse_v0(np.exp(a))[0], sse_v0(np.exp(b))[0]
        hi = np.where(fa < fb, b, hi)
        lo = np.where(fa < fb, lo, a)
    tau = np.exp((lo + hi) / 2)
    v0 = sse_v0(tau)[1]
    return v0.reshape(y.shape[1:]), tau.reshape(y.shape[1:])


def subject_pool_ceiling(
    responses,
    *,
    n_draws: int = 10,
    n_bootstrap: int = 100,
    ci: float = 0.95,
    extrapolation: str = "exponential",
    random_state=None,
) -> SubjectPoolCeiling:
    """Brain-Score subject-pool ceiling, extrapolated to infinitely many subjects.

    For every pool size ``x = 1 .. S - 1`` and ``n_draws`` random draws of a held-out subject
    and a pool of ``x`` others, the held-out subject's response is predicted by the pool's
    mean response and scored by Pearson r per target (the targets are assumed aligned across
    subjects, e.g. surface vertices or ROI means). Each bootstrap resamples the draws of every
    pool size, averages them into a curve ``v(x)`` and extrapolates it to infinitely many
    subjects (see ``extrapolation``); the ceiling is the median limit ``v0``.

    Parameters
    ----------
    responses : (n_subjects, n_samples, n_targets), at least 3 subjects.
    n_draws : (held-out subject, pool) draws per pool size.
    n_bootstrap : bootstrap resamples of the draws.
    ci : level of the percentile interval of ``v0``.
    extrapolation : ``"exponential"`` (Brain-Score: ``v0 (1 - exp(-x / tau))``) or
        ``"inverse"`` (least squares of ``v(x)^-2 = A + B / x``, ``v0 = A^-1/2``: exact for
        exchangeable signal-plus-noise subjects; NaN where ``A <= 0``).

    Returns
    -------
    SubjectPoolCeiling
    """
    data = as_float_array("responses", responses, ndim=3).astype(np.float64)
    n_sub = data.shape[0]
    if n_sub < 3:
        raise ValueError(f"responses: expected at least 3 subjects (axis 0), got {n_sub}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: expected a level in (0, 1), got {ci}")
    if extrapolation not in ("exponential", "inverse"):
        raise ValueError(f"extrapolation: expected 'exponential' or 'inverse', got {extrapolation!r}")
    rng = np.random.default_rng(random_state)
    sizes = np.arange(1, n_sub)
    draws = np.empty((sizes.size, n_draws, data.shape[2]))
    for i, x in enumerate(sizes):
        for d in range(n_draws):
            held = rng.integers(n_sub)
            others = np.delete(np.arange(n_sub), held)
            pool = rng.choice(others, size=x, replace=False)
            draws[i, d] = _corr_cols(data[held], data[pool].mean(0))
    scores = draws.mean(1)
    idx = rng.integers(n_draws, size=(n_bootstrap, sizes.size, n_draws))
    curves = np.take_along_axis(draws[None], idx[..., None], axis=2).mean(2)  # (B, n_sizes, t)
    if extrapolation == "exponential":
        v0, tau = fit_saturation(sizes, np.moveaxis(curves, 1, 0))
    else:
        inv = 1.0 / np.maximum(curves, 1e-12) ** 2  # (B, n_sizes, t)
        u = 1.0 / sizes
        uc = u - u.mean()
        slope = (uc[None, :, None] * (inv - inv.mean(1, keepdims=True))).sum(1) / (uc * uc).sum()
        a = inv.mean(1) - slope * u.mean()
        ok = a > 0
        v0 = np.where(ok, 1.0 / np.sqrt(np.where(ok, a, 1.0)), np.nan)
        tau = np.where(ok, slope / np.where(ok, a, 1.0), np.nan)
    q = (1 - ci) / 2
    return SubjectPoolCeiling(
        ceiling=np.median(v0, axis=0),
        ci=np.quantile(v0, [q, 1 - q], axis=0),
        v0=v0,
        tau=np.median(tau, axis=0),
        pool_sizes=sizes,
        scores=scores,
    )


def normalize(score, ceiling, *, min_ceiling: float = 0.0):
    """Ceiling-normalised score ``score / ceiling``; NaN where ``ceiling < min_ceiling`` or the
    ceiling is not positive.

    Parameters
    ----------
    score : array (..., n_targets), e.g. Pearson r or R² per voxel.
    ceiling : array broadcastable to ``score`` in the same units (a ceiling of r for r, of R²
        for R²).
    min_ceiling : the smallest reliable ceiling (inclusive, e.g. 0.05 as in "voxels with ceiling
        >= 0.05"); targets below it get NaN. A ceiling of 0 or less always gets NaN.
    """
    score = np.asarray(score, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    ok = (ceiling >= min_ceiling) & (ceiling > 0)
    return np.where(ok, score / np.where(ok, ceiling, 1.0), np.nan)
