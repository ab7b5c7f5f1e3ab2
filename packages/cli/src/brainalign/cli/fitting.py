"""Fit encoding models of brain responses from feature spaces and write per-voxel scores.

One call fits every selected (model, instruction, component, layer, pooling) space in one
batched ``fit_ridge_cv``: cross-validation by training runs (leave one run out), alpha chosen
per voxel, and scores on held-out test runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa

from brainalign.encoders import block_folds, fit_ridge_cv, group_folds, pearson_r, predict, r2_score
from brainalign.features import FeatureStore, Table, create_table, open_table

from .align import get_preset, keep_mask, prepare_design, zscore_by_run
from .join import join_features_responses

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


def device_description() -> str:
    """The JAX devices the fit runs on, e.g. ``'cpu (1 device)'`` or ``'gpu: NVIDIA H100 x1'``."""
    devs = jax.devices()
    kind = devs[0].platform
    if kind == "cpu":
        return f"cpu ({len(devs)} device{'s' if len(devs) > 1 else ''})"
    return f"{kind}: {getattr(devs[0], 'device_kind', kind)} x{len(devs)}"


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
    preset: str = "fir4",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    ceiling: np.ndarray | None = None,
    allow_trim: bool = False,
    progress: Callable[[str], None] | None = None,
) -> FitSummary:
    """Join, align, fit and score; append one row per (space, voxel) to the scores table.

    Parameters
    ----------
    features, responses : Lance table locations or open handles.
    scores : location of the scores table (created if missing; rows with the same keys are
        replaced, so refitting under the same ``fit_name`` is idempotent).
    test_runs : runs held out for scoring; the other runs train, with leave-one-run-out CV
        (contiguous 5-fold blocks if only one training run).
    ceiling : optional (n_voxels,) noise ceiling in r units; ``r_norm = r / ceiling``.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    fs = features if isinstance(features, FeatureStore) else open_table(features)
    if not isinstance(fs, FeatureStore):
        raise ValueError(f"features: {fs.uri} is a {fs.table_kind} table, not a features table")
    rs = responses if isinstance(responses, Table) else open_table(responses)
    if rs.table_kind != "responses":
        raise ValueError(f"responses: {rs.uri} is a {rs.table_kind} table, not a responses table")
    pre = get_preset(preset)
    say("joining features and responses on (stimulus_set, run, tr)")
    j = join_features_responses(
        fs, rs, subject=subject, model=model, instruction=instruction, layer=layer,
        component=component, pooling=pooling, where=where, allow_trim=allow_trim,
    )
    test_runs = [str(r) for r in test_runs]
    all_runs = list(dict.fromkeys(j.runs.tolist()))
    unknown = [r for r in test_runs if r not in all_runs]
    if unknown or not test_runs:
        raise ValueError(f"test_runs: expected a non-empty subset of the runs {all_runs}, got {test_runs}")
    train_runs = [r for r in all_runs if r not in test_runs]
    if not train_runs:
        raise ValueError(f"test_runs: every run {all_runs} is a test run; leave at least one to train on")
    t_join = time.perf_counter()

    say(f"aligning with preset {pre.name!r} (delays {list(pre.delays)})")
    X = prepare_design(j.X, j.runs, pre)
    Y = zscore_by_run(j.Y, j.runs) if pre.zscore else j.Y
    keep = keep_mask(j.runs, pre.trim_start, pre.trim_end)
    test = np.isin(j.runs, test_runs) & keep
    train = ~np.isin(j.runs, test_runs) & keep
    Xtr, Ytr, runs_tr = X[:, train], Y[train], j.runs[train]
    folds = group_folds(runs_tr) if len(train_runs) > 1 else block_folds(int(train.sum()), 5)

    say(f"fitting {X.shape[0]} feature space(s) x {Y.shape[1]:,} voxels on {device_description()}")
    fit = fit_ridge_cv(Xtr, Ytr, alphas=alphas, folds=folds)
    pred = predict(fit, X[:, test])  # (n_spaces, n_test, n_voxels)
    r = np.stack([np.asarray(pearson_r(Y[test], p)) for p in pred])
    r2 = np.stack([np.asarray(r2_score(Y[test], p)) for p in pred])
    t_fit = time.perf_counter()

    n_spaces, n_vox = r.shape
    ceil = np.full(n_vox, np.nan, np.float32) if ceiling is None else np.asarray(ceiling, np.float32)
    if ceil.shape != (n_vox,):
        raise ValueError(f"ceiling: expected shape ({n_vox},), got {ceil.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        r_norm = np.where(ceil > 0, r / ceil, np.nan)
    rep = lambda key: np.repeat([s[key] for s in j.spaces], n_vox)  # noqa: E731
    table = pa.table({
        "fit": [fit_name] * (n_spaces * n_vox),
        "dataset": [j.dataset] * (n_spaces * n_vox),
        "subject": [j.subject] * (n_spaces * n_vox),
        "model": rep("model"),
        "instruction_id": rep("instruction_id"),
        "component": rep("component"),
        "layer": pa.array(rep("layer").astype(np.int16)),
        "pooling": rep("pooling"),
        "voxel": pa.array(np.tile(np.arange(n_vox, dtype=np.int32), n_spaces)),
        "split": ["test"] * (n_spaces * n_vox),
        "r": pa.array(r.ravel().astype(np.float32)),
        "r2": pa.array(r2.ravel().astype(np.float32)),
        "alpha": pa.array(np.asarray(fit.best_alpha).ravel().astype(np.float32)),
        "ceiling": pa.array(np.tile(ceil, n_spaces), mask=np.tile(~np.isfinite(ceil), n_spaces)),
        "r_norm": pa.array(r_norm.ravel().astype(np.float32), mask=~np.isfinite(r_norm.ravel())),
    })
    say(f"writing {len(table):,} score rows")
    provenance = {
        "fit": fit_name, "features": str(fs.uri), "features_version": fs.version,
        "responses": str(rs.uri), "responses_version": rs.version, "preset": pre.name,
        "alphas": list(map(float, alphas)), "train_runs": train_runs, "test_runs": test_runs,
    }
    st = create_table(scores, "scores", provenance=provenance, exist_ok=True)
    version = st.write(table)
    t_write = time.perf_counter()
    return FitSummary(
        fit=fit_name, subject=j.subject, n_spaces=n_spaces, n_voxels=n_vox,
        n_train=int(train.sum()), n_test=int(test.sum()), train_runs=train_runs, test_runs=test_runs,
        device=device_description(), scores_uri=str(scores), scores_version=version,
        seconds={"join": t_join - t0, "fit": t_fit - t_join, "write": t_write - t_fit},
        dropped=j.dropped,
    )
