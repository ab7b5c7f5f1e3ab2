"""Alignment of feature time series to brain samples, applied at fit time.

Features are stored raw (not delayed, not z-scored, not reduced); these functions turn them
into a design matrix for one preset. Each function is one step; :func:`prepare_design`
applies a preset's per-run steps. The order, for every feature space, is

1. Lanczos resampling of word-level features onto the TR grid (:func:`lanczos_resample`,
   done at join time because it creates the TR keys);
2. standardisation of every feature with the training samples' mean and standard deviation
   (:func:`standardize_train`, when the preset sets ``standardize``);
3. PCA fitted on the training samples only (:func:`pca_train`), on the standardised features
   when both are set;
4. z-scoring within each run (features and responses);
5. FIR delays / HRF shift (``delays``), never across run boundaries;
6. trimming of ``trim_start``/``trim_end`` TRs of every run (:func:`keep_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from brainalign.encoders import delay


@dataclass(frozen=True)
class AlignmentPreset:
    """How features become a design matrix.

    Attributes
    ----------
    delays : FIR delays in TRs (a response at t depends on features at t - d); a single delay
        is an HRF shift.
    zscore : z-score features and responses within each run.
    trim_start, trim_end : TRs dropped at the start and end of every run (after delaying).
    pca : number of principal components per space, fitted on training samples only (None: off);
        fitted on the standardised features when ``standardize`` is set.
    lanczos_window : Lanczos window (in lobes) for resampling word-level features (rows with
        no ``tr``, timed by ``onset_s``) onto the TRs of the responses (None: features must
        already be per TR).
    standardize : z-score every feature with the mean and standard deviation of the training
        samples (before PCA, so that every feature weighs the same in the components, and
        before delays); for trial-level data where per-run z-scoring does not apply, and for
        LLM states with a few very large dimensions.
    """

    name: str
    delays: tuple[int, ...] = (1, 2, 3, 4)
    zscore: bool = True
    trim_start: int = 0
    trim_end: int = 0
    pca: int | None = None
    lanczos_window: int | None = None
    standardize: bool = False


PRESETS = {
    "fir4": AlignmentPreset("fir4", delays=(1, 2, 3, 4)),
    # Huth lab: Lanczos (window 3) of word features to TRs, delays 1-4, trim 10/5, z-score per story
    "huth": AlignmentPreset("huth", delays=(1, 2, 3, 4), trim_start=10, trim_end=5, lanczos_window=3),
    # Aw et al. on Wehbe 2014: PCA to 10 dims fitted on training data, delays 1-4, trim 20/15
    "wehbe": AlignmentPreset("wehbe", delays=(1, 2, 3, 4), trim_start=20, trim_end=15, pca=10),
    # Algonauts 2025 baseline: 3-TR shift with a 5-sample window, trim 5/5, no z-scoring
    "algonauts": AlignmentPreset("algonauts", delays=(3, 4, 5, 6, 7), zscore=False, trim_start=5, trim_end=5),
    # TRIBE-like: one HRF shift of 3 TRs (about 4.5 s at TR 1.49 s), z-score per run
    "shift3": AlignmentPreset("shift3", delays=(3,)),
    "oota-movie10": AlignmentPreset("oota-movie10", delays=(0, 1, 2, 3, 4)),
    "none": AlignmentPreset("none", delays=(0,), zscore=False),
}


def get_preset(name: str, **overrides) -> AlignmentPreset:
    """A named preset with some fields replaced (``None`` values leave a field as is)."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "delays" in changes:
        d = tuple(int(x) for x in changes["delays"])
        if not d:
            raise ValueError("delays: expected at least one delay")
        changes["delays"] = d
    for k in ("trim_start", "trim_end"):
        if changes.get(k, 0) < 0:
            raise ValueError(f"{k}: expected a non-negative number of TRs, got {changes[k]}")
    if changes.get("pca") is not None and changes["pca"] < 1:
        changes["pca"] = None
    return replace(PRESETS[name], **changes) if changes else PRESETS[name]


def lanczos_kernel(t: np.ndarray, window: int = 3) -> np.ndarray:
    """Lanczos kernel ``L(t) = a sin(pi t) sin(pi t / a) / (pi t)^2`` for ``|t| < a``, 1 at 0."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi**2 * t**2)
    val = np.where(t == 0, 1.0, val)
    return np.where(np.abs(t) > window, 0.0, val)


def lanczos_resample(
    data: np.ndarray,
    old_times: np.ndarray,
    new_times: np.ndarray,
    *,
    window: int = 3,
    cutoff_mult: float = 1.0,
) -> np.ndarray:
    """Resample irregular samples (e.g. one per word) onto ``new_times`` (e.g. TR onsets).

    ``out[k] = sum_i L(f_c (new_times[k] - old_times[i])) data[i]`` with the cutoff
    ``f_c = cutoff_mult / mean(diff(new_times))`` (the Nyquist rate of the new grid), as in the
    Huth lab's ``lanczosinterp2D``.

    Parameters
    ----------
    data : (n_old, n_features); old_times : (n_old,) seconds; new_times : (n_new,) seconds.

    Returns
    -------
    (n_new, n_features) float32
    """
    data = np.asarray(data, dtype=np.float64)
    old_times, new_times = np.asarray(old_times, float), np.asarray(new_times, float)
    if data.shape[0] != old_times.shape[0]:
        raise ValueError(f"old_times: expected {data.shape[0]} times to match data, got {old_times.shape[0]}")
    if new_times.size < 2:
        raise ValueError("new_times: need at least two target times")
    cutoff = cutoff_mult / np.mean(np.diff(new_times))
    S = lanczos_kernel(cutoff * (new_times[:, None] - old_times[None, :]), window)
    return (S @ data).astype(np.float32)


def pca_train(X: np.ndarray, train: np.ndarray, n_components: int) -> np.ndarray:
    """Project every space of ``X (n_spaces, n_samples, d)`` on its first ``n_components``
    principal components, fitted on the rows ``train`` (boolean mask) only.

    Returns ``(n_spaces, n_samples, n_components)`` float32 (fewer components if ``d`` or the
    number of training rows is smaller).
    """
    k = int(min(n_components, X.shape[-1], int(train.sum())))
    out = np.empty((X.shape[0], X.shape[1], k), dtype=np.float32)
    for s in range(X.shape[0]):
        Xt = X[s, train].astype(np.float64)
        mu = Xt.mean(0)
        _, _, Vt = np.linalg.svd(Xt - mu, full_matrices=False)
        out[s] = (X[s] - mu) @ Vt[:k].T
    return out


def standardize_train(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Z-score the columns of ``X (..., n_samples, d)`` with the mean and standard deviation of
    the rows ``train`` (boolean mask) only; constant columns become 0."""
    Xt = X[..., train, :].astype(np.float64)
    mu = Xt.mean(-2, keepdims=True)
    sd = Xt.std(-2, keepdims=True)
    return np.where(sd > 0, (X - mu) / np.where(sd > 0, sd, 1.0), 0.0).astype(np.float32)


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
    """Optionally z-score (within runs), then delay ``X (..., n_samples, n_features)``.

    Returns ``(..., n_samples, n_features * len(delays))``; standardisation, PCA and trimming are
    left to the caller (:func:`standardize_train`, :func:`pca_train`, :func:`keep_mask`), which
    knows the training rows.
    """
    lead = X.shape[:-2]
    flat = X.reshape(-1, *X.shape[-2:])
    if preset.zscore:
        flat = zscore_by_run(flat, runs)
    if preset.delays == (0,):
        out = np.asarray(flat, dtype=np.float32)
    else:
        out = np.stack([delay(x, preset.delays, groups=runs) for x in flat]).astype(np.float32, copy=False)
    return out.reshape(*lead, out.shape[-2], out.shape[-1])
