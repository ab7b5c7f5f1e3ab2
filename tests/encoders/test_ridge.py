"""fit_ridge_cv, predict and RidgeCV against independent oracles (scikit-learn, himalaya, closed forms)."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score as sk_r2

from brainalign.encoders import (
    RidgeCV,
    RidgeFit,
    block_folds,
    fit_ridge_cv,
    group_folds,
    pearson_r,
    predict,
    r2_score,
    target_batch_size,
)
from brainalign.encoders import ridge as ridge_module
from brainalign.encoders.ridge import _plan

ALPHAS = np.logspace(-2, 5, 15)


def make_data(n, p, t, *, seed=0, offset=5.0, n_test=60):
    """Design with decaying feature scales and a mean offset; targets of varying SNR."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_test, p)) / np.sqrt(1 + np.arange(p)) + offset
    W = rng.standard_normal((p, t)) * rng.uniform(0, 1, t)
    Y = (X - offset) @ W + rng.standard_normal((n + n_test, t)) * rng.uniform(0.3, 3, t) + 2.0
    return X[:n], Y[:n], X[n:], Y[n:]


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def assert_fits_close(got, want, rtol=1e-5):
    """Equal up to float round-off: cv scores everywhere; alphas and weights wherever the best
    alpha is not a near-tie (round-off of differently shaped matmuls may flip those)."""
    np.testing.assert_allclose(got.cv_scores, want.cv_scores, rtol=rtol, atol=rtol)
    top2 = np.sort(want.cv_scores, axis=-2)[..., -2:, :]
    clear = (top2[..., 1, :] - top2[..., 0, :]) > 1e-5
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(got.best_alpha[clear], want.best_alpha[clear])
    scale = np.abs(want.coef).max()
    np.testing.assert_allclose(
        np.moveaxis(got.coef, -1, 0)[clear.T] if got.coef.ndim == 2 else np.moveaxis(got.coef, -2, -1)[clear],
        np.moveaxis(want.coef, -1, 0)[clear.T]
        if want.coef.ndim == 2
        else np.moveaxis(want.coef, -2, -1)[clear],
        rtol=rtol,
        atol=rtol * scale,
    )
    np.testing.assert_allclose(got.intercept[clear], want.intercept[clear], rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------- fixed alpha vs scikit-learn


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize(("n", "p"), [(120, 20), (60, 150)], ids=["primal", "dual"])
def test_fixed_alpha_matches_sklearn_ridge(n, p, fit_intercept):
    # without an intercept the data must be centred (as in himalaya); see the ill-conditioned
    # test for uncentred data
    X, Y, Xte, _ = make_data(n, p, 8, seed=1, offset=5.0 if fit_intercept else 0.0)
    alpha = 3.0
    fit = fit_ridge_cv(X, Y, alphas=[alpha], folds=block_folds(n, 3), fit_intercept=fit_intercept)
    ref = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X, Y)  # float64
    assert rel_err(predict(fit, Xte), ref.predict(Xte)) < 1e-4
    # weights are less determined than predictions without centring (the offset direction
    # dominates the Gram matrix), hence the looser bound on them
    assert rel_err(fit.coef, ref.coef_.T) < 1e-3
    assert fit.coef.dtype == np.float32 and fit.coef.shape == (p, 8)
    np.testing.assert_array_equal(fit.best_alpha, np.float32(alpha))


# ---------------------------------------------------------------- cv scores vs a fold-by-fold oracle


def _sk_fold_scores(X, Y, folds, alphas, score, fit_intercept=True):
    out = np.zeros((len(alphas), Y.shape[1]))
    for tr, va in folds:
        for i, a in enumerate(alphas):
            pred = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[tr], Y[tr]).predict(X[va])
            if score == "r2":
                out[i] += sk_r2(Y[va], pred, multioutput="raw_values")
            elif score == "r":
                yc, pc = Y[va] - Y[va].mean(0), pred - pred.mean(0)
                out[i] += (yc * pc).sum(0) / np.sqrt((yc**2).sum(0) * (pc**2).sum(0))
            else:
                out[i] -= ((Y[va] - pred) ** 2).mean(0)
    return out / len(folds)


@pytest.mark.parametrize("score", ["r2", "r", "neg_mse"])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "direct"])
def test_cv_scores_match_fold_by_fold_sklearn(score, compact, monkeypatch):
    X, Y, _, _ = make_data(90, 12, 6, seed=2)
    folds = group_folds(np.repeat([0, 1, 2, 3], [20, 25, 20, 25]))  # unequal folds: padding
    alphas = np.logspace(-1, 3, 5)
    # scored from the predictions, or through the QR factors of the validation design
    monkeypatch.setattr(ridge_module, "_compact", lambda *a: compact)
    fit = fit_ridge_cv(X, Y, alphas=alphas, folds=folds, score=score)
    ref = _sk_fold_scores(X, Y, folds, alphas, score)
    np.testing.assert_allclose(fit.cv_scores, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fit.best_alpha, alphas[np.argmax(ref, axis=0)].astype(np.float32))


@pytest.mark.parametrize("score", ["r2", "r", "neg_mse"])
@pytest.mark.parametrize("runs", [(90, 110, 100, 100), (30, 50, 40, 40)], ids=["triangular", "trapezoid"])
def test_compact_scoring_in_row_blocks_matches_sklearn(score, runs, monkeypatch):
    """70 components: the QR factor is multiplied in row blocks, square and triangular when the
    validation runs are longer, a wide trapezoid when they are shorter."""
    X, Y, _, _ = make_data(sum(runs), 70, 5, seed=12)
    folds = group_folds(np.repeat([0, 1, 2, 3], runs))
    alphas = np.logspace(-1, 3, 5)
    assert len(ridge_module._row_blocks(min(70, max(runs)))) > 1
    monkeypatch.setattr(ridge_module, "_compact", lambda *a: True)
    fit = fit_ridge_cv(X, Y, alphas=alphas, folds=folds, score=score)
    np.testing.assert_allclose(
        fit.cv_scores, _sk_fold_scores(X, Y, folds, alphas, score), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("score", ["r2", "r"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("atoms", [True, False], ids=["atoms", "slices"])
def test_training_products_from_atoms_match_sklearn(score, fit_intercept, atoms, monkeypatch):
    """Each fold's Xc'Yc from the products of the sample groups (atoms) it trains on. A buffer of
    5 samples on each side of every validation block leaves 7 uneven atoms for 4 folds."""
    X, Y, _, _ = make_data(120, 8, 4, seed=13)
    folds = [(np.setdiff1d(tr, np.arange(va.min() - 5, va.max() + 6)), va) for tr, va in block_folds(120, 4)]
    assert len(ridge_module._train_atoms(folds, 120)[0]) == 7
    alphas = np.logspace(-1, 3, 5)
    monkeypatch.setattr(ridge_module, "_atoms_pay", lambda *a: atoms)
    fit = fit_ridge_cv(X, Y, alphas=alphas, folds=folds, score=score, fit_intercept=fit_intercept)
    ref = _sk_fold_scores(X, Y, folds, alphas, score, fit_intercept=fit_intercept)
    np.testing.assert_allclose(fit.cv_scores, ref, rtol=1e-4, atol=1e-4)


def test_training_products_from_atoms_stay_accurate_when_runs_drift(monkeypatch):
    # every run has its own large offset in X and Y (an ill-conditioned float32 problem): the
    # between-atom terms carry it, and the scores are as close to float64 as the slices' are
    rng = np.random.default_rng(14)
    runs = np.repeat([0, 1, 2, 3], 60)
    X = rng.standard_normal((240, 6)) + 50.0 * rng.standard_normal((4, 6))[runs]
    Y = X @ rng.standard_normal((6, 5)) * 0.3 + rng.standard_normal((240, 5)) + 80.0 * runs[:, None]
    alphas, folds = np.logspace(-1, 4, 6), group_folds(runs)
    ref = _sk_fold_scores(X, Y, folds, alphas, "r2")  # float64
    err = {}
    for atoms in (True, False):
        monkeypatch.setattr(ridge_module, "_atoms_pay", lambda *a, c=atoms: c)
        fit = fit_ridge_cv(X.astype(np.float32), Y.astype(np.float32), alphas=alphas, folds=folds)
        err[atoms] = np.abs(fit.cv_scores - ref).max()
    assert err[True] <= 1.5 * err[False] + 1e-6 * np.abs(ref).max()
    assert err[True] <= 1e-3 * np.abs(ref).max()


def test_atoms_need_training_sets_without_repeats():
    folds = [(np.array([0, 1, 1, 2]), np.array([3])), (np.array([2, 3]), np.array([0]))]
    assert ridge_module._train_atoms(folds, 4) is None
    atoms, member = ridge_module._train_atoms(block_folds(9, 3), 9)
    assert [a.tolist() for a in atoms] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    np.testing.assert_array_equal(member, [[0, 1, 1], [1, 0, 1], [1, 1, 0]])  # fold k trains on the others


def test_atoms_are_chosen_when_features_are_few():
    # 5 contiguous folds of 2000 samples: 256 features pay, 1024 do not
    assert ridge_module._atoms_pay(2000, 5, 256, 256, 1600, 5, 1)
    assert not ridge_module._atoms_pay(2000, 5, 1024, 1024, 1600, 5, 1)


# ---------------------------------------------------------------- himalaya RidgeCV


@pytest.fixture(scope="module")
def himalaya():
    from himalaya.backend import set_backend

    set_backend("numpy")
    from himalaya import ridge, scoring

    return ridge, scoring


@pytest.mark.parametrize(
    ("n", "p", "score"),
    [(300, 40, "r2"), (300, 40, "neg_mse"), (300, 40, "r"), (120, 200, "r2")],
    ids=["primal-r2", "primal-neg_mse", "primal-r", "dual-r2"],
)
def test_matches_himalaya_ridgecv(himalaya, n, p, score):
    ridge, scoring = himalaya
    score_func = {"r2": scoring.r2_score, "neg_mse": scoring.l2_neg_loss, "r": scoring.correlation_score}
    X, Y, Xte, Yte = make_data(n, p, 400, seed=3)
    folds = block_folds(n, 5)
    fit = fit_ridge_cv(X, Y, alphas=ALPHAS, folds=folds, score=score)
    with warnings.catch_warnings():  # himalaya warns that the dual case would be faster as kernel ridge
        warnings.simplefilter("ignore", UserWarning)
        hm = ridge.RidgeCV(
            alphas=ALPHAS, cv=folds, fit_intercept=True, solver_params=dict(score_func=score_func[score])
        ).fit(X, Y)
    same = np.isclose(fit.best_alpha, hm.best_alphas_, rtol=1e-5)
    assert same.mean() >= 0.995, f"best alpha agrees on only {same.mean():.3%} of targets"
    r_ours = np.asarray(pearson_r(Yte, predict(fit, Xte)))
    r_him = np.asarray(pearson_r(Yte, hm.predict(Xte)))
    assert np.abs(r_ours - r_him)[same].max() < 1e-3


# ---------------------------------------------------------------- batching, conventions, budgets


@pytest.fixture(scope="module")
def spaces():
    rng = np.random.default_rng(4)
    Xs = rng.standard_normal((3, 80, 10)) * [[[1.0]], [[3.0]], [[0.2]]]
    Y = sum(X @ rng.standard_normal((10, 30)) for X in Xs) + 6 * rng.standard_normal((80, 30))
    return Xs, Y, block_folds(80, 4)


SPACE_ALPHAS = np.logspace(-1, 4, 11)  # no near-ties at either end for these data


def test_batched_spaces_equal_a_loop(spaces):
    Xs, Y, folds = spaces
    batched = fit_ridge_cv(Xs, Y, alphas=SPACE_ALPHAS, folds=folds)
    assert batched.coef.shape == (3, 10, 30) and batched.cv_scores.shape == (3, 11, 30)
    for k, X in enumerate(Xs):
        one = fit_ridge_cv(X, Y, alphas=SPACE_ALPHAS, folds=folds)
        assert_fits_close(RidgeFit(*(a[k] for a in batched)), one)
    assert predict(batched, Xs).shape == (3, 80, 30)


def test_tiny_batch_size_equals_one_batch(spaces):
    Xs, Y, folds = spaces
    one = fit_ridge_cv(Xs, Y, alphas=SPACE_ALPHAS, folds=folds)
    tiny = fit_ridge_cv(Xs, Y, alphas=SPACE_ALPHAS, folds=folds, batch_size=7)  # 5 batches, last padded
    assert_fits_close(tiny, one)


def test_small_memory_budget_batches_targets_and_folds(spaces):
    Xs, Y, folds = spaces
    X = Xs[0]
    dims = dict(
        n_spaces=1,
        n_samples=80,
        n_features=10,
        n_train=60,
        n_val=20,
        n_alphas=11,
        n_folds=4,
        n_targets=30,
        itemsize=4,
    )
    budget = 96_000  # 2 chunks of 3 folds (the second padded with a weight-0 fold), 4 batches
    plan = _plan(**dims, memory_budget=budget)
    assert plan.fold_chunk == 3, "the budget should force folds to be decomposed in chunks"
    assert -(-30 // plan.batch_size) >= 3, "the budget should force several target batches"
    assert target_batch_size(**dims, memory_budget=budget) == plan.batch_size
    small = fit_ridge_cv(X, Y, alphas=SPACE_ALPHAS, folds=folds, memory_budget=budget)
    big = fit_ridge_cv(X, Y, alphas=SPACE_ALPHAS, folds=folds)
    assert_fits_close(small, big)
    with pytest.raises(ValueError, match="memory_budget"):
        fit_ridge_cv(X, Y, alphas=SPACE_ALPHAS, folds=folds, memory_budget=10_000)


def test_huth_convention_matches_closed_form():
    X, Y, _, _ = make_data(100, 15, 5, seed=5)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    folds = block_folds(100, 4)
    a = 7.0
    for normalize in (False, True):
        fit = fit_ridge_cv(X, Y, alphas=[a], folds=folds, alpha_convention="huth", normalize_alpha=normalize)
        lam = a**2 * (np.linalg.svd(Xc, compute_uv=False)[0] ** 2 if normalize else 1.0)
        W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(15), Xc.T @ Yc)
        assert rel_err(fit.coef, W) < 1e-4
    # selection: alpha under "huth" scores exactly like alpha**2 under "sklearn"
    alphas = np.logspace(-1, 2, 6)
    huth = fit_ridge_cv(X, Y, alphas=alphas, folds=folds, alpha_convention="huth")
    skl = fit_ridge_cv(X, Y, alphas=alphas**2, folds=folds)
    np.testing.assert_allclose(huth.cv_scores, skl.cv_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(huth.best_alpha**2, skl.best_alpha, rtol=1e-5)


def test_ill_conditioned_design_agrees_with_float64_reference():
    """Condition number 1e6 (1e12 for the Gram matrix, beyond float32) and a large offset.

    Documented tolerance: predictions within 5e-3 of the float64 scikit-learn fit, relative to
    their spread, for ``decomposition="svd"`` in float32 and for the default ``"eigh"`` when
    ``jax_enable_x64`` is on (float64 Gram matrix); a float32 Gram eigendecomposition is not
    accurate here at small alphas, which is why those two paths exist.
    """
    rng = np.random.default_rng(6)
    n, p = 200, 40
    U, _ = np.linalg.qr(rng.standard_normal((n, p)))
    V, _ = np.linalg.qr(rng.standard_normal((p, p)))
    X = (U * np.logspace(2, -4, p)) @ V.T + 50.0
    Y = X @ rng.standard_normal((p, 10)) * 0.01 + 0.1 * rng.standard_normal((n, 10))
    Xte = X[:50] + 1e-3 * rng.standard_normal((50, p))
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    folds = block_folds(n, 3)
    for a in (1e-4, 1e-2, 1.0):
        ref = Ridge(alpha=a).fit(X, Y).predict(Xte)
        spread = np.abs(ref - ref.mean(0)).max()
        svd = fit_ridge_cv(X32, Y32, alphas=[a], folds=folds, decomposition="svd")
        assert np.abs(predict(svd, Xte) - ref).max() / spread < 5e-3
        with jax.enable_x64(True):
            wide = fit_ridge_cv(X32, Y32, alphas=[a], folds=folds)
        assert wide.coef.dtype == np.float32  # float64 decomposition, float32 everything else
        assert np.abs(predict(wide, Xte) - ref).max() / spread < 5e-3
    # no intercept on uncentred data: the offset direction dominates the Gram matrix
    for a in (1e-2, 1.0):
        ref = Ridge(alpha=a, fit_intercept=False).fit(X, Y).predict(Xte)
        spread = np.abs(ref - ref.mean(0)).max()
        svd = fit_ridge_cv(X32, Y32, alphas=[a], folds=folds, decomposition="svd", fit_intercept=False)
        assert np.abs(predict(svd, Xte) - ref).max() / spread < 5e-3


def test_float64_inputs_with_x64_stay_float64():
    X, Y, _, _ = make_data(50, 5, 3, seed=7)
    with jax.enable_x64(True):
        fit = fit_ridge_cv(X, Y, alphas=[1.0], folds=block_folds(50, 2))
    assert fit.coef.dtype == np.float64
    ref = Ridge(alpha=1.0).fit(X, Y)
    assert rel_err(fit.coef, ref.coef_.T) < 1e-10


@pytest.mark.parametrize("score", ["r2", "r", "neg_mse"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_compact_scoring_equals_direct_scoring(spaces, monkeypatch, score, fit_intercept):
    """Scores from the QR factors of the validation design equal scores of the predictions."""
    Xs, Y, _ = spaces
    folds = group_folds(np.repeat([0, 1, 2, 3], [15, 25, 20, 20]))  # unequal folds: padding
    alphas = np.logspace(-1, 3, 7)
    Y = Y.copy()
    Y[:, 3] = 2.5  # a constant target scores 0 either way
    monkeypatch.setattr(ridge_module, "_compact", lambda *a: True)
    compact = fit_ridge_cv(Xs, Y, alphas=alphas, folds=folds, score=score, fit_intercept=fit_intercept)
    monkeypatch.setattr(ridge_module, "_compact", lambda *a: False)
    direct = fit_ridge_cv(Xs, Y, alphas=alphas, folds=folds, score=score, fit_intercept=fit_intercept)
    assert_fits_close(compact, direct, rtol=2e-5)
    assert (compact.cv_scores[..., 3] == 0).all() == (score != "neg_mse")


@pytest.mark.parametrize("score", ["r2", "r"])
def test_compact_scoring_stays_accurate_when_the_mean_drifts_between_runs(monkeypatch, score):
    # the training mean is far from each validation run's mean: ||yc||² dwarfs the noise, and
    # the compact form subtracts ||z||² from it; both forms must agree relative to the score
    rng = np.random.default_rng(11)
    runs = np.repeat([0, 1, 2, 3], 60)
    X = rng.standard_normal((240, 8)).astype(np.float32)
    Y = X @ rng.standard_normal((8, 12)) * 0.3 + rng.standard_normal((240, 12)) + 100.0 * runs[:, None]
    kw = dict(alphas=np.logspace(-1, 4, 6), folds=group_folds(runs), score=score)
    fits = {}
    for compact in (True, False):
        monkeypatch.setattr(ridge_module, "_compact", lambda *a, c=compact: c)
        fits[compact] = fit_ridge_cv(X, Y.astype(np.float32), **kw).cv_scores
    np.testing.assert_allclose(fits[True], fits[False], rtol=1e-5, atol=1e-6)


def test_compact_scoring_is_chosen_when_it_pays():
    # PCA-reduced features, leave-one-run-out folds: 256 components, 750 validation TRs
    assert ridge_module._compact(256, 750, 13, 10_000)
    assert not ridge_module._compact(1024, 400, 10, 20_000)  # more components than samples
    assert not ridge_module._compact(12, 25, 5, 6)  # a few targets do not pay for the QR
    # accelerators score from the predictions until their QR's cost is measured
    assert not ridge_module._compact(256, 750, 13, 10_000, "gpu")
    assert not ridge_module._compact(256, 750, 13, 10_000, "tpu")


@pytest.mark.parametrize("score", ["r2", "r"])
def test_constant_target_is_finite_and_silent(score):
    X, Y, _, _ = make_data(60, 5, 3, seed=8)
    Y[:, 1] = 4.0
    fit = fit_ridge_cv(X, Y, alphas=ALPHAS, folds=block_folds(60, 3), score=score)
    assert np.isfinite(fit.cv_scores).all() and (fit.cv_scores[:, 1] == 0).all()
    np.testing.assert_allclose(fit.coef[:, 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(fit.intercept[1], 4.0, rtol=1e-5)


# ---------------------------------------------------------------- bad input


def _bad_cases():
    rng = np.random.default_rng(9)
    X, Y = rng.standard_normal((40, 4)), rng.standard_normal((40, 3))
    folds = block_folds(40, 4)
    Xnan, Yinf = X.copy(), Y.copy()
    Xnan[3, 1] = np.nan
    Yinf[0, 2] = np.inf
    ok = dict(X=X, Y=Y, alphas=[1.0, 10.0], folds=folds)
    return [
        ("nan-X", dict(ok, X=Xnan), "X"),
        ("inf-Y", dict(ok, Y=Yinf), "Y"),
        ("mismatched-samples", dict(ok, Y=Y[:30]), "Y"),
        ("X-1d", dict(ok, X=X[:, 0]), "X"),
        ("Y-3d", dict(ok, Y=Y[None]), "Y"),
        ("X-string", dict(ok, X=np.array([["a"]])), "X"),
        ("Y-no-targets", dict(ok, Y=Y[:, :0]), "Y"),
        ("no-folds", dict(ok, folds=[]), "folds"),
        ("empty-validation", dict(ok, folds=[(np.arange(40), np.array([], dtype=int))]), "folds"),
        ("empty-train", dict(ok, folds=[(np.array([], dtype=int), np.arange(40))]), "folds"),
        ("fold-out-of-range", dict(ok, folds=[(np.arange(30), np.arange(30, 41))]), "folds"),
        ("fold-not-a-pair", dict(ok, folds=[(np.arange(30),)]), "folds"),
        ("alpha-zero", dict(ok, alphas=[0.0, 1.0]), "alphas"),
        ("alpha-negative", dict(ok, alphas=[-1.0]), "alphas"),
        ("alphas-empty", dict(ok, alphas=[]), "alphas"),
        ("alphas-2d", dict(ok, alphas=[[1.0, 2.0]]), "alphas"),
        ("bad-score", dict(ok, score="accuracy"), "score"),
        ("bad-convention", dict(ok, alpha_convention="glmnet"), "alpha_convention"),
        ("bad-decomposition", dict(ok, decomposition="qr"), "decomposition"),
        ("bad-batch-size", dict(ok, batch_size=0), "batch_size"),
        ("bad-mesh", dict(ok, mesh="cpu"), "mesh"),
    ]


@pytest.mark.parametrize(("kwargs", "name"), [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        fit_ridge_cv(**kwargs)


def test_predict_checks_shapes():
    X, Y, _, _ = make_data(40, 4, 2, seed=10)
    fit = fit_ridge_cv(X, Y, alphas=[1.0], folds=block_folds(40, 2))
    with pytest.raises(ValueError, match=r"^X"):
        predict(fit, X[:, :3])


# ---------------------------------------------------------------- the estimator


def test_ridgecv_estimator_is_a_thin_shell():
    X, Y, Xte, Yte = make_data(120, 10, 5, seed=11)
    runs = np.repeat([0, 1, 2, 3], 30)
    by_groups = RidgeCV(alphas=ALPHAS, cv=None).fit(X, Y, groups=runs)
    direct = fit_ridge_cv(X, Y, alphas=ALPHAS, folds=group_folds(runs))
    np.testing.assert_allclose(by_groups.coef_, direct.coef, rtol=1e-6)
    np.testing.assert_array_equal(by_groups.best_alphas_, direct.best_alpha)
    assert by_groups.cv_scores_.shape == (15, 5) and by_groups.intercept_.shape == (5,)
    by_int = RidgeCV(alphas=ALPHAS, cv=4).fit(X, Y)
    by_list = RidgeCV(alphas=ALPHAS, cv=block_folds(120, 4)).fit(X, Y)
    np.testing.assert_array_equal(by_int.coef_, by_list.coef_)
    np.testing.assert_allclose(
        by_int.score(Xte, Yte), np.asarray(r2_score(Yte, by_int.predict(Xte))), rtol=1e-6
    )
    assert by_int.score(Xte, Yte).shape == (5,)
    with pytest.raises(ValueError, match="RidgeCV"):
        RidgeCV().predict(X)
    with pytest.raises(ValueError, match="groups"):
        RidgeCV(cv=None).fit(X, Y)
