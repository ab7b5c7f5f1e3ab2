"""Ridge regression with a cross-validated regularisation strength per target.

For every target ``y`` (a voxel) and penalty ``lam`` the weights minimise

    ||X b - y||² + lam ||b||²                  (scikit-learn / himalaya convention, lam = alpha)

or, with ``alpha_convention="huth"``, ``lam = alpha²`` and, with ``normalize_alpha=True``,
``lam = (alpha * sigma_max)²`` where ``sigma_max`` is the largest singular value of the
(centred) training design, as in the Huth-lab ``ridge_corr`` / ``bootstrap_ridge`` code.

Algorithm. Per fold, the Y-independent work is one decomposition, done once per feature space
and reused for every target batch and every alpha:

* primal (``n_features <= n_train``): ``Xtr'Xtr = V diag(s) V'``, ``L = Xtr V``, ``A = Xval V``;
* dual (``n_features > n_train``): ``Xtr Xtr' = U diag(s) U'``, ``L = U``, ``A = Xval Xtr' U``.

Then ``B = L' Ytr`` (one matmul per target batch) and the validation predictions for every
penalty at once are one matmul ``[A diag(1/(s + lam_1)); ...; A diag(1/(s + lam_k))] B`` of
shape ``(n_alphas * n_val, r) x (r, n_targets)``, with no weights formed. When there are fewer
components than validation samples (PCA-reduced features, leave-one-run-out folds), the fold's
basis also holds the QR factors ``A = Q Ra``: every prediction lies in the span of ``Q``, so
with ``z = Q' yc`` (``yc`` the centred validation targets) the squared error of every alpha is
``||yc||² - ||z||² + ||z - Ra D B||²`` (Pearson r likewise from ``z`` and ``Ra D B``). ``Ra``
is triangular, so its row blocks need about half the ``n_alphas r² t`` multiply-adds of a full
product, instead of ``n_alphas n_val r t`` (see ``_compact`` for when the QR pays for itself, on
CPU, where that was measured). The refit on all samples uses the same form with a different
penalty per target: ``W = R (B / (s + lam_t))`` with ``R = V`` (primal) or ``Xc' U`` (dual), so
weights are never formed for unused alphas.

With few features next to training samples (primal form, ``_atoms_pay``), the training-side
product is not sliced per fold: samples are grouped into *atoms* that belong to the same
training sets (each validation run, for leave-one-run-out), the within-atom products
``Xa'Ya`` (centred on the atom's means) are computed once per target batch, and each fold's
``Xc'Yc`` is their sum over its atoms plus each atom's mean offset from the fold's means, so
``B = V' Xc'Yc`` costs ``2 p r t`` instead of ``2 n_train r t``.

Flops per fold (``r = min(n_features, n_train)``): ``2 n_train p r`` (Gram) + ``~9 r³``
(eigendecomposition) + ``2 (n_train + n_val) p r`` (``L``, ``A``) + ``2 n_train r t`` (``B``) +
``2 n_alphas n_val r t`` (predictions), or, compact, ``~4 n_val r²`` (QR) + ``2 n_val r t``
(``z``) + ``~n_alphas r² t`` (triangular ``Ra``); refit: the same decomposition on all samples
plus ``2 n r t + 2 p r t``. See ``benchmarks/bench_ridge.py``.

Numerics. The large matmuls run in the input precision (float32 by default; float64 when the
inputs are float64 *and* ``jax_enable_x64`` is on), at ``precision="highest"`` so GPUs/TPUs do
not silently drop to TF32/bfloat16. The decompositions are the ill-conditioned part: squaring
``X`` into a Gram matrix squares its condition number. With ``decomposition="eigh"`` (default)
the Gram matrix and its eigendecomposition are computed in float64 whenever ``jax_enable_x64``
is on (even for float32 data), else in float32 with negative round-off eigenvalues clamped to
zero. ``decomposition="svd"`` takes the SVD of the centred design itself in the working
precision, which never squares the condition number (about 3x slower decompositions); use it
for badly conditioned designs when float64 is not enabled.

Devices and memory. Targets are processed in batches whose size comes from a memory budget
(default: a fraction of the device's memory) and are sharded over a ``jax.sharding.Mesh`` of
all devices (see :mod:`brainalign.encoders.sharding`). All decompositions stay on the devices;
the fold-score accumulators stay on the devices between folds; each batch costs two dispatches
(cross-validation, then selection and refit) and one transfer of its results to the host.
On CPU the programs are compiled without XLA's YNNPACK library fusions, which fold the scoring
reductions into the prediction matmul and slow it down (see :mod:`brainalign.encoders._compile`).
"""

from __future__ import annotations

import functools
import os
from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ._compile import compiler_options
from .scoring import SCORERS, pearson_from_sums, r2_from_sse
from .sharding import TARGETS, check_mesh, replicate, shard_targets, to_host
from .validation import as_float_array, check_alphas, check_folds

Score = Literal["r2", "r", "neg_mse"]
Convention = Literal["sklearn", "huth"]
Decomposition = Literal["eigh", "svd"]


class RidgeFit(NamedTuple):
    """Result of :func:`fit_ridge_cv` (a pytree of numpy arrays).

    Attributes
    ----------
    coef : (..., n_features, n_targets) weights refitted on all samples with ``best_alpha``.
    intercept : (..., n_targets)
    best_alpha : (..., n_targets) the selected alpha, in the convention the caller used.
    cv_scores : (..., n_alphas, n_targets) validation score averaged over folds.

    The leading ``...`` is ``(n_spaces,)`` when ``X`` was batched, else empty.
    """

    coef: np.ndarray
    intercept: np.ndarray
    best_alpha: np.ndarray
    cv_scores: np.ndarray


class _Basis(NamedTuple):
    s: jax.Array  # (r,) eigenvalues of the Gram matrix, clamped at 0
    L: jax.Array  # (m, r) maps centred training targets into the eigenbasis
    A: jax.Array  # (v, r) validation design in the eigenbasis (fold basis), its (r, r) triangular
    #               QR factor (compact fold basis), or R (full basis)
    x_mean: jax.Array  # (p,)
    Q: jax.Array | None = None  # (v, r) orthonormal factor of the validation design (compact)
    a_mean: jax.Array | None = None  # (r,) its mean row, before centring (compact, score "r")
    R: jax.Array | None = None  # (p, r) primal eigenvectors: B = R' Xc'Yc (fold basis, atom products)


def _penalties(alphas: jax.Array, s: jax.Array, convention: str, normalize: bool) -> jax.Array:
    if convention == "sklearn":
        return alphas
    lam = alphas**2
    return lam * jnp.max(s) if normalize else lam


def _decompose(Xc: jax.Array, *, dual: bool, method: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decompose a centred design ``Xc (m, p)``.

    Returns ``s (r,)``, the eigenvalues of the Gram matrix (clamped at 0), ``L (m, r)`` with
    ``L' y`` the projection of targets and ``R (p, r)`` with weights ``R (B / (s + lam))``.
    Primal: ``L = Xc V``, ``R = V``; dual: ``L = U``, ``R = Xc' U``.
    """
    dtype = Xc.dtype
    if method == "svd":
        U, sv, Vt = jnp.linalg.svd(Xc, full_matrices=False)
        s = sv * sv
        if dual:
            return s, U, Vt.T * sv
        return s, U * sv, Vt.T
    # "eigh" (working precision) or "eigh64" (float64 Gram and eigendecomposition; needs x64)
    Xd = Xc.astype(jnp.float64) if method == "eigh64" else Xc
    G = Xd @ Xd.T if dual else Xd.T @ Xd
    s, Q = jnp.linalg.eigh(G)
    # round-off makes tiny eigenvalues of a PSD matrix negative; they must not flip signs
    s, Q = jnp.clip(s, 0.0, None).astype(dtype), Q.astype(dtype)
    if dual:
        return s, Q, Xc.T @ Q
    return s, Xc @ Q, Q


# how many times slower per flop a QR factorisation runs than a large matmul, by platform
# (LAPACK on CPU, measured by benchmarks/bench_ridge.py). Platforms without a figure score from
# the predictions: a GPU's matmuls are cheap next to its small, latency-bound factorisations,
# and benchmarks/bench_ridge_gpu.py times both forms there.
_QR_SLOWDOWN = {"cpu": 6}


def _row_blocks(rows: int) -> list[tuple[int, int]]:
    """Row blocks of about 32 rows (at most 16 blocks) of a triangular factor."""
    k = min(16, max(1, -(-rows // 32)))
    return [(rows * i // k, rows * (i + 1) // k) for i in range(k)]


def _triangular_size(r: int) -> int:
    """Entries of an ``(r, r)`` upper-triangular factor that its row-blocked product reads."""
    return sum((hi - lo) * (r - lo) for lo, hi in _row_blocks(r))


def _compact(r: int, n_val: int, n_alphas: int, n_targets: int, platform: str = "cpu") -> bool:
    """Whether to score validation predictions through the QR factors of the validation design.

    Per fold, space and target, the predictions of every alpha then cost
    ``2 n_alphas * _triangular_size(r)`` (about ``n_alphas r²``) instead of ``2 n_alphas n_val r``
    flops, plus ``2 n_val r`` for projecting the targets; the QR (``~4 n_val r²`` flops, once per
    fold and space for all targets of a device) must pay for itself. Only with fewer components
    than validation samples (e.g. PCA-reduced features and leave-one-run-out folds): with more,
    the factor is a wide trapezoid and the form measured slower on CPU.
    """
    slowdown = _QR_SLOWDOWN.get(platform)
    if slowdown is None or r >= n_val:
        return False
    saved = n_targets * (2 * n_alphas * (n_val * r - _triangular_size(r)) - 2 * n_val * r)
    return saved > slowdown * 4 * n_val * r * r


def _train_atoms(folds, n_samples: int):
    """Samples grouped by the training sets they belong to: ``(atoms, member)`` with ``atoms`` a
    list of index arrays and ``member (n_folds, n_atoms)`` 0/1, or ``None`` when a training set
    repeats a sample (then products over atoms would not add up to the fold's)."""
    member = np.zeros((n_samples, len(folds)), dtype=bool)
    for k, (tr, _) in enumerate(folds):
        if np.unique(tr).size != tr.size:
            return None
        member[tr, k] = True
    used = np.flatnonzero(member.any(1))
    sig, inv = np.unique(member[used], axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return [used[inv == a] for a in range(len(sig))], sig.T.astype(np.float32)


def _atoms_pay(
    atom_rows: int, n_atoms: int, p: int, r: int, n_train: int, n_folds: int, n_chunks: int
) -> bool:
    """Whether forming each fold's ``B = R' Xc'Yc`` from per-atom products beats ``B = L' Yc``.

    Per target and space: ``2 n_folds n_train r`` flops directly, against ``2 atom_rows p`` per
    fold chunk for the atoms' products (``atom_rows`` their padded rows), ``2 n_folds p r`` for
    the projections and, per fold, sums over the atoms of ``(p, t)`` products (memory-bound,
    counted as 4 flops per element). Worth it when features are few next to training samples.
    """
    direct = 2 * n_folds * n_train * r
    atoms = 2 * n_chunks * atom_rows * p + 2 * n_folds * p * r + 4 * n_folds * n_atoms * p
    return atoms < 0.75 * direct


def _fold_basis(
    X,
    tr_idx,
    tr_w,
    va_idx,
    va_w,
    *,
    fit_intercept: bool,
    dual: bool,
    method: str,
    compact=False,
    centre=False,
    atoms=False,
) -> _Basis:
    w = tr_w[:, None].astype(X.dtype)
    Xtr = X[tr_idx] * w
    if fit_intercept:
        x_mean = Xtr.sum(0) / tr_w.sum().astype(X.dtype)
        Xtr = (Xtr - x_mean) * w  # padded rows stay exactly zero
    else:
        x_mean = jnp.zeros(X.shape[1], X.dtype)
    Xva = (X[va_idx] - x_mean) * va_w[:, None].astype(X.dtype)
    s, L, R = _decompose(Xtr, dual=dual, method=method)
    A = Xva @ R  # padding rows are zero
    keep = dict(R=R, L=jnp.zeros((0, R.shape[1]), R.dtype)) if atoms else {}  # B from products: no L
    if not compact:
        return _Basis(s, L, A, x_mean)._replace(**keep)
    a_mean = None
    if centre:  # Pearson r compares centred predictions: factor the centred design
        vw = va_w[:, None].astype(X.dtype)
        a_mean = A.sum(0) / va_w.sum().astype(X.dtype)
        A = (A - a_mean) * vw
    Q, Ra = jnp.linalg.qr(A)
    return _Basis(s, L, Ra, x_mean, Q, a_mean)._replace(**keep)


def _full_basis(X, *, fit_intercept: bool, dual: bool, method: str) -> _Basis:
    x_mean = X.mean(0) if fit_intercept else jnp.zeros(X.shape[1], X.dtype)
    s, L, R = _decompose(X - x_mean, dual=dual, method=method)
    return _Basis(s, L, R, x_mean)


def _fold_targets(Y, tr_idx, tr_w, va_idx, va_w, *, fit_intercept, score, compact, y_mean=None):
    """The Y-side work of one fold, shared by every feature space: centred training targets
    ``(m, t)`` (padding rows zero), their mean ``(t,)``, the validation targets ``(v, t)`` and,
    for compact scoring, the validation residuals the predictions are compared with ``(v, t)``
    (centred on the training mean, or on their own mean for Pearson r; padding rows zero).
    Given ``y_mean`` (training products from atoms), the training slice is not formed (``None``)."""
    w = tr_w[:, None].astype(Y.dtype)
    if y_mean is not None:  # training-side products come from the atoms (see _atom_products)
        Ytr = None
    elif fit_intercept:
        Ytr = Y[tr_idx]
        y_mean = (Ytr * w).sum(0) / tr_w.sum().astype(Y.dtype)
        Ytr = (Ytr - y_mean) * w
    else:
        y_mean = jnp.zeros(Y.shape[1], Y.dtype)
        Ytr = Y[tr_idx] * w
    Yva = Y[va_idx]
    if not compact:
        return Ytr, y_mean, Yva, None
    vw = va_w[:, None].astype(Y.dtype)
    centre = (vw * Yva).sum(0) / va_w.sum().astype(Y.dtype) if score == "r" else y_mean
    return Ytr, y_mean, Yva, (Yva - centre) * vw


def _triangular_predictions(Ra, inv, B):
    """``(lo, hi, P)`` for the row blocks of ``Ra D B`` of every alpha, ``P (n_alphas, hi - lo, t)``.

    ``Ra`` is upper triangular (trapezoidal when it has fewer rows than columns), so rows
    ``lo:hi`` only need columns ``lo:``: 16 blocks do ~53% of the flops of one full product, and
    the smaller products also keep their outputs in cache while they are reduced.
    """
    n_alphas, r = inv.shape
    for lo, hi in _row_blocks(Ra.shape[0]):
        As = (Ra[lo:hi, lo:][None] * inv[:, None, lo:]).reshape(n_alphas * (hi - lo), r - lo)
        yield lo, hi, (As @ B[lo:]).reshape(n_alphas, hi - lo, -1)


def _fold_scores(basis: _Basis, B, targets, va_w, alphas, *, score, convention, normalize):
    """Validation scores ``(n_alphas, t)`` of one fold and one feature space.

    Direct form: the predictions of every alpha are one matmul ``(n_alphas * n_val, r) x (r, t)``.
    Compact form (``basis.Q`` set; fewer components than validation samples): with the
    validation design ``A = Q Ra``, the predictions ``A D B`` (``D = diag(1/(s + lam))``) lie in
    the span of ``Q``, so with ``z = Q' yc`` every score follows from ``Ra D B`` and ``z``:
    ``||yc - A D B||² = ||yc||² - ||z||² + ||z - Ra D B||²``, computed in row blocks of the
    triangular ``Ra`` (about ``n_alphas * r² / 2`` multiply-adds per target).
    """
    _, y_mean, Yva, yc = targets
    lams = _penalties(alphas, basis.s, convention, normalize).astype(Yva.dtype)
    n_alphas, (rows, r) = lams.shape[0], basis.A.shape
    inv = 1.0 / (basis.s[None, :] + lams[:, None])  # (n_alphas, r)
    if basis.Q is None:
        # every alpha in one matmul: rows are (alpha, validation sample)
        As = (basis.A[None] * inv[:, None, :]).reshape(n_alphas * rows, r)
        pred = (As @ B).reshape(n_alphas, rows, -1)
        return SCORERS[score](Yva, pred + y_mean, va_w)
    z = basis.Q.T @ yc  # (rows, t)
    blocks = _triangular_predictions(basis.A, inv, B)
    if score == "r":
        sab = sbb = 0.0
        for lo, hi, P in blocks:
            sab = sab + (z[lo:hi] * P).sum(-2)
            sbb = sbb + (P * P).sum(-2)
        n = jnp.maximum(va_w.sum(), 1.0).astype(Yva.dtype)
        mean_pred = (basis.a_mean * inv) @ B + y_mean  # (n_alphas, t)
        return pearson_from_sums(Yva, sab, sbb, sbb + n * mean_pred**2, va_w)
    outside = jnp.maximum((yc * yc).sum(0) - (z * z).sum(0), 0.0)  # the part of yc no prediction reaches
    sse = outside
    for lo, hi, P in blocks:
        sse = sse + ((z[lo:hi] - P) ** 2).sum(-2)
    if score == "neg_mse":
        return -sse / jnp.maximum(va_w.sum(), 1.0).astype(Yva.dtype)
    return r2_from_sse(Yva, sse, va_w)


def _atom_products(X, Y, atom_idx, atom_w, *, fit_intercept):
    """Per-atom products of the designs and targets, for forming every fold's ``Xc'Yc``.

    An atom is a set of samples that belong to the same training sets (for leave-one-run-out
    and contiguous folds: each validation block). Returns the atoms' sample counts ``(a,)``,
    their means ``mu (S, a, p)`` and ``nu (a, t)`` and their within-atom products
    ``P (S, a, p, t)`` (centred on the atom's own means with an intercept; raw without).
    """
    w = atom_w[..., None].astype(Y.dtype)  # (a, m, 1); padding rows weigh 0
    cnt = jnp.maximum(atom_w.sum(1), 1.0).astype(Y.dtype)
    Ya = Y[atom_idx] * w  # (a, m, t)
    Xa = X[:, atom_idx] * w  # (S, a, m, p)
    nu = Ya.sum(1) / cnt[:, None]
    mu = Xa.sum(2) / cnt[None, :, None]
    if fit_intercept:
        Ya = (Ya - nu[:, None]) * w
        Xa = (Xa - mu[:, :, None]) * w
    return cnt, mu, nu, jnp.einsum("samp,amt->sapt", Xa, Ya)


def _atom_fold(products, member, x_mean, *, fit_intercept):
    """A fold's ``Xc'Yc (S, p, t)`` and training-target mean ``(t,)`` from the products of the
    atoms it trains on (``member (a,)`` 0/1): the within-atom products plus, with an intercept,
    each atom's mean offset from the fold's means (exact, whatever those means are)."""
    cnt, mu, nu, P = products
    cm = member.astype(P.dtype) * cnt
    S = jnp.einsum("a,sapt->spt", member.astype(P.dtype), P)
    if not fit_intercept:
        return S, jnp.zeros(P.shape[-1], P.dtype)
    y_mean = cm @ nu / cm.sum()
    dx = mu - x_mean[:, None, :]  # (S, a, p)
    S = S + jnp.einsum("sap,at->spt", dx * cm[None, :, None], nu - y_mean)
    return S, y_mean


def _refit(basis: _Basis, Y, best_alpha, *, fit_intercept, convention, normalize):
    y_mean = Y.mean(0) if fit_intercept else jnp.zeros(Y.shape[1], Y.dtype)
    B = basis.L.T @ (Y - y_mean)  # (r, t)
    lam = _penalties(best_alpha, basis.s, convention, normalize).astype(Y.dtype)
    W = basis.A @ (B / (basis.s[:, None] + lam[None, :]))  # (p, t)
    return W, y_mean - basis.x_mean @ W


class _Programs(NamedTuple):
    fold_bases: object
    full_basis: object
    cv_step: object
    select_refit: object


@functools.lru_cache(maxsize=32)
def _programs(
    mesh: Mesh,
    *,
    fit_intercept: bool,
    dual: bool,
    method: str,
    score: str,
    convention: str,
    normalize: bool,
    options: tuple = (),
    compact: bool = False,
    atoms: bool = False,
) -> _Programs:
    """The four compiled programs of one problem configuration, sharded over ``mesh``.

    Decompositions are replicated (every device computes them from the replicated design);
    everything that touches targets runs under ``shard_map`` on each device's own columns.
    """
    rep, t2, t3 = P(), P(None, TARGETS), P(None, None, TARGETS)
    smap = partial(jax.shard_map, mesh=mesh, check_vma=False)
    basis_fn = partial(
        _fold_basis,
        fit_intercept=fit_intercept,
        dual=dual,
        method=method,
        compact=compact,
        centre=score == "r",
        atoms=atoms,
    )

    def fold_bases(X, tr_idx, tr_w, va_idx, va_w):
        # all folds of a chunk at once (vmap, not lax.map: the loop compiles 3x slower); the
        # memory plan counts the decomposition temporaries of every fold in the chunk
        spaces = jax.vmap(basis_fn, in_axes=(0, None, None, None, None))
        return jax.vmap(spaces, in_axes=(None, 0, 0, 0, 0))(X, tr_idx, tr_w, va_idx, va_w)

    def full_basis(X):
        return jax.vmap(partial(_full_basis, fit_intercept=fit_intercept, dual=dual, method=method))(X)

    targets_fn = partial(_fold_targets, fit_intercept=fit_intercept, score=score, compact=compact)
    scores = jax.vmap(  # over feature spaces; the fold's targets are shared
        partial(_fold_scores, score=score, convention=convention, normalize=normalize),
        in_axes=(0, 0, None, None, None),
    )

    def cv_step(bases, X, Y, acc, tr_idx, tr_w, va_idx, va_w, fold_w, alphas, atom_idx, atom_w, member):
        products = _atom_products(X, Y, atom_idx, atom_w, fit_intercept=fit_intercept) if atoms else None

        def body(acc, f):
            basis, ti, tw, vi, vw, fw, m = f
            if atoms:  # B = R' Xc'Yc from the atoms' products: no training slice of Y
                S, y_mean = _atom_fold(products, m, basis.x_mean, fit_intercept=fit_intercept)
                targets = targets_fn(Y, ti, tw, vi, vw, y_mean=y_mean)
                B = jnp.einsum("spr,spt->srt", basis.R, S)
            else:
                targets = targets_fn(Y, ti, tw, vi, vw)
                B = jnp.einsum("smr,mt->srt", basis.L, targets[0])
            return acc + fw * scores(basis, B, targets, vw, alphas), None

        xs = (bases, tr_idx, tr_w, va_idx, va_w, fold_w, member)
        return jax.lax.scan(body, acc, xs)[0]

    refit = jax.vmap(
        partial(_refit, fit_intercept=fit_intercept, convention=convention, normalize=normalize),
        in_axes=(0, None, 0),
    )

    def select_refit(full, Y, acc, alphas, inv_n_folds):
        cv = acc * inv_n_folds
        best = jnp.argmax(cv, axis=1)  # (n_spaces, t): the first maximum wins ties
        best_alpha = alphas[best]
        W, c = refit(full, Y, best_alpha)
        return W, c, best_alpha, cv

    jit = partial(jax.jit, compiler_options=dict(options) or None)
    return _Programs(
        fold_bases=jit(smap(fold_bases, in_specs=rep, out_specs=rep)),
        full_basis=jit(smap(full_basis, in_specs=rep, out_specs=rep)),
        cv_step=jit(smap(cv_step, in_specs=(rep, rep, t2, t3, *[rep] * 9), out_specs=t3)),
        select_refit=jit(smap(select_refit, in_specs=(rep, t2, t3, rep, rep), out_specs=(t3, t2, t2, t3))),
    )


def _pad_index_sets(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack index sets of unequal size into (n_sets, max_len) with 0/1 weights for padding."""
    m = max(len(s) for s in sets)
    idx = np.zeros((len(sets), m), dtype=np.int32)
    w = np.zeros((len(sets), m), dtype=np.float32)
    for k, s in enumerate(sets):
        idx[k, : len(s)] = s
        w[k, : len(s)] = 1.0
    return idx, w


def default_memory_budget() -> int:
    """Bytes that one fit may use per device: 40% of a GPU/TPU's memory limit, or 25% of the
    host's physical memory on CPU."""
    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(0.4 * stats["bytes_limit"])
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(0.25 * total)


class _Plan(NamedTuple):
    fold_chunk: int  # fold decompositions held on the device at once
    batch_size: int  # targets per batch, over all devices (a multiple of n_devices)
    budget: int


def _plan(
    *,
    n_spaces,
    n_samples,
    n_features,
    n_train,
    n_val,
    n_alphas,
    n_folds,
    n_targets,
    itemsize,
    memory_budget,
    n_devices=1,
    wide_decomposition=False,
    platform=None,
    atoms=None,
) -> _Plan:
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget: expected a positive number of bytes, got {budget}")
    p, S = n_features, n_spaces
    r = min(p, max(n_train, 1))
    r_full = min(p, n_samples)
    dec_item = 8 if wide_decomposition else itemsize
    # replicated on every device: the designs, the full-data basis and its decomposition's
    # temporaries (centred copy, Gram matrix, eigenvectors), the per-alpha scaled A
    base = itemsize * S * (n_samples * p + n_samples * r_full + p * r_full + n_samples * p)
    base += dec_item * S * 2 * r_full**2 + itemsize * S * n_alphas * n_val * r
    # per fold held at once: its basis plus, while decomposing, the same temporaries
    per_fold = itemsize * S * (n_train * r + n_val * r + r + p + (n_train + n_val) * p)
    per_fold += dec_item * S * 2 * r**2
    platform = jax.default_backend() if platform is None else platform
    compact = _compact(r, n_val, n_alphas, -(-n_targets // n_devices), platform)
    if compact:  # QR factors of the validation design
        per_fold += itemsize * S * (n_val * r + r * r + r)
    # per target and device: the Y batch, its training/validation slices, B, the predictions
    # of every alpha (and a fused temporary), scores and accumulators, the refitted weights
    per_target = itemsize * (
        n_samples + n_train + n_val + S * (3 * r + p + 2 * n_alphas * n_val + 4 * n_alphas + 2)
    )
    if atoms is not None:  # (n_atoms, rows): their slices of Y, products and a fold's sum of them
        n_atoms, rows = atoms
        per_fold += itemsize * S * p * r
        per_target += itemsize * (n_atoms * rows + S * (n_atoms + 1) * p)
    fold_chunk = int(min(n_folds, max(1, (budget // 2 - base) // max(per_fold, 1))))
    room = budget - base - fold_chunk * per_fold
    if room < 2 * per_target:
        need = base + per_fold + 2 * per_target
        raise ValueError(
            f"memory_budget: {budget} bytes per device cannot hold this problem's decompositions "
            f"({base + per_fold} bytes for {S} space(s)) plus one target in each of two batches in "
            f"flight ({2 * per_target} bytes); "
            f"raise it to at least {need} bytes or fit fewer spaces at once"
        )
    # two batches are in flight at once (the next computes while the last is fetched)
    per_device = int(min(room // (2 * per_target), -(-n_targets // n_devices)))
    return _Plan(fold_chunk, max(1, per_device) * n_devices, budget)


def target_batch_size(
    *,
    n_spaces: int,
    n_samples: int,
    n_features: int,
    n_train: int,
    n_val: int,
    n_alphas: int,
    n_folds: int,
    n_targets: int,
    itemsize: int = 4,
    memory_budget: int | None = None,
    n_devices: int = 1,
) -> int:
    """Number of targets per batch (over ``n_devices`` devices) so that one batch of the fit
    stays within ``memory_budget`` bytes per device.

    Fixed cost per device: the designs, the decompositions of the full data and of as many
    folds as fit in half the budget. Per-target cost: the batch of Y and its slices, ``B``, the
    validation predictions of every alpha, scores and accumulators, and the refitted weights.
    A fit that forms its training products from atoms (few features; see the module notes)
    also holds ``(n_atoms + 1) * n_features`` values per target and space, so its batches are
    at most this size. Raises ``ValueError`` (naming ``memory_budget``) when not even one target
    fits.
    """
    return _plan(
        n_spaces=n_spaces,
        n_samples=n_samples,
        n_features=n_features,
        n_train=n_train,
        n_val=n_val,
        n_alphas=n_alphas,
        n_folds=n_folds,
        n_targets=n_targets,
        itemsize=itemsize,
        memory_budget=memory_budget,
        n_devices=n_devices,
    ).batch_size


def fit_ridge_cv(
    X,
    Y,
    *,
    alphas,
    folds,
    fit_intercept: bool = True,
    score: Score = "r2",
    alpha_convention: Convention = "sklearn",
    normalize_alpha: bool = False,
    memory_budget: int | None = None,
    batch_size: int | None = None,
    decomposition: Decomposition = "eigh",
    mesh: Mesh | None = None,
    precision: str = "highest",
) -> RidgeFit:
    """Fit ridge regression with a cross-validated alpha for every target.

    Parameters
    ----------
    X : (n_samples, n_features) or (n_spaces, n_samples, n_features)
        Design matrix, or a stack of feature spaces sharing samples (e.g. every layer of a model);
        each space gets its own fit, all in the same compiled programs.
    Y : (n_samples, n_targets) responses (e.g. voxels).
    alphas : (n_alphas,) positive penalties to search.
    folds : sequence of ``(train_idx, val_idx)``, e.g. from :func:`group_folds` or :func:`block_folds`.
    fit_intercept : centre X and Y on each training set and fit an intercept.
    score : validation criterion averaged over folds to select alpha: ``"r2"``, ``"r"``
        (Pearson) or ``"neg_mse"``.
    alpha_convention : ``"sklearn"`` (penalty ``alpha``) or ``"huth"`` (penalty ``alpha**2``).
    normalize_alpha : with ``"huth"``, multiply alpha by the largest singular value of the design.
    memory_budget : bytes one batch may use per device; default from the device (see
        :func:`default_memory_budget`). Targets are processed in batches that fit.
    batch_size : force the number of targets per batch (overrides ``memory_budget``).
    decomposition : ``"eigh"`` (Gram eigendecomposition; float64 when ``jax_enable_x64`` is on)
        or ``"svd"`` (SVD of the design; robust to ill-conditioning in float32, slower).
    mesh : a :class:`jax.sharding.Mesh` with one axis ``"targets"`` to shard targets over;
        default all devices (:func:`~brainalign.encoders.sharding.target_mesh`).
    precision : matmul precision (``jax.default_matmul_precision``); ``"highest"`` keeps full
        float32 on GPUs/TPUs, ``"default"`` allows TF32/bfloat16 passes there.

    Returns
    -------
    RidgeFit with ``coef (..., n_features, n_targets)``, ``intercept (..., n_targets)``,
    ``best_alpha (..., n_targets)``, ``cv_scores (..., n_alphas, n_targets)``. Ties in the mean
    validation score go to the first alpha in ``alphas``.
    """
    X = as_float_array("X", X, ndim=(2, 3))
    Y = as_float_array("Y", Y, ndim=2)
    batched = X.ndim == 3
    Xs = X if batched else X[None]
    n_spaces, n, p = Xs.shape
    if 0 in Xs.shape:
        raise ValueError(f"X: expected non-empty (n_spaces, n_samples, n_features), got shape {X.shape}")
    if Y.shape[0] != n:
        raise ValueError(f"Y: expected {n} samples (rows) to match X, got {Y.shape[0]}")
    if Y.shape[1] == 0:
        raise ValueError(f"Y: expected at least one target (column), got shape {Y.shape}")
    if score not in SCORERS:
        raise ValueError(f"score: expected one of {sorted(SCORERS)}, got {score!r}")
    if alpha_convention not in ("sklearn", "huth"):
        raise ValueError(f"alpha_convention: expected 'sklearn' or 'huth', got {alpha_convention!r}")
    if decomposition not in ("eigh", "svd"):
        raise ValueError(f"decomposition: expected 'eigh' or 'svd', got {decomposition!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    alphas_np = check_alphas(alphas)
    folds = check_folds(folds, n)
    mesh = check_mesh(mesh)
    n_dev = mesh.devices.size
    x64 = bool(jax.config.jax_enable_x64)
    # float64 only when the caller enabled it in JAX; otherwise the device works in float32
    wide = np.result_type(Xs.dtype, Y.dtype) == np.float64 and x64
    dtype = np.dtype(np.float64 if wide else np.float32)
    method = "svd" if decomposition == "svd" else ("eigh64" if x64 else "eigh")
    Xs = Xs.astype(dtype, copy=False)
    n_targets = Y.shape[1]

    tr_idx, tr_w = _pad_index_sets([f[0] for f in folds])
    va_idx, va_w = _pad_index_sets([f[1] for f in folds])
    n_folds, n_train, n_val = len(folds), tr_idx.shape[1], va_idx.shape[1]
    dual = p > n_train
    platform = mesh.devices.flat[0].platform
    compact = _compact(min(p, n_train), n_val, alphas_np.size, -(-n_targets // n_dev), platform)
    found = None if dual else _train_atoms(folds, n)

    def plan_for(atoms):
        return _plan(
            n_spaces=n_spaces,
            n_samples=n,
            n_features=p,
            n_train=n_train,
            n_val=n_val,
            n_alphas=alphas_np.size,
            n_folds=n_folds,
            n_targets=n_targets,
            itemsize=dtype.itemsize,
            memory_budget=memory_budget,
            n_devices=n_dev,
            wide_decomposition=method == "eigh64",
            platform=platform,
            atoms=atoms,
        )

    atoms = None
    if found is not None:
        atom_idx, atom_w = _pad_index_sets(found[0])
        plan = plan_for(atom_idx.shape)
        n_chunks = -(-n_folds // plan.fold_chunk)
        if _atoms_pay(atom_idx.size, len(found[0]), p, p, n_train, n_folds, n_chunks):
            atoms = found
    if atoms is None:
        plan = plan_for(None)
        atom_idx, atom_w = np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32)
        member = np.zeros((n_folds, 1), np.float32)
    else:
        member = atoms[1]
    if batch_size is None:
        bs = plan.batch_size
    else:  # rounded up to a multiple of the device count so every device gets equal columns
        bs = -(-min(int(batch_size), n_targets) // n_dev) * n_dev
    n_batches = -(-n_targets // bs)
    chunk = plan.fold_chunk
    n_chunks = -(-n_folds // chunk)
    progs = _programs(
        mesh,
        fit_intercept=bool(fit_intercept),
        dual=dual,
        method=method,
        score=score,
        convention=alpha_convention,
        normalize=bool(normalize_alpha),
        options=compiler_options(platform),
        compact=compact,
        atoms=atoms is not None,
    )

    def y_batch(b: int) -> jax.Array:
        # padded to one shape so one compiled program serves every batch
        cols = Y[:, b * bs : (b + 1) * bs]
        if cols.shape[1] < bs or cols.dtype != dtype:
            buf = np.zeros((n, bs), dtype=dtype)
            buf[:, : cols.shape[1]] = cols
            cols = buf
        return shard_targets(cols, mesh)

    def fold_chunk(c: int):
        # the last chunk is padded with repeats of fold 0 whose scores get weight 0
        ks = np.arange(c * chunk, (c + 1) * chunk)
        fw = (ks < n_folds).astype(dtype)
        ks = np.where(ks < n_folds, ks, 0)
        return tr_idx[ks], tr_w[ks], va_idx[ks], va_w[ks], fw, member[ks]

    coef = np.empty((n_spaces, p, n_targets), dtype=dtype)
    intercept = np.empty((n_spaces, n_targets), dtype=dtype)
    best_alpha = np.empty((n_spaces, n_targets), dtype=dtype)
    cv = np.empty((n_spaces, alphas_np.size, n_targets), dtype=dtype)

    def collect(b: int, out) -> None:
        t0, t1 = b * bs, min((b + 1) * bs, n_targets)
        for dst, a in zip((coef, intercept, best_alpha, cv), out, strict=True):
            dst[..., t0:t1] = to_host(a)[..., : t1 - t0]

    with jax.default_matmul_precision(precision):
        Xj = replicate(Xs, mesh)
        alphas_j = replicate(alphas_np.astype(dtype), mesh)
        atom_idx_j, atom_w_j = replicate(atom_idx, mesh), replicate(atom_w.astype(dtype), mesh)
        inv_n = replicate(np.asarray(1.0 / n_folds, dtype=dtype), mesh)
        acc0 = np.zeros((n_spaces, alphas_np.size, bs), dtype=dtype)
        accs = [shard_targets(acc0, mesh) for _ in range(n_batches)]
        y_cache = {}
        for c in range(n_chunks):
            ti, tw, vi, vw, fw, mc = (replicate(a, mesh) for a in fold_chunk(c))
            bases = progs.fold_bases(Xj, ti, tw, vi, vw)
            for b in range(n_batches):
                Yb = y_cache[b] if b in y_cache else y_batch(b)
                if n_batches == 1:  # one batch: upload Y once for every chunk and the refit
                    y_cache[b] = Yb
                accs[b] = progs.cv_step(
                    bases, Xj, Yb, accs[b], ti, tw, vi, vw, fw, alphas_j, atom_idx_j, atom_w_j, mc
                )
                if b > 0:  # at most two batches in flight, as the memory plan assumes
                    accs[b - 1].block_until_ready()
            del bases
        full = progs.full_basis(Xj)
        pending = None
        for b in range(n_batches):
            Yb = y_cache[b] if b in y_cache else y_batch(b)
            out = progs.select_refit(full, Yb, accs[b], alphas_j, inv_n)
            accs[b] = None
            if pending is not None:  # fetch the previous batch while this one computes
                collect(*pending)
            pending = (b, out)
        collect(*pending)

    out = RidgeFit(coef, intercept, best_alpha, cv)
    return out if batched else RidgeFit(*(a[0] for a in out))


def predict(fit: RidgeFit, X) -> np.ndarray:
    """Predictions ``X @ coef + intercept``.

    Parameters
    ----------
    fit : a :class:`RidgeFit`; batched fits need batched ``X``.
    X : (n_samples, n_features) or (n_spaces, n_samples, n_features)

    Returns
    -------
    (..., n_samples, n_targets)
    """
    coef = np.asarray(fit.coef)
    X = as_float_array("X", X, ndim=coef.ndim)
    if X.shape[:-2] != coef.shape[:-2] or X.shape[-1] != coef.shape[-2]:
        raise ValueError(
            f"X: expected shape {(*coef.shape[:-2], 'n_samples', coef.shape[-2])}, got {X.shape}"
        )
    with jax.default_matmul_precision("highest"):
        out = jnp.matmul(jnp.asarray(X, coef.dtype), coef) + jnp.asarray(fit.intercept)[..., None, :]
    return np.asarray(out)
