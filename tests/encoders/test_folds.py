"""Contiguous and grouped folds: never shuffled, every sample validated exactly once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold, LeaveOneGroupOut

from brainalign.encoders import block_folds, group_folds


@pytest.mark.parametrize(("n", "k"), [(10, 2), (103, 5), (7, 7)])
def test_block_folds_are_contiguous_and_match_unshuffled_kfold(n, k):
    folds = block_folds(n, k)
    assert len(folds) == k
    for (tr, va), (ktr, kva) in zip(folds, KFold(n_splits=k, shuffle=False).split(np.zeros(n)), strict=True):
        np.testing.assert_array_equal(va, kva)
        np.testing.assert_array_equal(tr, ktr)
        assert (np.diff(va) == 1).all(), "a validation block must be one contiguous stretch"
        assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.concatenate([va for _, va in folds]), np.arange(n))


def test_group_folds_leave_one_run_out_in_order_of_appearance():
    runs = np.array(["b", "b", "b", "a", "a", "c", "c", "c", "c"])
    folds = group_folds(runs)
    assert [runs[va][0] for _, va in folds] == ["b", "a", "c"]
    for tr, va in folds:
        assert len(set(runs[va])) == 1 and runs[va][0] not in set(runs[tr])
        assert (np.diff(va) == 1).all()
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(runs.size))
    ref = sorted(tuple(va) for _, va in LeaveOneGroupOut().split(runs, groups=runs))
    assert sorted(tuple(va) for _, va in folds) == ref


def test_fold_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^n_folds"):
        block_folds(5, 1)
    with pytest.raises(ValueError, match=r"^n_folds"):
        block_folds(3, 4)
    with pytest.raises(ValueError, match=r"^groups"):
        group_folds(np.zeros(6))
    with pytest.raises(ValueError, match=r"^groups"):
        group_folds(np.zeros((3, 2)))
