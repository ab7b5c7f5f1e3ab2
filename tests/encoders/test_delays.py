"""FIR delays against a per-sample oracle: never bleeding across run boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from brainalign.encoders import delay


def oracle(X, delays, groups):
    n, p = X.shape
    out = np.zeros((n, p * len(delays)), X.dtype)
    for k, d in enumerate(delays):
        for t in range(n):
            s = t - d
            if 0 <= s < n and groups[s] == groups[t]:
                out[t, k * p : (k + 1) * p] = X[s]
    return out


@pytest.mark.parametrize("delays", [(1, 2, 3, 4), (0,), (-2, 0, 3), (9,)])
def test_delay_matches_oracle_and_never_crosses_runs(delays):
    rng = np.random.default_rng(0)
    groups = np.repeat([3, 1, 2], [6, 4, 8])  # runs of unequal length, labels out of order
    X = rng.standard_normal((groups.size, 3)).astype(np.float32) + 1.0  # no zeros in the data
    out = delay(X, delays, groups)
    np.testing.assert_array_equal(out, oracle(X, delays, groups))
    # the first max(delay) rows of every run see nothing from the previous run
    for k, d in enumerate(delays):
        if d > 0:
            for start in (0, 6, 10):
                assert (out[start : start + d, 3 * k : 3 * k + 3] == 0).all()


def test_delay_without_groups_is_one_run():
    X = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(delay(X, [2]), oracle(X, [2], np.zeros(6)))


def test_delay_errors():
    X = np.ones((6, 2))
    with pytest.raises(ValueError, match=r"^delays"):
        delay(X, [])
    with pytest.raises(ValueError, match=r"^delays"):
        delay(X, [0.5])
    with pytest.raises(ValueError, match=r"^groups"):
        delay(X, [1], groups=[0, 0, 1, 1, 0, 0])  # run 0 is split in two stretches
    with pytest.raises(ValueError, match=r"^groups"):
        delay(X, [1], groups=[0, 1])
    with pytest.raises(ValueError, match=r"^X"):
        delay(np.ones(6), [1])
