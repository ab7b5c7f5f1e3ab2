"""Significance of encoding scores: block permutation tests, BH-FDR, bootstrap CIs.

Block permutation test. fMRI samples are autocorrelated, so shuffling single samples breaks
the null distribution. Instead the ``n`` samples are cut into ``n_blocks = n // block_size``
contiguous blocks (a remainder ``n % block_size`` at the end stays in place), and the blocks
of ``y_true`` are permuted against ``y_pred``. Both Pearson r and R² depend on the permuted
data only through the cross-products ``sum_i y_true[pi(i)] y_pred[i]``, and for block
permutations these are sums of block cross-products

    K[a, b, t] = sum_j y_true[a*bs + j, t] * y_pred[b*bs + j, t]        (n_blocks², per target)

so the null score of permutation ``pi`` is ``g(sum_b K[pi(b), b, t] + tail_t)``: one
``(n_blocks, n_blocks)`` matrix per target is built once (a batched matmul), then every
permutation costs ``n_blocks`` gathered adds per target. Permutations run on the device in
batches (``jax.lax.map`` with ``batch_size``) and targets in batches, never a Python loop over
permutations. ``p = (1 + #{null >= observed}) / (1 + n_permutations)`` (one-sided, larger is
better).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import backend_jit
from .validation import as_float_array

PermScore = Literal["r", "r2"]


class PermutationResult(NamedTuple):
    """Result of :func:`permutation_test`.

    Attributes
    ----------
    score : (n_targets,) observed score.
    p_value : (n_targets,) one-sided permutation p-value, ``(1 + count) / (1 + n_permutations)``.
    null : (n_permutations, n_targets) null scores, or None unless ``return_null=True``.
    """

    score: np.ndarray
    p_value: np.ndarray
    null: np.ndarray | None


def block_permutations(n_blocks: int, n_permutations: int, random_state=None) -> np.ndarray:
    """``(n_permutations, n_blocks)`` int32 random permutations of the block order."""
    rng = np.random.default_rng(random_state)
    return np.argsort(rng.random((n_permutations, n_blocks)), axis=1).astype(np.int32)


@backend_jit(static_argnames=("score", "perm_batch", "return_null"))
def _perm_batch(yt, yp, perms, *, score: str, perm_batch: int, return_null: bool):
    n, t = yt.shape
    nb = perms.shape[1]
    bs = n // nb
    head = nb * bs
    # centre once: permuting rows leaves means and sums of squares unchanged
    yt = yt - yt.mean(0)
    yp = yp - yp.mean(0)
    stt = (yt * yt).sum(0)
    spp = (yp * yp).sum(0)
    tail = (yt[head:] * yp[head:]).sum(0)
    A = yt[:head].reshape(nb, bs, t).transpose(2, 0, 1)  # (t, nb, bs)
    B = yp[:head].reshape(nb, bs, t).transpose(2, 1, 0)  # (t, bs, nb)
    K = jnp.matmul(A, B).transpose(1, 2, 0)  # (nb_a, nb_b, t)
    cols = jnp.arange(nb)

    def to_score(cross):
        if score == "r":
            den = jnp.sqrt(stt * spp)
            return jnp.where(den > 0, cross / jnp.where(den > 0, den, 1.0), 0.0)
        sse = stt + spp - 2.0 * cross
        return jnp.where(stt > 0, 1.0 - sse / jnp.where(stt > 0, stt, 1.0), 0.0)

    observed = to_score(jnp.trace(K, axis1=0, axis2=1) + tail)

    def one(pi):
        return to_score(K[pi, cols].sum(0) + tail)

    null = jax.lax.map(one, perms, batch_size=perm_batch)  # (n_perm, t)
    count = (null >= observed[None, :] - 1e-6 * jnp.abs(observed[None, :])).sum(0)
    return observed, count, (null if return_null else None)


def permutation_test(
    y_true,
    y_pred,
    *,
    n_permutations: int = 1000,
    block_size: int = 10,
    score: PermScore = "r",
    random_state=None,
    perm_batch: int = 100,
    target_batch: int | None = None,
    return_null: bool = False,
) -> PermutationResult:
    """One-sided block permutation test of a prediction score, per target.

    Parameters
    ----------
    y_true : (n_samples, n_targets) observed held-out responses (time-ordered).
    y_pred : (n_samples, n_targets) model predictions.
    n_permutations : permutations of the block order (shared by all targets).
    block_size : samples per contiguous block (e.g. 10 TRs, longer than the autocorrelation).
    score : ``"r"`` (Pearson) or ``"r2"`` (``1 - SSE/SST``; for a permuted pairing SSE uses
        the centred data, the observed R² is that of the mean-matched prediction).
    perm_batch : permutations evaluated at once on the device.
    target_batch : targets per device call (default: sized to keep the ``n_blocks² ×
        targets`` cross-product table near 256 MB).
    return_null : also return the null scores.

    Returns
    -------
    PermutationResult with ``score``, ``p_value`` (and ``null``) per target.
    """
    yt = as_float_array("y_true", y_true, ndim=2)
    yp = as_float_array("y_pred", y_pred, ndim=2)
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred: expected shape {yt.shape} to match y_true, got {yp.shape}")
    if score not in ("r", "r2"):
        raise ValueError(f"score: expected 'r' or 'r2', got {score!r}")
    n, t = yt.shape
    block_size = int(block_size)
    if block_size < 1 or n // block_size < 2:
        raise ValueError(f"block_size: expected 1 <= block_size <= n_samples/2 = {n // 2}, got {block_size}")
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations: expected >= 1, got {n_permutations}")
    nb = n // block_size
    perms = jnp.asarray(block_permutations(nb, int(n_permutations), random_state))
    if target_batch is None:
        target_batch = max(1, min(t, (256 << 20) // (4 * nb * nb + 4 * n)))
    target_batch = int(max(1, min(target_batch, t)))
    n_batches = -(-t // target_batch)
    pad = n_batches * target_batch - t
    dtype = np.float32
    yt_p = np.pad(yt.astype(dtype), ((0, 0), (0, pad)))
    yp_p = np.pad(yp.astype(dtype), ((0, 0), (0, pad)))
    obs, cnt, nulls = [], [], []
    pb = int(max(1, min(perm_batch, n_permutations)))
    for b in range(n_batches):
        cols = slice(b * target_batch, (b + 1) * target_batch)
        o, c, nl = _perm_batch(
            jnp.asarray(yt_p[:, cols]),
            jnp.asarray(yp_p[:, cols]),
            perms,
            score=score,
            perm_batch=pb,
            return_null=return_null,
        )
        obs.append(np.asarray(o))
        cnt.append(np.asarray(c))
        if return_null:
            nulls.append(np.asarray(nl))
    observed = np.concatenate(obs)[:t]
    count = np.concatenate(cnt)[:t]
    p = (1.0 + count) / (1.0 + n_permutations)
    null = np.concatenate(nulls, axis=1)[:, :t] if return_null else None
    return PermutationResult(observed, p, null)


def fdr_bh(p_values, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg false discovery rate control across all entries of ``p_values``.

    ``q_(i) = min_{j >= i} p_(j) m / j`` over the sorted p-values (capped at 1); an entry is
    rejected when ``q <= alpha`` (the same as statsmodels ``multipletests(method="fdr_bh")``).

    Parameters
    ----------
    p_values : array of p-values in [0, 1], any shape (e.g. ``(n_targets,)``).
    alpha : FDR level.

    Returns
    -------
    reject : bool array, the shape of ``p_values``.
    q_values : BH-adjusted p-values, the shape of ``p_values``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        raise ValueError("p_values: expected at least one p-value")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_values: every p-value must be finite and in [0, 1]")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")
    flat = p.ravel()
    m = flat.size
    order = np.argsort(flat, kind="mergesort")
    scaled = flat[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    q = q.reshape(p.shape)
    return q <= alpha, q


class BootstrapCI(NamedTuple):
    """Result of :func:`bootstrap_ci`: arrays of shape ``(n_groups,)`` (or ``()`` without groups).

    Attributes
    ----------
    mean : mean score over targets.
    low, high : percentile bootstrap interval of the mean.
    groups : the group labels (sorted), or None.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    groups: np.ndarray | None


def bootstrap_ci(
    scores,
    *,
    groups=None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    random_state=None,
) -> BootstrapCI:
    """Percentile bootstrap CI of the mean score over targets (voxels), overall or per ROI.

    Targets are resampled with replacement (within each group when ``groups`` is given);
    the interval is the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of the resampled means.
    NaN scores (e.g. normalised scores of voxels below the ceiling threshold) are dropped.

    Parameters
    ----------
    scores : (n_targets,) per-target scores.
    groups : optional (n_targets,) labels (e.g. ROI names).
    n_bootstrap : resamples.
    ci : interval level.

    Returns
    -------
    BootstrapCI
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores: expected (n_targets,), got shape {s.shape}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: expected a level in (0, 1), got {ci}")
    rng = np.random.default_rng(random_state)
    q = [(1 - ci) / 2, (1 + ci) / 2]

    def one(v):
        v = v[np.isfinite(v)]
        if v.size == 0:
            return np.nan, np.nan, np.nan
        means = np.empty(n_bootstrap)
        step = max(1, (1 << 24) // v.size)  # bound the index matrix per chunk
        for a in range(0, n_bootstrap, step):
            k = min(step, n_bootstrap - a)
            means[a : a + k] = v[rng.integers(v.size, size=(k, v.size))].mean(1)
        lo, hi = np.quantile(means, q)
        return v.mean(), lo, hi

    if groups is None:
        m, lo, hi = one(s)
        return BootstrapCI(np.asarray(m), np.asarray(lo), np.asarray(hi), None)
    g = np.asarray(groups)
    if g.shape != s.shape:
        raise ValueError(f"groups: expected shape {s.shape}, got {g.shape}")
    labels = np.unique(g)
    res = np.array([one(s[g == lab]) for lab in labels])
    return BootstrapCI(res[:, 0], res[:, 1], res[:, 2], labels)
