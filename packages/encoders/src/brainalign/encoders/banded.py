"""Banded ridge: one regularisation strength per feature space, chosen per target by CV.

With feature spaces ``X_1 .. X_m`` (blocks of the concatenated design ``X``) the weights
minimise

    || sum_i X_i b_i - y ||² + sum_i lam_i ||b_i||²,        lam_i = alpha / gamma_i

where ``gamma`` lies on the simplex (``sum_i gamma_i = 1``). Equivalently (himalaya's
``GroupRidgeCV`` parametrisation) the spaces are scaled ``Z_i = sqrt(gamma_i) X_i`` and a plain
ridge with penalty ``alpha`` is fitted on ``Z``; the log space weights are
``deltas_i = log(gamma_i / alpha) = -log(lam_i)``.

Search (as himalaya's ``solve_group_ridge_random_search``): ``n_iter`` candidate ``gamma`` are
drawn from Dirichlet distributions cycling through ``concentration`` (the first candidate is
the uniform ``1/m``); for every candidate and every fold the scaled training Gram matrix
``D G D`` (``D = diag(sqrt(gamma))`` per feature) is eigendecomposed once, ``D G D = V S V'``,
and the validation predictions for every alpha are ``Xva (D V) (S + alpha)^-1 (D V)' Xtr' Ytr``
— one matmul per alpha and target batch. Per target, the (gamma, alpha) pair with the best
validation score averaged over folds wins (ties: the largest alpha, then the first gamma), and
the weights are refitted on all samples with it.

The problem is solved in the primal (an eigendecomposition of a ``(p, p)`` matrix per
candidate and fold, ``p`` the total number of features), which suits ``p`` up to a few
thousand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import backend_jit
from .folds import resolve_cv
from .scoring import SCORERS
from .validation import as_float_array, check_alphas, check_folds


class BandedRidgeFit(NamedTuple):
    """Result of :func:`fit_banded_ridge_cv` (numpy arrays).

    Attributes
    ----------
    coef : (n_features, n_targets) weights on the unscaled, concatenated spaces.
    intercept : (n_targets,)
    best_alpha : (n_targets,) selected ``alpha``.
    best_gamma : (n_spaces, n_targets) selected space weights (columns sum to 1).
    deltas : (n_spaces, n_targets) ``log(gamma / alpha)``, himalaya's ``deltas_``.
    cv_scores : (n_iter, n_targets) validation score of each candidate gamma at its best alpha.
    gammas : (n_iter, n_spaces) the candidates searched.
    bounds : (n_spaces + 1,) feature offsets: space ``i`` is ``coef[bounds[i]:bounds[i+1]]``.
    """

    coef: np.ndarray
    intercept: np.ndarray
    best_alpha: np.ndarray
    best_gamma: np.ndarray
    deltas: np.ndarray
    cv_scores: np.ndarray
    gammas: np.ndarray
    bounds: np.ndarray


def dirichlet_candidates(n_iter: int, n_spaces: int, concentration=(0.1, 1.0), random_state=None):
    """Candidate space weights, drawn as himalaya's ``generate_dirichlet_samples`` draws them.

    Samples cycle through ``concentration`` (``inf`` gives equal weights); the first candidate
    is set to the uniform ``1 / n_spaces``, as in ``solve_group_ridge_random_search``, so the
    same ``random_state`` gives the same candidates as himalaya.

    Returns
    -------
    gammas : (n_iter, n_spaces), rows on the simplex.
    """
    if int(n_iter) < 1:
        raise ValueError(f"n_iter: expected a positive number of candidates, got {n_iter}")
    rng = (
        random_state
        if isinstance(random_state, np.random.RandomState)
        else np.random.RandomState(random_state)
    )
    conc = np.atleast_1d(np.asarray(concentration, dtype=np.float64))
    per = int(np.ceil(n_iter / conc.size))
    draws = []
    for c in conc:
        if np.isinf(c):
            draws.append(np.full((per, n_spaces), 1.0 / n_spaces))
        else:
            draws.append(rng.dirichlet([c] * n_spaces, per))
    g = np.swapaxes(np.stack(draws), 0, 1).reshape(conc.size * per, n_spaces)[:n_iter]
    g[0] = 1.0 / n_spaces
    return g


def _as_spaces(name: str, Xs) -> tuple[list[np.ndarray], list[str] | None]:
    if isinstance(Xs, Mapping):
        names = [str(k) for k in Xs]
        arrays = list(Xs.values())
    elif isinstance(Xs, Sequence) and not isinstance(Xs, str | bytes):
        names, arrays = None, list(Xs)
    else:
        raise ValueError(f"{name}: expected a list or mapping of (n_samples, n_features_i) arrays")
    if len(arrays) < 1:
        raise ValueError(f"{name}: expected at least one feature space, got none")
    out = [as_float_array(f"{name}[{k}]", a, ndim=2) for k, a in enumerate(arrays)]
    n = out[0].shape[0]
    for k, a in enumerate(out):
        if a.shape[0] != n:
            raise ValueError(f"{name}[{k}]: expected {n} samples (rows), got {a.shape[0]}")
    return out, names


@backend_jit(static_argnames=("fit_intercept",))
def _fold_design(X, tr_idx, tr_w, va_idx, va_w, *, fit_intercept: bool):
    w = tr_w[:, None]
    Xtr = X[tr_idx] * w
    x_mean = Xtr.sum(0) / tr_w.sum() if fit_intercept else jnp.zeros(X.shape[1], X.dtype)
    Xtr = (Xtr - x_mean) * w  # padded rows stay exactly zero
    Xva = (X[va_idx] - x_mean) * va_w[:, None]
    return Xtr.T @ Xtr, Xtr, Xva


@backend_jit
def _candidate_bases(G, Xva, dscale):
    """Per candidate: eigenvalues ``s``, ``DV`` and ``Xva D V``; ``dscale`` is (n_iter, p)."""

    def one(d):
        s, V = jnp.linalg.eigh(G * d[:, None] * d[None, :])
        s = jnp.clip(s, 0.0, None)  # round-off must not make a PSD spectrum negative
        DV = V * d[:, None]
        return s, DV, Xva @ DV

    return jax.lax.map(one, dscale)


@backend_jit(static_argnames=("fit_intercept", "score"))
def _candidate_scores(bases, Xtr, Y, tr_idx, tr_w, va_idx, va_w, alphas, *, fit_intercept, score):
    w = tr_w[:, None]
    Ytr = Y[tr_idx] * w
    y_mean = Ytr.sum(0) / tr_w.sum() if fit_intercept else jnp.zeros(Y.shape[1], Y.dtype)
    C = Xtr.T @ ((Ytr - y_mean) * w)  # (p, t)
    Yva = Y[va_idx]
    scorer = SCORERS[score]

    def per_gamma(basis):
        s, DV, A = basis
        B = DV.T @ C

        def per_alpha(lam):
            return scorer(Yva, (A / (s + lam)) @ B + y_mean, va_w)

        return jax.lax.map(per_alpha, alphas)

    return jax.lax.map(per_gamma, bases)  # (n_iter, n_alphas, t)


@backend_jit(static_argnames=("fit_intercept",))
def _refit(X, Y, dscale, best_gi, best_alpha, *, fit_intercept: bool):
    x_mean = X.mean(0) if fit_intercept else jnp.zeros(X.shape[1], X.dtype)
    y_mean = Y.mean(0) if fit_intercept else jnp.zeros(Y.shape[1], Y.dtype)
    Xc = X - x_mean
    G = Xc.T @ Xc
    C = Xc.T @ (Y - y_mean)

    def step(W, gi_d):
        gi, d = gi_d
        s, V = jnp.linalg.eigh(G * d[:, None] * d[None, :])
        s = jnp.clip(s, 0.0, None)
        DV = V * d[:, None]
        Wg = DV @ ((DV.T @ C) / (s[:, None] + best_alpha[None, :]))
        return jnp.where((best_gi == gi)[None, :], Wg, W), None

    W0 = jnp.zeros((X.shape[1], Y.shape[1]), Y.dtype)
    W, _ = jax.lax.scan(step, W0, (jnp.arange(dscale.shape[0]), dscale))
    return W, y_mean - x_mean @ W


def _pad_index_sets(sets):
    m = max(len(s) for s in sets)
    idx = np.zeros((len(sets), m), dtype=np.int32)
    w = np.zeros((len(sets), m), dtype=np.float32)
    for k, s in enumerate(sets):
        idx[k, : len(s)] = s
        w[k, : len(s)] = 1.0
    return idx, w


def fit_banded_ridge_cv(
    Xs,
    Y,
    *,
    alphas,
    folds,
    n_iter=20,
    concentration=(0.1, 1.0),
    random_state=None,
    fit_intercept: bool = True,
    score: str = "r2",
    batch_size: int | None = None,
) -> BandedRidgeFit:
    """Fit banded ridge with per-target space weights and alpha chosen by random search + CV.

    Parameters
    ----------
    Xs : list (or mapping ``name -> array``) of ``(n_samples, n_features_i)`` feature spaces.
    Y : (n_samples, n_targets) responses.
    alphas : (n_alphas,) penalties searched for every candidate space weighting.
    folds : sequence of ``(train_idx, val_idx)``, e.g. from :func:`block_folds`.
    n_iter : number of candidate space weightings, or an ``(n_iter, n_spaces)`` array of them
        (rows on the simplex), as himalaya's ``solver_params["n_iter"]``.
    concentration : Dirichlet concentration(s) cycled through (see :func:`dirichlet_candidates`).
    random_state : seed of the candidate draw.
    fit_intercept : centre X and Y on each training set and fit an intercept.
    score : validation criterion: ``"r2"``, ``"r"`` or ``"neg_mse"`` (himalaya's default loss).
    batch_size : targets per batch (default: all at once, or 4096 when there are more).

    Returns
    -------
    BandedRidgeFit; the effective penalty of space ``i`` for target ``t`` is
    ``best_alpha[t] / best_gamma[i, t]``.
    """
    arrays, _ = _as_spaces("Xs", Xs)
    Y = as_float_array("Y", Y, ndim=2)
    n = arrays[0].shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"Y: expected {n} samples (rows) to match Xs, got {Y.shape[0]}")
    if score not in SCORERS:
        raise ValueError(f"score: expected one of {sorted(SCORERS)}, got {score!r}")
    alphas_np = check_alphas(alphas)
    folds = check_folds(folds, n)
    m = len(arrays)
    if isinstance(n_iter, int | np.integer):
        gammas = dirichlet_candidates(int(n_iter), m, concentration, random_state)
    else:
        gammas = np.asarray(n_iter, dtype=np.float64)
        if gammas.ndim != 2 or gammas.shape[1] != m or (gammas < 0).any():
            raise ValueError(
                f"n_iter: expected an int or a non-negative (n_iter, {m}) array, got shape {gammas.shape}"
            )
    dtype = np.dtype(np.float64 if (jax.config.jax_enable_x64 and Y.dtype == np.float64) else np.float32)
    X = np.concatenate(arrays, axis=1).astype(dtype, copy=False)
    Y = Y.astype(dtype, copy=False)
    sizes = [a.shape[1] for a in arrays]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    space_of = np.repeat(np.arange(m), sizes)
    dscale = jnp.asarray(np.sqrt(gammas[:, space_of]), dtype=dtype)  # (n_iter, p)

    t = Y.shape[1]
    if batch_size is None:
        batch_size = t if t <= 4096 else 4096
    batch_size = int(max(1, min(batch_size, t)))
    n_batches = -(-t // batch_size)
    Ypad = np.zeros((n, n_batches * batch_size), dtype=dtype)
    Ypad[:, :t] = Y
    tr_idx, tr_w = _pad_index_sets([f[0] for f in folds])
    va_idx, va_w = _pad_index_sets([f[1] for f in folds])
    Xj = jnp.asarray(X)
    alphas_j = jnp.asarray(alphas_np, dtype=dtype)

    cv = np.zeros((gammas.shape[0], alphas_np.size, Ypad.shape[1]), dtype=np.float64)
    for k in range(len(folds)):
        G, Xtr, Xva = _fold_design(Xj, tr_idx[k], tr_w[k], va_idx[k], va_w[k], fit_intercept=fit_intercept)
        bases = _candidate_bases(G, Xva, dscale)
        for b in range(n_batches):
            cols = slice(b * batch_size, (b + 1) * batch_size)
            cv[:, :, cols] += np.asarray(
                _candidate_scores(
                    bases,
                    Xtr,
                    jnp.asarray(Ypad[:, cols]),
                    tr_idx[k],
                    tr_w[k],
                    va_idx[k],
                    va_w[k],
                    alphas_j,
                    fit_intercept=fit_intercept,
                    score=score,
                )
            )
        del bases, G, Xtr, Xva
    cv /= len(folds)
    # as himalaya: a tiny slope in log(alpha) makes ties go to the largest alpha
    cv += (np.log(alphas_np) * 1e-10)[None, :, None]
    best_ai = np.argmax(cv, axis=1)  # (n_iter, t)
    per_gamma = np.take_along_axis(cv, best_ai[:, None, :], axis=1)[:, 0, :]
    best_gi = np.argmax(per_gamma, axis=0)  # first candidate wins ties
    best_alpha = alphas_np[best_ai[best_gi, np.arange(best_gi.size)]]

    coef = np.zeros((X.shape[1], Ypad.shape[1]), dtype=dtype)
    intercept = np.zeros(Ypad.shape[1], dtype=dtype)
    for b in range(n_batches):
        cols = slice(b * batch_size, (b + 1) * batch_size)
        W, c = _refit(
            Xj,
            jnp.asarray(Ypad[:, cols]),
            dscale,
            jnp.asarray(best_gi[cols]),
            jnp.asarray(best_alpha[cols], dtype=dtype),
            fit_intercept=fit_intercept,
        )
        coef[:, cols], intercept[cols] = np.asarray(W), np.asarray(c)

    sl = slice(0, t)
    best_gamma = gammas[best_gi[sl]].T  # (m, t)
    with np.errstate(divide="ignore"):
        deltas = np.log(best_gamma) - np.log(best_alpha[sl])[None, :]
    return BandedRidgeFit(
        coef=coef[:, sl],
        intercept=intercept[sl],
        best_alpha=best_alpha[sl].astype(dtype),
        best_gamma=best_gamma.astype(dtype),
        deltas=deltas.astype(dtype),
        cv_scores=per_gamma[:, sl].astype(dtype),
        gammas=gammas,
        bounds=bounds,
    )


def predict_banded(fit: BandedRidgeFit, Xs, *, split: bool = False) -> np.ndarray:
    """Predictions of a banded fit.

    Parameters
    ----------
    Xs : the feature spaces, as given to the fit, ``(n_samples, n_features_i)`` each.
    split : if True return the per-space predictions ``X_i @ coef_i``, without the intercept,
        so that ``pred.sum(0) + intercept`` is the joint prediction.

    Returns
    -------
    (n_samples, n_targets), or (n_spaces, n_samples, n_targets) with ``split=True``.
    """
    arrays, _ = _as_spaces("Xs", Xs)
    b = fit.bounds
    if len(arrays) != len(b) - 1 or any(a.shape[1] != b[i + 1] - b[i] for i, a in enumerate(arrays)):
        want = [int(b[i + 1] - b[i]) for i in range(len(b) - 1)]
        got = [a.shape[1] for a in arrays]
        raise ValueError(f"Xs: expected feature spaces of widths {want}, got {got}")
    coef = jnp.asarray(fit.coef)
    parts = jnp.stack([jnp.asarray(a, coef.dtype) @ coef[b[i] : b[i + 1]] for i, a in enumerate(arrays)])
    if split:
        return np.asarray(parts)
    return np.asarray(parts.sum(0) + jnp.asarray(fit.intercept)[None, :])


def r2_score_split(y_true, y_pred_split) -> np.ndarray:
    """Split R²: the contribution of each space to the joint R² (product measure, as himalaya).

    With ``y`` and the per-space predictions ``p_i`` centred over samples,

        R²_i = (2 p_i'y - p_i' sum_j p_j) / (y'y),       sum_i R²_i = 1 - ||y - sum_j p_j||² / y'y.

    Parameters
    ----------
    y_true : (n_samples, n_targets)
    y_pred_split : (n_spaces, n_samples, n_targets), e.g. ``predict_banded(..., split=True)``.

    Returns
    -------
    (n_spaces, n_targets)
    """
    y = as_float_array("y_true", y_true, ndim=2)
    p = as_float_array("y_pred_split", y_pred_split, ndim=3)
    if p.shape[1:] != y.shape:
        raise ValueError(
            f"y_pred_split: expected shape (n_spaces, {y.shape[0]}, {y.shape[1]}), got {p.shape}"
        )
    y = y - y.mean(0)
    p = p - p.mean(1, keepdims=True)
    total = p.sum(0)
    sst = (y * y).sum(0)
    sst = np.where(sst > 0, sst, 1.0)
    return (2 * (p * y).sum(1) - (p * total).sum(1)) / sst


_DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


class BandedRidgeCV:
    """Banded ridge with per-target space weights and alpha: a shell over
    :func:`fit_banded_ridge_cv`.

    Parameters
    ----------
    alphas : (n_alphas,) penalties to search.
    n_iter, concentration, random_state, fit_intercept, score, batch_size : see
        :func:`fit_banded_ridge_cv`.
    cv : int (contiguous blocks, never shuffled), a list of ``(train_idx, val_idx)``, or
        ``None`` to use ``groups`` passed to :meth:`fit` (leave-one-group-out).

    Attributes
    ----------
    coef_ : (n_features, n_targets); intercept_ : (n_targets,); best_alphas_ : (n_targets,);
    best_gammas_ : (n_spaces, n_targets); deltas_ : (n_spaces, n_targets);
    cv_scores_ : (n_iter, n_targets).
    """

    def __init__(
        self,
        alphas=_DEFAULT_ALPHAS,
        cv=5,
        *,
        n_iter=20,
        concentration=(0.1, 1.0),
        random_state=None,
        fit_intercept: bool = True,
        score: str = "r2",
        batch_size: int | None = None,
    ):
        self.alphas = alphas
        self.cv = cv
        self.n_iter = n_iter
        self.concentration = concentration
        self.random_state = random_state
        self.fit_intercept = fit_intercept
        self.score_name = score
        self.batch_size = batch_size

    def _folds(self, n_samples: int, groups):
        return resolve_cv(self.cv, n_samples, groups)

    def fit(self, Xs, Y, groups=None) -> BandedRidgeCV:
        """Fit on a list of ``(n_samples, n_features_i)`` spaces and ``Y (n_samples, n_targets)``."""
        arrays, _ = _as_spaces("Xs", Xs)
        self.fit_ = fit_banded_ridge_cv(
            arrays,
            Y,
            alphas=self.alphas,
            folds=self._folds(arrays[0].shape[0], groups),
            n_iter=self.n_iter,
            concentration=self.concentration,
            random_state=self.random_state,
            fit_intercept=self.fit_intercept,
            score=self.score_name,
            batch_size=self.batch_size,
        )
        self.coef_ = self.fit_.coef
        self.intercept_ = self.fit_.intercept
        self.best_alphas_ = self.fit_.best_alpha
        self.best_gammas_ = self.fit_.best_gamma
        self.deltas_ = self.fit_.deltas
        self.cv_scores_ = self.fit_.cv_scores
        return self

    def _check_fitted(self):
        if not hasattr(self, "fit_"):
            raise ValueError("BandedRidgeCV: call fit() before predict() or score()")

    def predict(self, Xs, *, split: bool = False) -> np.ndarray:
        """Joint predictions ``(n_samples, n_targets)``, or per space with ``split=True``."""
        self._check_fitted()
        return predict_banded(self.fit_, Xs, split=split)

    def score(self, Xs, Y, *, split: bool = False) -> np.ndarray:
        """Held-out R² per target ``(n_targets,)``, or split R² ``(n_spaces, n_targets)``."""
        self._check_fitted()
        Y = as_float_array("Y", Y, ndim=2)
        if split:
            return r2_score_split(Y, self.predict(Xs, split=True))
        pred = self.predict(Xs)
        sst = ((Y - Y.mean(0)) ** 2).sum(0)
        return 1.0 - ((Y - pred) ** 2).sum(0) / np.where(sst > 0, sst, 1.0)
