"""pearson_r and r2_score against scipy / scikit-learn, and their degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import r2_score as sk_r2

from brainalign.encoders import pearson_r, r2_score
from brainalign.encoders.scoring import SCORERS


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 7)) + 3.0
    yhat = 0.6 * y + 0.5 * rng.standard_normal((50, 7))
    return y, yhat


def test_pearson_r_matches_scipy(pair):
    y, yhat = pair
    want = [pearsonr(y[:, j], yhat[:, j]).statistic for j in range(y.shape[1])]
    np.testing.assert_allclose(pearson_r(y, yhat), want, rtol=1e-5)
    np.testing.assert_allclose(pearson_r(y[:, 0], yhat[:, 0]), want[0], rtol=1e-5)


def test_r2_score_matches_sklearn(pair):
    y, yhat = pair
    want = sk_r2(y, yhat, multioutput="raw_values")
    np.testing.assert_allclose(r2_score(y, yhat), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r2_score(y[:, 3], yhat[:, 3]), want[3], rtol=1e-5)
    bad = y.mean(0) - (yhat - y.mean(0))  # worse than the mean: negative R²
    assert (np.asarray(r2_score(y, bad)) < 0).all()


def test_constant_columns_score_zero_without_warnings(pair):
    # pytest turns warnings into errors, so a divide-by-zero warning would fail this test
    y, yhat = pair
    y, yhat = y.copy(), yhat.copy()
    y[:, 1] = 2.5  # constant truth
    yhat[:, 2] = -1.0  # constant prediction
    r = np.asarray(pearson_r(y, yhat))
    r2 = np.asarray(r2_score(y, yhat))
    assert r[1] == 0.0 and r[2] == 0.0 and r2[1] == 0.0
    assert np.isfinite(r).all() and np.isfinite(r2).all()
    np.testing.assert_allclose(r2[2], sk_r2(y[:, 2], yhat[:, 2]), rtol=1e-5)
    assert float(pearson_r(np.ones(5), np.ones(5))) == 0.0
    assert float(r2_score(np.zeros(5), np.arange(5.0))) == 0.0


@pytest.mark.parametrize("name", ["r2", "r", "neg_mse"])
def test_weighted_scorers_ignore_padding_and_broadcast_over_alphas(pair, name):
    y, yhat = pair
    scorer = SCORERS[name]
    w = np.ones(60, np.float32)
    w[50:] = 0.0
    ypad = np.concatenate([y, 100 * np.ones((10, 7))]).astype(np.float32)
    ppad = np.concatenate([yhat, -50 * np.ones((10, 7))]).astype(np.float32)
    plain = np.asarray(scorer(y.astype(np.float32), yhat.astype(np.float32)))
    np.testing.assert_allclose(scorer(ypad, ppad, w), plain, rtol=1e-5, atol=1e-6)
    stacked = np.stack([ppad, 2 * ppad])  # a leading alpha axis on the predictions
    per_alpha = np.asarray(scorer(ypad, stacked, w))
    assert per_alpha.shape == (2, 7)
    np.testing.assert_allclose(per_alpha[1], scorer(ypad, 2 * ppad, w), rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"^y_pred"):
        pearson_r(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"^y_true"):
        r2_score(np.ones((2, 2, 2)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"^y_true"):
        r2_score(np.ones(1), np.ones(1))
