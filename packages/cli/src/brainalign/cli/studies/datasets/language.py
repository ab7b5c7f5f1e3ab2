"""Language fMRI and reading times of Aw et al. (arXiv 2312.00575): instruction-tuned vs base LLMs.

Four loaders, registered as ``pereira2018``, ``blank2014``, ``wehbe2014`` (fMRI) and
``futrell2018`` (reading times). Models read the stimuli without any prompt (instruction id
``none``): the "instruction" is the model's tuning, so a study compares models, not prompts.

Pereira 2018 (:class:`Pereira2018`)
-----------------------------------
Obtain: https://osf.io/crwz7/ ("Toward a universal decoder of linguistic meaning from brain
activation", Pereira et al., Nat. Commun. 2018); the OSF page states the licence and terms of
use (cite the paper). Experiments 2 (384 sentences, 96 passages) and 3 (243 sentences, 72
passages) are used; one ``[[data]]`` table per experiment (option ``experiment``)::

    ROOT/
      M02/data_384sentences.mat        MATLAB v5, one file per subject and experiment
      M02/data_243sentences.mat
      M04/data_384sentences.mat
      ...

Variables read: ``examples_passagesentences`` (n_sentences x n_voxels betas, averaged over
the three presentations), ``keySentences`` (the sentences, in presentation-table order),
``labelsPassageForEachSentence`` (1-based passage of each sentence), ``labelsPassageCategory``
(1-based category of each passage), ``keyPassageCategory`` (category names) and ``meta``
(``atlases``, ``rois``, ``roiColumns`` (1-based columns per ROI), ``colToCoord`` (1-based voxel
coordinates on the common MNI grid), ``dimensions``). Keys: ``stimulus_set`` =
``pereira2018-384`` / ``pereira2018-243``; ``run`` = the passage (``passage-007``); ``tr`` = the
sentence's position in its passage; ``trial`` = the sentence's row; ``stimulus_id`` = ``s007``.
Each manifest item is the passage read up to and including the sentence (Brain-Score: the
accumulated context), ``focus`` on the sentence; recipes pool the last token (``last``).

Voxels: the language network, i.e. the columns of every ROI of the atlases ``languageLH`` and
``languageRH`` of ``meta`` (option ``atlases``; ``"all"`` keeps every voxel). Brain-Score uses
the Ev lab's subject-specific language fROI voxels, which are not part of the OSF release; these
group language parcels are the public approximation. ROI label = ``<atlas>.<roi>``.

Split: passages, never sentences (sentences of a passage share context). The last passage of
every category is held out (24 of 96 or 72 passages; option ``test_passages``); the other
passages train, with cross-validation by passage. Brain-Score instead averages a 5-fold
cross-validation; run the recipe with other ``test_passages`` to do the same.

Wehbe 2014 (:class:`Wehbe2014`)
-------------------------------
Obtain: http://www.cs.cmu.edu/~fmri/plosone/ (Wehbe et al., PLoS ONE 2014, "Simultaneously
uncovering the patterns of brain regions involved in different story reading subprocesses");
terms of use as stated on that page; cite the paper. Chapter 9 of Harry Potter read word by
word (0.5 s per word) in 4 runs, TR 2 s, 8 subjects::

    ROOT/
      subject_1.mat ... subject_8.mat  MATLAB v5

Variables read: ``data`` (n_TRs x n_voxels), ``time`` (n_TRs x 2: seconds from the start of the
experiment, run 1..4), ``words`` (struct array: ``text``, ``start`` in experiment seconds,
``length``) and ``meta`` (``colToCoord`` (1-based, common MNI grid), ``colToROInum`` and
``ROInumToName`` (AAL), ``dimx/dimy/dimz``). Keys: ``stimulus_set`` = ``wehbe2014-hp9``;
``run`` = ``run-1`` .. ``run-4``; response ``tr`` = row within the run with ``onset_s`` =
seconds from the run's first TR. The manifest is word-level (``tr`` None, ``onset_s`` = word
onset from the run's first TR): each word read after up to ``context_words`` (20) preceding
words, ``focus`` on the word; recipes pool the last token (of the word). Features are resampled
onto the TRs with a Lanczos filter at fit time (preset ``wehbe`` + ``lanczos_window``); PCA to
10 dimensions is then fitted on the training TRs (Aw et al. fit it on training words).
Split: one run held out (``test_run``, default ``run-4``), cross-validation by run on the others;
Aw et al.'s 4-fold CV is four runs of the recipe with ``test_run`` = run-1 .. run-4.

Blank 2014 (:class:`Blank2014`)
-------------------------------
Natural Stories listening fMRI (Blank et al., J. Neurophysiol. 2014) is distributed only through
Brain-Score (assembly ``Blank2014.fROI``, under Brain-Score's terms), not as raw files; the
loader reads a per-subject CSV export of those language fROI time courses (12 fROIs, the
``from90to100`` threshold Brain-Score keeps) plus the word alignments of the Natural Stories
corpus (https://github.com/languageMIT/naturalstories; terms as stated in that repository)::

    ROOT/
      sub-<UID>.csv                    columns: story, tr, then one column per fROI
                                       (01_LH_PostTemp ... 12_RH_AngG); one row per TR of each
                                       story's run (tr 0-based, TR 2 s)
      audio/<n>_aligned.TextGrid       naturalstories/audio, n = story number (1 Boar, 2 Aqua,
                                       3 MatchstickSeller, 4 KingOfBirds, 5 Elvis, 6 MrSticky,
                                       7 HighSchool, 8 Roswell, 9 Tulips, 10 Tourette)

The story audio starts ``audio_onset_s`` (8 s, Brain-Score's fixation offset) after the run's
first TR. Options: ``frois`` (columns to keep, default all), ``test_stories``,
``context_words``. Keys: ``stimulus_set`` = ``blank2014``, ``run`` = the story name, ``tr`` = the CSV's
``tr``. One manifest item per TR from the first TR with a word: the story so far
(``context_words``, default the whole story), ``focus`` on the TR's words; pooling ``last``.
TRs before the first word are not ingested. Split: the last story (by number) held out
(``test_stories``); cross-validation by story. fROIs are aligned across subjects by name.

Futrell 2018 (:class:`Futrell2018`, behaviour)
----------------------------------------------
Natural Stories self-paced reading times (Futrell et al., LREC 2018; a clone of
https://github.com/languageMIT/naturalstories, terms as stated there; cite the paper)::

    ROOT/
      naturalstories_RTS/processed_RTs.tsv   WorkerId, WorkTimeInSeconds, correct, item, zone, RT, word, ...
      naturalstories_RTS/all_stories.tok     word, zone, item (one row per word)

No brain data: the report hook computes each causal LM's per-word surprisal, ``-log2 p(token |
context)`` summed over a word's tokens (the whole story as context, sliding windows of
``max_context`` tokens), and its Pearson r with the mean reading time of each word (RTs in
[``min_rt``, ``max_rt``] ms of readers with at least ``min_correct`` correct comprehension
answers; option ``stories`` restricts the items). Encoder-decoder models (T5) are skipped: their decoder conditions on an encoder input
and has no canonical left-to-right word surprisal. Needs the ``compute`` extra (torch,
transformers).

Scores and ceilings
-------------------
Score = Pearson r per voxel on held-out data divided by a per-voxel ceiling, median over voxels
(``[report] aggregate = "median"``), mean over subjects, best layer (T5: over encoder and decoder
layers). The ceiling is Brain-Score's subject-pool extrapolation
(:func:`brainalign.encoders.subject_pool_ceiling`: each subject predicted by the mean of pools of
other subjects, extrapolated to infinitely many subjects) on voxels aligned across subjects;
it needs 3 subjects (fewer: no ceiling, raw r). Brain-Score predicts a held-out subject's voxels
by regression from the pool's voxels; with voxels on a common grid the pool mean is used.
Because one responses table holds one voxel count, Pereira and Wehbe keep the voxels every
selected subject has (``voxels = "common"``, by MNI coordinate); ``voxels = "subject"`` keeps
each subject's own voxels and needs equal counts (e.g. a single subject).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from brainalign.features.stimuli import Manifest, Stimulus, text_windows

from ..base import Progress, RecipeError, ReportPart, StudyDataset, has_ceiling_sql, over_ceiling_sql

LANGUAGE_DATASETS = ("pereira2018", "blank2014", "wehbe2014", "futrell2018")
COMMON_OPTIONS = ("subjects", "fit")


# ---------------------------------------------------------------------------------------------
# MATLAB files
def _scipy_io():
    import scipy.io

    return scipy.io


def _whos(path: Path) -> dict[str, tuple[tuple[int, ...], str]] | str:
    """Variables of a MATLAB file from its headers, or the error as a string."""
    try:
        return {name: (tuple(shape), cls) for name, shape, cls in _scipy_io().whosmat(str(path))}
    except Exception as exc:  # a truncated or non-MATLAB file
        return f"{type(exc).__name__}: {exc}"


def _loadmat(path: Path, names: Sequence[str]) -> dict[str, Any]:
    return _scipy_io().loadmat(str(path), variable_names=list(names), simplify_cells=True)


def _raw_struct(path: Path, name: str) -> dict[str, Any]:
    """The fields of a 1x1 MATLAB struct variable, unsqueezed (cells stay object arrays)."""
    d = _scipy_io().loadmat(str(path), variable_names=[name])
    st = d[name]
    return {f: st[0, 0][f] for f in st.dtype.names}


def _cell_strings(cell) -> list[str]:
    """A MATLAB cell of strings (any orientation, unsqueezed) as a list."""
    out = []
    for x in np.asarray(cell, dtype=object).ravel():
        a = np.asarray(x).ravel()
        out.append(str(a[0]) if a.size else "")
    return out


def _vec(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(x))


def _strings(x) -> list[str]:
    """A MATLAB cell of strings (as simplify_cells returns it) as a list."""
    if isinstance(x, str):
        return [x]
    return [
        str(v) if not isinstance(v, np.ndarray) else str(v.item() if v.size == 1 else "") for v in _vec(x)
    ]


def _check_vars(
    path: Path, expected: Mapping[str, str], problems: list[str]
) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Check ``path`` holds the variables ``expected`` (name -> MATLAB class or ``""``)."""
    if not path.is_file():
        problems.append(f"{path}: missing (expected a MATLAB file with {sorted(expected)})")
        return None
    info = _whos(path)
    if isinstance(info, str):
        problems.append(f"{path}: not a readable MATLAB v5 file ({info})")
        return None
    missing = [v for v in expected if v not in info]
    if missing:
        problems.append(f"{path}: variable(s) {missing} missing; found {sorted(info)}")
        return None
    for v, cls in expected.items():
        if cls and info[v][1] not in cls.split("|"):
            problems.append(
                f"{path}: variable {v} is a MATLAB {info[v][1]}, expected a {cls.replace('|', ' or ')}"
            )
    return info


# ---------------------------------------------------------------------------------------------
# shared helpers
def _norm_subject(s: str) -> str:
    return s if s.startswith("sub-") else f"sub-{s}"


def _unknown_options(loader: StudyDataset, extra: Sequence[str] = ()) -> list[str]:
    known = set(loader.option_keys) | set(COMMON_OPTIONS) | set(extra)
    bad = sorted(set(loader.options) - known)
    if bad:
        return [f"option(s) {bad} unknown to the {loader.name} loader; expected some of {sorted(known)}"]
    return []


def _select_subjects(loader: StudyDataset, found: list[str]) -> list[str]:
    want = loader.options.get("subjects")
    if not want:
        return found
    return [s for s in (_norm_subject(str(x)) for x in want) if s in found]


def _missing_subjects(loader: StudyDataset, found: list[str], where: str) -> list[str]:
    want = loader.options.get("subjects") or []
    missing = [s for s in (_norm_subject(str(x)) for x in want) if s not in found]
    if missing:
        return [f"subjects: {missing} not found in {where}; found {found}"]
    return []


def common_columns(coords: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per subject, the column indices of the voxels every subject has, matched by coordinate.

    ``coords[subject]`` is ``(n_columns, 3)`` voxel coordinates; the result lists, per subject,
    the columns of the common coordinates in one shared (lexicographic) order.
    """
    keys = {
        s: [tuple(int(v) for v in row) for row in np.asarray(c).reshape(-1, 3)] for s, c in coords.items()
    }
    shared = set.intersection(*(set(k) for k in keys.values())) if keys else set()
    order = sorted(shared)
    out = {}
    for s, k in keys.items():
        pos = {xyz: i for i, xyz in enumerate(k)}
        out[s] = np.array([pos[xyz] for xyz in order], dtype=np.int64)
    return out


def _select_voxels(
    loader: StudyDataset,
    data: Mapping[str, np.ndarray],
    coords: Mapping[str, np.ndarray],
    labels: Mapping[str, Sequence[str]],
    *,
    space: str,
    where: str = "",
) -> tuple[str, dict[str, np.ndarray], int, list[pa.Table]]:
    """The ``voxels`` option applied to per-subject data (columns, 1-based MNI-grid coordinates
    and ROI labels): ``(mode, columns per subject, count, voxels rows per subject)``.

    ``"common"`` keeps the voxels every subject has (:func:`common_columns`); ``"subject"`` keeps
    each subject's own voxels, which needs equal counts. ``where`` ends the message when no voxel
    is left (e.g. ``" in the selected atlases"``).
    """
    subs = list(data)
    mode = loader.options.get("voxels", "common")
    if mode == "common":
        sel = common_columns(coords)
    else:
        counts = {s: data[s].shape[1] for s in subs}
        if len(set(counts.values())) > 1:
            raise RecipeError(
                f"voxels: 'subject' keeps each subject's own voxels, but the counts differ {counts}; "
                "one responses table holds one voxel count: use voxels = 'common' or select one subject"
            )
        sel = {s: np.arange(data[s].shape[1]) for s in subs}
    n_vox = len(next(iter(sel.values())))
    if n_vox == 0:
        raise RecipeError(f"voxels: no voxel is shared by the subjects {subs}{where}")
    vox = [
        _voxels_table(loader.name, s, space, coords[s][sel[s]] - 1, [labels[s][i] for i in sel[s]])
        for s in subs
    ]
    return mode, sel, n_vox, vox


def _write_and_summarise(
    loader: StudyDataset,
    responses: Path,
    voxels: Path,
    resp: Sequence[pa.Table],
    vox: Sequence[pa.Table],
    *,
    subjects: list[str],
    n_voxels: int,
    provenance: dict,
    t0: float,
    run_order: Sequence[str] | None = None,
    rois: dict[str, int] | None = None,
    **summary: Any,
) -> list[Any]:
    """Write every subject's responses and voxels rows and summarise the ingest (one summary).

    New tables appear atomically; existing ones get one commit each (rows with the same keys are
    replaced, so re-ingesting does not duplicate). Runs are counted in the first subject's rows,
    in ``run_order`` (default: their order there); ``rois`` defaults to the number of voxels per
    ROI of the first subject. ``summary`` holds the other :class:`IngestSummary` fields.
    """
    from ...ingest import IngestSummary, check_brain_tables, write_brain_tables

    check_brain_tables(
        responses,
        voxels,
        n_voxels,
        rows="this ingest",
        hint=" (different subjects, atlases or ROIs); remove the table or write to another folder",
    )
    rv, vv = write_brain_tables(
        responses,
        pa.concat_tables(resp),
        voxels,
        pa.concat_tables(vox),
        n_voxels=n_voxels,
        provenance=provenance,
        voxels_provenance=provenance,
    )
    runs = resp[0].column("run").to_pylist()
    order = dict.fromkeys(runs) if run_order is None else run_order
    if rois is None:
        rois = {}
        for r in vox[0].column("roi").to_pylist():
            rois[r] = rois.get(r, 0) + 1
    return [
        IngestSummary(
            responses_uri=str(responses),
            voxels_uri=str(voxels),
            responses_version=rv,
            voxels_version=vv,
            dataset=loader.name,
            subjects=subjects,
            runs={f"{s}/{r}": runs.count(r) for s in subjects for r in order},
            n_voxels=n_voxels,
            seconds=time.perf_counter() - t0,
            rois=rois,
            **summary,
        )
    ]


def _responses_table(
    dataset: str,
    subject: str,
    stimulus_set: str,
    runs: Sequence[str],
    trs: np.ndarray,
    Y: np.ndarray,
    *,
    onsets: np.ndarray | None = None,
    trials: np.ndarray | None = None,
    stimulus_ids: Sequence[str] | None = None,
) -> pa.Table:
    """Rows of a responses table for one subject: ``Y (n_samples, n_voxels)`` with its keys."""
    n, v = Y.shape

    def opt(values, typ):
        return pa.nulls(n, typ) if values is None else pa.array(values, typ)

    return pa.table(
        {
            "dataset": [dataset] * n,
            "subject": [subject] * n,
            "stimulus_set": [stimulus_set] * n,
            "run": list(runs),
            "tr": pa.array(np.asarray(trs, np.int32)),
            "trial": opt(None if trials is None else np.asarray(trials, np.int32), pa.int32()),
            "stimulus_id": opt(None if stimulus_ids is None else list(stimulus_ids), pa.string()),
            "onset_s": opt(None if onsets is None else np.asarray(onsets, np.float64), pa.float64()),
            "bold": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(Y, np.float32).ravel()), v
            ),
        }
    )


def _voxels_table(
    dataset: str, subject: str, space: str, ijk: np.ndarray | None, rois: Sequence[str]
) -> pa.Table:
    n = len(rois)
    cols: dict[str, Any] = {
        "dataset": [dataset] * n,
        "subject": [subject] * n,
        "voxel": pa.array(np.arange(n, dtype=np.int32)),
        "space": [space] * n,
        "roi": pa.array([str(r) for r in rois], pa.string()),
    }
    if ijk is not None:
        for j, c in enumerate("ijk"):
            cols[c] = pa.array(np.asarray(ijk[:, j], np.int32))
    return pa.table(cols)


def pool_ceiling(responses: Path, *, chunk: int = 2000, random_state: int = 0) -> np.ndarray | None:
    """Brain-Score subject-pool ceiling (r units, per voxel) from a responses table whose voxels
    are aligned across subjects; None with fewer than 3 subjects.

    Samples are matched across subjects by (stimulus_set, run, tr); only keys every subject has
    are used. Voxels are processed in chunks of ``chunk`` (the extrapolation is per voxel), each
    with the same seed, so every chunk sees the same draws of held-out subject and pool.
    """
    from brainalign.encoders import subject_pool_ceiling
    from brainalign.features import open_table

    t = open_table(responses).to_table(columns=["subject", "stimulus_set", "run", "tr", "bold"])
    subjects = sorted(set(t.column("subject").to_pylist()))
    if len(subjects) < 3:
        return None
    keys = list(
        zip(*(t.column(c).to_pylist() for c in ("subject", "stimulus_set", "run", "tr")), strict=True)
    )
    per: dict[str, dict[tuple, int]] = {s: {} for s in subjects}
    for i, (s, a, b, c) in enumerate(keys):
        per[s][(a, b, c)] = i
    common = sorted(set.intersection(*(set(d) for d in per.values())), key=lambda k: tuple(str(x) for x in k))
    if len(common) < 3:
        return None
    bold = t.column("bold").combine_chunks()
    n_vox = bold.type.list_size
    Y = bold.flatten().to_numpy(zero_copy_only=False).reshape(len(t), n_vox)
    data = np.stack([Y[[per[s][k] for k in common]] for s in subjects])  # (subjects, samples, voxels)
    out = np.empty(n_vox, dtype=np.float64)
    for a in range(0, n_vox, chunk):
        res = subject_pool_ceiling(data[:, :, a : a + chunk], random_state=random_state)
        out[a : a + chunk] = res.ceiling
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# report: per-model brain scores, tuned vs base, alignment vs size
def _q(v: Any) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def brain_scores(scores: Path, fit: str, *, aggregate: str = "median") -> tuple[list[dict], str]:
    """Per model, its best (component, layer) and Brain-Score-style score.

    Per subject and space: ``aggregate`` over voxels of Pearson r, divided by the median over
    voxels of the subject-pool ceiling when the fit has one (Brain-Score divides the aggregate
    score by one ceiling; it does not divide voxel by voxel, which inflates voxels of tiny
    ceiling), then the mean over subjects; the best (component, layer) per model.

    Returns the rows ``{model, component, best_layer, score, n_subjects}`` and the metric used
    (``"r/ceiling"`` or ``"r"``).
    """
    from ...query import run_query

    tables = {"scores": scores}
    n = run_query(
        f"SELECT count(ceiling) FILTER (WHERE {has_ceiling_sql()}) AS n FROM scores WHERE fit = {_q(fit)}",
        scores.parent,
        tables=tables,
    )
    ceiled = bool(n.column(0)[0].as_py())
    metric = "r/ceiling" if ceiled else "r"
    agg = "median" if aggregate == "median" else "avg"
    score = over_ceiling_sql(agg) if ceiled else f"{agg}(r)"
    rows = run_query(
        f"""WITH per AS (SELECT subject, model, component, layer, {score} AS score
                         FROM scores WHERE fit = {_q(fit)} GROUP BY ALL),
                a AS (SELECT model, component, layer, avg(score) AS score, count(*) AS n_subjects
                      FROM per GROUP BY ALL)
            SELECT model, arg_max(component, score) AS component, arg_max(layer, score) AS best_layer,
                   max(score) AS score, max(n_subjects) AS n_subjects
            FROM a WHERE score IS NOT NULL GROUP BY model ORDER BY score DESC""",
        scores.parent,
        tables=tables,
    ).to_pylist()
    return rows, metric


def _pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, int]:
    a, b = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None, n
    return float(np.corrcoef(a[ok], b[ok])[0, 1]), n


def _size_rows(scores: dict[str, float], params: dict[str, float | None], label: str) -> list[dict]:
    names = [m for m in scores if params.get(m) and scores[m] is not None]
    x = [float(params[m]) for m in names]
    y = [scores[m] for m in names]
    r, n = _pearson(x, y)
    rl, _ = _pearson(np.log10(x) if x else [], y)
    return [{"scores": label, "n_models": n, "pearson_r_size": r, "pearson_r_log10_size": rl}]


def _compare_rows(scores: dict[str, float], pairs: Sequence[Sequence[str]], label: str) -> list[dict]:
    out = []
    for base, tuned in pairs:
        b, t = scores.get(base), scores.get(tuned)
        if b is None or t is None:
            continue
        out.append(
            {
                "scores": label,
                "base": base,
                "tuned": tuned,
                "base_score": b,
                "tuned_score": t,
                "change_pct": (t - b) / abs(b) * 100 if b else None,
            }
        )
    return out


def _plot_size(points: list[tuple[str, float, float]], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_pairs(rows: list[dict], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["base_score"] for r in rows], 0.4, label="base")
    ax.bar(x + 0.2, [r["tuned_score"] for r in rows], 0.4, label="instruction-tuned")
    ax.set_xticks(x, [f"{r['base']}\nvs {r['tuned']}" for r in rows], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _language_specs(ctx) -> list:
    from ..base import DATASETS

    mine = {k for k in LANGUAGE_DATASETS}
    mine |= {v for k, v in DATASETS.items() if k in LANGUAGE_DATASETS}
    return [d for d in ctx.recipe.data if d.dataset in mine]


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


def _fmri_part(ctx, out: Path) -> ReportPart:
    """Tables of one fMRI dataset: best-layer score per model, tuned vs base, vs size."""
    part = ReportPart()
    agg = ctx.recipe.report.get("aggregate", "mean")
    if not ctx.tables["scores"].exists():
        return part
    rows, metric = brain_scores(ctx.tables["scores"], ctx.fit, aggregate=agg)
    specs = {m.name: m for m in ctx.models}
    part.tables["brain score per model"] = [
        {
            "model": r["model"],
            "group": specs[r["model"]].group if r["model"] in specs else "",
            "params_b": specs[r["model"]].params_b if r["model"] in specs else None,
            "base": specs[r["model"]].base if r["model"] in specs else None,
            "component": r["component"],
            "best_layer": r["best_layer"],
            "score": r["score"],
            "metric": f"{agg} {metric}",
            "n_subjects": r["n_subjects"],
        }
        for r in rows
    ]
    scores = {r["model"]: r["score"] for r in rows}
    part.tables["tuned vs base"] = _compare_rows(scores, _pairs(ctx), ctx.data.name)
    part.tables["alignment vs model size"] = _size_rows(
        scores, {m.name: m.params_b for m in ctx.models}, ctx.data.name
    )
    part.notes.append(
        f"brain score = best layer (T5: encoder or decoder) of the {agg} over voxels of "
        + (
            "Pearson r divided by the median subject-pool ceiling"
            if metric == "r/ceiling"
            else "Pearson r (no ceiling)"
        )
        + ", mean over subjects"
    )
    return part


def _pairs(ctx) -> list[list[str]]:
    pairs = [list(p) for p in ctx.recipe.report.get("compare", [])]
    for m in ctx.recipe.models:  # `base` on tuned models adds pairs the compare list lacks
        if m.base and [m.base, m.name] not in pairs:
            pairs.append([m.base, m.name])
    return pairs


def _summary_part(ctx, out: Path, behaviour: dict[str, float] | None = None) -> ReportPart:
    """Across the language datasets of the recipe (written by the last of them): mean brain
    score per model, the instruction-tuning effect and the correlation with model size."""
    part = ReportPart()
    agg = ctx.recipe.report.get("aggregate", "mean")
    blocks: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for d in _language_specs(ctx):
        path = ctx.dir.parent / _slug(d.name) / "scores.lance"
        if d.dataset in ("futrell2018",) or not path.exists():
            continue
        rows, _ = brain_scores(path, ctx.fit, aggregate=agg)
        blocks.setdefault(d.dataset, []).append((d.name, {r["model"]: r["score"] for r in rows}))
    # one column per dataset: blocks of one dataset (Pereira's two experiments) are averaged
    # first, so a dataset split in several [[data]] tables does not weigh more in the mean
    per_data: dict[str, dict[str, float]] = {}
    for dataset, parts in blocks.items():
        if len(parts) == 1:
            per_data[parts[0][0]] = parts[0][1]
            continue
        names = dict.fromkeys(m for _, sc in parts for m in sc)
        per_data[dataset] = {m: float(np.mean([sc[m] for _, sc in parts if m in sc])) for m in names}
    if not per_data:
        return part
    models = list(dict.fromkeys(m for d in per_data.values() for m in d))
    specs = {m.name: m for m in ctx.recipe.models}
    mean = {m: float(np.mean([d[m] for d in per_data.values() if m in d])) for m in models}
    table = []
    for m in sorted(models, key=lambda k: -mean[k]):
        row = {
            "model": m,
            "group": specs[m].group if m in specs else "",
            "params_b": specs[m].params_b if m in specs else None,
        }
        row.update({d: per_data[d].get(m) for d in per_data})
        row["mean"] = mean[m]
        row["n_datasets"] = sum(m in d for d in per_data.values())
        if behaviour is not None:
            row["surprisal_rt_r"] = behaviour.get(m)
        table.append(row)
    part.tables["brain alignment (all datasets)"] = table
    pairs = _pairs(ctx)
    cmp_rows = []
    for d, sc in per_data.items():
        cmp_rows += _compare_rows(sc, pairs, d)
    cmp_rows += _compare_rows(mean, pairs, "mean")
    mean_change = [r["change_pct"] for r in cmp_rows if r["scores"] == "mean" and r["change_pct"] is not None]
    part.tables["instruction tuning effect"] = cmp_rows
    params = {m.name: m.params_b for m in ctx.recipe.models}
    size_rows = []
    for d, sc in per_data.items():
        size_rows += _size_rows(sc, params, d)
    size_rows += _size_rows(mean, params, "mean")
    if behaviour:
        r, n = _pearson(
            [mean[m] for m in models if m in behaviour], [behaviour[m] for m in models if m in behaviour]
        )
        size_rows.append(
            {
                "scores": "mean vs surprisal-RT r",
                "n_models": n,
                "pearson_r_size": r,
                "pearson_r_log10_size": None,
            }
        )
    part.tables["alignment vs model size (all datasets)"] = size_rows
    pts = [(m, float(params[m]), mean[m]) for m in models if params.get(m)]
    if pts:
        _plot_size(pts, out / "alignment_vs_size.png", f"brain score ({agg}, mean over datasets)")
        part.figures["brain alignment vs model size"] = "alignment_vs_size.png"
    means = [r for r in cmp_rows if r["scores"] == "mean"]
    if means:
        _plot_pairs(means, out / "tuned_vs_base.png", "brain score (mean over datasets)")
        part.figures["instruction-tuned vs base"] = "tuned_vs_base.png"
    if mean_change:
        part.notes.append(
            f"instruction tuning changes the mean brain score by {np.mean(mean_change):+.1f}% on average "
            f"over {len(mean_change)} base/tuned pair(s) (Aw et al.: +6.2%)"
        )
    return part


def _merge(a: ReportPart, b: ReportPart) -> ReportPart:
    a.tables.update(b.tables)
    a.figures.update(b.figures)
    a.notes += b.notes
    return a


def _is_summary_owner(ctx) -> bool:
    specs = _language_specs(ctx)
    return bool(specs) and specs[-1].name == ctx.data.name


# ---------------------------------------------------------------------------------------------
# base class of the three fMRI loaders
class _LanguageFMRI(StudyDataset):
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    manifest_options: ClassVar[tuple[str, ...]] = ()

    def _check_manifest_options(self, options: Mapping[str, Any]) -> None:
        bad = sorted(set(options) - set(self.manifest_options))
        if bad:
            raise RecipeError(
                f"embed.text: option(s) {bad} unknown to the {self.name} manifest; expected some of "
                f"{list(self.manifest_options)} (set loader options in the [[data]] table)"
            )

    def _ceiling_mode(self) -> list[str]:
        mode = self.options.get("ceiling", "subject-pool")
        if mode not in ("subject-pool", "none"):
            return [f"ceiling: expected 'subject-pool' or 'none', got {mode!r}"]
        return []

    def ceiling(self, responses: Path, subject: str) -> np.ndarray | None:
        if self.options.get("ceiling", "subject-pool") == "none":
            return None
        key = str(responses)
        cache = self.__dict__.setdefault("_ceilings", {})
        if key not in cache:
            cache[key] = pool_ceiling(Path(responses))
        return cache[key]

    def report(self, ctx, out: Path) -> ReportPart:
        part = _fmri_part(ctx, out)
        if _is_summary_owner(ctx):
            _merge(part, _summary_part(ctx, out))
        return part


# ---------------------------------------------------------------------------------------------
# Pereira 2018
PEREIRA_VARS = {
    "examples_passagesentences": "double|single",
    "keySentences": "cell",
    "labelsPassageForEachSentence": "",
    "labelsPassageCategory": "",
    "keyPassageCategory": "cell",
    "meta": "struct",
}


class Pereira2018(_LanguageFMRI):
    """Pereira et al. 2018, experiments 2 and 3 (sentences in passages); see the module docstring."""

    name: ClassVar[str] = "pereira2018"
    option_keys: ClassVar[tuple[str, ...]] = ("experiment", "atlases", "voxels", "test_passages", "ceiling")
    tr: ClassVar[float | None] = None

    # ---- layout ------------------------------------------------------------------------------
    @property
    def experiment(self) -> str:
        e = str(self.options.get("experiment", "384")).removesuffix("sentences")
        return e

    @property
    def filename(self) -> str:
        return f"data_{self.experiment}sentences.mat"

    @property
    def stimulus_set(self) -> str:
        return f"pereira2018-{self.experiment}"

    def _found(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(f"sub-{d.name}" for d in self.root.iterdir() if (d / self.filename).is_file())

    def _path(self, subject: str) -> Path:
        return self.root / subject.removeprefix("sub-") / self.filename

    def subjects(self) -> list[str]:
        return _select_subjects(self, self._found())

    def check(self) -> list[str]:
        problems = _unknown_options(self) + self._ceiling_mode()
        if self.experiment not in ("384", "243"):
            problems.append(
                f"experiment: expected '384' or '243' (Pereira experiments 2 and 3), got {self.experiment!r}"
            )
            return problems
        if self.options.get("voxels", "common") not in ("common", "subject"):
            problems.append(f"voxels: expected 'common' or 'subject', got {self.options.get('voxels')!r}")
        found = self._found()
        if not found:
            dirs = sorted(d.name for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []
            problems.append(
                f"{self.root}: no subject folder holds {self.filename} (expected ROOT/<subject>/{self.filename}, "
                f"e.g. M02/{self.filename}); folders found: {dirs}"
            )
            return problems
        problems += _missing_subjects(self, found, str(self.root))
        n_rows = None
        for s in self.subjects():
            info = _check_vars(self._path(s), PEREIRA_VARS, problems)
            if info is None:
                continue
            n_sent = info["examples_passagesentences"][0][0]
            for v in ("keySentences", "labelsPassageForEachSentence"):
                if max(info[v][0]) != n_sent:
                    problems.append(
                        f"{self._path(s)}: {v} has shape {info[v][0]}, expected {n_sent} rows "
                        f"(one per row of examples_passagesentences)"
                    )
            if n_rows is not None and n_sent != n_rows:
                problems.append(
                    f"{self._path(s)}: {n_sent} sentences, the first subject has {n_rows}; every subject "
                    "must have read the same sentences"
                )
            n_rows = n_sent if n_rows is None else n_rows
        if problems:
            return problems
        first = self._path(self.subjects()[0])
        try:
            st = self._stimuli()
        except (ValueError, KeyError, IndexError) as exc:
            return [f"{first}: cannot read the sentences and passages ({exc})"]
        want = self.options.get("atlases", ["languageLH", "languageRH"])
        if want != "all":
            if not (isinstance(want, list) and all(isinstance(a, str) for a in want) and want):
                problems.append(f"atlases: expected a list of meta.atlases names or 'all', got {want!r}")
            else:
                try:
                    have = _cell_strings(_raw_struct(first, "meta")["atlases"])
                except (KeyError, ValueError) as exc:
                    have = []
                    problems.append(f"{first}: meta has no readable atlases field ({exc})")
                missing = [a for a in want if a not in have]
                if have and missing:
                    problems.append(f"atlases: {missing} not in {first} meta.atlases {have}")
        tp = self.options.get("test_passages", "last-per-category")
        if isinstance(tp, list):
            bad = [p for p in tp if int(p) not in set(st["passage"].tolist())]
            if bad:
                problems.append(
                    f"test_passages: passage(s) {bad} do not exist (1..{int(st['passage'].max())})"
                )
        elif tp not in ("last-per-category", "every-4th"):
            problems.append(
                f"test_passages: expected 'last-per-category', 'every-4th' or a list of passage numbers, got {tp!r}"
            )
        return problems

    # ---- stimuli -----------------------------------------------------------------------------
    def _stimuli(self) -> dict[str, Any]:
        """Sentences, their passage (1-based) and position, and the passages' categories."""
        if "_stim" not in self.__dict__:
            subs = self.subjects()
            if not subs:
                raise RecipeError(f"{self.root}: no subjects with {self.filename}")
            d = _loadmat(
                self._path(subs[0]),
                [
                    "keySentences",
                    "labelsPassageForEachSentence",
                    "labelsPassageCategory",
                    "keyPassageCategory",
                ],
            )
            sentences = _strings(d["keySentences"])
            passage = _vec(d["labelsPassageForEachSentence"]).astype(int).ravel()
            pcat = _vec(d["labelsPassageCategory"]).astype(int).ravel()
            cats = _strings(d["keyPassageCategory"])
            if len(passage) != len(sentences):
                raise ValueError(f"{len(sentences)} sentences but {len(passage)} passage labels")
            pos = np.zeros(len(sentences), int)
            seen: dict[int, int] = {}
            for i, p in enumerate(passage):
                pos[i] = seen.get(p, 0)
                seen[p] = pos[i] + 1
            self.__dict__["_stim"] = {
                "sentence": sentences,
                "passage": passage,
                "position": pos,
                "passage_category": pcat,
                "categories": cats,
            }
        return self.__dict__["_stim"]

    @staticmethod
    def run_name(passage: int) -> str:
        return f"passage-{int(passage):03d}"

    def manifest(self, modality: str = "text", **options: Any) -> Manifest:
        if modality != "text":
            raise RecipeError(f"modality: {self.name} provides text stimuli, got {modality!r}")
        self._check_manifest_options(options)
        st = self._stimuli()
        items = []
        for i, (sent, p, k) in enumerate(zip(st["sentence"], st["passage"], st["position"], strict=True)):
            prev = [st["sentence"][j] for j in range(i) if st["passage"][j] == p]
            context = " ".join(prev)
            text = (context + " " + sent) if context else sent
            items.append(
                Stimulus(
                    stimulus_id=f"s{i:03d}",
                    run=self.run_name(p),
                    tr=int(k),
                    text=text,
                    focus=(len(text) - len(sent), len(text)),
                )
            )
        spec = {
            "modality": "text",
            "unit": "sentence in its passage",
            "text": "the passage's sentences up to and including this one (accumulated context)",
            "source": f"{self.filename}: keySentences, labelsPassageForEachSentence",
            "experiment": self.experiment,
        }
        return Manifest(self.stimulus_set, "text", items, spec)

    # ---- responses ---------------------------------------------------------------------------
    def test_runs(self) -> list[str]:
        st = self._stimuli()
        passages = sorted(set(st["passage"].tolist()))
        tp = self.options.get("test_passages", "last-per-category")
        if isinstance(tp, list):
            chosen = [int(p) for p in tp]
        elif tp == "every-4th":
            chosen = passages[3::4]
        else:
            pcat = st["passage_category"]
            by_cat: dict[int, int] = {}
            for p in passages:
                c = int(pcat[p - 1]) if p - 1 < len(pcat) else 0
                by_cat[c] = max(by_cat.get(c, p), p)
            chosen = sorted(by_cat.values())
        return [self.run_name(p) for p in chosen]

    def summary(self) -> dict[str, Any]:
        """Sentences, passages, and the atlas voxels of the first subject (before keeping the
        voxels common to all subjects)."""
        subs = self.subjects()
        if not subs:
            return {"n_samples": 0, "n_voxels": 0, "runs": 0}
        path = self._path(subs[0])
        cols, _ = self._columns(_raw_struct(path, "meta"), path)
        st = self._stimuli()
        return {
            "n_samples": len(st["sentence"]),
            "n_voxels": len(cols),
            "runs": len(set(st["passage"].tolist())),
            "test_passages": len(self.test_runs()),
        }

    def _columns(self, meta: Mapping[str, Any], path: Path) -> tuple[np.ndarray, list[str]]:
        """Columns (0-based) of every ROI of the selected atlases and their ``atlas.roi`` labels;
        ``meta`` is the unsqueezed struct (:func:`_raw_struct`)."""
        want = self.options.get("atlases", ["languageLH", "languageRH"])
        n = int(np.asarray(meta["colToCoord"]).reshape(-1, 3).shape[0])
        if want == "all":
            return np.arange(n), ["all"] * n
        atlases = _cell_strings(meta["atlases"])
        missing = [a for a in want if a not in atlases]
        if missing:
            raise RecipeError(f"atlases: {missing} not in {path} meta.atlases {atlases}")
        label: dict[int, str] = {}
        for a in want:
            k = atlases.index(a)
            rois = _cell_strings(np.asarray(meta["rois"], dtype=object).ravel()[k])
            cols = np.asarray(np.asarray(meta["roiColumns"], dtype=object).ravel()[k], dtype=object).ravel()
            for roi, c in zip(rois, cols, strict=True):
                for j in np.asarray(c).ravel().astype(int):
                    label.setdefault(int(j) - 1, f"{a}.{roi}")
        idx = np.array(sorted(label), dtype=np.int64)
        return idx, [label[int(i)] for i in idx]

    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        say = progress or (lambda _m: None)
        t0 = time.perf_counter()
        st = self._stimuli()
        subs = self.subjects()
        data, coords, labels = {}, {}, {}
        for s in subs:
            path = self._path(s)
            say(f"reading {path}")
            d = _loadmat(path, ["examples_passagesentences"])
            meta = _raw_struct(path, "meta")
            X = np.asarray(d["examples_passagesentences"], dtype=np.float32).reshape(len(st["sentence"]), -1)
            cols, rois = self._columns(meta, path)
            xyz = np.asarray(meta["colToCoord"]).reshape(-1, 3).astype(int)
            finite = np.isfinite(X[:, cols]).all(0)  # voxels with NaN in any sentence are left out
            cols, rois = cols[finite], [r for r, ok in zip(rois, finite, strict=True) if ok]
            data[s], coords[s], labels[s] = X[:, cols], xyz[cols], rois
        mode, sel, n_vox, vox = _select_voxels(
            self, data, coords, labels, space="MNI (Pereira 2018 grid)", where=" in the selected atlases"
        )
        runs = [self.run_name(p) for p in st["passage"]]
        resp = []
        for s in subs:
            resp.append(
                _responses_table(
                    self.name,
                    s,
                    self.stimulus_set,
                    runs,
                    st["position"],
                    data[s][:, sel[s]],
                    trials=np.arange(len(runs)),
                    stimulus_ids=[f"s{i:03d}" for i in range(len(runs))],
                )
            )
        prov = {
            "dataset": self.name,
            "experiment": self.experiment,
            "files": [str(self._path(s)) for s in subs],
            "atlases": self.options.get("atlases", ["languageLH", "languageRH"]),
            "voxels": mode,
            "unit": "sentence betas (examples_passagesentences); run = passage, tr = sentence in passage",
        }
        say(f"writing {len(subs)} subject(s) x {len(runs)} sentences x {n_vox:,} voxels")
        return _write_and_summarise(
            self,
            responses,
            voxels,
            resp,
            vox,
            subjects=subs,
            n_voxels=n_vox,
            provenance=prov,
            t0=t0,
            tr_s=0.0,
            space="MNI (Pereira 2018 grid)",
            fmt="matlab",
            preprocessing={"voxels": mode, "dropped": "voxels with NaN betas"},
        )


# ---------------------------------------------------------------------------------------------
# Wehbe 2014
WEHBE_VARS = {"data": "", "time": "", "words": "struct", "meta": "struct"}


class Wehbe2014(_LanguageFMRI):
    """Wehbe et al. 2014, Harry Potter chapter 9 read word by word; see the module docstring."""

    name: ClassVar[str] = "wehbe2014"
    option_keys: ClassVar[tuple[str, ...]] = ("test_run", "rois", "voxels", "context_words", "ceiling")
    tr: ClassVar[float | None] = 2.0
    stimulus_set: ClassVar[str] = "wehbe2014-hp9"
    word_s: ClassVar[float] = 0.5

    def _found(self) -> list[str]:
        if not self.root.is_dir():
            return []
        nums = []
        for p in self.root.glob("subject_*.mat"):
            m = re.fullmatch(r"subject_(\d+)\.mat", p.name)
            if m:
                nums.append(int(m.group(1)))
        return [f"sub-{n}" for n in sorted(nums)]

    def _path(self, subject: str) -> Path:
        return self.root / f"subject_{subject.removeprefix('sub-')}.mat"

    def subjects(self) -> list[str]:
        return _select_subjects(self, self._found())

    @staticmethod
    def run_name(r: int) -> str:
        return f"run-{int(r)}"

    def _timing(self, subject: str) -> dict[str, Any]:
        """TR times and runs of one subject's file, and the words (from the first subject)."""
        cache = self.__dict__.setdefault("_timings", {})
        if subject not in cache:
            d = _loadmat(self._path(subject), ["time", "words"])
            tm = np.asarray(d["time"], dtype=float).reshape(-1, 2)
            words = d["words"]
            if isinstance(words, dict):
                words = [words]
            cache[subject] = {
                "t": tm[:, 0],
                "run": tm[:, 1].astype(int),
                "text": [str(w["text"]) for w in words],
                "start": np.array([float(w["start"]) for w in words]),
                "length": np.array([float(w.get("length", self.word_s)) for w in words]),
            }
        return cache[subject]

    def check(self) -> list[str]:
        problems = _unknown_options(self) + self._ceiling_mode()
        if self.options.get("voxels", "common") not in ("common", "subject"):
            problems.append(f"voxels: expected 'common' or 'subject', got {self.options.get('voxels')!r}")
        found = self._found()
        if not found:
            problems.append(
                f"{self.root}: no subject_<n>.mat files (expected subject_1.mat .. subject_8.mat from "
                "http://www.cs.cmu.edu/~fmri/plosone/)"
            )
            return problems
        problems += _missing_subjects(self, found, str(self.root))
        n_trs = None
        for s in self.subjects():
            path = self._path(s)
            info = _check_vars(path, WEHBE_VARS, problems)
            if info is None:
                continue
            n, two = info["time"][0][:2] if len(info["time"][0]) > 1 else (info["time"][0][0], 1)
            if two != 2:
                problems.append(f"{path}: time has shape {info['time'][0]}, expected (n_TRs, 2): time, run")
                continue
            if info["data"][0][0] != n:
                problems.append(
                    f"{path}: data has {info['data'][0][0]} rows but time has {n}; expected one row per TR"
                )
            if n_trs is not None and n != n_trs:
                problems.append(
                    f"{path}: {n} TRs, the first subject has {n_trs}; the TR grids of the subjects differ"
                )
            n_trs = n if n_trs is None else n_trs
            tm = self._timing(s)
            runs = sorted(set(tm["run"].tolist()))
            if len(runs) < 2:
                problems.append(f"{path}: time lists {len(runs)} run(s); need at least 2 (train and test)")
            for r in runs:
                t = tm["t"][tm["run"] == r]
                steps = np.unique(np.round(np.diff(t), 3))
                if len(steps) and not np.allclose(steps, self.tr, atol=1e-3):
                    problems.append(
                        f"{path}: time: expected TR {self.tr} s within each run, found steps of "
                        f"{sorted(set(steps.tolist()))} s in run {r}"
                    )
            starts = tm["start"]
            first, last = tm["t"].min(), tm["t"].max() + self.tr
            outside = np.flatnonzero((starts < first) | (starts >= last))
            if len(outside):
                problems.append(
                    f"{path}: {len(outside)} word(s) start outside the scanned time [{first}, {last}) s "
                    f"(e.g. word {int(outside[0])} at {starts[outside[0]]} s); the words and the TR grid disagree"
                )
            if len(starts) and np.any(np.diff(starts) < 0):
                problems.append(f"{path}: words.start is not in increasing order")
        tr_opt = self.options.get("test_run", "run-4")
        if not problems and self.subjects():
            runs = [self.run_name(r) for r in sorted(set(self._timing(self.subjects()[0])["run"].tolist()))]
            if self._test_run_name(tr_opt) not in runs:
                problems.append(f"test_run: {tr_opt!r} is not one of the runs {runs}")
        cw = self.options.get("context_words", 20)
        if not isinstance(cw, int) or cw < 0:
            problems.append(f"context_words: expected a non-negative integer, got {cw!r}")
        return problems

    def _test_run_name(self, v: Any) -> str:
        return self.run_name(v) if isinstance(v, int) or str(v).isdigit() else str(v)

    def test_runs(self) -> list[str]:
        return [self._test_run_name(self.options.get("test_run", "run-4"))]

    def summary(self) -> dict[str, Any]:
        subs = self.subjects()
        info = _whos(self._path(subs[0])) if subs else {}
        shape = info.get("data", ((0, 0), ""))[0] if isinstance(info, dict) else (0, 0)
        tm = self._timing(subs[0]) if subs else {"run": np.zeros(0), "text": []}
        return {
            "n_samples": int(shape[0]),
            "n_voxels": int(shape[1]),  # before the ROI and common-voxel selection
            "runs": len(set(tm["run"].tolist())),
            "n_words": len(tm["text"]),
        }

    def _run_starts(self, tm: Mapping[str, Any]) -> dict[int, float]:
        return {int(r): float(tm["t"][tm["run"] == r].min()) for r in sorted(set(tm["run"].tolist()))}

    def manifest(self, modality: str = "text", **options: Any) -> Manifest:
        if modality != "text":
            raise RecipeError(f"modality: {self.name} provides text stimuli, got {modality!r}")
        self._check_manifest_options(options)
        tm = self._timing(self.subjects()[0])
        starts = self._run_starts(tm)
        run_ids = sorted(starts)
        cw = int(self.options.get("context_words", 20))
        words = tm["text"]
        items = []
        for k, (w, on, ln) in enumerate(zip(words, tm["start"], tm["length"], strict=True)):
            r = max([x for x in run_ids if starts[x] <= on], default=run_ids[0])
            ctx = " ".join(words[max(0, k - cw) : k])
            text = (ctx + " " + w) if ctx else w
            onset = float(on - starts[r])
            items.append(
                Stimulus(
                    stimulus_id=f"w{k:05d}",
                    run=self.run_name(r),
                    tr=None,
                    onset_s=onset,
                    window_start_s=onset,
                    window_end_s=onset + float(ln),
                    text=text,
                    focus=(len(text) - len(w), len(text)),
                )
            )
        spec = {
            "modality": "text",
            "unit": "word (tr is None; onset_s from the run's first TR)",
            "context_words": cw,
            "text": f"up to {cw} preceding words, then the word (focus)",
            "tr_s": self.tr,
            "source": f"{self._path(self.subjects()[0]).name}: words, time",
        }
        return Manifest(self.stimulus_set, "text", items, spec)

    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        say = progress or (lambda _m: None)
        t0 = time.perf_counter()
        subs = self.subjects()
        want = self.options.get("rois", "all")
        data, coords, labels, timing = {}, {}, {}, {}
        for s in subs:
            path = self._path(s)
            say(f"reading {path}")
            d = _loadmat(path, ["data"])
            X = np.asarray(d["data"], dtype=np.float32)
            meta = _raw_struct(path, "meta")
            xyz = np.asarray(meta["colToCoord"]).reshape(-1, 3).astype(int)
            names = _cell_strings(meta["ROInumToName"]) if "ROInumToName" in meta else []
            nums = np.asarray(meta.get("colToROInum", np.zeros(len(xyz)))).astype(int).ravel()
            # ROInumToName lists the AAL names by number, 'Not_labelled' last (number 0)
            roi = [names[n - 1] if 0 < n <= len(names) else "Not_labelled" for n in nums]
            keep = np.isfinite(X).all(0)
            if want != "all":
                keep &= np.isin(np.array(roi, dtype=object), list(want))
            cols = np.flatnonzero(keep)
            data[s], coords[s], labels[s] = X[:, cols], xyz[cols], [roi[c] for c in cols]
            timing[s] = self._timing(s)
        mode, sel, n_vox, vox = _select_voxels(self, data, coords, labels, space="MNI (Wehbe 2014 grid)")
        resp = []
        for s in subs:
            tm = timing[s]
            starts = self._run_starts(tm)
            trs = np.zeros(len(tm["t"]), int)
            for r in starts:
                m = tm["run"] == r
                trs[m] = np.arange(int(m.sum()))
            onsets = tm["t"] - np.array([starts[int(r)] for r in tm["run"]])
            resp.append(
                _responses_table(
                    self.name,
                    s,
                    self.stimulus_set,
                    [self.run_name(r) for r in tm["run"]],
                    trs,
                    data[s][:, sel[s]],
                    onsets=onsets,
                )
            )
        prov = {
            "dataset": self.name,
            "files": [str(self._path(s)) for s in subs],
            "rois": want,
            "voxels": mode,
            "tr_s": self.tr,
            "onset_s": "seconds from the run's first TR (time column 1 minus the run's first time)",
        }
        say(f"writing {len(subs)} subject(s) x {len(resp[0])} TRs x {n_vox:,} voxels")
        return _write_and_summarise(
            self,
            responses,
            voxels,
            resp,
            vox,
            subjects=subs,
            n_voxels=n_vox,
            provenance=prov,
            t0=t0,
            tr_s=float(self.tr),
            space="MNI (Wehbe 2014 grid)",
            fmt="matlab",
            preprocessing={"voxels": mode, "dropped": "voxels with NaN values"},
        )


# ---------------------------------------------------------------------------------------------
# Blank 2014
NATURAL_STORIES = {
    1: "Boar",
    2: "Aqua",
    3: "MatchstickSeller",
    4: "KingOfBirds",
    5: "Elvis",
    6: "MrSticky",
    7: "HighSchool",
    8: "Roswell",
    9: "Tulips",
    10: "Tourette",
}
IGNORED_WORDS = {"", "sp", "sil", "<s>", "</s>", "<s"}


def read_textgrid_words(path: Path) -> list[tuple[float, float, str]]:
    """``(xmin, xmax, text)`` of the intervals of a Praat TextGrid's word tier (long text format).

    The tier named ``words`` (any case) is used, else the first interval tier; empty intervals,
    silences (``sp``, ``sil``) and sentence marks (``<s>``) are left out.
    """
    tiers: list[tuple[str, list[tuple[float, float, str]]]] = []
    cur: list[tuple[float, float, str]] | None = None
    xmin = xmax = None
    in_interval = False
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        m = re.match(r'name\s*=\s*"(.*)"', line)
        if m:
            cur = []
            tiers.append((m.group(1), cur))
            in_interval = False
            continue
        if re.match(r"intervals\s*\[\d+\]\s*:", line):
            in_interval, xmin, xmax = True, None, None
            continue
        if not in_interval or cur is None:
            continue
        m = re.match(r"(xmin|xmax)\s*=\s*([-0-9.eE+]+)", line)
        if m:
            if m.group(1) == "xmin":
                xmin = float(m.group(2))
            else:
                xmax = float(m.group(2))
            continue
        m = re.match(r'text\s*=\s*"(.*)"\s*$', line)
        if m and xmin is not None and xmax is not None:
            cur.append((xmin, xmax, m.group(1).replace('""', '"')))
            in_interval = False
    if not tiers:
        raise ValueError(
            f"{path}: no interval tier found (expected a Praat TextGrid in the long text format)"
        )
    named = [t for t in tiers if t[0].lower() == "words"]
    _, intervals = named[0] if named else tiers[0]
    return [(a, b, w.strip()) for a, b, w in intervals if w.strip().lower() not in IGNORED_WORDS]


class Blank2014(_LanguageFMRI):
    """Blank et al. 2014 language fROI time courses (Brain-Score export); see the module docstring."""

    name: ClassVar[str] = "blank2014"
    option_keys: ClassVar[tuple[str, ...]] = (
        "audio_onset_s",
        "test_stories",
        "frois",
        "context_words",
        "ceiling",
    )
    tr: ClassVar[float | None] = 2.0
    stimulus_set: ClassVar[str] = "blank2014"

    def _found(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("sub-*.csv"))

    def subjects(self) -> list[str]:
        return _select_subjects(self, self._found())

    def _csv(self, subject: str) -> dict[str, Any]:
        cache = self.__dict__.setdefault("_csvs", {})
        if subject not in cache:
            path = self.root / f"{subject}.csv"
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                raise ValueError(f"{path}: empty file")
            header = [h.strip() for h in rows[0]]
            cache[subject] = {"header": header, "rows": rows[1:], "path": path}
        return cache[subject]

    def _frois(self, header: list[str]) -> list[str]:
        cols = [h for h in header if h not in ("story", "tr")]
        want = self.options.get("frois", "all")
        return cols if want == "all" else [c for c in cols if c in want]

    def _grid(self, subject: str) -> dict[str, int]:
        """Number of TRs per story in a subject's CSV (TRs must run 0..n-1)."""
        c = self._csv(subject)
        si, ti = c["header"].index("story"), c["header"].index("tr")
        trs: dict[str, list[int]] = {}
        for row in c["rows"]:
            trs.setdefault(row[si], []).append(int(float(row[ti])))
        out = {}
        for story, t in trs.items():
            if sorted(t) != list(range(len(t))):
                raise ValueError(f"{c['path']}: story {story}: tr must run 0..{len(t) - 1} once each")
            out[story] = len(t)
        return out

    def _textgrid(self, story: str) -> Path | None:
        num = {v: k for k, v in NATURAL_STORIES.items()}.get(story)
        return None if num is None else self.root / "audio" / f"{num}_aligned.TextGrid"

    def _stories(self) -> list[str]:
        """Stories every selected subject heard, in Natural Stories order."""
        grids = [self._grid(s) for s in self.subjects()]
        common = set.intersection(*(set(g) for g in grids)) if grids else set()
        order = {v: k for k, v in NATURAL_STORIES.items()}
        return sorted(common, key=lambda s: order.get(s, 99))

    def _words(self, story: str) -> tuple[list[str], np.ndarray]:
        cache = self.__dict__.setdefault("_word_cache", {})
        if story not in cache:
            iv = read_textgrid_words(self._textgrid(story))
            onset = float(self.options.get("audio_onset_s", 8.0))
            cache[story] = ([w for _, _, w in iv], np.array([a + onset for a, _, _ in iv]))
        return cache[story]

    def check(self) -> list[str]:
        problems = _unknown_options(self) + self._ceiling_mode()
        found = self._found()
        if not found:
            problems.append(
                f"{self.root}: no sub-<UID>.csv files (expected one CSV per subject with columns story, tr "
                "and one per fROI, exported from Brain-Score's Blank2014.fROI assembly)"
            )
            return problems
        problems += _missing_subjects(self, found, str(self.root))
        grids, frois = {}, None
        for s in self.subjects():
            try:
                c = self._csv(s)
            except (OSError, ValueError) as exc:
                problems.append(f"{self.root / (s + '.csv')}: unreadable ({exc})")
                continue
            missing = [k for k in ("story", "tr") if k not in c["header"]]
            if missing:
                problems.append(f"{c['path']}: column(s) {missing} missing; found {c['header'][:6]}")
                continue
            f = self._frois(c["header"])
            if not f:
                problems.append(f"{c['path']}: no fROI columns (besides story, tr)")
            if frois is not None and f != frois:
                problems.append(f"{c['path']}: fROI columns {f} differ from the first subject's {frois}")
            frois = f if frois is None else frois
            try:
                grids[s] = self._grid(s)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            return problems
        stories = self._stories()
        if len(stories) < 2:
            problems.append(
                f"stories: the subjects share {len(stories)} story(ies) {stories}; need 2 (train, test)"
            )
        for story in stories:
            counts = {s: g[story] for s, g in grids.items()}
            if len(set(counts.values())) > 1:
                problems.append(f"story {story}: the subjects' TR grids differ {counts} (TRs per subject)")
            tg = self._textgrid(story)
            if tg is None:
                problems.append(
                    f"story {story}: not a Natural Stories story {sorted(NATURAL_STORIES.values())}"
                )
                continue
            if not tg.is_file():
                problems.append(f"{tg}: missing (the word alignment of story {story}; naturalstories/audio)")
                continue
            try:
                words, onsets = self._words(story)
            except (OSError, ValueError) as exc:
                problems.append(f"{tg}: {exc}")
                continue
            n = max(counts.values())
            if not words:
                problems.append(f"{tg}: no words")
            elif onsets.max() >= n * self.tr:
                problems.append(
                    f"{tg}: the last word starts at {onsets.max():.1f} s (audio onset "
                    f"{self.options.get('audio_onset_s', 8.0)} s included) but the BOLD of story {story} has "
                    f"{n} TRs ({n * self.tr:.0f} s); the TR grid and the stimulus disagree"
                )
        ts = self.options.get("test_stories")
        if ts is not None and not problems:
            bad = [x for x in ts if x not in stories]
            if bad:
                problems.append(f"test_stories: {bad} are not stories every subject heard {stories}")
        return problems

    def test_runs(self) -> list[str]:
        ts = self.options.get("test_stories")
        return list(ts) if ts else self._stories()[-1:]

    def summary(self) -> dict[str, Any]:
        subs = self.subjects()
        grid = self._grid(subs[0]) if subs else {}
        stories = self._stories() if subs else []
        return {
            "n_samples": int(sum(grid.get(s, 0) - self._first_tr(s) for s in stories)),
            "n_voxels": len(self._frois(self._csv(subs[0])["header"])) if subs else 0,
            "runs": len(stories),
        }

    def _first_tr(self, story: str) -> int:
        _, onsets = self._words(story)
        return int(np.floor(onsets.min() / self.tr)) if len(onsets) else 0

    def manifest(self, modality: str = "text", **options: Any) -> Manifest:
        if modality != "text":
            raise RecipeError(f"modality: {self.name} provides text stimuli, got {modality!r}")
        self._check_manifest_options(options)
        grid = self._grid(self.subjects()[0])
        items: list[Stimulus] = []
        cw = self.options.get("context_words")
        for story in self._stories():
            words, onsets = self._words(story)
            m = text_windows(
                words,
                onsets,
                tr=self.tr,
                n_trs=grid[story],
                context_words=len(words) if cw is None else int(cw),
                run=story,
                stimulus_set=self.stimulus_set,
            )
            first = self._first_tr(story)
            items += [it for it in m.items if it.tr >= first]
        spec = {
            "modality": "text",
            "unit": "TR (words with onset in the TR, after the story so far)",
            "context_words": "whole story" if cw is None else int(cw),
            "tr_s": self.tr,
            "audio_onset_s": float(self.options.get("audio_onset_s", 8.0)),
            "first_tr": "the TR of the first word (earlier TRs are not used)",
        }
        return Manifest(self.stimulus_set, "text", items, spec)

    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        say = progress or (lambda _m: None)
        t0 = time.perf_counter()
        subs, stories = self.subjects(), self._stories()
        frois = self._frois(self._csv(subs[0])["header"])
        resp, vox = [], []
        for s in subs:
            c = self._csv(s)
            h = c["header"]
            si, ti, cols = h.index("story"), h.index("tr"), [h.index(f) for f in frois]
            rows = sorted(
                (r for r in c["rows"] if r[si] in stories),
                key=lambda r: (stories.index(r[si]), int(float(r[ti]))),
            )
            rows = [r for r in rows if int(float(r[ti])) >= self._first_tr(r[si])]
            Y = np.array([[float(r[k]) for k in cols] for r in rows], dtype=np.float32)
            if not np.isfinite(Y).all():
                raise RecipeError(
                    f"{c['path']}: fROI values contain NaN; remove those fROIs with option frois"
                )
            trs = np.array([int(float(r[ti])) for r in rows])
            resp.append(
                _responses_table(
                    self.name,
                    s,
                    self.stimulus_set,
                    [r[si] for r in rows],
                    trs,
                    Y,
                    onsets=trs * float(self.tr),
                )
            )
            vox.append(_voxels_table(self.name, s, "fROI", None, frois))
        prov = {
            "dataset": self.name,
            "files": [str(self.root / f"{s}.csv") for s in subs],
            "stories": stories,
            "audio_onset_s": float(self.options.get("audio_onset_s", 8.0)),
            "unit": "language fROI mean time courses (Brain-Score Blank2014.fROI export)",
        }
        say(f"writing {len(subs)} subject(s) x {len(resp[0])} TRs x {len(frois)} fROIs")
        return _write_and_summarise(
            self,
            responses,
            voxels,
            resp,
            vox,
            subjects=subs,
            n_voxels=len(frois),
            provenance=prov,
            t0=t0,
            run_order=stories,
            rois={f: 1 for f in frois},
            tr_s=float(self.tr),
            space="fROI",
            fmt="csv",
            preprocessing={"first_tr": "TRs before the first word dropped"},
        )


# ---------------------------------------------------------------------------------------------
# Futrell 2018: surprisal vs reading times
RT_COLUMNS = ("WorkerId", "item", "zone", "RT")


def _torch_transformers():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise RecipeError(
            "futrell2018: computing surprisal needs torch and transformers; install the compute extra "
            "(pip install 'brainalign-feature-store[compute]')"
        ) from exc
    return torch, transformers


def word_surprisal(
    checkpoint: str | Path,
    stories: Mapping[Any, Sequence[str]],
    *,
    revision: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
    max_context: int = 1024,
    trust_remote_code: bool = False,
) -> dict[Any, np.ndarray]:
    """Per-word surprisal ``-log2 p(word | preceding words of the story)`` of a causal LM.

    Each story is the words joined by single spaces; a word's surprisal is the sum over its
    tokens (tokens are assigned to the word their characters overlap). The story is scored in
    windows of ``max_context`` tokens (at most the model's context) advancing by half a window,
    each token scored once with at least half a window of context after the first window. The
    tokenizer's BOS token (if any) is prepended; without one the first word has no surprisal
    (NaN). Returns ``{story: (n_words,) float64}``.
    """
    torch, tf = _torch_transformers()
    kw = {"revision": revision or "main", "trust_remote_code": trust_remote_code}
    tok = tf.AutoTokenizer.from_pretrained(str(checkpoint), **kw)
    cfg = tf.AutoConfig.from_pretrained(str(checkpoint), **kw)
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"{checkpoint}: an encoder-decoder model has no left-to-right word surprisal")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = tf.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtypes[dtype], **kw).to(dev).eval()
    limit = getattr(cfg.get_text_config(), "max_position_embeddings", None) or getattr(
        cfg, "n_positions", None
    )
    L = max(8, min(int(max_context), int(limit) if limit else int(max_context)))
    out = {}
    for key, words in stories.items():
        words = [str(w) for w in words]
        text = " ".join(words)
        ends = np.cumsum([len(w) + 1 for w in words]) - 1  # exclusive end of each word
        starts = ends - np.array([len(w) for w in words])
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        bos = tok.bos_token_id
        lead = 1 if bos is not None else 0
        seq = ([bos] if bos is not None else []) + ids
        logp = np.full(len(seq), np.nan)
        stride = max(1, L // 2)
        b = 0
        while True:
            window = seq[b : b + L]
            first = 1 if b == 0 else L - stride
            with torch.inference_mode():
                logits = model(torch.as_tensor([window], device=dev)).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            tgt = torch.as_tensor(window[1:], device=dev)
            tok_lp = lp[:-1].gather(1, tgt[:, None])[:, 0].cpu().numpy()  # log p(window[i+1])
            for i in range(max(first, 1), len(window)):
                logp[b + i] = tok_lp[i - 1]
            if b + L >= len(seq):
                break
            b += stride
        surprisal = -logp[lead:] / math.log(2)
        word_of = np.searchsorted(ends, np.maximum(offs[:, 1] - 1, offs[:, 0]), side="left")
        s = np.zeros(len(words))
        seen = np.zeros(len(words), bool)
        for t, w in enumerate(word_of):
            if w < len(words) and offs[t, 1] > starts[w]:
                s[w] += surprisal[t]
                seen[w] = True
        s[~seen] = np.nan
        out[key] = s
    del model
    return out


class Futrell2018(StudyDataset):
    """Natural Stories self-paced reading times: surprisal vs RT (behaviour); see the module docstring."""

    name: ClassVar[str] = "futrell2018"
    kind: ClassVar[str] = "behaviour"
    modalities: ClassVar[tuple[str, ...]] = ()
    option_keys: ClassVar[tuple[str, ...]] = ("min_rt", "max_rt", "min_correct", "max_context", "stories")

    @property
    def rt_file(self) -> Path:
        return self.root / "naturalstories_RTS" / "processed_RTs.tsv"

    @property
    def words_file(self) -> Path:
        return self.root / "naturalstories_RTS" / "all_stories.tok"

    def check(self) -> list[str]:
        problems = _unknown_options(self)
        for path, cols in ((self.rt_file, RT_COLUMNS), (self.words_file, ("word", "zone", "item"))):
            if not path.is_file():
                problems.append(f"{path}: missing (clone https://github.com/languageMIT/naturalstories)")
                continue
            with path.open() as f:
                header = f.readline().rstrip("\n").split("\t")
            missing = [c for c in cols if c not in header]
            if missing:
                problems.append(
                    f"{path}: column(s) {missing} missing from the tab-separated header {header[:8]}"
                )
        for k, lo in (("min_rt", 0), ("max_rt", 1), ("min_correct", 0), ("max_context", 8)):
            v = self.options.get(k)
            if v is not None and not (isinstance(v, (int, float)) and v >= lo):
                problems.append(f"{k}: expected a number >= {lo}, got {v!r}")
        return problems

    def subjects(self) -> list[str]:
        return []

    def summary(self) -> dict[str, Any]:
        return {"n_samples": 0, "n_voxels": 0, "runs": 0}

    def words(self) -> dict[int, list[str]]:
        """The stories' words in order: ``{item: [word, ...]}`` (zone order)."""
        rows: dict[int, list[tuple[int, str]]] = {}
        with self.words_file.open(newline="") as f:
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                rows.setdefault(int(r["item"]), []).append((int(r["zone"]), r["word"]))
        want = self.options.get("stories")
        return {k: [w for _, w in sorted(v)] for k, v in sorted(rows.items()) if not want or k in want}

    def mean_rt(self) -> dict[tuple[int, int], float]:
        """Mean RT (ms) per (item, zone) over readers, after the RT and comprehension filters."""
        lo, hi = float(self.options.get("min_rt", 100)), float(self.options.get("max_rt", 3000))
        min_correct = self.options.get("min_correct", 5)
        sums: dict[tuple[int, int], list[float]] = {}
        with self.rt_file.open(newline="") as f:
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                try:
                    rt = float(r["RT"])
                except ValueError:
                    continue
                if not lo <= rt <= hi:
                    continue
                if min_correct is not None and r.get("correct") not in (None, "", "NA"):
                    if float(r["correct"]) < float(min_correct):
                        continue
                acc = sums.setdefault((int(r["item"]), int(r["zone"])), [0.0, 0])
                acc[0] += rt
                acc[1] += 1
        return {k: s / n for k, (s, n) in sums.items() if n}

    def report(self, ctx, out: Path) -> ReportPart:
        part = ReportPart()
        stories = self.words()
        rts = self.mean_rt()
        rows, behaviour = [], {}
        for m in ctx.models:
            row = {
                "model": m.name,
                "group": m.group,
                "params_b": m.params_b,
                "r": None,
                "n_words": 0,
                "note": "",
            }
            if m.source != "embed" or not m.checkpoint:
                row["note"] = "skipped: no checkpoint (features pulled or supplied)"
                rows.append(row)
                continue
            opts = {**{k: v for k, v in ctx.recipe.embed.items() if k != "modalities"}, **m.embed}
            try:
                s = word_surprisal(
                    m.checkpoint,
                    stories,
                    revision=m.revision,
                    device=opts.get("device") if opts.get("device") not in (None, "auto") else None,
                    dtype=opts.get("dtype", "float32"),
                    max_context=int(self.options.get("max_context", 1024)),
                    trust_remote_code=m.trust_remote_code,
                )
            except (ValueError, OSError) as exc:  # encoder-decoder, or a checkpoint that cannot load
                row["note"] = f"skipped: {exc}"
                rows.append(row)
                continue
            xs, ys, tsv = [], [], ["item\tzone\tword\tsurprisal_bits\tmean_rt_ms"]
            for item, words in stories.items():
                for z, (w, v) in enumerate(zip(words, s[item], strict=True), start=1):
                    rt = rts.get((item, z))
                    tsv.append(f"{item}\t{z}\t{w}\t{v:.4f}\t{'' if rt is None else f'{rt:.1f}'}")
                    if rt is not None and np.isfinite(v):
                        xs.append(v)
                        ys.append(rt)
            (out / f"surprisal_{_slug(m.name)}.tsv").write_text("\n".join(tsv) + "\n")
            r, n = _pearson(xs, ys)
            row.update(r=r, n_words=n, note=f"surprisal_{_slug(m.name)}.tsv")
            behaviour[m.name] = r
            rows.append(row)
        part.tables["surprisal vs reading time"] = rows
        part.tables["surprisal-RT tuned vs base"] = _compare_rows(
            {k: v for k, v in behaviour.items() if v is not None}, _pairs(ctx), self.name
        )
        part.notes.append(
            "behavioural alignment = Pearson r between per-word surprisal (bits, summed over the word's tokens) "
            f"and the mean self-paced reading time per word (RT in [{self.options.get('min_rt', 100)}, "
            f"{self.options.get('max_rt', 3000)}] ms, readers with >= {self.options.get('min_correct', 5)} "
            "correct answers); encoder-decoder models are skipped"
        )
        good = [r for r in rows if r["r"] is not None]
        if good:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(good) + 2), 3.2))
            ax.bar(range(len(good)), [r["r"] for r in good])
            ax.set_xticks(range(len(good)), [r["model"] for r in good], rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("r(surprisal, reading time)")
            fig.tight_layout()
            fig.savefig(out / "surprisal_rt.png", dpi=100)
            plt.close(fig)
            part.figures["surprisal vs reading time"] = "surprisal_rt.png"
        if _is_summary_owner(ctx):
            _merge(part, _summary_part(ctx, out, behaviour))
        (out / "surprisal_rt.json").write_text(json.dumps(rows, indent=1, default=str))
        return part
