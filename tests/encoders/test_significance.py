"""Block permutation tests, BH-FDR (statsmodels oracle) and bootstrap CIs."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import r2_score as sk_r2_score
from statsmodels.stats.multitest import multipletests

from brainalign.encoders import (
    block_permutations,
    bootstrap_ci,
    convolve_hrf,
    fdr_bh,
    permutation_test,
)

N, T, NPERM = 400, 600, 199


@pytest.fixture(scope="module")
def null_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, T)), rng.standard_normal((N, T))


@pytest.fixture(scope="module")
def null_result(null_data):
    yt, yp = null_data
    return permutation_test(yt, yp, n_permutations=NPERM, block_size=10, random_state=1, return_null=True)


def test_null_matches_explicit_block_permutations(null_data, null_result):
    yt, yp = null_data
    perms = block_permutations(N // 10, NPERM, random_state=1)
    rows = (perms[:, :, None] * 10 + np.arange(10)).reshape(NPERM, N)
    for t in (0, 7):
        want = [np.corrcoef(yt[r, t], yp[:, t])[0, 1] for r in rows]
        np.testing.assert_allclose(null_result.null[:, t], want, atol=1e-5)
        assert null_result.score[t] == pytest.approx(np.corrcoef(yt[:, t], yp[:, t])[0, 1], abs=1e-5)
        count = (null_result.null[:, t] >= null_result.score[t]).sum()
        assert null_result.p_value[t] == pytest.approx((1 + count) / (1 + NPERM))


def test_p_values_uniform_under_the_null(null_result):
    p = null_result.p_value
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs((p <= 0.05).mean() - 0.05) < 0.03


def test_planted_effect_gets_small_p_values(null_data):
    yt, noise = null_data
    yp = 0.3 * yt[:, :50] + noise[:, :50]
    res = permutation_test(yt[:, :50], yp, n_permutations=NPERM, block_size=10, score="r2", random_state=2)
    np.testing.assert_allclose(res.p_value, 1 / (1 + NPERM))
    # the observed score is R² of the mean-matched prediction
    yc, pc = yt[:, 0] - yt[:, 0].mean(), yp[:, 0] - yp[:, 0].mean()
    assert res.score[0] == pytest.approx(sk_r2_score(yc, pc), abs=1e-4)


def test_blocks_respect_autocorrelation():
    # independent HRF-smoothed series: shuffling single samples is anti-conservative, blocks
    # longer than the autocorrelation are (close to) calibrated
    rng = np.random.default_rng(3)
    yt = convolve_hrf(rng.standard_normal((600, 400)), 1.0)
    yp = convolve_hrf(rng.standard_normal((600, 400)), 1.0)
    single = permutation_test(yt, yp, n_permutations=99, block_size=1, random_state=0)
    blocks = permutation_test(yt, yp, n_permutations=99, block_size=30, random_state=0)
    assert (single.p_value <= 0.05).mean() > 0.15
    assert (blocks.p_value <= 0.05).mean() < 0.1


def test_target_batches_give_the_same_answer(null_data):
    yt, yp = null_data
    a = permutation_test(yt[:, :30], yp[:, :30], n_permutations=49, random_state=4)
    b = permutation_test(
        yt[:, :30], yp[:, :30], n_permutations=49, random_state=4, target_batch=7, perm_batch=16
    )
    np.testing.assert_allclose(a.p_value, b.p_value)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6)


def test_fdr_bh_matches_statsmodels():
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(size=800), rng.uniform(0, 1e-3, size=200)])
    p[:20] = p[20]  # ties
    for alpha in (0.01, 0.05, 0.2):
        reject, q = fdr_bh(p, alpha)
        want_reject, want_q, _, _ = multipletests(p, alpha=alpha, method="fdr_bh")
        np.testing.assert_array_equal(reject, want_reject)
        np.testing.assert_allclose(q, want_q, rtol=1e-12)
    _, q2d = fdr_bh(p.reshape(10, 100))
    np.testing.assert_allclose(q2d.ravel(), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        fdr_bh([0.1, 1.5])


def test_bootstrap_ci_of_mean_scores():
    rng = np.random.default_rng(6)
    scores = rng.normal(0.1, 0.05, size=4000)
    res = bootstrap_ci(scores, n_bootstrap=2000, random_state=0)
    half = 1.96 * scores.std() / np.sqrt(scores.size)  # normal theory
    assert res.mean == pytest.approx(scores.mean())
    assert (res.high - res.low) / 2 == pytest.approx(half, rel=0.1)
    rois = np.repeat(["V1", "V2"], 2000)
    scores[2000:] += 0.1
    scores[5] = np.nan  # unreliable voxel: dropped
    by = bootstrap_ci(scores, groups=rois, n_bootstrap=500, random_state=0)
    assert list(by.groups) == ["V1", "V2"]
    assert by.mean[1] - by.mean[0] == pytest.approx(0.1, abs=0.01)
    assert (by.low < by.mean).all() and (by.mean < by.high).all()
