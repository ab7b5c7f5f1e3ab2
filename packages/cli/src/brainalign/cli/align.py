"""Alignment of feature time series to brain samples, applied at fit time.

Features are stored raw (not delayed, not z-scored); these functions turn them into a design
matrix for one preset. Each function is one step; :func:`prepare_design` applies a preset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainalign.encoders import delay


@dataclass(frozen=True)
class AlignmentPreset:
    """How features become a design matrix.

    Attributes
    ----------
    delays : FIR delays in TRs (a response at t depends on features at t - d).
    zscore : z-score features and responses within each run.
    trim_start, trim_end : TRs dropped at the start and end of every run (after delaying).
    """

    name: str
    delays: tuple[int, ...] = (1, 2, 3, 4)
    zscore: bool = True
    trim_start: int = 0
    trim_end: int = 0


PRESETS = {
    "fir4": AlignmentPreset("fir4", delays=(1, 2, 3, 4)),
    "huth": AlignmentPreset("huth", delays=(1, 2, 3, 4), trim_start=10, trim_end=5),
    "oota-movie10": AlignmentPreset("oota-movie10", delays=(0, 1, 2, 3, 4)),
    "none": AlignmentPreset("none", delays=(0,), zscore=False),
}


def get_preset(name: str) -> AlignmentPreset:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def zscore_by_run(A: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Z-score the columns of ``A (..., n_samples, n)`` within each run; constant columns become 0."""
    out = np.empty_like(A, dtype=np.float32)
    for r in np.unique(runs):
        m = runs == r
        block = A[..., m, :]
        mu = block.mean(-2, keepdims=True)
        sd = block.std(-2, keepdims=True)
        out[..., m, :] = np.where(sd > 0, (block - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def keep_mask(runs: np.ndarray, trim_start: int, trim_end: int) -> np.ndarray:
    """Boolean mask of samples kept after trimming ``trim_start``/``trim_end`` TRs per run."""
    keep = np.ones(len(runs), dtype=bool)
    for r in np.unique(runs):
        idx = np.flatnonzero(runs == r)
        keep[idx[:trim_start]] = False
        if trim_end:
            keep[idx[len(idx) - trim_end :]] = False
    return keep


def prepare_design(X: np.ndarray, runs: np.ndarray, preset: AlignmentPreset) -> np.ndarray:
    """Delay (within runs) and optionally z-score ``X (..., n_samples, n_features)``.

    Returns ``(..., n_samples, n_features * len(delays))``; trimming is left to the caller
    (:func:`keep_mask`) so X and Y are trimmed together.
    """
    lead = X.shape[:-2]
    flat = X.reshape(-1, *X.shape[-2:])
    if preset.zscore:
        flat = zscore_by_run(flat, runs)
    out = np.stack([delay(x, preset.delays, groups=runs) for x in flat])
    return out.reshape(*lead, out.shape[-2], out.shape[-1])
