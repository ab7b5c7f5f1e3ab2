"""Per-target scores, vectorised over targets and usable inside ``jax.jit``.

Convention for degenerate targets: where ``y_true`` (or, for Pearson r, ``y_pred``) is
constant over samples, the score is defined as **0.0** — never NaN and never a warning — so
means over voxels stay finite. This matches scikit-learn's ``r2_score(force_finite=True)``
for imperfect predictions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# relative variance below which a column counts as constant
_TINY = 1e-12


def _weights(y, w):
    if w is None:
        return jnp.ones(y.shape[0], dtype=y.dtype)
    return w.astype(y.dtype)


def weighted_r2(y_true: jax.Array, y_pred: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """R² per column with optional 0/1 row weights (padding rows get weight 0).

    ``y_true (n, t)``; ``y_pred (..., n, t)`` may carry leading axes (e.g. one per alpha),
    which the result keeps: ``(..., t)``.
    """
    sse = (_weights(y_true, w)[:, None] * (y_true - y_pred) ** 2).sum(-2)
    return r2_from_sse(y_true, sse, w)


def r2_from_sse(y_true: jax.Array, sse: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """R² per column from the weighted sum of squared errors ``sse (..., t)`` of ``y_true (n, t)``."""
    w = _weights(y_true, w)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    mean = (w * y_true).sum(0) / n
    sst = (w * (y_true - mean) ** 2).sum(0)
    scale = (w * y_true**2).sum(0) / n + 1.0
    ok = sst > _TINY * scale * n
    return jnp.where(ok, 1.0 - sse / jnp.where(ok, sst, 1.0), 0.0)


def weighted_pearson_r(y_true: jax.Array, y_pred: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """Pearson correlation per column with optional 0/1 row weights; shapes as :func:`weighted_r2`."""
    wc = _weights(y_true, w)[:, None]
    n = jnp.maximum(wc.sum(), 1.0)
    a = y_true - (wc * y_true).sum(0) / n
    b = y_pred - (wc * y_pred).sum(-2, keepdims=True) / n
    sab = (wc * a * b).sum(-2)
    sbb = (wc * b * b).sum(-2)
    spp = (wc * y_pred**2).sum(-2)
    return pearson_from_sums(y_true, sab, sbb, spp, w)


def pearson_from_sums(
    y_true: jax.Array, sab: jax.Array, sbb: jax.Array, spp: jax.Array, w: jax.Array | None = None
) -> jax.Array:
    """Pearson r per column of ``y_true (n, t)`` from weighted sums over the predictions ``b``:
    ``sab`` = Σ (y - ȳ)(b - b̄), ``sbb`` = Σ (b - b̄)², ``spp`` = Σ b² (each ``(..., t)``)."""
    w = _weights(y_true, w)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    a = y_true - (w * y_true).sum(0) / n
    saa = (w * a * a).sum(0)
    scale_a = (w * y_true**2).sum(0) / n + 1.0
    scale_b = spp / n + 1.0
    ok = (saa > _TINY * scale_a * n) & (sbb > _TINY * scale_b * n)
    denom = jnp.sqrt(jnp.where(ok, saa * sbb, 1.0))
    return jnp.where(ok, sab / denom, 0.0)


def weighted_neg_mse(y_true: jax.Array, y_pred: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """Negative mean squared error per column with optional 0/1 row weights; shapes as
    :func:`weighted_r2`."""
    w = _weights(y_true, w)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    return -(w * (y_true - y_pred) ** 2).sum(-2) / n


SCORERS = {"r2": weighted_r2, "r": weighted_pearson_r, "neg_mse": weighted_neg_mse}


def _check_pair(y_true, y_pred):
    y_true = jnp.asarray(y_true)
    y_pred = jnp.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_pred: expected shape {y_true.shape} to match y_true, got {y_pred.shape}")
    if y_true.ndim not in (1, 2):
        raise ValueError(f"y_true: expected (n_samples,) or (n_samples, n_targets), got {y_true.shape}")
    if y_true.shape[0] < 2:
        raise ValueError(f"y_true: need at least 2 samples, got {y_true.shape[0]}")
    dtype = jnp.promote_types(jnp.result_type(y_true, y_pred), jnp.float32)
    return y_true.astype(dtype), y_pred.astype(dtype)


def pearson_r(y_true, y_pred) -> jax.Array:
    """Pearson correlation between true and predicted values, per target.

    Parameters
    ----------
    y_true, y_pred : (n_samples,) or (n_samples, n_targets)

    Returns
    -------
    r : () or (n_targets,); 0.0 where either column is constant.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.ndim == 1:
        return weighted_pearson_r(y_true[:, None], y_pred[:, None])[0]
    return weighted_pearson_r(y_true, y_pred)


def r2_score(y_true, y_pred) -> jax.Array:
    """Coefficient of determination ``1 - SSE / SST`` per target (SST about the mean of ``y_true``).

    Parameters
    ----------
    y_true, y_pred : (n_samples,) or (n_samples, n_targets)

    Returns
    -------
    r2 : () or (n_targets,); 0.0 where ``y_true`` is constant. Can be negative.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.ndim == 1:
        return weighted_r2(y_true[:, None], y_pred[:, None])[0]
    return weighted_r2(y_true, y_pred)
