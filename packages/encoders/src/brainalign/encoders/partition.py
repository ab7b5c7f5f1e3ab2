"""Set-theoretic variance partitioning of held-out R² between 2 or 3 feature spaces.

Every non-empty subset ``S`` of the spaces gets its own encoding model (the spaces of ``S``
concatenated, or banded ridge over them), fitted with cross-validated regularisation on the
training set and scored on the test set: ``R²(S)`` per target. Reading ``R²(S)`` as the
measure of the union of the sets ``S``, the region of variance explained by exactly the
spaces in ``T`` (all of ``T``, none of the others ``C = U \\ T``) follows from
inclusion–exclusion:

    region(T) = sum_{∅ ≠ S ⊆ T} (-1)^(|S|+1) [R²(S ∪ C) - R²(C)],       R²(∅) = 0.

For two spaces A, B::

    A   = R²(AB) - R²(B)                   B = R²(AB) - R²(A)
    A&B = R²(A) + R²(B) - R²(AB)

For three spaces A, B, C::

    A     = R²(ABC) - R²(BC)                               (likewise B, C)
    A&B   = R²(AC) + R²(BC) - R²(C) - R²(ABC)              (likewise A&C, B&C)
    A&B&C = R²(A) + R²(B) + R²(C) - R²(AB) - R²(AC) - R²(BC) + R²(ABC)

The regions sum to ``R²(U)``. With finite data they can be negative (e.g. a space that
explains nothing unique scores ``R²(U) - R²(U \\ {i}) < 0`` because the larger model pays more
estimation variance). ``correction="none"`` reports them as computed; ``"clip"`` sets negative
regions to 0 (the regions then no longer sum to ``R²(U)``); ``"finite_sample"`` first undoes
the expected held-out shrinkage of each subset model, ``R²_test ≈ R² - (1 - R²) q`` with
``q = p_S / (n_train - p_S - 1)`` (least squares with ``p_S`` features), i.e. uses
``(R²_test + q) / (1 + q)``, then derives the regions (which may still be negative; ridge shrinks
less than least squares, so this slightly over-corrects when regularisation is strong).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Literal, NamedTuple

import numpy as np

from .banded import fit_banded_ridge_cv, predict_banded
from .ridge import fit_ridge_cv
from .scoring import r2_score
from .validation import as_float_array, check_alphas, check_folds

Joint = Literal["auto", "ridge", "banded"]
Correction = Literal["none", "clip", "finite_sample"]


class Partition(NamedTuple):
    """Result of :func:`variance_partition`.

    Attributes
    ----------
    names : the space names, in the order given.
    r2 : mapping ``frozenset(names of S) -> (..., n_targets)`` held-out R² of each subset model.
    regions : mapping label -> (..., n_targets); labels ``"A"``, ``"B"``, ``"A&B"``, ... (see
        :func:`partition_regions`), after ``correction``.
    raw_regions : the regions as computed, before ``correction``.
    best_alpha : mapping ``frozenset -> (..., n_targets)`` the selected alpha of each subset
        model (for banded models, the alpha multiplying the space weights).
    banded : the subsets fitted with banded ridge.
    correction : the correction applied.

    The leading ``...`` is ``(n_batch,)`` when spaces were given with a batch axis, else empty.
    """

    names: tuple
    r2: dict
    regions: dict
    raw_regions: dict
    best_alpha: dict
    banded: frozenset
    correction: str


def region_labels(names) -> list[tuple[str, frozenset]]:
    """All regions of ``names``: ``(label, members)`` ordered by size, then by the given order
    (``A, B, C, A&B, A&C, B&C, A&B&C``)."""
    names = list(names)
    out = []
    for k in range(1, len(names) + 1):
        for combo in combinations(names, k):
            out.append(("&".join(combo), frozenset(combo)))
    return out


def partition_regions(r2: Mapping, names) -> dict:
    """Derive the set-theoretic regions from the R² of every subset model.

    Parameters
    ----------
    r2 : mapping ``frozenset -> array`` with an entry for every non-empty subset of ``names``.
    names : the space names, in the order that sets the labels.

    Returns
    -------
    dict label -> array, labels ordered ``A, B, C, A&B, A&C, B&C, A&B&C`` (see module docstring).
    """
    names = list(names)
    universe = frozenset(names)
    missing = [sorted(s) for _, s in region_labels(names) if s not in r2]
    if missing:
        raise ValueError(f"r2: missing the R² of subset(s) {missing}")

    def f(S):
        return r2[S] if S else 0.0

    out = {}
    for label, T in region_labels(names):
        C = universe - T
        total = 0.0
        for _, S in region_labels([n for n in names if n in T]):
            total = total + (-1) ** (len(S) + 1) * (f(S | C) - f(C))
        out[label] = np.asarray(total, dtype=np.float64)
    return out


def _check_spaces(name, spaces):
    if not isinstance(spaces, Mapping) or not 2 <= len(spaces) <= 3:
        raise ValueError(
            f"{name}: expected a mapping of 2 or 3 feature spaces name -> array, "
            f"got {type(spaces).__name__} of length {len(spaces) if hasattr(spaces, '__len__') else '?'}"
        )
    out = {}
    for k, a in spaces.items():
        if "&" in str(k):
            raise ValueError(f"{name}: space names must not contain '&', got {k!r}")
        out[str(k)] = as_float_array(f"{name}[{k!r}]", a, ndim=(2, 3))
    return out


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.var(a, axis=-2))))


def variance_partition(
    spaces_train,
    Y_train,
    spaces_test,
    Y_test,
    *,
    alphas,
    folds,
    joint: Joint = "auto",
    correction: Correction = "none",
    n_iter=20,
    concentration=(0.1, 1.0),
    random_state=0,
    fit_intercept: bool = True,
    score: str = "r2",
    batch_size: int | None = None,
    memory_budget: int | None = None,
) -> Partition:
    """Partition held-out R² into the unique and shared variance of 2 or 3 feature spaces.

    Parameters
    ----------
    spaces_train : mapping name -> ``(n_train, p_i)`` or ``(n_batch, n_train, p_i)``. Spaces given
        with a leading batch axis are partitioned element by element against the others (e.g.
        ``{"instruction": (12, n, p), "captioning": (n, p)}`` partitions 12 instructions against
        captioning in one call); every subset model made only of unbatched spaces is fitted once
        and reused for the whole batch. All batched spaces share ``n_batch``.
    Y_train : (n_train, n_targets), shared by every batch element.
    spaces_test : the same names and batch layout with ``n_test`` rows.
    Y_test : (n_test, n_targets)
    alphas : (n_alphas,) penalties searched (per target) for every subset model.
    folds : ``(train_idx, val_idx)`` pairs over the training rows.
    joint : how models of 2+ spaces are fitted. ``"ridge"``: one ridge on the concatenated
        spaces (fast; batched over the batch axis in one compiled program). ``"banded"``: banded
        ridge (:func:`fit_banded_ridge_cv`, ``n_iter`` candidate space weightings), needed when
        the spaces differ in width or scale, since a single alpha then under-regularises one
        space or over-regularises the other. ``"auto"`` (default): banded only for subsets whose
        spaces differ in width or in feature scale (RMS of the column standard deviations) by
        more than a factor of 2, else ridge.
    correction : ``"none"``, ``"clip"`` or ``"finite_sample"`` (see module docstring).
    n_iter, concentration, random_state : banded-ridge search (see :func:`fit_banded_ridge_cv`).
    fit_intercept, score, batch_size, memory_budget : see :func:`fit_ridge_cv`.

    Returns
    -------
    Partition with ``r2[frozenset]`` and ``regions[label]`` of shape ``(n_targets,)`` or
    ``(n_batch, n_targets)``.
    """
    tr = _check_spaces("spaces_train", spaces_train)
    te = _check_spaces("spaces_test", spaces_test)
    names = tuple(tr)
    if tuple(te) != names:
        raise ValueError(f"spaces_test: expected the spaces {list(names)} in this order, got {list(te)}")
    Y_train = as_float_array("Y_train", Y_train, ndim=2)
    Y_test = as_float_array("Y_test", Y_test, ndim=2)
    n_train, n_test = Y_train.shape[0], Y_test.shape[0]
    if Y_test.shape[1] != Y_train.shape[1]:
        raise ValueError(f"Y_test: expected {Y_train.shape[1]} targets (columns), got {Y_test.shape[1]}")
    batch = None
    for name in names:
        a, b = tr[name], te[name]
        if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
            raise ValueError(
                f"spaces_test[{name!r}]: expected shape {(*a.shape[:-2], n_test, a.shape[-1])}, got {b.shape}"
            )
        if a.shape[-2] != n_train or b.shape[-2] != n_test:
            raise ValueError(
                f"spaces_train[{name!r}]/spaces_test[{name!r}]: expected {n_train}/"
                f"{n_test} samples to match Y_train/Y_test, got {a.shape[-2]}/{b.shape[-2]}"
            )
        if a.ndim == 3:
            if batch is not None and a.shape[0] != batch:
                raise ValueError(f"spaces_train[{name!r}]: expected batch size {batch}, got {a.shape[0]}")
            batch = a.shape[0]
    if joint not in ("auto", "ridge", "banded"):
        raise ValueError(f"joint: expected 'auto', 'ridge' or 'banded', got {joint!r}")
    if correction not in ("none", "clip", "finite_sample"):
        raise ValueError(f"correction: expected 'none', 'clip' or 'finite_sample', got {correction!r}")
    alphas = check_alphas(alphas)
    folds = check_folds(folds, n_train)
    n_targets = Y_train.shape[1]

    def use_banded(S):
        if len(S) < 2 or joint == "ridge":
            return False
        if joint == "banded":
            return True
        widths = [tr[s].shape[-1] for s in S]
        scales = [_rms(tr[s]) for s in S]
        return max(widths) > 2 * min(widths) or max(scales) > 2 * max(min(scales), 1e-30)

    def stack(spaces, S, b=None):
        parts = []
        for s in (n for n in names if n in S):
            a = spaces[s]
            parts.append(a if b is None or a.ndim == 2 else a[b])
        if b is None and any(p.ndim == 3 for p in parts):
            parts = [np.broadcast_to(p, (batch, *p.shape)) if p.ndim == 2 else p for p in parts]
        return parts

    r2, best_alpha, banded = {}, {}, set()
    for _, S in region_labels(names):
        is_batched = any(tr[s].ndim == 3 for s in S)
        if use_banded(S):
            banded.add(S)
            scores, al = [], []
            for b in range(batch if is_batched else 1):
                bb = b if is_batched else None
                fit = fit_banded_ridge_cv(
                    stack(tr, S, bb),
                    Y_train,
                    alphas=alphas,
                    folds=folds,
                    n_iter=n_iter,
                    concentration=concentration,
                    random_state=random_state,
                    fit_intercept=fit_intercept,
                    score=score,
                    batch_size=batch_size,
                )
                pred = predict_banded(fit, stack(te, S, bb))
                scores.append(np.asarray(r2_score(Y_test, pred)))
                al.append(fit.best_alpha)
            r2[S] = np.stack(scores) if is_batched else scores[0]
            best_alpha[S] = np.stack(al) if is_batched else al[0]
            continue
        Xtr = np.concatenate(stack(tr, S), axis=-1)
        fit = fit_ridge_cv(
            Xtr,
            Y_train,
            alphas=alphas,
            folds=folds,
            fit_intercept=fit_intercept,
            score=score,
            batch_size=batch_size,
            memory_budget=memory_budget,
        )
        del Xtr
        Xte = np.concatenate(stack(te, S), axis=-1)
        if is_batched:
            r2[S] = np.stack(
                [np.asarray(r2_score(Y_test, Xte[b] @ fit.coef[b] + fit.intercept[b])) for b in range(batch)]
            )
        else:
            r2[S] = np.asarray(r2_score(Y_test, Xte @ fit.coef + fit.intercept))
        best_alpha[S] = fit.best_alpha

    if batch is not None:  # models of unbatched spaces were fitted once: share them
        r2 = {S: np.broadcast_to(a, (batch, n_targets)) for S, a in r2.items()}
        best_alpha = {S: np.broadcast_to(a, (batch, n_targets)) for S, a in best_alpha.items()}
    r2 = {S: np.asarray(a, dtype=np.float64) for S, a in r2.items()}

    raw = partition_regions(r2, names)
    if correction == "clip":
        regions = {k: np.maximum(a, 0.0) for k, a in raw.items()}
    elif correction == "finite_sample":
        adj = {}
        for S, a in r2.items():
            p = sum(tr[s].shape[-1] for s in S)
            if n_train - p - 1 <= 0:
                raise ValueError(
                    f"correction: 'finite_sample' needs n_train > p + 1 for every "
                    f"subset; {sorted(S)} has p={p}, n_train={n_train}"
                )
            q = p / (n_train - p - 1)
            adj[S] = (a + q) / (1 + q)
        regions = partition_regions(adj, names)
    else:
        regions = raw
    return Partition(names, r2, regions, raw, best_alpha, frozenset(banded), correction)
