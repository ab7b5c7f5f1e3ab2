"""Noise ceilings against their closed forms on simulated repeats and subjects."""

import numpy as np
import pytest

from brainalign.encoders import (
    explainable_variance,
    fit_saturation,
    normalize,
    spearman_brown,
    split_half_ceiling,
    subject_pool_ceiling,
)

N, T = 3000, 40


@pytest.fixture(scope="module")
def repeats():
    # y_k = s + e_k: signal variance 1, noise variance 2, m = 4 repeats
    rng = np.random.default_rng(0)
    s = rng.standard_normal((N, T))
    return s[None] + np.sqrt(2.0) * rng.standard_normal((4, N, T))


def test_spearman_brown_closed_form():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.2, 5) == pytest.approx(1.0 / 1.8)
    # prophesying k then 1/k gives back r
    assert spearman_brown(spearman_brown(0.3, 3), 1 / 3) == pytest.approx(0.3)


def test_split_half_matches_reliability_of_the_mean(repeats):
    # reliability of the 4-repeat mean: σs² / (σs² + σe²/m) = 1 / (1 + 2/4)
    got = split_half_ceiling(repeats, random_state=0)
    assert got.shape == (T,)
    assert abs(got.mean() - 1 / 1.5) < 0.01
    # with 2 repeats it is exactly the SB-corrected correlation of the two
    two = repeats[:2]
    r = np.array([np.corrcoef(two[0, :, t], two[1, :, t])[0, 1] for t in range(T)])
    np.testing.assert_allclose(split_half_ceiling(two), 2 * r / (1 + r), atol=1e-10)


def test_explainable_variance_closed_form_and_tutorial_formula(repeats):
    ev = explainable_variance(repeats)
    assert abs(ev.mean() - 1 / 3) < 0.01  # σs² / (σs² + σe²)
    # the voxelwise-modelling tutorial's formula, written out
    z = (repeats - repeats.mean(1, keepdims=True)) / repeats.std(1, keepdims=True)
    raw = z.mean(0).var(0) / z.var(1).mean(0)
    np.testing.assert_allclose(ev, raw - (1 - raw) / 3, rtol=1e-10)
    np.testing.assert_allclose(explainable_variance(repeats, bias_correction=False), raw, rtol=1e-10)


def test_fit_saturation_recovers_parameters():
    x = np.arange(1.0, 12.0)
    v0 = np.array([0.3, 0.6, 0.8])
    tau = np.array([0.7, 2.5, 6.0])
    y = v0 * (1 - np.exp(-x[:, None] / tau))
    got_v0, got_tau = fit_saturation(x, y)
    np.testing.assert_allclose(got_v0, v0, rtol=1e-4)
    np.testing.assert_allclose(got_tau, tau, rtol=1e-3)
    noisy = y + np.random.default_rng(1).normal(0, 0.005, y.shape)
    np.testing.assert_allclose(fit_saturation(x, noisy)[0], v0, atol=0.03)


@pytest.fixture(scope="module")
def subjects():
    # 12 subjects y_s = s + e_s (noise sd 1): the score of a pool of x subjects' mean is
    # r(x) = 1 / sqrt(2 (1 + 1/x)), whose limit (infinitely many subjects) is 1/sqrt(2)
    rng = np.random.default_rng(2)
    s = rng.standard_normal((1000, 10))
    return s[None] + rng.standard_normal((12, 1000, 10))


def test_subject_pool_inverse_extrapolation_recovers_the_asymptote(subjects):
    res = subject_pool_ceiling(subjects, n_draws=8, n_bootstrap=50, extrapolation="inverse", random_state=0)
    x = res.pool_sizes
    np.testing.assert_allclose(res.scores.mean(1), 1 / np.sqrt(2 * (1 + 1 / x)), atol=0.02)
    assert abs(res.ceiling.mean() - 1 / np.sqrt(2)) < 0.01
    np.testing.assert_allclose(res.tau, 1.0, atol=0.15)  # B / A = σe² / σs²
    assert (res.ci[0] <= res.ceiling).all() and (res.ceiling <= res.ci[1]).all()


def test_subject_pool_exponential_extrapolation_is_brain_score(subjects):
    res = subject_pool_ceiling(subjects, n_draws=8, n_bootstrap=50, random_state=0)
    # the bootstrap median of v0 fitted to each resampled curve, as Brain-Score does
    v0, _ = fit_saturation(res.pool_sizes, res.scores)
    assert abs(np.median(res.v0, 0) - res.ceiling).max() < 1e-12
    np.testing.assert_allclose(res.ceiling, v0, atol=0.02)
    # documented bias: the exponential saturates early and undershoots the limit 1/sqrt(2)
    assert res.scores[0].mean() < res.ceiling.mean() < 1 / np.sqrt(2)


def test_normalize():
    out = normalize([0.2, 0.3, 0.1, 0.01], [0.4, 0.03, 0.5, 0.05], min_ceiling=0.05)
    np.testing.assert_allclose(out, [0.5, np.nan, 0.2, 0.2])  # the threshold is inclusive
    # a zero or negative ceiling never divides, whatever the threshold
    np.testing.assert_allclose(normalize([0.2, 0.2, 0.2], [0.0, -0.1, 0.1]), [np.nan, np.nan, 2.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 repeats"):
        split_half_ceiling(np.zeros((1, 10, 3)))
    with pytest.raises(ValueError, match="at least 3 subjects"):
        subject_pool_ceiling(np.zeros((2, 10, 3)))
