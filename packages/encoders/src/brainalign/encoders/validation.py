"""Checks at the public boundary: one clear ``ValueError`` naming the argument."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_float_array(name: str, x, *, ndim: int | tuple[int, ...], finite: bool = True) -> np.ndarray:
    """Return ``x`` as a float32/float64 numpy array after checking its rank and values.

    Raises ``ValueError`` naming ``name``, the expected rank and what came.
    """
    arr = np.asarray(x)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name}: expected a {want} array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.dtype != np.float64:
        arr = arr.astype(np.float32, copy=False)
    if finite and arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
    return arr


def check_alphas(alphas) -> np.ndarray:
    """Return the regularisation grid as a 1-D float64 array of positive values."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"alphas: expected a non-empty 1-D sequence, got shape {a.shape}")
    if not np.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"alphas: every alpha must be finite and > 0, got {a.tolist()}")
    return a


def check_folds(folds, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate ``(train_idx, val_idx)`` pairs against ``n_samples``."""
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence | np.ndarray):
        try:
            folds = list(folds)
        except TypeError:
            raise ValueError(
                f"folds: expected a sequence of (train_idx, val_idx) pairs, got {type(folds).__name__}"
            ) from None
    out = []
    if len(folds) == 0:
        raise ValueError("folds: expected at least one (train_idx, val_idx) pair, got none")
    for k, pair in enumerate(folds):
        if len(pair) != 2:
            raise ValueError(f"folds[{k}]: expected a (train_idx, val_idx) pair, got {len(pair)} items")
        tr, va = (np.asarray(i) for i in pair)
        for name, idx in (("train", tr), ("validation", va)):
            if idx.ndim != 1 or idx.size == 0:
                raise ValueError(f"folds[{k}]: the {name} set is empty or not 1-D (shape {idx.shape})")
            if idx.dtype == bool:
                raise ValueError(f"folds[{k}]: expected integer indices, got a boolean mask")
            if idx.dtype.kind not in "iu":
                raise ValueError(f"folds[{k}]: expected integer indices, got dtype {idx.dtype}")
            if idx.min() < 0 or idx.max() >= n_samples:
                raise ValueError(
                    f"folds[{k}]: {name} indices must lie in [0, {n_samples}), "
                    f"got range [{idx.min()}, {idx.max()}]"
                )
        out.append((tr.astype(np.int64), va.astype(np.int64)))
    return out
