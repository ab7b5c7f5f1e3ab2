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
    lanczos_window: int | None = None,
) -> Joined:
    """Select feature spaces and align them with one subject's responses on (stimulus_set, run, tr).

    Raises :class:`KeyMismatchError` listing per-run unmatched TRs unless ``allow_trim``,
    in which case only the common keys are kept and ``Joined.dropped`` says what went.

    Word-level features (rows without ``tr``, timed by ``onset_s`` within their run) need
    ``lanczos_window``: they are resampled onto the TRs of the responses
    (:func:`join_word_features`).
    """
    keys, emb = features.read(
        model=model,
        instruction=instruction,
        layer=layer,
        component=component,
        pooling=pooling,
        where=where,
        columns=["stimulus_set", "run", "tr", "onset_s", *SPACE_COLS],
    )
    rtab, rkeys, subjects = _read_responses(responses, subject)
    n_null = keys.column("tr").null_count
    if n_null:
        if n_null != len(keys):
            raise KeyMismatchError(
                f"features: {n_null:,} of {len(keys):,} selected rows have no tr; select "
                "either TR-level or word-level features, not a mix"
            )
        if not lanczos_window:
            raise KeyMismatchError(
                "features: the selected rows have no tr (word-level features); use a preset "
                "with Lanczos resampling (e.g. huth) or --lanczos-window 3"
            )
        return join_word_features(
            keys, emb, rtab, rkeys, subjects[0], window=lanczos_window, allow_trim=allow_trim
        )
    keys = keys.drop_columns(["onset_s"])

    con = duckdb.connect()
    con.register("f", keys.append_column("fidx", pa.array(np.arange(len(keys), dtype=np.int64))))
    con.register(
        "r",
        rkeys.drop_columns(["onset_s"]).append_column(
            "ridx", pa.array(np.arange(len(rkeys), dtype=np.int64))
        ),
    )
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
            "features and responses do not cover the same TRs:\n  "
            + "\n  ".join(dropped)
            + "\nfix the inputs, or pass allow_trim to fit on the common TRs only"
        )
    # samples in acquisition order (the order of the responses table); one column of feature
    # row indices per space
    order = con.sql(
        f"""
        SELECT r.ridx, list(f.fidx ORDER BY {", ".join("f." + c for c in SPACE_COLS)}) AS fidx
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

    Y = _bold_rows(rtab, ridx)
    del rtab
    runs = np.asarray(rkeys.column("run").take(pa.array(ridx)).to_pylist())
    trs = np.asarray(rkeys.column("tr").take(pa.array(ridx)).to_pylist(), dtype=np.int32)
    return Joined(
        X=X,
        Y=Y,
        runs=runs,
        trs=trs,
        spaces=[dict(zip(SPACE_COLS, s[:-1], strict=True)) for s in spaces],
        subject=subjects[0],
        dataset=rkeys.column("dataset")[0].as_py(),
        dropped=dropped,
    )


def _read_responses(responses: Table, subject: str | None):
    resp_cols = ["dataset", "subject", "stimulus_set", "run", "tr", "onset_s"]
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
    return rtab, rkeys, subjects


def _bold_rows(rtab: pa.Table, ridx: np.ndarray) -> np.ndarray:
    bold = rtab.column("bold").combine_chunks()
    n_vox = bold.type.list_size
    Y = bold.flatten().to_numpy(zero_copy_only=False).reshape(len(rtab), n_vox)[ridx].astype(np.float32)
    if not np.isfinite(Y).all():
        raise ValueError("responses: BOLD values contain NaN or inf; clean or mask those voxels at ingest")
    return Y


def join_word_features(
    keys: pa.Table,
    emb: np.ndarray,
    rtab: pa.Table,
    rkeys: pa.Table,
    subject: str,
    *,
    window: int = 3,
    allow_trim: bool = False,
) -> Joined:
    """Resample word-level features onto the response TRs of each (stimulus_set, run).

    ``keys`` / ``emb (n_rows, dim)`` are word rows (``onset_s`` seconds from run start); each
    response TR is placed at its ``onset_s``. Runs present on one side only are reported and
    refused unless ``allow_trim``.
    """
    from .align import lanczos_resample

    if keys.column("onset_s").null_count:
        raise KeyMismatchError("features: word-level rows need onset_s (seconds from run start)")
    if rkeys.column("onset_s").null_count:
        raise KeyMismatchError("responses: rows need onset_s to place TRs in time for Lanczos resampling")
    fk = keys.to_pydict()
    rk = rkeys.to_pydict()
    f_runs = list(dict.fromkeys(zip(fk["stimulus_set"], fk["run"], strict=True)))
    r_runs = list(dict.fromkeys(zip(rk["stimulus_set"], rk["run"], strict=True)))
    only_f = [r for r in f_runs if r not in set(r_runs)]
    only_r = [r for r in r_runs if r not in set(f_runs)]
    dropped = [f"run {r}: features have words, responses have no TRs" for _, r in only_f]
    dropped += [
        f"run {r}: responses have {rk['run'].count(r):,} TRs, features have no words" for _, r in only_r
    ]
    if dropped and not allow_trim:
        raise KeyMismatchError(
            "features and responses do not cover the same runs:\n  "
            + "\n  ".join(dropped)
            + "\nfix the inputs, or pass allow_trim to fit on the common runs only"
        )
    common = [r for r in r_runs if r in set(f_runs)]
    if not common:
        raise KeyMismatchError("features and responses share no (stimulus_set, run)")
    space_of = list(zip(*(fk[c] for c in SPACE_COLS), strict=True))
    spaces = sorted(set(space_of), key=lambda s: tuple(str(x) for x in s))
    f_sr = np.array([f"{a}\x1f{b}" for a, b in zip(fk["stimulus_set"], fk["run"], strict=True)])
    r_sr = np.array([f"{a}\x1f{b}" for a, b in zip(rk["stimulus_set"], rk["run"], strict=True)])
    f_space = (
        np.array([spaces.index(s) for s in space_of]) if len(spaces) > 1 else np.zeros(len(space_of), int)
    )
    f_on = np.asarray(fk["onset_s"], dtype=np.float64)
    r_on = np.asarray(rk["onset_s"], dtype=np.float64)
    ridx = np.concatenate([np.flatnonzero(r_sr == f"{a}\x1f{b}") for a, b in common])
    X = np.zeros((len(spaces), ridx.size, emb.shape[1]), dtype=np.float32)
    pos = 0
    for a, b in common:
        rows = np.flatnonzero(r_sr == f"{a}\x1f{b}")
        for si in range(len(spaces)):
            m = np.flatnonzero((f_sr == f"{a}\x1f{b}") & (f_space == si))
            X[si, pos : pos + rows.size] = lanczos_resample(emb[m], f_on[m], r_on[rows], window=window)
        pos += rows.size
    return Joined(
        X=X,
        Y=_bold_rows(rtab, ridx),
        runs=np.asarray(rk["run"], dtype=object)[ridx].astype(str),
        trs=np.asarray(rk["tr"], dtype=np.int32)[ridx],
        spaces=[dict(zip(SPACE_COLS, s, strict=True)) for s in spaces],
        subject=subject,
        dataset=rk["dataset"][0],
        dropped=dropped,
    )
