"""OpenNeuro ds004323: fMRI of people playing Atari-style video games (Tomov et al. 2023).

Where to get it
---------------
https://openneuro.org/datasets/ds004323 (Tomov, Tsividis, Pouncy, Tenenbaum & Gershman, "The
neural architecture of theory-based reinforcement learning", Neuron 2023): 32 subjects played
VGDL games (chase, helper, bait, lemmings, plaqueAttack, zelda, ...) in 6 scanner runs (sub-09
has 5) at TR 2 s. The dataset is released under CC0, like most OpenNeuro datasets; check the
licence and citation request on the dataset page before use. Download with DataLad or the
OpenNeuro CLI (``datalad install https://github.com/OpenNeuroDatasets/ds004323.git``, then
``datalad get sub-01 behavior``). Preprocessed BOLD is not part of the raw snapshot: run
fMRIPrep (re-analyses of this dataset used fMRIPrep 24.1.0, MNI152NLin2009cAsym at 2 mm) or use
a published derivative, and put the outputs under ``derivatives/fmriprep`` (option
``preprocessed``). The names below are those fMRIPrep writes for task ``gameplay``; the loader
accepts any zero padding of the run number and another task name (option ``task``).

Files expected (``ROOT`` is ``[data] root`` or ``--data``)::

    ROOT/
      dataset_description.json
      sub-01/func/sub-01_task-gameplay_run-01_bold.nii.gz       raw BOLD (used when preprocessed = "")
      sub-01/func/sub-01_task-gameplay_run-01_bold.json         sidecar: RepetitionTime 2.0
      sub-01/func/sub-01_task-gameplay_run-01_events.tsv        onset, duration, trial_type (game blocks)
      derivatives/fmriprep/sub-01/func/
        sub-01_task-gameplay_run-01_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz
        sub-01_task-gameplay_run-01_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json
        sub-01_task-gameplay_run-01_desc-confounds_timeseries.tsv   (read when ``confounds`` is set)
      derivatives/rois/<atlas>.nii.gz                            ROI atlas on the BOLD grid (option atlas)
      derivatives/rois/<atlas>.tsv                               index<TAB>name, in hierarchy order
      stimuli/sub-01/run-01/frames.tsv                           onset, frame (see below)
      stimuli/sub-01/run-01/frames/frame-000000.png ...
      stimuli/sub-01/run-01/actions.tsv                          onset, action
      ...                                                        the same for every subject and run

Gameplay frames and actions
---------------------------
The release holds no rendered frames: the games are VGDL descriptions (``games/``) and every
episode is logged in the MongoDB dump ``behavior/dump.tar.gz`` (collections ``plays``: one
document per episode with ``subj_id``, ``run_id``, ``game_name``, ``level_id`` and the
keypress trace ``actions`` as ``[label, timestamp]`` pairs; ``runs``: one document per scanner
run with its timing). Render each subject's episodes once with a VGDL replay (e.g. the
``replay_human.py`` script of the authors' RC_RL code, or pyvgdl), and write per run:

* ``frames.tsv`` with columns ``onset`` (seconds from the run's first volume, i.e. the play's
  timestamps minus the run's scanner-trigger time) and ``frame`` (the PNG path relative to
  the folder of ``frames.tsv``), one row per rendered game step, onsets non-decreasing. Cover
  the whole run: render the screen between episodes (instructions, fixation) as frames too;
* ``actions.tsv`` with columns ``onset`` (same clock) and ``action`` (the key label: ``UP``,
  ``DOWN``, ``LEFT``, ``RIGHT``, ``SPACE``), one row per keypress. With ``actions = "events"``
  the keypresses are read instead from the BIDS ``_events.tsv`` rows whose ``action_column``
  (default ``key``) is filled.

Check a few runs by eye: the frame onsets must line up with the game blocks of the events TSV.

How files map to keys
---------------------
Every subject played their own episodes, so stimuli are per subject, and one stimulus set
covers all of them: ``stimulus_set`` ``"ds004323"``, ``run`` ``"<subject>-run-<n>"`` (e.g.
``"sub-01-run-1"``, ``n`` the BIDS run number without zero padding), ``tr`` the volume index
from 0, ``stimulus_id`` ``"<run>-tr00000"``. The responses of a subject use the same run keys,
and a subject's fits join only that subject's runs (:meth:`Gameplay.subject_runs`). TR ``t`` spans ``[2 t, 2 t + 2)`` s;
its stimulus (:func:`brainalign.features.stimuli.game_windows`) is ``frames_per_window`` frames
evenly spread over a window ending at the end of the TR (``window_s``, default one TR) plus
the text ``"Player actions: LEFT, SPACE"`` of the keypresses in that window. Options of
``[embed.game]``: ``frames_per_window`` (4), ``window_s`` (2.0), ``include_actions`` (true),
``align`` ("end").

The held-out run of each subject is its last run (``test_run = "last"``; or a run number); the
other runs train, with leave-one-run-out cross-validation of the ridge penalties. Subjects saw
no repeated stimuli, so there is no noise ceiling and scores are held-out Pearson r.

Ingest: the BOLD of the selected runs inside the atlas (or ``mask``), confound regression
(``confounds``: columns of the fMRIPrep confounds TSV), polynomial detrending (``detrend``)
and z-scoring per run (``zscore``). ROIs come from the atlas labels TSV; list them from early
visual to frontal-motor (the order of the report's tables and figures).

RL-agent baselines (``source = "table"``)
----------------------------------------
Features of an RL agent (e.g. the DDQN or EfficientZero hidden states of the authors' code)
are supplied as a brainalign features table (:class:`brainalign.features.FeatureStore`) with
the same keys: ``stimulus_set`` ``"ds004323"``, ``run`` ``"<subject>-run-<n>"``, ``tr``,
``stimulus_id`` ``"<run>-tr00000"``, ``onset_s`` = 2 ``tr``, ``model`` the recipe's model name
(``"rl-agent"``), ``instruction_id`` ``"none"``, ``component`` any (e.g. ``"agent"``),
``layer`` the agent layer (0, 1, ...), ``pooling`` ``"stimulus"``, ``embedding`` the agent's
state averaged over the game steps of the TR's window. The fit reduces every model to the same
number of principal components (``[fit] pca``, fitted on training runs only), so the agent and
the 3584-dimensional MLLM states are compared at matched dimensionality.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from brainalign.features.stimuli import Manifest, concat, game_windows

from ..base import Progress, RecipeError, ReportPart, StudyDataset

STIMULUS_SET = "ds004323"
TR = 2.0
GAME_OPTIONS = ("frames_per_window", "window_s", "include_actions", "align")
#: shares of a partition are left empty where the joint model explains less held-out variance
MIN_TOTAL_R2 = 1e-3
_SUB = re.compile(r"^sub-[A-Za-z0-9]+$")


@dataclass(frozen=True)
class GameRun:
    """One scanner run of one subject and where its files are."""

    subject: str
    label: str  # the run entity as written in the file name, e.g. "01"
    bold: Path
    sidecar: Path | None
    events: Path | None
    confounds: Path | None
    stimuli: Path  # the run's folder of frames.tsv / actions.tsv

    @property
    def number(self) -> int:
        return int(self.label)

    @property
    def key(self) -> str:
        return f"{self.subject}-run-{self.number}"


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _float(v: str | None) -> float:
    if v is None or v.strip() in ("", "n/a", "NaN", "nan"):
        return math.nan
    return float(v)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class Gameplay(StudyDataset):
    """OpenNeuro ds004323 (Atari-style VGDL games, TR 2 s); see the module docstring.

    Options (``[data]`` keys): ``task`` ("gameplay"), ``preprocessed`` (fMRIPrep folder under
    the root, "" for raw BOLD), ``space`` ("MNI152NLin2009cAsym"), ``res`` (e.g. "2"; any when
    unset), ``atlas`` / ``atlas_labels`` (ROI atlas NIfTI on the BOLD grid and its
    ``index<TAB>name`` TSV, paths under the root or absolute), ``mask`` (optional brain mask;
    default the atlas > 0), ``stimuli`` ("stimuli"), ``actions`` ("actions.tsv" or "events"),
    ``action_column`` ("key"), ``test_run`` ("last" or a run number), ``confounds`` (fMRIPrep
    confound columns to regress out), ``detrend`` (polynomial order, 2), ``zscore`` (true),
    ``tolerance_s`` (4.0: how far the frames may fall short of or run past the BOLD run).
    """

    name = "gameplay"
    modalities = ("game",)
    tr = TR
    option_keys = (
        "subjects",
        "task",
        "preprocessed",
        "space",
        "res",
        "atlas",
        "atlas_labels",
        "mask",
        "stimuli",
        "actions",
        "action_column",
        "test_run",
        "confounds",
        "detrend",
        "zscore",
        "tolerance_s",
    )

    def __init__(self, root: str | Path, options: dict[str, Any] | None = None):
        super().__init__(root, options)
        self._headers: dict[Path, tuple[tuple[int, ...], np.ndarray, float | None]] = {}

    # ---- options ---------------------------------------------------------------------------
    def _opt(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def task(self) -> str:
        return str(self._opt("task", "gameplay"))

    @property
    def preprocessed(self) -> Path | None:
        p = str(self._opt("preprocessed", "") or "")
        return self._path(p) if p else None

    def _path(self, value: str) -> Path:
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else self.root / p

    def _file_option(self, key: str) -> Path | None:
        v = self._opt(key)
        return self._path(v) if v else None

    @property
    def tolerance_s(self) -> float:
        tol = self._opt("tolerance_s", 2 * TR)
        return float(tol) if isinstance(tol, (int, float)) and tol >= 0 else 2 * TR

    # ---- discovery -------------------------------------------------------------------------
    @cached_property
    def _discovered(self) -> tuple[list[GameRun], list[str]]:
        """Every run found (all subjects) and the problems met while pairing files."""
        problems: list[str] = []
        base = self.preprocessed or self.root
        task = re.escape(self.task)
        if self.preprocessed:
            space = re.escape(str(self._opt("space", "MNI152NLin2009cAsym")))
            res = self._opt("res")
            res_pat = f"_res-{re.escape(str(res))}" if res else r"(?:_res-[A-Za-z0-9]+)?"
            pat = re.compile(
                rf"^(sub-[A-Za-z0-9]+)_task-{task}_run-(\d+)_space-{space}{res_pat}_desc-preproc_bold\.nii(?:\.gz)?$"
            )
        else:
            pat = re.compile(rf"^(sub-[A-Za-z0-9]+)_task-{task}_run-(\d+)_bold\.nii(?:\.gz)?$")
        stim_root = self._path(str(self._opt("stimuli", "stimuli")))
        found: dict[tuple[str, int], GameRun] = {}
        for path in sorted(base.glob("sub-*/func/*_bold.nii*")):
            m = pat.match(path.name)
            if not m or m.group(1) != path.parent.parent.name:
                continue
            subject, label = m.group(1), m.group(2)
            stem = path.name.split(".nii")[0]
            sidecar = path.with_name(stem + ".json")
            if not sidecar.exists():
                top = self.root / f"task-{self.task}_bold.json"  # BIDS inheritance
                sidecar = top if top.exists() and not self.preprocessed else None
            prefix = f"{subject}_task-{self.task}_run-{label}"
            events = self.root / subject / "func" / f"{prefix}_events.tsv"
            conf = path.parent / f"{prefix}_desc-confounds_timeseries.tsv"
            run = GameRun(
                subject=subject,
                label=label,
                bold=path,
                sidecar=sidecar,
                events=events if events.exists() else None,
                confounds=conf if conf.exists() else None,
                stimuli=stim_root / subject / f"run-{label}",
            )
            key = (subject, run.number)
            if key in found:
                problems.append(
                    f"bold: {subject} run {run.number} has two BOLD files, {_rel(found[key].bold, self.root)} "
                    f"and {_rel(path, self.root)}; set 'res' (or 'space') to pick one"
                )
                continue
            found[key] = run
        return sorted(found.values(), key=lambda r: (r.subject, r.number)), problems

    @property
    def all_runs(self) -> list[GameRun]:
        return self._discovered[0]

    def subjects(self) -> list[str]:
        found = list(dict.fromkeys(r.subject for r in self.all_runs))
        want = self._opt("subjects")
        return [s for s in found if not want or s in want]

    def runs(self, subject: str | None = None) -> list[GameRun]:
        """The runs of the selected subjects (or of one subject), in subject and run order."""
        keep = set(self.subjects()) if subject is None else {subject}
        return [r for r in self.all_runs if r.subject in keep]

    # ---- headers ---------------------------------------------------------------------------
    def _header(self, path: Path) -> tuple[tuple[int, ...], np.ndarray, float | None]:
        """(shape, affine, TR from the header) of a NIfTI, reading the header only."""
        if path not in self._headers:
            import nibabel as nib

            from ...ingest import _nifti_tr

            img = nib.load(str(path))
            tr = _nifti_tr(img) if len(img.shape) == 4 else None
            self._headers[path] = (tuple(int(s) for s in img.shape), np.asarray(img.affine), tr)
        return self._headers[path]

    def n_volumes(self, run: GameRun) -> int:
        return self._header(run.bold)[0][3]

    # ---- stimuli files ---------------------------------------------------------------------
    def _frames(self, run: GameRun) -> tuple[list[Path], np.ndarray]:
        rows = _read_tsv(run.stimuli / "frames.tsv")
        frames = [run.stimuli / r["frame"] for r in rows]
        return frames, np.array([_float(r["onset"]) for r in rows])

    def _actions(self, run: GameRun) -> list[tuple[float, str]]:
        if self._opt("actions", "actions.tsv") == "events":
            col = str(self._opt("action_column", "key"))
            rows = _read_tsv(run.events) if run.events else []
        else:
            col = "action"
            rows = _read_tsv(run.stimuli / "actions.tsv")
        out = []
        for r in rows:
            act = (r.get(col) or "").strip()
            if act and act != "n/a":
                out.append((_float(r["onset"]), act))
        return out

    # ---- checks ----------------------------------------------------------------------------
    def check(self) -> list[str]:
        problems = [
            f"option {k!r}: unknown; expected some of {sorted(self.option_keys)}"
            for k in self.options
            if k not in self.option_keys
        ]
        problems += self._check_options()
        base = self.preprocessed or self.root
        if self.preprocessed and not self.preprocessed.is_dir():
            problems.append(
                f"preprocessed: no fMRIPrep folder {self.preprocessed} (put the derivatives there, or set "
                'preprocessed = "" to read the raw BOLD)'
            )
            return problems
        runs, pair_problems = self._discovered
        problems += pair_problems
        if not runs:
            expected = (
                f"sub-XX/func/sub-XX_task-{self.task}_run-NN_space-{self._opt('space', 'MNI152NLin2009cAsym')}"
                "[_res-R]_desc-preproc_bold.nii.gz"
                if self.preprocessed
                else f"sub-XX/func/sub-XX_task-{self.task}_run-NN_bold.nii.gz"
            )
            problems.append(f"bold: no BOLD runs under {base}; expected files like {expected}")
            return problems
        want = self._opt("subjects") or []
        found = {r.subject for r in runs}
        problems += [
            f"subjects: {s} has no BOLD runs under {base} (found {sorted(found)})"
            for s in want
            if s not in found
        ]
        grid = self._check_rois(self.runs()[0] if self.runs() else runs[0])
        problems += grid
        for run in self.runs():
            problems += self._check_run(run)
        problems += self._check_test_run()
        return problems

    def _check_options(self) -> list[str]:
        p = []
        if self._opt("actions", "actions.tsv") not in ("actions.tsv", "events"):
            p.append(f"option 'actions': expected 'actions.tsv' or 'events', got {self._opt('actions')!r}")
        conf = self._opt("confounds", [])
        if not (isinstance(conf, list) and all(isinstance(c, str) for c in conf)):
            p.append(f"option 'confounds': expected a list of confound column names, got {conf!r}")
        elif conf and not self.preprocessed:
            p.append("option 'confounds': confounds come from the fMRIPrep outputs; set 'preprocessed'")
        det = self._opt("detrend", 2)
        if det is not None and not (isinstance(det, int) and 0 <= det <= 5):
            p.append(f"option 'detrend': expected a polynomial order 0..5, got {det!r}")
        tr_opt = self._opt("test_run", "last")
        if tr_opt != "last" and not isinstance(tr_opt, int):
            p.append(f"option 'test_run': expected 'last' or a run number, got {tr_opt!r}")
        tol = self._opt("tolerance_s", 2 * TR)
        if not isinstance(tol, (int, float)) or tol < 0:
            p.append(f"option 'tolerance_s': expected a non-negative number of seconds, got {tol!r}")
        if not self._opt("atlas") and not self._opt("mask"):
            p.append("option 'atlas': expected the ROI atlas NIfTI (on the BOLD grid) that defines the ROIs")
        for key in ("subjects",):
            v = self._opt(key)
            if v is not None and not all(isinstance(s, str) and _SUB.match(s) for s in v):
                p.append(f"option 'subjects': expected ids like 'sub-01', got {v!r}")
        return p

    def _check_rois(self, first: GameRun) -> list[str]:
        p = []
        try:
            shape, affine, _ = self._header(first.bold)
        except Exception as exc:  # nibabel raises many types for damaged headers
            return [f"bold: cannot read the header of {_rel(first.bold, self.root)} ({exc})"]
        for key in ("atlas", "mask"):
            path = self._file_option(key)
            if path is None:
                continue
            if not path.exists():
                p.append(f"{key}: no such file {path}")
                continue
            try:
                s, a, _ = self._header(path)
            except Exception as exc:
                p.append(f"{key}: cannot read {path} ({exc})")
                continue
            if s[:3] != shape[:3] or not np.allclose(a, affine, atol=1e-3):
                p.append(
                    f"{key}: {_rel(path, self.root)} has grid {s[:3]}, expected the BOLD grid {shape[:3]} with the "
                    f"affine of {_rel(first.bold, self.root)}; resample it to the BOLD grid"
                )
        labels = self._file_option("atlas_labels")
        if labels is not None:
            if not labels.exists():
                p.append(f"atlas_labels: no such file {labels}")
            elif not self.roi_order():
                p.append(f"atlas_labels: {labels} has no 'index<TAB>name' rows")
        elif self._opt("atlas"):
            p.append(
                "atlas_labels: expected the atlas's index<TAB>name TSV (ROIs from early visual to frontal)"
            )
        return p

    def _check_run(self, run: GameRun) -> list[str]:
        p: list[str] = []
        name = _rel(run.bold, self.root)
        try:
            shape, _, header_tr = self._header(run.bold)
        except Exception as exc:
            return [f"bold: cannot read the header of {name} ({exc})"]
        if len(shape) != 4:
            return [f"bold: {name} is {len(shape)}D {shape}, expected a 4D (x, y, z, time) NIfTI"]
        side_tr = None
        if run.sidecar is not None:
            try:
                side_tr = json.loads(run.sidecar.read_text()).get("RepetitionTime")
            except (OSError, ValueError) as exc:
                p.append(f"sidecar: cannot read {_rel(run.sidecar, self.root)} ({exc})")
        tr_s = side_tr if side_tr is not None else header_tr
        src = _rel(run.sidecar, self.root) if side_tr is not None else f"the header of {name}"
        if tr_s is None:
            p.append(
                f"tr: {name} states no repetition time (no sidecar RepetitionTime, no header TR); expected 2.0 s"
            )
        elif abs(float(tr_s) - TR) > 1e-3:
            p.append(
                f"tr: {src} gives RepetitionTime {tr_s} s, expected {TR} s (ds004323 is acquired at TR 2 s)"
            )
        elif side_tr is not None and header_tr is not None and abs(header_tr - float(side_tr)) > 1e-3:
            p.append(
                f"tr: the header of {name} gives TR {header_tr} s but {_rel(run.sidecar, self.root)} gives "
                f"{side_tr} s; fix the header (e.g. nibabel set_zooms)"
            )
        if self._opt("confounds") and run.confounds is None:
            p.append(
                f"confounds: no {run.subject}_task-{self.task}_run-{run.label}_desc-confounds_timeseries.tsv "
                f"beside {name}"
            )
        duration = shape[3] * TR
        tol = self.tolerance_s
        # frames
        ftsv = run.stimuli / "frames.tsv"
        if not ftsv.exists():
            p.append(
                f"frames: no {_rel(ftsv, self.root)} for {name} (render the run's gameplay; see the "
                "gameplay loader's docstring for the layout)"
            )
        else:
            rows = _read_tsv(ftsv)
            cols = set(rows[0]) if rows else set()
            if not rows or not {"onset", "frame"} <= cols:
                p.append(
                    f"frames: {_rel(ftsv, self.root)} needs columns onset and frame with one row per frame"
                )
            else:
                try:
                    frames, onsets = self._frames(run)
                except ValueError as exc:
                    return [*p, f"frames: {_rel(ftsv, self.root)} has a non-numeric onset ({exc})"]
                missing = [f for f in frames if not f.exists()]
                if missing:
                    p.append(
                        f"frames: {len(missing)} of {len(frames)} frame files listed in {_rel(ftsv, self.root)} "
                        f"are missing, e.g. {_rel(missing[0], self.root)}"
                    )
                if not np.isfinite(onsets).all() or np.any(np.diff(onsets) < 0):
                    p.append(
                        f"frames: {_rel(ftsv, self.root)} onsets must be numbers in non-decreasing order"
                    )
                elif abs(onsets[0]) > tol or onsets[-1] > duration + tol or onsets[-1] < duration - tol:
                    p.append(
                        f"frames: {_rel(ftsv, self.root)} spans {onsets[0]:.1f}-{onsets[-1]:.1f} s but {name} has "
                        f"{shape[3]} volumes x {TR} s = {duration:.1f} s (tolerance {tol:g} s); the TR grids of "
                        "the frames and the BOLD run disagree (wrong run, clock or TR?)"
                    )
        # actions
        if self._opt("actions", "actions.tsv") == "events":
            col = str(self._opt("action_column", "key"))
            if run.events is None:
                p.append(
                    f"actions: no events TSV {run.subject}_task-{self.task}_run-{run.label}_events.tsv for {name}"
                )
            else:
                rows = _read_tsv(run.events)
                if rows and col not in rows[0]:
                    p.append(
                        f"actions: {_rel(run.events, self.root)} has no column {col!r} (set 'action_column'); "
                        f"columns are {sorted(rows[0])}"
                    )
                    return p
        else:
            atsv = run.stimuli / "actions.tsv"
            if not atsv.exists():
                p.append(f"actions: no {_rel(atsv, self.root)} (onset, action: the run's keypresses)")
                return p
            rows = _read_tsv(atsv)
            if rows and not {"onset", "action"} <= set(rows[0]):
                p.append(
                    f"actions: {_rel(atsv, self.root)} needs columns onset and action, got {sorted(rows[0])}"
                )
                return p
        try:
            acts = self._actions(run)
        except ValueError as exc:
            return [*p, f"actions: non-numeric onset for {name} ({exc})"]
        late = [t for t, _ in acts if not (-tol <= t <= duration + tol)]
        if late:
            p.append(
                f"actions: {len(late)} keypress(es) of {run.key} fall outside the run's 0-{duration:.1f} s "
                f"(e.g. at {late[0]:.1f} s); the action log and the BOLD run disagree"
            )
        return p

    def _check_test_run(self) -> list[str]:
        opt = self._opt("test_run", "last")
        if opt == "last" or not isinstance(opt, int):
            return [
                f"test_run: {s} has a single run; leave one to train on"
                for s in self.subjects()
                if len(self.runs(s)) < 2
            ]
        return [
            f"test_run: {s} has no run {opt} (runs {[r.number for r in self.runs(s)]})"
            for s in self.subjects()
            if opt not in [r.number for r in self.runs(s)]
        ]

    # ---- plan ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        per = {s: sum(self.n_volumes(r) for r in self.runs(s)) for s in self.subjects()}
        return {
            "n_samples": int(np.median(list(per.values()))) if per else 0,
            "n_samples_per_subject": per,
            "n_voxels": self._n_voxels(),
            "runs": int(np.median([len(self.runs(s)) for s in self.subjects()])) if per else 0,
            "stimulus_set": STIMULUS_SET,
        }

    def _n_voxels(self) -> int:
        import nibabel as nib

        path = self._file_option("mask") or self._file_option("atlas")
        if path is None or not path.exists():
            return 0
        return int((np.asanyarray(nib.load(str(path)).dataobj) > 0).sum())

    # ---- stimuli ---------------------------------------------------------------------------
    def manifest(self, modality: str, **options: Any) -> Manifest:
        """One item per TR of every selected run (keys in the module docstring)."""
        if modality != "game":
            raise RecipeError(
                f"modality: ds004323 provides 'game' stimuli (frames + actions), got {modality!r}"
            )
        unknown = sorted(set(options) - set(GAME_OPTIONS))
        if unknown:
            raise RecipeError(
                f"embed.game: unknown option(s) {unknown}; expected some of {list(GAME_OPTIONS)}"
            )
        fpw = int(options.get("frames_per_window", 4))
        window_s = float(options.get("window_s", TR))
        include = bool(options.get("include_actions", True))
        align = str(options.get("align", "end"))
        parts = []
        for run in self.runs():
            frames, onsets = self._frames(run)
            parts.append(
                game_windows(
                    [str(f) for f in frames],
                    onsets,
                    tr=TR,
                    n_trs=self.n_volumes(run),
                    window_s=window_s,
                    frames_per_window=fpw,
                    actions=self._actions(run),
                    include_actions=include,
                    align=align,
                    run=run.key,
                    stimulus_set=STIMULUS_SET,
                )
            )
        if not parts:
            raise RecipeError(f"data: no runs selected under {self.root}")
        man = concat(parts, STIMULUS_SET)
        man.spec.update(
            runs=[r.key for r in self.runs()],
            source="OpenNeuro ds004323 gameplay frames (stimuli/<subject>/run-<NN>/frames.tsv)",
            actions=str(self._opt("actions", "actions.tsv")),
        )
        return man

    # ---- responses -------------------------------------------------------------------------
    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        from ...ingest import RunInput, ingest_responses

        space = str(self._opt("space", "MNI152NLin2009cAsym")) if self.preprocessed else None
        out = []
        for s in self.subjects():
            inputs = [
                RunInput(
                    paths=[r.bold],
                    run=r.key,
                    subject=s,
                    task=self.task,
                    space=space,
                    events=r.events,
                    confounds=r.confounds,
                    sidecar=r.sidecar,
                )
                for r in self.runs(s)
            ]
            out.append(
                ingest_responses(
                    inputs,
                    responses=responses,
                    voxels=voxels,
                    dataset=STIMULUS_SET,
                    subject=s,
                    stimulus_set=STIMULUS_SET,
                    space=space,
                    mask=self._file_option("mask"),
                    atlas=self._file_option("atlas"),
                    atlas_labels=self._file_option("atlas_labels"),
                    detrend_order=self._opt("detrend", 2),
                    zscore_runs=bool(self._opt("zscore", True)),
                    confounds=list(self._opt("confounds", [])),
                    progress=progress,
                )
            )
        return out

    def subject_runs(self, subject: str) -> list[str]:
        """The run keys of one subject: every subject has their own runs (their own gameplay),
        so a subject's fits join only these runs of the shared stimulus set."""
        return [r.key for r in self.runs(subject)]

    def test_runs(self, subject: str | None = None) -> list[str]:
        """The held-out run key of every selected subject (or of one subject)."""
        opt = self._opt("test_run", "last")
        out = []
        for s in [subject] if subject else self.subjects():
            numbers = [r.number for r in self.runs(s)]
            if not numbers:
                continue
            n = max(numbers) if opt == "last" else int(opt)
            if n in numbers:
                out.append(f"{s}-run-{n}")
        return out

    # ---- report ----------------------------------------------------------------------------
    def roi_order(self) -> list[str]:
        """ROI names in the atlas labels TSV order (early visual to frontal-motor)."""
        path = self._file_option("atlas_labels")
        if path is None or not path.exists():
            return []
        names = []
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        for row in rows:
            if len(row) >= 2 and row[0].strip().lstrip("-").isdigit() and int(row[0]) != 0:
                names.append(row[1].strip())
        return names

    def report(self, ctx: Any, out: Path) -> ReportPart:
        """Tables "action vs reasoning variance shares" (unique and shared share of the total
        held-out R² per model and ROI, in %) and "action vs reasoning prompts per ROI" (best
        action-prompt, reasoning-prompt and no-prompt scores and their differences), and a
        figure of the shares along the ROI hierarchy."""
        part = ReportPart()
        shares = partition_shares(ctx, self.roi_order())
        if shares:
            part.tables["action vs reasoning variance shares"] = shares
            fig = plot_shares(shares, out / "partition_shares.png")
            if fig is not None:
                part.figures["action vs reasoning variance shares"] = fig.name
            part.notes.append(
                "variance shares: mean held-out R² of each region over the ROI's voxels (averaged over "
                "subjects) divided by the total R² of the joint model, in % (empty where the total is "
                f"below {MIN_TOTAL_R2:g}); negative shares occur when the joint model predicts worse "
                "than one space alone"
            )
        prompts = prompt_scores(ctx, self.roi_order())
        if prompts:
            part.tables["action vs reasoning prompts per ROI"] = prompts
        return part


# ---- report helpers ------------------------------------------------------------------------------
def _q(v: Any) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _roi_sort(order: Sequence[str]):
    def key(roi: str) -> tuple[int, str]:
        if roi == "all":
            return (len(order) + 1, roi)
        return (order.index(roi), roi) if roi in order else (len(order), roi)

    return key


def partition_shares(ctx: Any, roi_order: Sequence[str] = ()) -> list[dict]:
    """Rows {partition, model, group, roi, unique <a> (%), unique <b> (%), shared (%), total R²}
    of every two-space partition fit of ``ctx`` (a runner RunContext)."""
    from ...query import run_query

    tables = {k: v for k, v in ctx.tables.items() if Path(v).exists()}
    if "partitions" not in tables:
        return []
    groups = {m.name: m.group for m in ctx.models}
    rows = []
    for pf in ctx.partition_fits:
        names = list(pf["names"])
        if len(names) != 2:
            continue
        a, b = names
        res = run_query(
            f"""WITH per AS (SELECT p.subject, coalesce(v.roi, 'unlabelled') AS roi, p.region, avg(p.r2) AS r2
                            FROM partitions p LEFT JOIN voxels v ON v.voxel = p.voxel AND v.subject = p.subject
                            WHERE p.fit = {_q(pf["fit"])} GROUP BY ALL),
                    whole AS (SELECT subject, 'all' AS roi, region, avg(r2) AS r2 FROM partitions
                              WHERE fit = {_q(pf["fit"])} GROUP BY ALL)
                SELECT roi, region, avg(r2) AS r2 FROM (SELECT * FROM per UNION ALL SELECT * FROM whole)
                GROUP BY ALL""",
            ctx.dir,
            tables=tables,
        ).to_pylist()
        by = {}
        for r in res:
            by.setdefault(r["roi"], {})[r["region"]] = r["r2"]
        for roi in sorted(by, key=_roi_sort(list(roi_order))):
            reg = by[roi]
            total = reg.get("total")

            def pct(region: str, reg=reg, total=total) -> float | None:
                v = reg.get(region)
                if v is None or total is None or not total >= MIN_TOTAL_R2:
                    return None
                return 100.0 * v / total

            rows.append(
                {
                    "partition": pf["partition"],
                    "model": pf["model"],
                    "group": groups.get(pf["model"], ""),
                    "roi": roi,
                    f"unique {a} (%)": pct(a),
                    f"unique {b} (%)": pct(b),
                    "shared (%)": pct(f"{a}&{b}"),
                    "total R²": total,
                }
            )
    return rows


def plot_shares(rows: list[dict], path: Path) -> Path | None:
    """One panel per model: unique / shared shares (%) per ROI, ROIs in hierarchy order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = [c for c in rows[0] if c.endswith("(%)")]
    if not models or not cols:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1, 3.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        rois = [r["roi"] for r in mine]
        x = np.arange(len(rois))
        w = 0.8 / len(cols)
        for i, c in enumerate(cols):
            vals = [np.nan if r[c] is None else r[c] for r in mine]
            ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=c.replace(" (%)", ""))
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, rois, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{model} ({mine[0]['group']})", fontsize=8)
    axes[0][0].set_ylabel("share of joint R² (%)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def prompt_scores(ctx: Any, roi_order: Sequence[str] = ()) -> list[dict]:
    """Per model and ROI: the best score of an action prompt (``game.action.*``), of a
    reasoning prompt (``game.reasoning.*``) and without a prompt (``none``), each at its best
    layer, and the differences."""
    from ...query import run_query

    tables = {k: v for k, v in ctx.tables.items() if Path(v).exists()}
    if "scores" not in tables:
        return []
    metric = getattr(ctx, "metric", "r")
    res = run_query(
        f"""WITH per AS (SELECT s.subject, coalesce(v.roi, 'unlabelled') AS roi, s.model, s.instruction_id,
                                s.layer, avg(s.{metric}) AS score
                         FROM scores s LEFT JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
                         WHERE s.fit = {_q(ctx.fit)} GROUP BY ALL),
                a AS (SELECT roi, model, instruction_id, layer, avg(score) AS score FROM per GROUP BY ALL)
            SELECT roi, model,
                   CASE WHEN instruction_id LIKE 'game.action.%' THEN 'action'
                        WHEN instruction_id LIKE 'game.reasoning.%' THEN 'reasoning'
                        WHEN instruction_id = 'none' THEN 'none' END AS family,
                   max(score) AS score
            FROM a GROUP BY ALL HAVING family IS NOT NULL""",
        ctx.dir,
        tables=tables,
    ).to_pylist()
    by: dict[tuple[str, str], dict[str, float]] = {}
    for r in res:
        by.setdefault((r["model"], r["roi"]), {})[r["family"]] = r["score"]
    groups = {m.name: m.group for m in ctx.models}
    key = _roi_sort(list(roi_order))

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    rows = []
    for (model, roi), fam in sorted(by.items(), key=lambda kv: (kv[0][0], key(kv[0][1]))):
        act, rea, none = fam.get("action"), fam.get("reasoning"), fam.get("none")
        if act is None and rea is None:
            continue  # baselines without prompts (e.g. the RL agent)
        rows.append(
            {
                "model": model,
                "group": groups.get(model, ""),
                "roi": roi,
                "no prompt": none,
                "action prompt": act,
                "reasoning prompt": rea,
                "action - reasoning": diff(act, rea),
                "action - no prompt": diff(act, none),
                "reasoning - no prompt": diff(rea, none),
            }
        )
    return rows
