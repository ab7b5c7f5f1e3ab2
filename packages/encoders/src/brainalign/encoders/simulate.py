"""Simulated encoding data with exactly specified unique and shared variance.

Generative model (for spaces ``A, B, ...`` and one latent block per region):

* For every region ``R`` (a non-empty set of spaces, labelled like ``"A"`` or ``"A&B"``) with
  variance ``v_R > 0`` there is a block ``Z_R`` of ``n_latents`` latent time courses; every space
  ``i`` also gets ``p_i - (its region latents)`` nuisance latents ``N_i`` that no target uses.
* Latents are white Gaussian noise convolved with the SPM HRF (``hrf=True``, sampled every
  ``tr`` seconds), then centred and whitened *jointly, in-sample* (a QR decomposition), so that
  ``Z'Z / n = I`` exactly on the training set and, separately, on the test set. Whitening mixes
  columns only, so the time courses keep their HRF smoothness.
* Space ``i`` is ``X_i = [Z_R for R containing i, N_i] @ M_i`` with ``M_i`` a random rotation
  times column scales in ``[0.5, 2]`` times ``feature_scale[i]``: full rank, and spaces that
  share a region share its latents.
* Target ``t`` is ``y_t = sum_R Z_R w_{R,t} + e_t``, where ``w_{R,t}`` is scaled so the sample
  variance of ``Z_R w_{R,t}`` is exactly ``v_R``, and ``e_t`` is white noise projected off the
  latents (and the constant) and scaled to sample variance exactly ``1 - sum_R v_R``.

Hence every target has unit variance, ``SNR = sum_R v_R / (1 - sum_R v_R)``, the blocks are
exactly uncorrelated in-sample, and the model of a subset ``S`` of spaces with the true
weights explains exactly ``R²(S) = sum_{R : R ∩ S ≠ ∅} v_R`` on the train and on the test set.
The set-theoretic regions of :func:`variance_partition` therefore equal ``v_R`` exactly for
the population model; a model fitted on ``n`` samples with ``p`` features scores about
:func:`expected_test_r2` on held-out data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .hrf import convolve_hrf
from .partition import region_labels


class Simulation(NamedTuple):
    """Output of :func:`simulate_encoding`.

    Attributes
    ----------
    spaces_train : mapping name -> (n_samples, n_features_i)
    Y_train : (n_samples, n_targets)
    spaces_test : mapping name -> (n_test, n_features_i)
    Y_test : (n_test, n_targets)
    regions : mapping label -> (n_targets,) true variance of every region (0 where unset).
    r2 : mapping frozenset of names -> (n_targets,) true R² of every subset model.
    snr : (n_targets,) signal-to-noise variance ratio.
    """

    spaces_train: dict
    Y_train: np.ndarray
    spaces_test: dict
    Y_test: np.ndarray
    regions: dict
    r2: dict
    snr: np.ndarray


def expected_test_r2(r2, n_features, n_samples):
    """Expected held-out R² of a least-squares fit: ``r2 - (1 - r2) * p / (n - p - 1)``.

    The finite-sample shrinkage of an (almost unregularised) linear model with ``p`` features
    fitted on ``n`` samples, for a population R² of ``r2``. Ridge regularisation shrinks less,
    so this is a slight overestimate of the loss.
    """
    p, n = np.asarray(n_features, dtype=float), np.asarray(n_samples, dtype=float)
    if np.any(n - p - 1 <= 0):
        raise ValueError(f"n_samples: need n > p + 1, got n={n_samples}, p={n_features}")
    r2 = np.asarray(r2, dtype=float)
    return r2 - (1.0 - r2) * p / (n - p - 1.0)


def _whiten(L: np.ndarray) -> np.ndarray:
    Lc = L - L.mean(0)
    Q, _ = np.linalg.qr(Lc)
    return Q * np.sqrt(L.shape[0])


def simulate_encoding(
    n_features: Mapping[str, int],
    regions: Mapping[str, float],
    *,
    n_samples: int = 1000,
    n_test: int = 500,
    n_targets: int = 100,
    n_latents: int = 4,
    snr: float | None = None,
    feature_scale: Mapping[str, float] | None = None,
    hrf: bool = True,
    tr: float = 2.0,
    dtype=np.float32,
    random_state=None,
) -> Simulation:
    """Simulate feature spaces and responses with exactly known variance partition.

    Parameters
    ----------
    n_features : mapping space name -> number of features (e.g. ``{"A": 20, "B": 20}``).
    regions : mapping region label -> variance, a fraction of the unit target variance, e.g.
        ``{"A": 0.1, "B": 0.05, "A&B": 0.2}`` (labels join names with ``&``, in any order).
        Values may be scalars or ``(n_targets,)`` arrays; unset regions are 0.
    n_samples, n_test : rows of the training and test sets.
    n_targets : number of targets (voxels).
    n_latents : latent dimensions per non-empty region.
    snr : if given, ``regions`` are relative proportions, rescaled so that the total signal
        variance is ``snr / (1 + snr)``.
    feature_scale : optional mapping space name -> overall scale of its features (spaces of
        different scale are what banded ridge is for).
    hrf : convolve latents with the SPM HRF (``tr`` seconds per sample).
    random_state : seed.

    Returns
    -------
    Simulation with the data and the true regions, subset R² and SNR (see module docstring).
    """
    names = [str(k) for k in n_features]
    if len(names) < 1:
        raise ValueError("n_features: expected at least one feature space")
    all_regions = region_labels(names)
    by_set = {members: label for label, members in all_regions}
    v = {label: np.zeros(n_targets) for label, _ in all_regions}
    for key, val in regions.items():
        members = frozenset(s.strip() for s in str(key).split("&"))
        if members not in by_set:
            raise ValueError(f"regions: unknown region {key!r}; spaces are {names}")
        arr = np.broadcast_to(np.asarray(val, dtype=float), (n_targets,)).copy()
        if (arr < 0).any():
            raise ValueError(f"regions[{key!r}]: variances must be >= 0")
        v[by_set[members]] = arr
    total = sum(v.values())
    if snr is not None:
        if snr <= 0:
            raise ValueError(f"snr: expected a positive ratio, got {snr}")
        if (total <= 0).any():
            raise ValueError("regions: with snr, the proportions must not all be 0")
        factor = (snr / (1.0 + snr)) / total
        v = {k: a * factor for k, a in v.items()}
        total = sum(v.values())
    if (total >= 1).any():
        raise ValueError(f"regions: the variances must sum to less than 1, got max {total.max():.3f}")

    rng = np.random.default_rng(random_state)
    active = [(label, members) for label, members in all_regions if (v[label] > 0).any()]
    # column layout of the latent matrix: region blocks first, then nuisance per space
    cols, start = {}, 0
    for label, _ in active:
        cols[label] = np.arange(start, start + n_latents)
        start += n_latents
    nuis = {}
    for name in names:
        used = sum(n_latents for _, m in active if name in m)
        extra = int(n_features[name]) - used
        if extra < 0:
            raise ValueError(
                f"n_features[{name!r}]: {n_features[name]} features cannot hold the "
                f"{used} latents of its regions; lower n_latents or add features"
            )
        nuis[name] = np.arange(start, start + extra)
        start += extra
    K = start
    if min(n_samples, n_test) <= K + 1:
        raise ValueError(f"n_samples: need more than {K + 1} samples for {K} latents")

    scale = dict(feature_scale or {})
    mixing = {}
    for name in names:
        p = int(n_features[name])
        Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
        mixing[name] = Q * rng.uniform(0.5, 2.0, size=p)[None, :] * float(scale.get(name, 1.0))
    weights = {label: rng.standard_normal((n_latents, n_targets)) for label, _ in active}

    def draw(n):
        L = rng.standard_normal((n, K))
        if hrf:
            L = convolve_hrf(L, tr)
        Z = _whiten(L)
        Y = np.zeros((n, n_targets))
        for label, _ in active:
            s = Z[:, cols[label]] @ weights[label]
            s *= np.sqrt(v[label] / np.maximum(s.var(0), 1e-300))
            Y += s
        E = rng.standard_normal((n, n_targets))
        E -= E.mean(0)
        E -= Z @ (Z.T @ E) / n
        E *= np.sqrt((1.0 - total) / E.var(0))
        Y += E
        spaces = {}
        for name in names:
            idx = [cols[label] for label, m in active if name in m] + [nuis[name]]
            spaces[name] = (Z[:, np.concatenate(idx)] @ mixing[name]).astype(dtype)
        return spaces, Y.astype(dtype)

    Xtr, Ytr = draw(n_samples)
    Xte, Yte = draw(n_test)
    r2 = {}
    for _, S in all_regions:
        r2[S] = sum((v[label] for label, m in all_regions if m & S), np.zeros(n_targets))
    return Simulation(Xtr, Ytr, Xte, Yte, v, r2, total / (1.0 - total))
