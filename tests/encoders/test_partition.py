"""variance_partition: recovers simulated regions; subset R² match scikit-learn ridge."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from brainalign.encoders import (
    block_folds,
    expected_test_r2,
    partition_regions,
    region_labels,
    simulate_encoding,
    variance_partition,
)

ALPHAS = np.logspace(-2, 4, 7)
# one training size, fold layout and target count everywhere: every compiled program is reused
N, T, P = 1200, 40, 8
FOLDS = block_folds(N, 4)
TRUTH2 = {"A": 0.10, "B": 0.15, "A&B": 0.20}
TRUTH3 = {"A": 0.10, "B": 0.05, "A&B": 0.15, "A&B&C": 0.0}  # C is a null space


def expected_regions(sim, names, n_train):
    """Regions implied by the finite-sample expectation of every subset's held-out R²:
    ``R² - (1 - R²) p / (n - p - 1)`` (least squares with p features on n samples)."""
    widths = {k: v.shape[1] for k, v in sim.spaces_train.items()}
    exp = {S: expected_test_r2(a, sum(widths[s] for s in S), n_train) for S, a in sim.r2.items()}
    return partition_regions(exp, names)


@pytest.fixture(scope="module")
def two():
    # n/p >= 50 for the joint model (p = 16, n = 1200)
    sim = simulate_encoding(
        {"A": P, "B": P}, TRUTH2, n_samples=N, n_test=1000, n_targets=T, n_latents=3, random_state=0
    )
    part = variance_partition(
        sim.spaces_train, sim.Y_train, sim.spaces_test, sim.Y_test, alphas=ALPHAS, folds=FOLDS, joint="ridge"
    )
    return sim, part


@pytest.fixture(scope="module")
def three():
    # n/p = 50 for the joint model (p = 3 x 8 = 24, n = 1200)
    sim = simulate_encoding(
        {"A": P, "B": P, "C": P}, TRUTH3, n_samples=N, n_test=1200, n_targets=T, n_latents=2, random_state=1
    )
    part = variance_partition(
        sim.spaces_train, sim.Y_train, sim.spaces_test, sim.Y_test, alphas=ALPHAS, folds=FOLDS, joint="ridge"
    )
    return sim, part


def test_two_spaces_recover_truth(two):
    sim, part = two
    assert list(part.regions) == ["A", "B", "A&B"]
    exp = expected_regions(sim, "AB", N)
    for label in part.regions:
        got = part.regions[label].mean()
        assert abs(got - sim.regions[label].mean()) < 0.02, label
        assert abs(got - exp[label].mean()) < 0.02, label
    # the regions add up to the joint model's R²
    total = sum(part.regions.values())
    np.testing.assert_allclose(total, part.r2[frozenset("AB")], atol=1e-6)


def test_three_spaces_recover_truth_and_null_space(three):
    sim, part = three
    assert list(part.regions) == ["A", "B", "C", "A&B", "A&C", "B&C", "A&B&C"]
    exp = expected_regions(sim, "ABC", N)
    for label in part.regions:
        got = part.regions[label].mean()
        assert abs(got - sim.regions[label].mean()) < 0.02, label
        assert abs(got - exp[label].mean()) < 0.02, label
        if "C" in label:  # the null space: every region touching it is ~0
            assert abs(got) < 0.01, label
            assert abs(got - exp[label].mean()) < 0.01, label


def test_subset_r2_match_sklearn_ridge(two):
    sim, part = two
    for _, S in region_labels("AB"):
        cols = [s for s in "AB" if s in S]
        Xtr = np.concatenate([sim.spaces_train[s] for s in cols], 1).astype(np.float64)
        Xte = np.concatenate([sim.spaces_test[s] for s in cols], 1).astype(np.float64)
        for t in range(3):
            m = Ridge(alpha=float(part.best_alpha[S][t])).fit(Xtr, sim.Y_train[:, t])
            assert m.score(Xte, sim.Y_test[:, t]) == pytest.approx(part.r2[S][t], abs=2e-4)


def test_region_formulas():
    r2 = {
        frozenset("A"): 0.3,
        frozenset("B"): 0.2,
        frozenset("C"): 0.1,
        frozenset("AB"): 0.4,
        frozenset("AC"): 0.35,
        frozenset("BC"): 0.25,
        frozenset("ABC"): 0.45,
    }
    reg = partition_regions(r2, "ABC")
    assert reg["A"] == pytest.approx(0.45 - 0.25)
    assert reg["A&B"] == pytest.approx(0.35 + 0.25 - 0.1 - 0.45)
    assert reg["A&B&C"] == pytest.approx(0.3 + 0.2 + 0.1 - 0.4 - 0.35 - 0.25 + 0.45)
    assert sum(reg.values()) == pytest.approx(0.45)
    reg2 = partition_regions({frozenset("X"): 0.3, frozenset("Y"): 0.2, frozenset("XY"): 0.4}, "XY")
    assert reg2 == pytest.approx({"X": 0.2, "Y": 0.1, "X&Y": 0.1})


def test_corrections(three):
    sim, part = three
    clip = variance_partition(
        sim.spaces_train,
        sim.Y_train,
        sim.spaces_test,
        sim.Y_test,
        alphas=ALPHAS,
        folds=FOLDS,
        joint="ridge",
        correction="clip",
    )
    assert all((v >= 0).all() for v in clip.regions.values())
    assert any((v < 0).any() for v in clip.raw_regions.values())  # finite data: some were negative
    for k in clip.regions:
        np.testing.assert_allclose(clip.raw_regions[k], part.regions[k], atol=1e-6)
    F = variance_partition(
        sim.spaces_train,
        sim.Y_train,
        sim.spaces_test,
        sim.Y_test,
        alphas=ALPHAS,
        folds=FOLDS,
        joint="ridge",
        correction="finite_sample",
    )
    # regions of the R² with the expected held-out shrinkage undone: (R² + q) / (1 + q)
    adj = {}
    for S, a in part.r2.items():
        q = P * len(S) / (N - P * len(S) - 1)
        adj[S] = (a + q) / (1 + q)
    want = partition_regions(adj, "ABC")
    for k in F.regions:
        np.testing.assert_allclose(F.regions[k], want[k], atol=1e-6)


def test_batched_pairs_equal_separate_calls():
    # three "instructions" each partitioned against a shared "captioning" space in one call
    sims = [
        simulate_encoding(
            {"I": P, "C": P},
            {"I": 0.1 * (k + 1), "I&C": 0.2},
            n_samples=N,
            n_test=200,
            n_targets=T,
            n_latents=2,
            random_state=10 + k,
        )
        for k in range(3)
    ]
    cap_tr, cap_te = sims[0].spaces_train["C"], sims[0].spaces_test["C"]
    Ytr, Yte = sims[0].Y_train, sims[0].Y_test
    inst_tr = np.stack([s.spaces_train["I"] for s in sims])
    inst_te = np.stack([s.spaces_test["I"] for s in sims])
    B = variance_partition(
        {"I": inst_tr, "C": cap_tr},
        Ytr,
        {"I": inst_te, "C": cap_te},
        Yte,
        alphas=ALPHAS,
        folds=FOLDS,
        joint="ridge",
    )
    assert B.regions["I&C"].shape == (3, T)
    np.testing.assert_array_equal(B.r2[frozenset("C")][0], B.r2[frozenset("C")][2])
    for k in range(3):
        Q = variance_partition(
            {"I": inst_tr[k], "C": cap_tr},
            Ytr,
            {"I": inst_te[k], "C": cap_te},
            Yte,
            alphas=ALPHAS,
            folds=FOLDS,
            joint="ridge",
        )
        for label in Q.regions:
            np.testing.assert_allclose(B.regions[label][k], Q.regions[label], atol=1e-4)


def test_banded_joint_models_for_spaces_of_different_scale():
    sim = simulate_encoding(
        {"A": P, "B": 3 * P},
        {"A": 0.2, "B": 0.1, "A&B": 0.1},
        n_samples=N,
        n_test=1000,
        n_targets=T,
        n_latents=2,
        random_state=3,
        feature_scale={"B": 30.0},
    )
    B = variance_partition(
        sim.spaces_train, sim.Y_train, sim.spaces_test, sim.Y_test, alphas=ALPHAS, folds=FOLDS, n_iter=8
    )
    assert B.banded == {frozenset("AB")}  # "auto": the spaces differ in width and scale
    for label in B.regions:
        assert abs(B.regions[label].mean() - sim.regions[label].mean()) < 0.02, label


def test_bad_arguments(two):
    sim, _ = two
    one = {"A": sim.spaces_train["A"]}
    with pytest.raises(ValueError, match="spaces_train: expected a mapping of 2 or 3"):
        variance_partition(one, sim.Y_train, one, sim.Y_test, alphas=ALPHAS, folds=FOLDS)
    swapped = {"B": sim.spaces_test["B"], "A": sim.spaces_test["A"]}
    with pytest.raises(ValueError, match="spaces_test: expected the spaces"):
        variance_partition(sim.spaces_train, sim.Y_train, swapped, sim.Y_test, alphas=ALPHAS, folds=FOLDS)
    with pytest.raises(ValueError, match="correction"):
        variance_partition(
            sim.spaces_train,
            sim.Y_train,
            sim.spaces_test,
            sim.Y_test,
            alphas=ALPHAS,
            folds=FOLDS,
            correction="zero",
        )
