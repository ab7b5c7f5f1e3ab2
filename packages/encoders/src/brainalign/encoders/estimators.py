"""A scikit-learn-style estimator: a thin shell over :func:`fit_ridge_cv`."""

from __future__ import annotations

import numpy as np

from .folds import resolve_cv
from .ridge import RidgeFit, Score, fit_ridge_cv, predict
from .scoring import r2_score


class RidgeCV:
    """Ridge regression with a cross-validated alpha per target.

    Parameters
    ----------
    alphas : (n_alphas,) penalties to search.
    cv : int (contiguous blocks, never shuffled), a list of ``(train_idx, val_idx)`` folds, or
        ``None`` to use ``groups`` passed to :meth:`fit` (leave-one-group-out).
    fit_intercept, score, alpha_convention, normalize_alpha, memory_budget, decomposition,
    mesh : see :func:`fit_ridge_cv`.

    Attributes
    ----------
    coef_ : (n_features, n_targets); intercept_ : (n_targets,);
    best_alphas_ : (n_targets,); cv_scores_ : (n_alphas, n_targets).
    """

    def __init__(
        self,
        alphas=(0.1, 1.0, 10.0, 100.0, 1000.0),
        cv=5,
        *,
        fit_intercept: bool = True,
        score: Score = "r2",
        alpha_convention: str = "sklearn",
        normalize_alpha: bool = False,
        memory_budget: int | None = None,
        decomposition: str = "eigh",
        mesh=None,
    ):
        self.alphas = alphas
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.score_name = score
        self.alpha_convention = alpha_convention
        self.normalize_alpha = normalize_alpha
        self.memory_budget = memory_budget
        self.decomposition = decomposition
        self.mesh = mesh

    def _folds(self, n_samples: int, groups):
        return resolve_cv(self.cv, n_samples, groups)

    def fit(self, X, Y, groups=None) -> RidgeCV:
        """Fit on ``X (n_samples, n_features)`` and ``Y (n_samples, n_targets)``."""
        X = np.asarray(X)
        folds = self._folds(X.shape[-2] if X.ndim >= 2 else len(X), groups)
        self.fit_: RidgeFit = fit_ridge_cv(
            X,
            Y,
            alphas=self.alphas,
            folds=folds,
            fit_intercept=self.fit_intercept,
            score=self.score_name,
            alpha_convention=self.alpha_convention,
            normalize_alpha=self.normalize_alpha,
            memory_budget=self.memory_budget,
            decomposition=self.decomposition,
            mesh=self.mesh,
        )
        self.coef_ = self.fit_.coef
        self.intercept_ = self.fit_.intercept
        self.best_alphas_ = self.fit_.best_alpha
        self.cv_scores_ = self.fit_.cv_scores
        return self

    def _check_fitted(self):
        if not hasattr(self, "fit_"):
            raise ValueError("RidgeCV: call fit() before predict() or score()")

    def predict(self, X) -> np.ndarray:
        """Predictions ``(n_samples, n_targets)``."""
        self._check_fitted()
        return predict(self.fit_, X)

    def score(self, X, Y) -> np.ndarray:
        """Held-out R² per target, ``(n_targets,)`` (like himalaya, not averaged)."""
        return np.asarray(r2_score(np.asarray(Y, dtype=np.float32), self.predict(X)))
