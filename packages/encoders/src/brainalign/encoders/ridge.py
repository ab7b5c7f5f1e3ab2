"""Ridge regression with a cross-validated regularisation strength per target.

For every target ``y`` (a voxel) and penalty ``lam`` the weights minimise

    ||X b - y||² + lam ||b||²                  (scikit-learn / himalaya convention, lam = alpha)

or, with ``alpha_convention="huth"``, ``lam = alpha²`` and, with ``normalize_alpha=True``,
``lam = (alpha * sigma_max)²`` where ``sigma_max`` is the largest singular value of the
(centred) training design, as in the Huth-lab ``ridge_corr`` / ``bootstrap_ridge`` code.

Algorithm. Per fold, the Y-independent work is one eigendecomposition, done once per feature
space and reused for every target batch and every alpha:

* primal (``n_features <= n_train``): ``Xtr'Xtr = V diag(s) V'``, ``L = Xtr V``, ``A = Xval V``;
* dual (``n_features > n_train``): ``Xtr Xtr' = U diag(s) U'``, ``L = U``, ``A = Xval Xtr' U``.

Then ``B = L' Ytr`` (one matmul per target batch) and the validation predictions for penalty
``lam`` are ``A diag(1 / (s + lam)) B`` — a single ``(n_val, r) x (r, n_targets)`` matmul per
alpha, with no weights formed. The refit on all samples uses the same form with a different
penalty per target: ``W = R (B / (s + lam_t))`` with ``R = V`` (primal) or ``Xc' U`` (dual).
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .scoring import SCORERS
from .validation import as_float_array, check_alphas, check_folds

Score = Literal["r2", "r", "neg_mse"]
Convention = Literal["sklearn", "huth"]


class RidgeFit(NamedTuple):
    """Result of :func:`fit_ridge_cv` (a pytree of numpy arrays).

    Attributes
    ----------
    coef : (..., n_features, n_targets) weights refitted on all samples with ``best_alpha``.
    intercept : (..., n_targets)
    best_alpha : (..., n_targets) the selected alpha, in the convention the caller used.
    cv_scores : (..., n_alphas, n_targets) validation score averaged over folds.

    The leading ``...`` is ``(n_spaces,)`` when ``X`` was batched, else empty.
    """

    coef: np.ndarray
    intercept: np.ndarray
    best_alpha: np.ndarray
    cv_scores: np.ndarray


class _Basis(NamedTuple):
    s: jax.Array  # (r,) eigenvalues of the Gram matrix, clamped at 0
    L: jax.Array  # (m, r) maps centred training targets into the eigenbasis
    A: jax.Array  # (v, r) validation design in the eigenbasis (fold basis) or R (full basis)
    x_mean: jax.Array  # (p,)


def _penalties(alphas: jax.Array, s: jax.Array, convention: str, normalize: bool) -> jax.Array:
    if convention == "sklearn":
        return alphas
    lam = alphas**2
    return lam * jnp.max(s) if normalize else lam


def _eigh_psd(G: jax.Array) -> tuple[jax.Array, jax.Array]:
    s, V = jnp.linalg.eigh(G)
    # round-off makes tiny eigenvalues of a PSD matrix negative; they must not flip signs
    return jnp.clip(s, 0.0, None), V


@partial(jax.jit, static_argnames=("fit_intercept", "dual"))
def _fold_basis(X, tr_idx, tr_w, va_idx, va_w, *, fit_intercept: bool, dual: bool) -> _Basis:
    w = tr_w[:, None]
    Xtr = X[tr_idx] * w
    if fit_intercept:
        x_mean = Xtr.sum(0) / tr_w.sum()
        Xtr = (Xtr - x_mean) * w  # padded rows stay exactly zero
    else:
        x_mean = jnp.zeros(X.shape[1], X.dtype)
    Xva = (X[va_idx] - x_mean) * va_w[:, None]
    if dual:
        s, U = _eigh_psd(Xtr @ Xtr.T)
        return _Basis(s, U, (Xva @ Xtr.T) @ U, x_mean)
    s, V = _eigh_psd(Xtr.T @ Xtr)
    return _Basis(s, Xtr @ V, Xva @ V, x_mean)


@partial(jax.jit, static_argnames=("fit_intercept", "score", "convention", "normalize"))
def _fold_scores(
    basis: _Basis, Y, tr_idx, tr_w, va_idx, va_w, alphas, *, fit_intercept, score, convention, normalize
) -> jax.Array:
    w = tr_w[:, None]
    Ytr = Y[tr_idx] * w
    y_mean = Ytr.sum(0) / tr_w.sum() if fit_intercept else jnp.zeros(Y.shape[1], Y.dtype)
    Ytr = (Ytr - y_mean) * w
    Yva = Y[va_idx]
    B = basis.L.T @ Ytr  # (r, t)
    scorer = SCORERS[score]
    lams = _penalties(alphas, basis.s, convention, normalize).astype(Y.dtype)

    def one(lam):
        pred = (basis.A / (basis.s + lam)) @ B + y_mean
        return scorer(Yva, pred, va_w)

    return jax.lax.map(one, lams)  # (n_alphas, t)


@partial(jax.jit, static_argnames=("fit_intercept", "dual"))
def _full_basis(X, *, fit_intercept: bool, dual: bool) -> _Basis:
    x_mean = X.mean(0) if fit_intercept else jnp.zeros(X.shape[1], X.dtype)
    Xc = X - x_mean
    if dual:
        s, U = _eigh_psd(Xc @ Xc.T)
        return _Basis(s, U, Xc.T @ U, x_mean)
    s, V = _eigh_psd(Xc.T @ Xc)
    return _Basis(s, Xc @ V, V, x_mean)


@partial(jax.jit, static_argnames=("fit_intercept", "convention", "normalize"))
def _refit(basis: _Basis, Y, best_alpha, *, fit_intercept, convention, normalize):
    y_mean = Y.mean(0) if fit_intercept else jnp.zeros(Y.shape[1], Y.dtype)
    B = basis.L.T @ (Y - y_mean)  # (r, t)
    lam = _penalties(best_alpha, basis.s, convention, normalize).astype(Y.dtype)
    W = basis.A @ (B / (basis.s[:, None] + lam[None, :]))  # (p, t)
    return W, y_mean - basis.x_mean @ W


def _pad_index_sets(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack index sets of unequal size into (n_sets, max_len) with 0/1 weights for padding."""
    m = max(len(s) for s in sets)
    idx = np.zeros((len(sets), m), dtype=np.int32)
    w = np.zeros((len(sets), m), dtype=np.float32)
    for k, s in enumerate(sets):
        idx[k, : len(s)] = s
        w[k, : len(s)] = 1.0
    return idx, w


def default_memory_budget() -> int:
    """Bytes that one fit may use on the default device: 40% of a GPU/TPU's memory limit,
    or 25% of the host's physical memory on CPU."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(0.4 * stats["bytes_limit"])
    try:
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(0.25 * total)


def target_batch_size(
    *, n_spaces: int, n_samples: int, n_features: int, n_train: int, n_val: int, n_alphas: int,
    n_folds: int, n_targets: int, itemsize: int = 4, memory_budget: int | None = None,
) -> int:
    """Number of targets per batch so that one batch of the fit stays within ``memory_budget``.

    Fixed cost: the decompositions of one fold and of the full data (``L``, ``A``) per space.
    Per-target cost: training/validation slices of Y, ``B``, two prediction buffers, the
    scores of every fold and alpha, and the refitted weights.
    """
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    r = min(n_features, max(n_train, 1))
    fixed = itemsize * n_spaces * (n_train * r + n_val * r + n_samples * r + n_features * r)
    per_target = itemsize * (
        n_samples + n_spaces * (n_train + 3 * n_val + 2 * r + n_features + n_alphas * (n_folds + 1))
    )
    room = budget - fixed
    if room < per_target:
        raise ValueError(
            f"memory_budget: {budget} bytes cannot hold the decompositions of this problem "
            f"({fixed} bytes) plus one target ({per_target} bytes); raise it or fit fewer spaces at once"
        )
    return int(max(1, min(n_targets, room // per_target)))


def fit_ridge_cv(
    X,
    Y,
    *,
    alphas,
    folds,
    fit_intercept: bool = True,
    score: Score = "r2",
    alpha_convention: Convention = "sklearn",
    normalize_alpha: bool = False,
    memory_budget: int | None = None,
    batch_size: int | None = None,
) -> RidgeFit:
    """Fit ridge regression with a cross-validated alpha for every target.

    Parameters
    ----------
    X : (n_samples, n_features) or (n_spaces, n_samples, n_features)
        Design matrix, or a stack of feature spaces sharing samples (e.g. every layer of a model);
        each space gets its own fit, all in the same compiled programs.
    Y : (n_samples, n_targets) responses (e.g. voxels).
    alphas : (n_alphas,) positive penalties to search.
    folds : sequence of ``(train_idx, val_idx)``, e.g. from :func:`group_folds` or :func:`block_folds`.
    fit_intercept : centre X and Y on each training set and fit an intercept.
    score : validation criterion averaged over folds to select alpha: ``"r2"``, ``"r"``
        (Pearson) or ``"neg_mse"``.
    alpha_convention : ``"sklearn"`` (penalty ``alpha``) or ``"huth"`` (penalty ``alpha**2``).
    normalize_alpha : with ``"huth"``, multiply alpha by the largest singular value of the design.
    memory_budget : bytes one batch may use; default from the device (see
        :func:`default_memory_budget`). Targets are processed in batches that fit.
    batch_size : force the number of targets per batch (overrides ``memory_budget``).

    Returns
    -------
    RidgeFit with ``coef (..., n_features, n_targets)``, ``intercept (..., n_targets)``,
    ``best_alpha (..., n_targets)``, ``cv_scores (..., n_alphas, n_targets)``. Ties in the mean
    validation score go to the first alpha in ``alphas``.
    """
    X = as_float_array("X", X, ndim=(2, 3))
    Y = as_float_array("Y", Y, ndim=2)
    batched = X.ndim == 3
    Xs = X if batched else X[None]
    n_spaces, n, p = Xs.shape
    if Y.shape[0] != n:
        raise ValueError(f"Y: expected {n} samples (rows) to match X, got {Y.shape[0]}")
    if score not in SCORERS:
        raise ValueError(f"score: expected one of {sorted(SCORERS)}, got {score!r}")
    if alpha_convention not in ("sklearn", "huth"):
        raise ValueError(f"alpha_convention: expected 'sklearn' or 'huth', got {alpha_convention!r}")
    alphas_np = check_alphas(alphas)
    folds = check_folds(folds, n)
    # float64 only when the caller enabled it in JAX; otherwise the device works in float32
    wide = np.result_type(Xs.dtype, Y.dtype) == np.float64 and jax.config.jax_enable_x64
    dtype = np.dtype(np.float64 if wide else np.float32)
    Xs, Y = Xs.astype(dtype, copy=False), Y.astype(dtype, copy=False)
    n_targets = Y.shape[1]

    tr_idx, tr_w = _pad_index_sets([f[0] for f in folds])
    va_idx, va_w = _pad_index_sets([f[1] for f in folds])
    n_train, n_val = tr_idx.shape[1], va_idx.shape[1]
    dual = p > n_train
    statics = dict(convention=alpha_convention, normalize=bool(normalize_alpha))

    if batch_size is None:
        batch_size = target_batch_size(
            n_spaces=n_spaces, n_samples=n, n_features=p, n_train=n_train, n_val=n_val,
            n_alphas=alphas_np.size, n_folds=len(folds), n_targets=n_targets,
            itemsize=Xs.dtype.itemsize, memory_budget=memory_budget,
        )
    batch_size = int(max(1, min(batch_size, n_targets)))
    n_batches = -(-n_targets // batch_size)
    # pad the targets so every batch has one shape: one compiled program for all batches
    Ypad = np.zeros((n, n_batches * batch_size), dtype=dtype)
    Ypad[:, :n_targets] = Y
    alphas_j = jnp.asarray(alphas_np, dtype=dtype)
    Xj = jnp.asarray(Xs)

    fold_basis = jax.vmap(partial(_fold_basis, fit_intercept=fit_intercept, dual=dual),
                          in_axes=(0, None, None, None, None))
    fold_scores = jax.vmap(
        partial(_fold_scores, fit_intercept=fit_intercept, score=score, **statics),
        in_axes=(0, None, None, None, None, None, None),
    )
    cv = np.zeros((n_spaces, alphas_np.size, n_batches * batch_size), dtype=dtype)
    for k in range(len(folds)):
        basis = fold_basis(Xj, tr_idx[k], tr_w[k], va_idx[k], va_w[k])
        for b in range(n_batches):
            cols = slice(b * batch_size, (b + 1) * batch_size)
            cv[:, :, cols] += np.asarray(
                fold_scores(basis, jnp.asarray(Ypad[:, cols]), tr_idx[k], tr_w[k], va_idx[k], va_w[k], alphas_j)
            )
        del basis
    cv /= len(folds)
    best = np.argmax(cv, axis=1)  # (n_spaces, t_pad): first maximum wins ties
    best_alpha = alphas_np[best].astype(dtype)

    full = jax.vmap(partial(_full_basis, fit_intercept=fit_intercept, dual=dual))(Xj)
    refit = jax.vmap(partial(_refit, fit_intercept=fit_intercept, **statics), in_axes=(0, None, 0))
    coef = np.zeros((n_spaces, p, n_batches * batch_size), dtype=dtype)
    intercept = np.zeros((n_spaces, n_batches * batch_size), dtype=dtype)
    for b in range(n_batches):
        cols = slice(b * batch_size, (b + 1) * batch_size)
        W, c = refit(full, jnp.asarray(Ypad[:, cols]), jnp.asarray(best_alpha[:, cols]))
        coef[:, :, cols], intercept[:, cols] = np.asarray(W), np.asarray(c)

    t = slice(0, n_targets)
    out = RidgeFit(coef[..., t], intercept[..., t], best_alpha[..., t], cv[..., t])
    return out if batched else RidgeFit(*(a[0] for a in out))


def predict(fit: RidgeFit, X) -> np.ndarray:
    """Predictions ``X @ coef + intercept``.

    Parameters
    ----------
    fit : a :class:`RidgeFit`; batched fits need batched ``X``.
    X : (n_samples, n_features) or (n_spaces, n_samples, n_features)

    Returns
    -------
    (..., n_samples, n_targets)
    """
    coef = np.asarray(fit.coef)
    X = as_float_array("X", X, ndim=coef.ndim)
    if X.shape[:-2] != coef.shape[:-2] or X.shape[-1] != coef.shape[-2]:
        raise ValueError(
            f"X: expected shape {(*coef.shape[:-2], 'n_samples', coef.shape[-2])}, got {X.shape}"
        )
    out = jnp.matmul(jnp.asarray(X, coef.dtype), coef) + jnp.asarray(fit.intercept)[..., None, :]
    return np.asarray(out)
