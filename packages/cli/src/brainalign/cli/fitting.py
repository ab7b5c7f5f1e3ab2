"""Fit encoding models of brain responses from feature spaces and write per-voxel scores.

One call fits every selected (model, instruction, component, layer, pooling) space in one
batched ``fit_ridge_cv``: cross-validation by training runs (leave one run out), alpha chosen
per voxel, and scores on held-out test runs.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa

from brainalign.encoders import (
    block_folds,
    fit_ridge_cv,
    group_folds,
    normalize,
    pearson_r,
    predict,
    r2_score,
)
from brainalign.features import FeatureStore, Table, create_table, open_table

from .align import (
    AlignmentPreset,
    get_preset,
    keep_mask,
    pca_train,
    prepare_design,
    standardize_train,
    zscore_by_run,
)
from .join import join_features_responses
from .progress import tick

DEFAULT_ALPHAS = tuple(np.logspace(-1, 5, 13).tolist())


@dataclass
class FitSummary:
    """What a fit did: sizes, timings (seconds) and where the scores went."""

    fit: str
    subject: str
    n_spaces: int
    n_voxels: int
    n_train: int
    n_test: int
    train_runs: list[str]
    test_runs: list[str]
    device: str
    scores_uri: str
    scores_version: int
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    preset: dict = field(default_factory=dict)
    folds: str = ""
    n_features: int = 0


def device_description() -> str:
    """The JAX devices the fit runs on, e.g. ``'cpu (1 device)'`` or ``'gpu: NVIDIA H100 x1'``."""
    devs = jax.devices()
    kind = devs[0].platform
    if kind == "cpu":
        return f"cpu ({len(devs)} device{'s' if len(devs) > 1 else ''})"
    return f"{kind}: {getattr(devs[0], 'device_kind', kind)} x{len(devs)}"


def make_folds(spec: str, runs_train: np.ndarray) -> tuple[list, str]:
    """Cross-validation folds over the training samples.

    ``spec``: ``"runs"`` (leave one training run out; contiguous 5 blocks if only one run) or
    ``"blocks:K"`` (K contiguous blocks over the training samples, in time order).
    """
    n_runs = len(dict.fromkeys(runs_train.tolist()))
    if spec == "runs":
        if n_runs > 1:
            return group_folds(runs_train), f"leave-one-run-out ({n_runs} runs)"
        return block_folds(len(runs_train), 5), "5 contiguous blocks (one training run)"
    if spec.startswith("blocks:") and spec[7:].isdigit():
        k = int(spec[7:])
        return block_folds(len(runs_train), k), f"{k} contiguous blocks"
    raise ValueError(f"folds: expected 'runs' or 'blocks:K' (e.g. blocks:5), got {spec!r}")


def load_ceiling(ceiling, n_vox: int) -> np.ndarray:
    """A per-voxel ceiling (in r units) from an array or a ``.npy`` file; NaN when None."""
    if ceiling is None:
        return np.full(n_vox, np.nan, np.float32)
    if isinstance(ceiling, (str, Path)):
        path = Path(ceiling)
        if not path.exists():
            raise ValueError(f"ceiling: no such file {path}")
        ceiling = np.load(path, allow_pickle=False)
    ceil = np.asarray(ceiling, np.float32).reshape(-1)
    if ceil.shape != (n_vox,):
        raise ValueError(f"ceiling: expected shape ({n_vox},) (one value per voxel), got {np.shape(ceiling)}")
    return ceil


def _repeat_strings(values: list, n_each: int) -> pa.Array:
    """``[v0]*n_each + [v1]*n_each + ...`` as a string array, without a Python list of rows."""
    uniq = list(dict.fromkeys(values))
    codes = np.repeat(np.array([uniq.index(v) for v in values], dtype=np.int32), n_each)
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(uniq, pa.string())).cast(pa.string())


def scores_table(
    fit_name: str,
    dataset: str,
    subject: str,
    spaces: list[dict],
    r,
    r2,
    alpha,
    ceiling,
    r_norm,
    split: str = "test",
    cv_score=None,
) -> pa.Table:
    """Rows of the scores table: one per (space, voxel); arrays are ``(n_spaces, n_voxels)``.
    ``cv_score``: the mean validation score over training folds at the chosen alpha (null if
    not given)."""
    n_spaces, n_vox = r.shape
    cv = (
        np.full(n_spaces * n_vox, np.nan, np.float32)
        if cv_score is None
        else np.asarray(cv_score, np.float32)
    )
    n = n_spaces * n_vox

    def const(v):
        return _repeat_strings([v], n)

    ceil = np.tile(ceiling, n_spaces)
    rn = np.asarray(r_norm, np.float32).ravel()
    return pa.table(
        {
            "fit": const(fit_name),
            "dataset": const(dataset),
            "subject": const(subject),
            "model": _repeat_strings([s["model"] for s in spaces], n_vox),
            "instruction_id": _repeat_strings([s["instruction_id"] for s in spaces], n_vox),
            "component": _repeat_strings([s["component"] for s in spaces], n_vox),
            "layer": pa.array(np.repeat(np.array([s["layer"] for s in spaces], np.int16), n_vox)),
            "pooling": _repeat_strings([s["pooling"] for s in spaces], n_vox),
            "voxel": pa.array(np.tile(np.arange(n_vox, dtype=np.int32), n_spaces)),
            "split": const(split),
            "r": pa.array(np.asarray(r, np.float32).ravel()),
            "r2": pa.array(np.asarray(r2, np.float32).ravel()),
            "alpha": pa.array(np.asarray(alpha, np.float32).ravel()),
            "ceiling": pa.array(ceil, mask=~np.isfinite(ceil)),
            "r_norm": pa.array(rn, mask=~np.isfinite(rn)),
            "cv_score": pa.array(cv.ravel(), mask=~np.isfinite(cv.ravel())),
        }
    )


def _open_inputs(features, responses):
    for arg, t in (("features", features), ("responses", responses)):
        if isinstance(t, (str, Path)) and not Path(t).exists():
            raise ValueError(
                f"{arg}: no table at {t} (pass --{arg} or set [tables] {arg} in brainalign.toml)"
            )
    fs = features if isinstance(features, FeatureStore) else open_table(features)
    if not isinstance(fs, FeatureStore):
        raise ValueError(f"features: {fs.uri} is a {fs.table_kind} table, not a features table")
    rs = responses if isinstance(responses, Table) else open_table(responses)
    if rs.table_kind != "responses":
        raise ValueError(f"responses: {rs.uri} is a {rs.table_kind} table, not a responses table")
    return fs, rs


def split_runs(all_runs: list[str], test_runs: Sequence[str]) -> tuple[list[str], list[str]]:
    test_runs = [str(r) for r in test_runs]
    unknown = [r for r in test_runs if r not in all_runs]
    if unknown or not test_runs:
        raise ValueError(f"test_runs: expected a non-empty subset of the runs {all_runs}, got {test_runs}")
    train_runs = [r for r in all_runs if r not in test_runs]
    if not train_runs:
        raise ValueError(f"test_runs: every run {all_runs} is a test run; leave at least one to train on")
    return train_runs, test_runs


def design(X: np.ndarray, runs: np.ndarray, train: np.ndarray, pre: AlignmentPreset) -> np.ndarray:
    """Standardisation with training statistics, PCA (fitted on ``train`` rows), then
    z-scoring per run and delays: ``(n_spaces, n, p)``.

    Standardising first lets every feature weigh the same in the components, so that a few
    very large dimensions (LLM hidden states have some) do not make up the first components.
    """
    if pre.standardize:
        X = standardize_train(X, train)
    if pre.pca:
        X = pca_train(X, train, pre.pca)
    return prepare_design(X, runs, pre)


def fit_scores(
    features: str | Path | FeatureStore,
    responses: str | Path | Table,
    scores: str | Path,
    *,
    fit_name: str,
    test_runs: Sequence[str],
    subject: str | None = None,
    model=None,
    instruction=None,
    layer=None,
    component=None,
    pooling=None,
    where: str | None = None,
    preset: str | AlignmentPreset = "fir4",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: str = "runs",
    ceiling=None,
    min_ceiling: float = 0.0,
    allow_trim: bool = False,
    weights: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> FitSummary:
    """Join, align, fit and score; append one row per (space, voxel) to the scores table.

    Parameters
    ----------
    features, responses : Lance table locations or open handles.
    scores : location of the scores table (created if missing; rows with the same keys are
        replaced, so refitting under the same ``fit_name`` is idempotent).
    test_runs : runs held out for scoring; the other runs train, with CV by ``folds``.
    preset : a preset name (:data:`brainalign.cli.align.PRESETS`) or an :class:`AlignmentPreset`.
    folds : ``"runs"`` (leave one training run out) or ``"blocks:K"`` (contiguous blocks).
    ceiling : optional (n_voxels,) noise ceiling in r units, or a ``.npy`` path;
        ``r_norm = r / ceiling`` where ``ceiling >= min_ceiling`` (and > 0), else null.
    weights : optional ``.npz`` path for the fitted weights: ``coef (n_spaces, n_features,
        n_voxels)`` (features ordered delay-major: block ``k`` holds delay ``delays[k]``),
        ``intercept``, ``best_alpha``, ``delays`` and ``spaces`` (JSON).
    progress : called with a message per stage (join, align, fit, write); a
        :class:`brainalign.cli.progress.Progress` also gets the stage count.

    Every selected (model, instruction, component, layer, pooling) space is fitted in one
    batched :func:`brainalign.encoders.fit_ridge_cv` call.
    """
    t0 = time.perf_counter()
    if isinstance(ceiling, (str, Path)) and not Path(ceiling).exists():
        raise ValueError(f"ceiling: no such file {ceiling}")  # before the long steps
    fs, rs = _open_inputs(features, responses)
    pre = preset if isinstance(preset, AlignmentPreset) else get_preset(preset)
    stage = functools.partial(tick, progress, "fit", total=4, unit="stage")
    stage(0, message="joining features and responses on (stimulus_set, run, tr)")
    j = join_features_responses(
        fs,
        rs,
        subject=subject,
        model=model,
        instruction=instruction,
        layer=layer,
        component=component,
        pooling=pooling,
        where=where,
        allow_trim=allow_trim,
        lanczos_window=pre.lanczos_window,
    )
    all_runs = list(dict.fromkeys(j.runs.tolist()))
    train_runs, test_runs = split_runs(all_runs, test_runs)
    t_join = time.perf_counter()

    stage(
        1,
        message=f"aligning with preset {pre.name!r} (delays {list(pre.delays)}, pca {pre.pca}, "
        f"trim {pre.trim_start}/{pre.trim_end})",
    )
    keep = keep_mask(j.runs, pre.trim_start, pre.trim_end)
    is_test = np.isin(j.runs, test_runs)
    test, train = is_test & keep, ~is_test & keep
    X = design(j.X, j.runs, ~is_test, pre)
    Y = zscore_by_run(j.Y, j.runs) if pre.zscore else j.Y
    Xtr, Ytr, runs_tr = X[:, train], Y[train], j.runs[train]
    Xte, Yte = X[:, test], Y[test]
    del X
    fold_idx, fold_desc = make_folds(folds, runs_tr)
    t_align = time.perf_counter()

    device = device_description()
    stage(
        2,
        message=f"fitting {Xtr.shape[0]} feature space(s) x {Xtr.shape[2]} features x {Y.shape[1]:,} voxels "
        f"on {device}",
    )
    fit = fit_ridge_cv(Xtr, Ytr, alphas=alphas, folds=fold_idx)
    pred = predict(fit, Xte)  # (n_spaces, n_test, n_voxels)
    r = np.stack([np.asarray(pearson_r(Yte, p)) for p in pred])
    r2 = np.stack([np.asarray(r2_score(Yte, p)) for p in pred])
    t_fit = time.perf_counter()
    if weights is not None:
        np.savez(
            weights,
            coef=fit.coef,
            intercept=fit.intercept,
            best_alpha=fit.best_alpha,
            delays=np.asarray(pre.delays),
            spaces=json.dumps(j.spaces, default=str),
        )

    n_spaces, n_vox = r.shape
    ceil = load_ceiling(ceiling, n_vox)
    r_norm = (
        normalize(r, ceil, min_ceiling=min_ceiling) if np.isfinite(ceil).any() else np.full_like(r, np.nan)
    )
    cv_score = np.asarray(fit.cv_scores).max(axis=-2)  # the score of the chosen alpha, per voxel
    table = scores_table(
        fit_name, j.dataset, j.subject, j.spaces, r, r2, fit.best_alpha, ceil, r_norm, cv_score=cv_score
    )
    stage(3, message=f"writing {len(table):,} score rows")
    provenance = {
        "fit": fit_name,
        "features": str(fs.uri),
        "features_version": fs.version,
        "responses": str(rs.uri),
        "responses_version": rs.version,
        "preset": asdict(pre),
        "alphas": list(map(float, alphas)),
        "train_runs": train_runs,
        "test_runs": test_runs,
        "folds": fold_desc,
        "device": device,
    }
    st = create_table(scores, "scores", provenance=provenance, exist_ok=True)
    version = st.write(table)
    t_write = time.perf_counter()
    stage(4)
    return FitSummary(
        fit=fit_name,
        subject=j.subject,
        n_spaces=n_spaces,
        n_voxels=n_vox,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        train_runs=train_runs,
        test_runs=test_runs,
        device=device,
        scores_uri=str(scores),
        scores_version=version,
        seconds={
            "join": t_join - t0,
            "align": t_align - t_join,
            "fit": t_fit - t_align,
            "write": t_write - t_fit,
        },
        dropped=j.dropped,
        preset=asdict(pre),
        folds=fold_desc,
        n_features=int(Xtr.shape[2]),
    )
