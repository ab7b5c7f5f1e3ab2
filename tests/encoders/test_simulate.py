"""simulate_encoding: exact in-sample variances, checked with least squares (scikit-learn)."""

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from brainalign.encoders import expected_test_r2, region_labels, simulate_encoding

REGIONS = {"A": 0.10, "B": 0.05, "A&B": 0.15, "A&C": 0.05, "A&B&C": 0.10}


@pytest.fixture(scope="module")
def sim():
    return simulate_encoding(
        {"A": 12, "B": 10, "C": 9},
        REGIONS,
        n_samples=300,
        n_test=200,
        n_targets=8,
        n_latents=2,
        random_state=0,
        dtype=np.float64,
    )


def test_region_labels_order():
    assert [lab for lab, _ in region_labels("ABC")] == ["A", "B", "C", "A&B", "A&C", "B&C", "A&B&C"]


def test_targets_have_unit_variance_and_stated_snr(sim):
    for Y in (sim.Y_train, sim.Y_test):
        np.testing.assert_allclose(Y.var(0), 1.0, atol=1e-9)
    total = sum(REGIONS.values())
    np.testing.assert_allclose(sim.snr, total / (1 - total))
    assert sim.regions["B&C"].max() == 0.0 and sim.regions["C"].max() == 0.0


@pytest.mark.parametrize("split", ["train", "test"])
def test_subset_least_squares_r2_is_exactly_the_truth(sim, split):
    # the noise is orthogonal to every feature, so in-sample OLS explains exactly the union of
    # the regions the subset touches
    spaces = sim.spaces_train if split == "train" else sim.spaces_test
    Y = sim.Y_train if split == "train" else sim.Y_test
    for _, S in region_labels("ABC"):
        X = np.concatenate([spaces[s] for s in "ABC" if s in S], axis=1)
        pred = LinearRegression().fit(X, Y).predict(X)
        r2 = 1 - ((Y - pred) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)
        np.testing.assert_allclose(r2, sim.r2[S], atol=1e-8, err_msg=str(sorted(S)))


def test_hrf_makes_features_smooth():
    def lag1(x):
        x = x - x.mean(0)
        return ((x[1:] * x[:-1]).sum(0) / (x * x).sum(0)).mean()

    smooth = simulate_encoding({"A": 8}, {"A": 0.3}, n_samples=400, n_test=100, n_targets=2, random_state=1)
    white = simulate_encoding(
        {"A": 8}, {"A": 0.3}, n_samples=400, n_test=100, n_targets=2, hrf=False, random_state=1
    )
    assert lag1(smooth.spaces_train["A"]) > 0.5
    assert abs(lag1(white.spaces_train["A"])) < 0.1


def test_snr_rescales_proportions_and_feature_scale():
    s = simulate_encoding(
        {"A": 6, "B": 6},
        {"A": 1.0, "A&B": 3.0},
        snr=1.0,
        n_samples=200,
        n_latents=2,
        n_test=100,
        n_targets=3,
        feature_scale={"B": 100.0},
        random_state=2,
    )
    np.testing.assert_allclose(s.regions["A"], 0.125)
    np.testing.assert_allclose(s.regions["A&B"], 0.375)
    ratio = s.spaces_train["B"].std() / s.spaces_train["A"].std()
    assert 30 < ratio < 300


def test_expected_test_r2_closed_form():
    assert expected_test_r2(0.5, 10, 111) == pytest.approx(0.5 - 0.5 * 10 / 100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(regions={"D": 0.1}), "unknown region"),
        (dict(regions={"A": 0.6, "B": 0.5}), "sum to less than 1"),
        (dict(regions={"A": 0.1}, n_latents=10), "cannot hold"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_encoding({"A": 5, "B": 5}, n_samples=100, n_test=50, **kwargs)
