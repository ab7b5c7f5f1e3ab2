"""Variance partitioning of 2–3 feature selections into a partitions table.

Each selection is a SQL filter over the features table that must pick exactly one feature
space, e.g. ``instruction_id = 'vqa' AND layer = 12`` vs ``instruction_id = 'captioning' AND
layer = 12``. The selections are joined with the responses on the same keys, aligned with one
preset, split into training and test runs, and passed to
:func:`brainalign.encoders.variance_partition`. One row per (region, voxel) is written:
the regions ``A``, ``B``, ``A&B`` (… ``A&B&C``) named after the selections, plus ``total``
(held-out R² of the model with every selection).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from brainalign.encoders import variance_partition
from brainalign.features import create_table

from .align import AlignmentPreset, get_preset, keep_mask, zscore_by_run
from .fitting import DEFAULT_ALPHAS, _open_inputs, design, device_description, make_folds, split_runs
from .join import KeyMismatchError, join_features_responses
from .progress import tick


@dataclass
class PartitionSummary:
    fit: str
    subject: str
    names: list[str]
    n_voxels: int
    n_train: int
    n_test: int
    device: str
    partitions_uri: str
    partitions_version: int
    mean_r2: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def parse_selection(text: str) -> tuple[str, str]:
    """``"name=SQL filter"`` -> ``(name, filter)``."""
    name, sep, where = text.partition("=")
    name = name.strip()
    if (
        not sep
        or not name
        or not where.strip()
        or not name.replace("-", "_").replace(".", "_").isidentifier()
    ):
        raise ValueError(
            f"space: expected NAME=SQL-FILTER (e.g. vqa=\"instruction_id = 'vqa' AND layer = 12\"), "
            f"got {text!r}"
        )
    if "&" in name:
        raise ValueError(f"space: names must not contain '&', got {name!r}")
    return name, where.strip()


def partition_variance(
    features,
    responses,
    partitions: str | Path,
    *,
    selections: Mapping[str, str],
    fit_name: str,
    test_runs: Sequence[str],
    subject: str | None = None,
    preset: str | AlignmentPreset = "fir4",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: str = "runs",
    correction: str = "none",
    joint: str = "auto",
    allow_trim: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PartitionSummary:
    """Partition held-out R² between 2 or 3 feature selections and write the partitions table.

    Parameters
    ----------
    selections : name -> SQL filter over the features table; each picks one feature space.
    correction, joint : passed to :func:`brainalign.encoders.variance_partition`.
    progress : called with a message per step; a :class:`brainalign.cli.progress.Progress` also
        gets the step count (one join per selection, the partition, the write).
    Other parameters as in :func:`brainalign.cli.fitting.fit_scores`.
    """
    stage = functools.partial(tick, progress, "partition", total=len(selections) + 2, unit="stage")
    if not 2 <= len(selections) <= 3:
        raise ValueError(f"space: expected 2 or 3 selections, got {len(selections)}")
    t0 = time.perf_counter()
    fs, rs = _open_inputs(features, responses)
    pre = preset if isinstance(preset, AlignmentPreset) else get_preset(preset)
    joined = {}
    for k, (name, where) in enumerate(selections.items()):
        stage(k, message=f"joining selection {name!r}: {where}")
        j = join_features_responses(
            fs, rs, subject=subject, where=where, allow_trim=allow_trim, lanczos_window=pre.lanczos_window
        )
        if len(j.spaces) != 1:
            raise ValueError(
                f"space: selection {name!r} ({where}) picks {len(j.spaces)} feature spaces "
                f"{[s['instruction_id'] + '/' + str(s['layer']) for s in j.spaces][:6]}; narrow it to one"
            )
        joined[name] = j
    first = next(iter(joined.values()))
    for name, j in joined.items():
        if not (np.array_equal(j.runs, first.runs) and np.array_equal(j.trs, first.trs)):
            raise KeyMismatchError(
                f"space: selection {name!r} covers other TRs than {next(iter(joined))!r}; "
                "the selections must share their (stimulus_set, run, tr) keys"
            )
    all_runs = list(dict.fromkeys(first.runs.tolist()))
    train_runs, test_runs = split_runs(all_runs, test_runs)
    keep = keep_mask(first.runs, pre.trim_start, pre.trim_end)
    is_test = np.isin(first.runs, test_runs)
    test, train = is_test & keep, ~is_test & keep
    Y = zscore_by_run(first.Y, first.runs) if pre.zscore else first.Y
    sp_tr, sp_te = {}, {}
    for name, j in joined.items():
        X = design(j.X, j.runs, ~is_test, pre)[0]
        sp_tr[name], sp_te[name] = X[train], X[test]
    fold_idx, _ = make_folds(folds, first.runs[train])
    t_join = time.perf_counter()
    device = device_description()
    stage(len(joined), message=f"partitioning {list(joined)} over {Y.shape[1]:,} voxels on {device}")
    part = variance_partition(
        sp_tr, Y[train], sp_te, Y[test], alphas=alphas, folds=fold_idx, correction=correction, joint=joint
    )
    t_fit = time.perf_counter()
    stage(len(joined) + 1, message="writing partitions")
    names = list(joined)
    regions = dict(part.regions)
    regions["total"] = part.r2[frozenset(names)]
    n_vox = Y.shape[1]
    labels = list(regions)
    n = len(labels) * n_vox
    spaces_desc = "; ".join(f"{k}={v}" for k, v in selections.items())
    table = pa.table(
        {
            "fit": [fit_name] * n,
            "subject": [first.subject] * n,
            "spaces": [spaces_desc] * n,
            "region": np.repeat(np.array(labels, dtype=object), n_vox).tolist(),
            "voxel": pa.array(np.tile(np.arange(n_vox, dtype=np.int32), len(labels))),
            "r2": pa.array(np.concatenate([np.asarray(regions[k], np.float32).ravel() for k in labels])),
        }
    )
    provenance = {
        "fit": fit_name,
        "features": str(fs.uri),
        "responses": str(rs.uri),
        "selections": dict(selections),
        "preset": asdict(pre),
        "train_runs": train_runs,
        "test_runs": test_runs,
        "correction": correction,
        "joint": joint,
    }
    pt = create_table(partitions, "partitions", provenance=provenance, exist_ok=True)
    version = pt.write(table)
    t_write = time.perf_counter()
    stage(len(joined) + 2)
    return PartitionSummary(
        fit=fit_name,
        subject=first.subject,
        names=names,
        n_voxels=n_vox,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        device=device,
        partitions_uri=str(partitions),
        partitions_version=version,
        mean_r2={k: float(np.mean(v)) for k, v in regions.items()},
        seconds={"join": t_join - t0, "partition": t_fit - t_join, "write": t_write - t_fit},
        dropped=first.dropped,
    )
