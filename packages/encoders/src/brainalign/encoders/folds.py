"""Cross-validation folds for time series: contiguous or grouped, never shuffled.

Shuffled folds leak information across autocorrelated fMRI samples (neighbouring TRs share
the haemodynamic response), which inflates validation scores. These helpers only produce
folds whose validation sets are whole runs or contiguous blocks.
"""

from __future__ import annotations

import numpy as np

Folds = list[tuple[np.ndarray, np.ndarray]]


def group_folds(groups) -> Folds:
    """Leave-one-group-out folds (e.g. leave-one-run-out).

    Parameters
    ----------
    groups : (n_samples,) array of hashable labels, one per sample (e.g. run ids).

    Returns
    -------
    folds : list of ``(train_idx, val_idx)`` integer arrays, one per distinct group, in order
        of first appearance.
    """
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups: expected a 1-D array of labels, got shape {g.shape}")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first)
    if order.size < 2:
        raise ValueError(f"groups: need at least 2 distinct groups for cross-validation, got {order.size}")
    idx = np.arange(g.size)
    return [(idx[inverse != k], idx[inverse == k]) for k in order]


def block_folds(n_samples: int, n_folds: int = 5) -> Folds:
    """Contiguous-block folds: the samples are cut into ``n_folds`` consecutive blocks.

    Parameters
    ----------
    n_samples : number of samples.
    n_folds : number of folds (2 <= n_folds <= n_samples).

    Returns
    -------
    folds : list of ``(train_idx, val_idx)``; block k is the k-th of ``np.array_split``.
        To validate on whole runs use :func:`group_folds`.
    """
    n_samples, n_folds = int(n_samples), int(n_folds)
    if n_folds < 2 or n_folds > n_samples:
        raise ValueError(f"n_folds: expected 2 <= n_folds <= n_samples={n_samples}, got {n_folds}")
    idx = np.arange(n_samples)
    blocks = np.array_split(idx, n_folds)
    return [(np.setdiff1d(idx, b, assume_unique=True), b) for b in blocks]


def resolve_cv(cv, n_samples: int, groups=None) -> Folds:
    """The folds an estimator's ``cv`` setting means: leave-one-group-out when ``groups`` are
    given, contiguous blocks for an int, else the given ``(train_idx, val_idx)`` pairs."""
    if groups is not None:
        return group_folds(groups)
    if cv is None:
        raise ValueError("groups: cv=None needs groups (e.g. run labels) passed to fit()")
    if isinstance(cv, int | np.integer):
        return block_folds(n_samples, int(cv))
    return list(cv)
