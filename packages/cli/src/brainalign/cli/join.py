"""Join features and brain responses by stimulus/TR keys in DuckDB.

Features and responses meet on (``stimulus_set``, ``run``, ``tr``). A join that loses keys
says how many and which, and refuses to go on unless the caller allows trimming to the
common keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from brainalign.features import FeatureStore, Table

SPACE_COLS = ("model", "instruction_id", "component", "layer", "pooling")


class KeyMismatchError(ValueError):
    """Features and responses do not cover the same keys."""


@dataclass
class Joined:
    """Features and responses aligned sample by sample.

    Attributes
    ----------
    X : (n_spaces, n_samples, dim) float32, one feature space per (model, instruction,
        component, layer, pooling) in ``spaces``.
    Y : (n_samples, n_voxels) float32 responses.
    runs : (n_samples,) run label of each sample; ``trs`` : (n_samples,) TR index.
    spaces : list of dicts, the key columns of each space.
    dropped : human-readable lines about keys that did not match (empty when none).
    """

    X: np.ndarray
    Y: np.ndarray
    runs: np.ndarray
    trs: np.ndarray
    spaces: list[dict]
    subject: str
    dataset: str
    dropped: list[str] = field(default_factory=list)


def _describe_unmatched(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.sql(
        """
        WITH fk AS (SELECT DISTINCT stimulus_set, run, tr FROM f),
             rk AS (SELECT DISTINCT stimulus_set, run, tr FROM r),
             fc AS (SELECT run, count(*) AS n_f FROM fk GROUP BY run),
             rc AS (SELECT run, count(*) AS n_r FROM rk GROUP BY run),
             fo AS (SELECT run, count(*) AS only_f FROM fk ANTI JOIN rk USING (stimulus_set, run, tr) GROUP BY run),
             ro AS (SELECT run, count(*) AS only_r FROM rk ANTI JOIN fk USING (stimulus_set, run, tr) GROUP BY run)
        SELECT run, coalesce(n_f, 0), coalesce(n_r, 0), coalesce(only_f, 0), coalesce(only_r, 0)
        FROM fc FULL JOIN rc USING (run) LEFT JOIN fo USING (run) LEFT JOIN ro USING (run)
        WHERE coalesce(only_f, 0) + coalesce(only_r, 0) > 0
        ORDER BY run
        """
    ).fetchall()
    return [
        f"run {run}: features have {n_f:,} TRs, responses {n_r:,}: "
        f"{only_f + only_r:,} TRs unmatched ({only_f:,} only in features, {only_r:,} only in responses)"
        for run, n_f, n_r, only_f, only_r in rows
    ]


def join_features_responses(
    features: FeatureStore,
    responses: Table,
    *,
    subject: str | None = None,
    model=None,
    instruction=None,
    layer=None,
    component=None,
    pooling=None,
    where: str | None = None,
    allow_trim: bool = False,
) -> Joined:
    """Select feature spaces and align them with one subject's responses on (stimulus_set, run, tr).

    Raises :class:`KeyMismatchError` listing per-run unmatched TRs unless ``allow_trim``,
    in which case only the common keys are kept and ``Joined.dropped`` says what went.
    """
    keys, emb = features.read(
        model=model, instruction=instruction, layer=layer, component=component, pooling=pooling,
        where=where, columns=["stimulus_set", "run", "tr", *SPACE_COLS],
    )
    resp_cols = ["dataset", "subject", "stimulus_set", "run", "tr"]
    subj_filter = None if subject is None else "subject = '" + subject.replace("'", "''") + "'"
    rtab = responses.to_table(columns=[*resp_cols, "bold"], filter=subj_filter)
    rkeys = rtab.select(resp_cols)
    if len(rkeys) == 0:
        raise ValueError(f"subject: no responses for subject {subject!r} in {responses.uri}")
    subjects = sorted(set(rkeys.column("subject").to_pylist()))
    if len(subjects) > 1:
        raise ValueError(f"subject: the responses hold several subjects {subjects}; choose one")
    if rkeys.column("tr").null_count:
        raise ValueError("responses: rows without a tr cannot be joined on (stimulus_set, run, tr)")

    con = duckdb.connect()
    con.register("f", keys.append_column("fidx", pa.array(np.arange(len(keys), dtype=np.int64))))
    con.register("r", rkeys.append_column("ridx", pa.array(np.arange(len(rkeys), dtype=np.int64))))
    spaces = con.sql(
        f"SELECT {', '.join(SPACE_COLS)}, count(*) AS n FROM f GROUP BY ALL ORDER BY {', '.join(SPACE_COLS)}"
    ).fetchall()
    counts = {s[-1] for s in spaces}
    if len(counts) > 1:
        raise KeyMismatchError(
            f"features: the selected spaces cover different numbers of TRs ({sorted(counts)}); "
            "select spaces computed over the same stimuli"
        )
    dropped = _describe_unmatched(con)
    if dropped and not allow_trim:
        raise KeyMismatchError(
            "features and responses do not cover the same TRs:\n  " + "\n  ".join(dropped)
            + "\nfix the inputs, or pass allow_trim to fit on the common TRs only"
        )
    # samples in acquisition order (the order of the responses table); one column of feature
    # row indices per space
    order = con.sql(
        f"""
        SELECT r.ridx, list(f.fidx ORDER BY {', '.join('f.' + c for c in SPACE_COLS)}) AS fidx
        FROM r JOIN f USING (stimulus_set, run, tr)
        GROUP BY r.ridx HAVING count(*) = {len(spaces)}
        ORDER BY r.ridx
        """
    ).fetchnumpy()
    ridx = np.asarray(order["ridx"], dtype=np.int64)
    if ridx.size == 0:
        raise KeyMismatchError("features and responses share no (stimulus_set, run, tr) keys")
    fidx = np.stack([np.asarray(v, dtype=np.int64) for v in order["fidx"]])  # (n_samples, n_spaces)
    X = np.ascontiguousarray(np.moveaxis(emb[fidx], 1, 0))  # (n_spaces, n_samples, dim)

    bold = rtab.column("bold").combine_chunks()
    n_vox = bold.type.list_size
    Y = bold.flatten().to_numpy(zero_copy_only=False).reshape(len(rtab), n_vox)[ridx].astype(np.float32)
    del rtab
    if not np.isfinite(Y).all():
        raise ValueError("responses: BOLD values contain NaN or inf; clean or mask those voxels at ingest")
    runs = np.asarray(rkeys.column("run").take(pa.array(ridx)).to_pylist())
    trs = np.asarray(rkeys.column("tr").take(pa.array(ridx)).to_pylist(), dtype=np.int32)
    return Joined(
        X=X, Y=Y, runs=runs, trs=trs,
        spaces=[dict(zip(SPACE_COLS, s[:-1], strict=True)) for s in spaces],
        subject=subjects[0], dataset=rkeys.column("dataset")[0].as_py(), dropped=dropped,
    )
