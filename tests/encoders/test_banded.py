"""Banded ridge against himalaya's GroupRidgeCV (same data, folds and search budget)."""

import numpy as np
import pytest
from himalaya.kernel_ridge import generate_dirichlet_samples
from himalaya.ridge import GroupRidgeCV
from himalaya.scoring import r2_score as h_r2_score
from himalaya.scoring import r2_score_split as h_r2_score_split

from brainalign.encoders import (
    BandedRidgeCV,
    block_folds,
    dirichlet_candidates,
    fit_banded_ridge_cv,
    fit_ridge_cv,
    predict_banded,
    r2_score_split,
    simulate_encoding,
)

ALPHAS = np.logspace(-2, 5, 8)
N_ITER = 10


@pytest.fixture(scope="module")
def data():
    sim = simulate_encoding(
        {"A": 8, "B": 24},
        {"A": 0.25, "B": 0.15, "A&B": 0.1},
        n_samples=400,
        n_test=300,
        n_targets=30,
        n_latents=2,
        random_state=5,
        feature_scale={"B": 20.0},
    )
    Xtr = [sim.spaces_train["A"], sim.spaces_train["B"]]
    Xte = [sim.spaces_test["A"], sim.spaces_test["B"]]
    return Xtr, sim.Y_train, Xte, sim.Y_test, block_folds(400, 4)


@pytest.fixture(scope="module")
def ours(data):
    Xtr, Ytr, _, _, folds = data
    return fit_banded_ridge_cv(Xtr, Ytr, alphas=ALPHAS, folds=folds, n_iter=N_ITER, random_state=0)


def _r2(y, p):
    return 1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def test_candidates_are_himalayas():
    for conc in ([0.1, 1.0], 1.0, [np.inf, 0.5]):
        want = generate_dirichlet_samples(7, 3, concentration=conc, random_state=3)
        want[0] = 1 / 3
        np.testing.assert_allclose(dirichlet_candidates(7, 3, conc, random_state=3), want)


def test_matches_himalaya_group_ridge_cv(data, ours):
    Xtr, Ytr, Xte, Yte, folds = data
    gammas = dirichlet_candidates(N_ITER, 2, random_state=0)
    ref = GroupRidgeCV(
        groups="input",
        fit_intercept=True,
        cv=folds,
        solver_params=dict(n_iter=gammas, alphas=ALPHAS, score_func=h_r2_score, progress_bar=False),
    )
    ref.fit([x.astype(np.float64) for x in Xtr], Ytr.astype(np.float64))
    want = _r2(Yte, np.asarray(ref.predict([x.astype(np.float64) for x in Xte])))
    got = _r2(Yte, predict_banded(ours, Xte))
    assert np.abs(got - want).max() < 0.01
    assert abs(got.mean() - want.mean()) < 1e-3
    # the same validation score for every candidate weighting (at its best alpha); the winning
    # candidate may differ between near-ties in float32 and float64
    np.testing.assert_allclose(ours.cv_scores, np.asarray(ref.cv_scores_), atol=2e-3)


def test_split_predictions_and_split_r2(data, ours):
    _, _, Xte, Yte, _ = data
    parts = predict_banded(ours, Xte, split=True)
    assert parts.shape == (2, *Yte.shape)
    np.testing.assert_allclose(parts.sum(0) + ours.intercept, predict_banded(ours, Xte), atol=1e-4)
    split = r2_score_split(Yte, parts)
    yc = Yte - Yte.mean(0)
    pc = parts - parts.mean(1, keepdims=True)
    want = np.asarray(h_r2_score_split(yc.astype(np.float64), pc.astype(np.float64)))
    np.testing.assert_allclose(split, want, atol=1e-5)
    np.testing.assert_allclose(split.sum(0), _r2(yc, pc.sum(0)), atol=1e-5)


def test_one_space_is_plain_ridge(data):
    Xtr, Ytr, _, _, folds = data
    b = fit_banded_ridge_cv([Xtr[0]], Ytr, alphas=ALPHAS, folds=folds, n_iter=1)
    r = fit_ridge_cv(Xtr[0], Ytr, alphas=ALPHAS, folds=folds)
    np.testing.assert_allclose(b.cv_scores[0], r.cv_scores.max(0), atol=1e-5)
    np.testing.assert_allclose(b.coef, r.coef, rtol=1e-3, atol=1e-5)


def test_estimator(data):
    Xtr, Ytr, Xte, Yte, folds = data
    est = BandedRidgeCV(ALPHAS, cv=folds, n_iter=N_ITER, random_state=0)
    with pytest.raises(ValueError, match="call fit"):
        est.predict(Xte)
    est.fit(Xtr, Ytr)
    assert est.predict(Xte).shape == Yte.shape
    assert est.score(Xte, Yte).shape == (Yte.shape[1],)
    assert est.score(Xte, Yte, split=True).shape == (2, Yte.shape[1])
    assert est.deltas_.shape == (2, Yte.shape[1])
    with pytest.raises(ValueError, match="widths"):
        est.predict([Xte[1], Xte[0]])
