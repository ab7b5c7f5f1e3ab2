"""CNeuroMod Movie10: four subjects watching movies in 3T fMRI (TR 1.49 s), for the study of
instruction-tuned video and audio MLLMs (Oota et al. 2025, arXiv 2506.08277).

Where to obtain it
------------------
The Courtois NeuroMod project (https://www.cneuromod.ca, documentation at
https://docs.cneuromod.ca) distributes Movie10 as DataLad datasets: the raw BIDS dataset
``courtois-neuromod/movie10``, its fMRIPrep derivatives ``courtois-neuromod/movie10.fmriprep``
and the movie segments ``courtois-neuromod/movie10.stimuli``.

Licence and access terms
------------------------
Access is through CNeuroMod's registered-access procedure: an application (the data access
form, with a short description of the planned analyses) and a data transfer agreement, after
which the data manager issues the credentials DataLad needs. Part of the processed data of the
consenting participants has since been released openly (CC0 according to CNeuroMod's
tooling); the terms differ by release and data type, so see docs.cneuromod.ca for the terms
that apply to your copy. The movie files are copyrighted films (The Bourne Supremacy, The Wolf
of Wall Street, Hidden Figures) and a BBC documentary (Life); they are shared for research
under the same agreement and must not be redistributed. brainalign downloads nothing.

Files the loader expects (one subject and one viewing shown; ``ses-*`` numbers vary)::

    ROOT/                                          the movie10 BIDS dataset
      task-bourne01_events.tsv                     optional: ``stim_file`` names the segment's video
      stimuli/                                     movie10.stimuli, installed under the BIDS root
        bourne/bourne01.mkv ... bourne10.mkv       one video (with its audio track) per run
        wolf/wolf01.mkv ... wolf17.mkv
        life/life01.mkv ... life05.mkv
        figures/figures01.mkv ... figures12.mkv    (not used by the paper)
        life/life01.wav                            optional: the segment's audio, else extracted
      derivatives/fmriprep/                        movie10.fmriprep (option ``fmriprep``)
        sub-01/ses-001/func/
          sub-01_ses-001_task-bourne01_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz
          sub-01_ses-001_task-bourne01_space-MNI152NLin2009cAsym_desc-preproc_bold.json
          sub-01_ses-001_task-bourne01_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz
          sub-01_ses-001_task-bourne01_desc-confounds_timeseries.tsv
          sub-01_ses-001_task-bourne01_space-fsLR_den-91k_bold.dtseries.nii   (space = "fsLR")
        sub-01/ses-006/func/sub-01_ses-006_task-life01_run-1_space-..._desc-preproc_bold.nii.gz
        sub-01/ses-009/func/sub-01_ses-009_task-life01_run-2_space-..._desc-preproc_bold.nii.gz

Segments are the BIDS tasks ``bourne01``..``bourne10``, ``wolf01``..``wolf17``,
``life01``..``life05`` and ``figures01``..``figures12``; Life and Hidden Figures were watched
twice (``run-1`` and ``run-2`` entities). An ``_res-*`` entity before ``_desc-`` is accepted.
fMRIPrep 1.5 confounds (``_desc-confounds_regressors.tsv``) are found too. The video of a
segment is ``stim_file`` of ``task-<segment>_events.tsv`` at the BIDS root when that file
exists, else ``stimuli/<movie>/<segment>.mkv`` (the names of the movie10.stimuli dataset).

How files map to keys
---------------------
``stimulus_set = "movie10"``, ``run`` = the segment name (``"bourne01"``), ``tr`` = the volume
index from the start of the run (TR ``t`` covers ``[1.49 t, 1.49 (t + 1))`` seconds of the
segment's video). The two viewings of a Life (or Figures) segment are z-scored per voxel and
averaged into one run named after the segment, as the paper does. Every run is cut to the
number of volumes that every selected subject and viewing has, and the stimulus manifests
use the same count, so features and responses share the TR grid.

Training and test: Bourne and Wolf segments train (cross-validation leaves one segment out),
Life segments test (option ``test_movies``). The noise ceiling is cross-subject: per voxel,
the correlation over the test runs between a subject's responses and the mean of the other
subjects' responses; subjects must therefore share one voxel space (a common MNI mask, or the
91k fsLR grayordinates).

Options (the ``[data]`` table of a recipe)
-------------------------------------------
``space``: ``"MNI152NLin2009cAsym"`` (default; NIfTI) or ``"fsLR"`` (91k CIFTI).
``fmriprep``, ``stimuli``: folders relative to ROOT (defaults ``derivatives/fmriprep``,
``stimuli``; ``stimuli = false`` when every model is pulled or given as a table, so no video
is needed). ``movies``: movies used (default Bourne, Wolf, Life); ``segments``: an explicit
list of segments instead. ``test_movies``: default ``["life"]``. ``average_viewings``: average
repeated viewings (default true; false keeps ``run-1``). ``mask``: a NIfTI mask on the BOLD
grid (default: the intersection of the fMRIPrep brain masks of every selected run and subject,
written next to the responses table). ``atlas`` + ``atlas_labels``: a NIfTI label atlas on the
BOLD grid (e.g. the Glasser HCP-MMP1.0 parcellation resampled to it) with an
``index<TAB>name`` TSV; ``dlabel``: a CIFTI dense label file over the same 91k grayordinates
for ``fsLR``. ``confounds``: fMRIPrep confound columns regressed out per run (default none);
``detrend``: polynomial order removed per run (default none). ``grid_tolerance_s``: largest
allowed difference between a run's duration (volumes x TR) and its video (default 10 s).
``audio_dir``: where audio tracks extracted from the ``.mkv`` files are cached (default
``$XDG_CACHE_HOME/brainalign/movie10-audio``; a ``.wav`` next to the ``.mkv`` is used as is).
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..base import RecipeError, ReportPart, StudyDataset

TR = 1.49
STIMULUS_SET = "movie10"
DATASET = "movie10"
MOVIES = ("bourne", "wolf", "life", "figures")
SPACES = ("MNI152NLin2009cAsym", "fsLR")
MANIFEST_OPTIONS = {
    "video": {"frames_per_clip", "window_s", "align"},
    "audio": {"window_s", "align", "sample_rate"},
}
_BOLD = re.compile(
    r"^(?P<sub>sub-[A-Za-z0-9]+)_(?:ses-(?P<ses>[A-Za-z0-9]+)_)?task-(?P<task>[A-Za-z]+\d+)"
    r"(?:_run-(?P<run>\d+))?_space-(?P<space>[A-Za-z0-9]+)(?:_res-(?P<res>[A-Za-z0-9]+))?"
    r"(?:_den-(?P<den>[A-Za-z0-9]+))?(?:_desc-(?P<desc>[A-Za-z0-9]+))?_bold\.(?P<ext>nii\.gz|dtseries\.nii)$"
)
_SEGMENT = re.compile(r"^(?P<movie>[a-z]+)(?P<num>\d+)$")

Progress = Callable[[str], None]


@dataclass
class BoldRun:
    """One fMRIPrep BOLD file: a viewing of one segment by one subject."""

    subject: str
    segment: str
    viewing: int
    session: str | None
    bold: Path
    mask: Path | None = None
    confounds: Path | None = None
    sidecar: Path | None = None
    # from the header (filled by Movie10._header)
    n_vols: int | None = None
    tr_s: float | None = None
    grid: tuple | None = None


@dataclass
class _Scan:
    runs: dict[str, dict[str, list[BoldRun]]] = field(default_factory=dict)  # subject -> segment -> viewings
    notes: list[str] = field(default_factory=list)


def _segment_key(seg: str, movies: list[str]) -> tuple:
    m = _SEGMENT.match(seg)
    movie, num = (m.group("movie"), int(m.group("num"))) if m else (seg, 0)
    return (movies.index(movie) if movie in movies else len(movies), movie, num)


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


class Movie10(StudyDataset):
    """Loader of CNeuroMod Movie10 (see the module docstring for files, options and keys)."""

    name: ClassVar[str] = "movie10"
    modalities: ClassVar[tuple[str, ...]] = ("video", "audio")
    option_keys: ClassVar[tuple[str, ...]] = (
        "subjects",
        "space",
        "fmriprep",
        "stimuli",
        "movies",
        "segments",
        "test_movies",
        "average_viewings",
        "mask",
        "atlas",
        "atlas_labels",
        "dlabel",
        "confounds",
        "detrend",
        "grid_tolerance_s",
        "audio_dir",
    )
    tr: ClassVar[float] = TR

    def __init__(self, root, options=None):
        super().__init__(root, options)
        self._scan_cache: _Scan | None = None
        self._ceilings: dict[tuple, dict[str, np.ndarray]] = {}

    # ---- options -------------------------------------------------------------------------
    @property
    def space(self) -> str:
        return str(self.options.get("space", "MNI152NLin2009cAsym"))

    @property
    def cifti(self) -> bool:
        return self.space == "fsLR"

    def _dir(self, key: str, default: str) -> Path:
        p = Path(str(self.options.get(key) or default)).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def fmriprep_dir(self) -> Path:
        return self._dir("fmriprep", "derivatives/fmriprep")

    @property
    def stimuli_dir(self) -> Path:
        return self._dir("stimuli", "stimuli")

    @property
    def uses_stimuli(self) -> bool:
        """False when ``stimuli = false`` (every model pulled or given as a table)."""
        return self.options.get("stimuli", "stimuli") not in (False, "")

    def _path_option(self, key: str) -> Path | None:
        v = self.options.get(key)
        if v is None or str(v).strip() == "":
            return None
        p = Path(str(v)).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def movies(self) -> list[str]:
        return [str(m).lower() for m in _as_list(self.options.get("movies", ["bourne", "wolf", "life"]))]

    @property
    def test_movies(self) -> list[str]:
        return [str(m).lower() for m in _as_list(self.options.get("test_movies", ["life"]))]

    @property
    def average_viewings(self) -> bool:
        return bool(self.options.get("average_viewings", True))

    @property
    def tolerance_s(self) -> float:
        return float(self.options.get("grid_tolerance_s", 10.0))

    def _option_problems(self) -> list[str]:
        p = []
        unknown = sorted(set(self.options) - set(self.option_keys))
        if unknown:
            p.append(
                f"option(s) {unknown} are not Movie10 options; expected some of {list(self.option_keys)}"
            )
        if self.space not in SPACES:
            p.append(f"space: expected one of {list(SPACES)}, got {self.space!r}")
        bad = [m for m in self.movies + self.test_movies if m not in MOVIES]
        if bad:
            p.append(f"movies: unknown movie(s) {bad}; Movie10 has {list(MOVIES)}")
        if not self.movies and not self.options.get("segments"):
            p.append("movies: expected at least one movie (or a 'segments' list)")
        for seg in _as_list(self.options.get("segments")):
            m = _SEGMENT.match(str(seg))
            if not m or m.group("movie") not in MOVIES:
                p.append(f"segments: {seg!r} is not a Movie10 segment name (e.g. 'bourne01', 'life03')")
        det = self.options.get("detrend")
        if det is not None and not (isinstance(det, int) and 0 <= det <= 5):
            p.append(f"detrend: expected a polynomial order 0..5 (or leave it out), got {det!r}")
        conf = self.options.get("confounds", [])
        if not isinstance(conf, list) or not all(isinstance(c, str) for c in conf):
            p.append(f"confounds: expected a list of fMRIPrep confound column names, got {conf!r}")
        try:
            if self.tolerance_s < 0:
                raise ValueError
        except (TypeError, ValueError):
            p.append(f"grid_tolerance_s: expected seconds >= 0, got {self.options.get('grid_tolerance_s')!r}")
        if self.cifti and (self.options.get("mask") or self.options.get("atlas")):
            p.append(
                "mask, atlas: NIfTI masks and atlases apply to space 'MNI152NLin2009cAsym'; use dlabel for fsLR"
            )
        if not self.cifti and self.options.get("dlabel"):
            p.append("dlabel: a CIFTI label file applies to space 'fsLR'; use atlas + atlas_labels for MNI")
        if self.options.get("atlas_labels") and not self.options.get("atlas"):
            p.append("atlas_labels: given without an atlas")
        for key in ("mask", "atlas", "atlas_labels", "dlabel"):
            path = self._path_option(key)
            if path is not None and not path.exists():
                p.append(f"{key}: no such file {path}")
        return p

    # ---- discovery -----------------------------------------------------------------------
    def subjects(self) -> list[str]:
        found = sorted(p.name for p in self.fmriprep_dir.glob("sub-*") if p.is_dir())
        want = self.options.get("subjects")
        if not want:
            return found
        want = [s if str(s).startswith("sub-") else f"sub-{s}" for s in want]
        return [s for s in want if s in found]

    def _scan(self) -> _Scan:
        """Every BOLD file of the selected space, by subject and segment (cached)."""
        if self._scan_cache is not None:
            return self._scan_cache
        scan = _Scan()
        for sub in self.subjects():
            by_key: dict[tuple[str, int], list[BoldRun]] = {}
            for path in sorted((self.fmriprep_dir / sub).glob("**/func/*_bold.*")):
                m = _BOLD.match(path.name)
                if not m or m.group("sub") != sub or m.group("space") != self.space:
                    continue
                if self.cifti:
                    if m.group("ext") != "dtseries.nii" or m.group("den") not in (None, "91k"):
                        continue
                elif m.group("ext") != "nii.gz" or m.group("desc") != "preproc":
                    continue
                seg = m.group("task").lower()
                viewing = int(m.group("run") or 1)
                stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.name[:-4]
                prefix = path.name.split("_space-")[0]
                func = path.parent
                conf = [
                    func / f"{prefix}_desc-confounds_timeseries.tsv",
                    func / f"{prefix}_desc-confounds_regressors.tsv",
                ]
                side = [func / f"{stem}.json", func / f"{stem.removesuffix('.dtseries')}.json"]
                run = BoldRun(
                    subject=sub,
                    segment=seg,
                    viewing=viewing,
                    session=m.group("ses"),
                    bold=path,
                    mask=None
                    if self.cifti
                    else func / path.name.replace("_desc-preproc_bold", "_desc-brain_mask"),
                    confounds=next((c for c in conf if c.exists()), None),
                    sidecar=next((s for s in side if s.exists()), None),
                )
                by_key.setdefault((seg, viewing), []).append(run)
            segs: dict[str, list[BoldRun]] = {}
            for (seg, viewing), found in sorted(by_key.items()):
                if len(found) > 1:
                    # a re-acquired run: the latest session replaces the earlier ones
                    found.sort(key=lambda r: r.session or "")
                    scan.notes.append(
                        f"{sub} {seg} viewing {viewing}: {len(found)} files, using the latest session "
                        f"({found[-1].bold.name}); others: {[r.bold.name for r in found[:-1]]}"
                    )
                segs.setdefault(seg, []).append(found[-1])
            scan.runs[sub] = segs
        for seg in sorted({g for segs in scan.runs.values() for g in segs}):
            counts = {sub: len(segs.get(seg, [])) for sub, segs in scan.runs.items()}
            if len(set(counts.values()) - {0}) > 1:
                scan.notes.append(
                    f"{seg}: subjects have different numbers of viewings {counts}; each averages its own"
                )
        self._scan_cache = scan
        return scan

    def segments(self) -> list[str]:
        """The selected segments (runs), in movie order."""
        explicit = [str(s).lower() for s in _as_list(self.options.get("segments"))]
        movies = list(dict.fromkeys(self.movies + [m for m in MOVIES if m not in self.movies]))
        if explicit:
            return sorted(dict.fromkeys(explicit), key=lambda s: _segment_key(s, movies))
        found = {seg for segs in self._scan().runs.values() for seg in segs}
        sel = [s for s in found if (_SEGMENT.match(s) and _SEGMENT.match(s).group("movie") in self.movies)]
        return sorted(sel, key=lambda s: _segment_key(s, movies))

    def _viewings(self, subject: str, segment: str) -> list[BoldRun]:
        runs = self._scan().runs.get(subject, {}).get(segment, [])
        return runs if self.average_viewings else runs[:1]

    def _header(self, run: BoldRun) -> BoldRun:
        """Fill ``n_vols``, ``tr_s`` and ``grid`` from the file header (cheap: no data read)."""
        if run.n_vols is not None:
            return run
        import nibabel as nib

        from ...ingest import _nifti_tr

        img = nib.load(str(run.bold))
        if self.cifti:
            if not isinstance(img, nib.Cifti2Image):
                raise ValueError(f"{run.bold} is not a CIFTI-2 file")
            ax0 = img.header.get_axis(0)
            run.n_vols = int(img.shape[0])
            unit = str(getattr(ax0, "unit", "SECOND")).upper()
            run.tr_s = float(ax0.step) * (1e-3 if unit == "MILLISECOND" else 1.0)
            run.grid = (int(img.shape[1]),)
        else:
            if len(img.shape) != 4:
                raise ValueError(f"{run.bold} is a {len(img.shape)}D image, expected 4D (x, y, z, time)")
            run.n_vols = int(img.shape[3])
            run.tr_s = _nifti_tr(img)
            run.grid = (tuple(int(s) for s in img.shape[:3]), np.round(np.asarray(img.affine), 3).tolist())
        if run.sidecar is not None:
            try:
                rt = json.loads(run.sidecar.read_text()).get("RepetitionTime")
            except (OSError, ValueError):
                rt = None
            if rt:
                run.tr_s = float(rt)
        return run

    def n_trs(self) -> dict[str, int]:
        """Volumes per segment shared by every selected subject and viewing."""
        out = {}
        for seg in self.segments():
            counts = []
            for sub in self.subjects():
                for r in self._viewings(sub, seg):
                    try:
                        counts.append(self._header(r).n_vols)
                    except Exception:  # reported by check()
                        continue
            if counts:
                out[seg] = min(counts)
        return out

    def video_path(self, segment: str) -> Path:
        """The video of ``segment``: ``stim_file`` of ``task-<segment>_events.tsv`` if present,
        else ``stimuli/<movie>/<segment>.mkv``."""
        events = self.root / f"task-{segment}_events.tsv"
        if events.exists():
            with open(events, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            if rows and rows[0].get("stim_file"):
                rel = Path(rows[0]["stim_file"])
                return rel if rel.is_absolute() else self.stimuli_dir / rel
        m = _SEGMENT.match(segment)
        return self.stimuli_dir / (m.group("movie") if m else segment) / f"{segment}.mkv"

    # ---- checks --------------------------------------------------------------------------
    def check(self) -> list[str]:
        problems = self._option_problems()
        if not self.fmriprep_dir.is_dir():
            problems.append(
                f"fmriprep: no fMRIPrep derivatives folder {self.fmriprep_dir} (expected the movie10.fmriprep "
                "dataset with sub-XX/ses-YYY/func/; set the 'fmriprep' option if it lives elsewhere)"
            )
            return problems
        if self.uses_stimuli and not self.stimuli_dir.is_dir():
            problems.append(
                f"stimuli: no stimuli folder {self.stimuli_dir} (expected the movie10.stimuli dataset with "
                "<movie>/<segment>.mkv; set the 'stimuli' option if it lives elsewhere)"
            )
        found = sorted(p.name for p in self.fmriprep_dir.glob("sub-*") if p.is_dir())
        want = [
            s if str(s).startswith("sub-") else f"sub-{s}" for s in _as_list(self.options.get("subjects"))
        ]
        missing_subjects = [s for s in want if s not in found]
        if missing_subjects:
            problems.append(f"subjects: {missing_subjects} not found in {self.fmriprep_dir} (found {found})")
        subjects = self.subjects()
        if not subjects:
            problems.append(f"subjects: no sub-* folders in {self.fmriprep_dir}")
            return problems
        segments = self.segments()
        if not segments:
            suffix = "_bold.dtseries.nii" if self.cifti else "_desc-preproc_bold.nii.gz"
            problems.append(
                f"segments: no BOLD runs of movies {self.movies} in space {self.space} under {self.fmriprep_dir} "
                f"(expected e.g. sub-01/ses-001/func/sub-01_ses-001_task-bourne01_space-{self.space}"
                f"{'_den-91k' if self.cifti else ''}{suffix})"
            )
            return problems
        tests = self.test_runs()
        if not tests:
            problems.append(
                f"test_movies: none of the selected segments {segments} is from {self.test_movies}"
            )
        elif len(tests) == len(segments):
            problems.append(
                f"test_movies: every selected segment {segments} is a test run; none is left to train on"
            )

        grids: dict[str, list[str]] = {}  # exact grid -> runs on it
        for sub in subjects:
            for seg in segments:
                runs = self._viewings(sub, seg)
                if not runs:
                    ext = "_den-91k_bold.dtseries.nii" if self.cifti else "_desc-preproc_bold.nii.gz"
                    problems.append(
                        f"{sub} {seg}: no BOLD file (expected {self.fmriprep_dir}/{sub}/ses-*/func/"
                        f"{sub}_ses-*_task-{seg}[_run-N]_space-{self.space}{ext}); leave the segment out with "
                        "the 'segments' option"
                    )
                    continue
                for r in runs:
                    try:
                        self._header(r)
                    except Exception as exc:  # nibabel raises many types on damaged headers
                        problems.append(
                            f"{sub} {seg}: cannot read the header of {r.bold}: {' '.join(str(exc).split())}"
                        )
                        continue
                    if r.tr_s is None or abs(r.tr_s - TR) > 1e-3:
                        where = f"{r.sidecar.name} (RepetitionTime)" if r.sidecar else "the header"
                        problems.append(
                            f"{sub} {seg}: {r.bold.name} has a repetition time of {r.tr_s} s in {where}; "
                            f"Movie10 was acquired with TR {TR} s"
                        )
                    grids.setdefault(json.dumps(r.grid), []).append(f"{sub}/{r.bold.name}")
                    if (
                        not self.cifti
                        and self._path_option("mask") is None
                        and not (r.mask and r.mask.exists())
                    ):
                        problems.append(
                            f"{sub} {seg}: no brain mask {r.mask} (fMRIPrep's _desc-brain_mask.nii.gz next to the "
                            "BOLD file); give a common mask with the 'mask' option"
                        )
                    conf = self.options.get("confounds") or []
                    if conf:
                        problems += self._confound_problems(sub, seg, r, conf)
        if len(grids) > 1:
            desc = "; ".join(
                f"{self._describe_grid(json.loads(k))}: {len(v)} run(s), e.g. {v[0]}"
                for k, v in grids.items()
            )
            problems.append(
                "grid: the BOLD runs are not on one voxel grid, but the cross-subject ceiling needs one "
                f"space shared by every run and subject ({desc})"
            )
        elif grids:
            problems += self._label_problems()
        if self.uses_stimuli:
            problems += self._stimulus_problems(subjects, segments)
        return problems

    @staticmethod
    def _describe_grid(grid) -> str:
        if len(grid) == 1:
            return f"{grid[0]} grayordinates"
        shape, affine = grid
        return (
            f"shape {tuple(shape)}, voxel size {tuple(round(abs(affine[i][i]), 3) for i in range(3))}, "
            f"origin {tuple(round(affine[i][3], 2) for i in range(3))}"
        )

    def _label_problems(self) -> list[str]:
        """The mask, atlas or dlabel options must lie on the BOLD grid (headers only)."""
        import nibabel as nib

        problems = []
        first = next(
            (r for s in self.subjects() for seg in self.segments() for r in self._viewings(s, seg) if r.grid),
            None,
        )
        if first is None:
            return problems
        if self.cifti:
            p = self._path_option("dlabel")
            if p is None or not p.exists():
                return problems
            try:
                lab, bold = nib.load(str(p)), nib.load(str(first.bold))
                same = lab.header.get_axis(1) == bold.header.get_axis(1)
                is_label = isinstance(lab.header.get_axis(0), nib.cifti2.LabelAxis)
            except Exception as exc:
                return [f"dlabel: cannot read {p} as a CIFTI-2 label file: {' '.join(str(exc).split())}"]
            if not is_label:
                problems.append(f"dlabel: {p} is not a CIFTI-2 dense label file (.dlabel.nii)")
            elif not same:
                problems.append(
                    f"dlabel: the brain models (grayordinates) of {p} differ from those of {first.bold.name} "
                    f"({first.grid[0]} grayordinates); make a 91k dlabel on the fsLR grid"
                )
            return problems
        grid_key = self._describe_grid(first.grid)
        shape, affine = first.grid
        for key in ("mask", "atlas"):
            p = self._path_option(key)
            if p is None or not p.exists():
                continue
            try:
                img = nib.load(str(p))
            except Exception as exc:
                problems.append(f"{key}: cannot read {p}: {' '.join(str(exc).split())}")
                continue
            if tuple(img.shape[:3]) != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-2):
                problems.append(
                    f"{key}: {p} has shape {tuple(img.shape)} and is not on the BOLD grid ({grid_key}, e.g. "
                    f"{first.bold.name}); resample it to the BOLD grid"
                )
        return problems

    def _confound_problems(self, sub: str, seg: str, run: BoldRun, columns: list[str]) -> list[str]:
        if run.confounds is None:
            return [
                f"{sub} {seg}: no confounds TSV next to {run.bold.name} (expected *_desc-confounds_timeseries.tsv) "
                "but the 'confounds' option asks for some"
            ]
        with open(run.confounds, newline="") as fh:
            header = next(csv.reader(fh, delimiter="\t"), [])
        missing = [c for c in columns if c not in header]
        if missing:
            return [f"{sub} {seg}: confounds {missing} are not columns of {run.confounds.name}"]
        return []

    def _stimulus_problems(self, subjects: list[str], segments: list[str]) -> list[str]:
        problems = []
        try:
            from brainalign.features.stimuli import video_duration
        except ImportError:  # pragma: no cover - the feature store is a dependency
            return problems
        n_trs = self.n_trs()
        for seg in segments:
            video = self.video_path(seg)
            if not video.exists():
                problems.append(
                    f"{seg}: no stimulus video {video} (expected the movie10.stimuli file; `datalad get` it)"
                )
                continue
            try:
                duration = video_duration(video)
            except ImportError:
                continue  # PyAV (the compute extra) is not installed: the video is checked at embed time
            except Exception as exc:
                problems.append(f"{seg}: cannot read the video {video}: {' '.join(str(exc).split())}")
                continue
            for sub in subjects:
                for r in self._viewings(sub, seg):
                    if r.n_vols is None:
                        continue
                    run_s = r.n_vols * TR
                    if abs(run_s - duration) > self.tolerance_s:
                        problems.append(
                            f"{sub} {seg}: inconsistent TR grids: {r.bold.name} has {r.n_vols} volumes x {TR} s = "
                            f"{run_s:.1f} s but {video.name} lasts {duration:.1f} s (difference "
                            f"{abs(run_s - duration):.1f} s > grid_tolerance_s = {self.tolerance_s:g} s); wrong "
                            "video, truncated run or wrong TR?"
                        )
            if seg in n_trs and n_trs[seg] < 8:
                problems.append(f"{seg}: only {n_trs[seg]} volumes shared by every subject; too short to fit")
        return problems

    def summary(self) -> dict[str, Any]:
        n = self.n_trs()
        if self.cifti:
            n_vox = next(
                (r.grid[0] for s in self.subjects() for seg in n for r in self._viewings(s, seg) if r.grid),
                None,
            )
        else:
            mask = self._path_option("mask")
            n_vox = None
            if mask is not None and mask.exists():
                import nibabel as nib

                n_vox = int((np.asarray(nib.load(str(mask)).dataobj) > 0).sum())
            else:
                first = next((r for s in self.subjects() for seg in n for r in self._viewings(s, seg)), None)
                if first is not None and first.mask is not None and first.mask.exists():
                    import nibabel as nib

                    n_vox = int((np.asarray(nib.load(str(first.mask)).dataobj) > 0).sum())
        return {
            "n_samples": int(sum(n.values())),
            "n_voxels": n_vox,
            "runs": list(n),
            "space": self.space,
            "viewings_averaged": self.average_viewings,
        }

    def test_runs(self) -> list[str]:
        return [
            s
            for s in self.segments()
            if _SEGMENT.match(s) and _SEGMENT.match(s).group("movie") in self.test_movies
        ]

    # ---- stimuli -------------------------------------------------------------------------
    def plan_items(self, modality: str, **options: Any) -> tuple[int, str]:
        """One clip or audio window per TR of every segment, counted without decoding the sound
        tracks (the manifest extracts them, once, at embed time)."""
        return int(sum(self._check_manifest(modality, options).values())), STIMULUS_SET

    def _check_manifest(self, modality: str, options: dict[str, Any]) -> dict[str, int]:
        if modality not in self.modalities:
            raise RecipeError(f"modality: Movie10 provides {list(self.modalities)}, got {modality!r}")
        unknown = sorted(set(options) - MANIFEST_OPTIONS[modality])
        if unknown:
            raise RecipeError(
                f"embed.{modality}: unknown option(s) {unknown}; expected some of {sorted(MANIFEST_OPTIONS[modality])}"
            )
        if not self.uses_stimuli:
            raise RecipeError(
                "stimuli: the data options say stimuli = false, but a model embeds the stimuli; "
                "point 'stimuli' at the movie10.stimuli folder"
            )
        n_trs = self.n_trs()
        if not n_trs:
            raise RecipeError(f"data: no BOLD runs found under {self.fmriprep_dir}; run the checks first")
        return n_trs

    def manifest(self, modality: str, **options: Any):
        from brainalign.features.stimuli import audio_windows, concat, video_clips

        n_trs = self._check_manifest(modality, options)
        parts = []
        for seg, n in n_trs.items():
            video = self.video_path(seg)
            if modality == "video":
                parts.append(
                    video_clips(
                        video,
                        tr=TR,
                        n_trs=n,
                        window_s=options.get("window_s"),
                        frames_per_clip=int(options.get("frames_per_clip", 8)),
                        align=options.get("align", "end"),
                        run=seg,
                        stimulus_set=STIMULUS_SET,
                    )
                )
            else:
                rate = int(options.get("sample_rate", 16000))
                parts.append(
                    audio_windows(
                        self.audio_path(seg, rate),
                        tr=TR,
                        n_trs=n,
                        window_s=options.get("window_s"),
                        align=options.get("align", "end"),
                        sample_rate=rate,
                        run=seg,
                        stimulus_set=STIMULUS_SET,
                    )
                )
        man = concat(parts, STIMULUS_SET)
        man.spec.update({"dataset": "CNeuroMod Movie10", "runs": list(n_trs), "n_trs": n_trs})
        return man

    def audio_path(self, segment: str, sample_rate: int = 16000) -> Path:
        """A WAV of the segment's sound track: ``<segment>.wav`` next to its video if present,
        else the ``.mkv`` audio track decoded with PyAV (mono, ``sample_rate``) into ``audio_dir``
        once (re-extracted when the video is newer)."""
        video = self.video_path(segment)
        beside = video.with_suffix(".wav")
        if beside.exists():
            return beside
        cache = self._path_option("audio_dir") or (
            Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "brainalign" / "movie10-audio"
        )
        out = cache / f"{segment}_{sample_rate}Hz.wav"
        if out.exists() and video.exists() and out.stat().st_mtime >= video.stat().st_mtime:
            return out
        if not video.exists():
            raise RecipeError(f"{segment}: no stimulus video {video} to take the audio from")
        extract_audio(video, out, sample_rate)
        return out

    # ---- responses -----------------------------------------------------------------------
    def _common_mask(self, dest: Path) -> Path:
        """The intersection of the fMRIPrep brain masks of every selected run and subject."""
        import nibabel as nib

        sel = ref = None
        for sub in self.subjects():
            for seg in self.segments():
                for r in self._viewings(sub, seg):
                    img = nib.load(str(r.mask))
                    m = np.asarray(img.dataobj) > 0
                    if sel is None:
                        sel, ref = m, img
                    elif m.shape != sel.shape:
                        raise RecipeError(f"mask: {r.mask} has shape {m.shape}, the first mask {sel.shape}")
                    else:
                        sel &= m
        if sel is None or not sel.any():
            raise RecipeError("mask: the fMRIPrep brain masks of the selected runs share no voxel")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp.nii.gz")
        nib.save(nib.Nifti1Image(sel.astype(np.uint8), ref.affine), str(tmp))
        os.replace(tmp, dest)
        return dest

    def _read_segment(self, sub: str, seg: str, n: int, mask: Path | None, say: Progress):
        """One run of one subject: each viewing cut to ``n`` volumes, cleaned, z-scored per voxel,
        and averaged over viewings. Returns ``(Y (n, n_voxels), voxels, reference, fmt)``."""
        from ...ingest import RunInput, detrend, read_run, regress_out, zscore

        atlas, labels = self._path_option("atlas"), self._path_option("atlas_labels")
        dlabel = self._path_option("dlabel")
        conf_cols = list(self.options.get("confounds") or [])
        order = self.options.get("detrend")
        Ys, first = [], None
        for r in self._viewings(sub, seg):
            say(f"reading {sub} {seg} viewing {r.viewing} ({r.bold.name})")
            b = read_run(
                RunInput(paths=[r.bold], run=seg, subject=sub),
                mask=mask,
                atlas=atlas,
                atlas_labels=labels,
                labels=[dlabel] if dlabel else [],
            )
            Y = b.Y[:n]
            if not np.isfinite(Y).all():
                bad = int((~np.isfinite(Y).all(0)).sum())
                raise RecipeError(f"{sub} {seg}: {bad} voxel(s) of {r.bold} hold NaN or inf inside the mask")
            if conf_cols:
                Y = regress_out(Y, _read_confounds(r.confounds, conf_cols)[:n])
            if order is not None:
                Y = detrend(Y, int(order))
            Ys.append(zscore(Y))
            if first is None:
                first = b
            elif b.Y.shape[1] != first.Y.shape[1]:
                raise RecipeError(
                    f"{sub} {seg}: viewing {r.viewing} has {b.Y.shape[1]} voxels, viewing 1 {first.Y.shape[1]}"
                )
        Y = np.mean(Ys, axis=0).astype(np.float32) if len(Ys) > 1 else Ys[0]
        return Y, first.voxels, first.reference, first.fmt

    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        """Write one responses row per (subject, segment, TR) and the voxels of every subject.

        Subjects are written one at a time (one commit per table and subject, so memory holds
        one subject); rows with the same keys are replaced, so a rerun does not duplicate."""
        import pyarrow as pa

        from ...ingest import IngestSummary, check_brain_tables, write_brain_tables

        say = progress or (lambda _m: None)
        problems = self.check()
        if problems:
            raise RecipeError(problems)
        responses, voxels = Path(responses), Path(voxels)
        n_trs = self.n_trs()
        mask = None
        if not self.cifti:
            mask = self._path_option("mask") or self._common_mask(
                responses.parent / f"movie10_mask_{self.space}.nii.gz"
            )
        preprocessing = {
            "confounds": list(self.options.get("confounds") or []),
            "detrend": self.options.get("detrend"),
            "zscore_per_run": True,
            "viewings": "z-scored per voxel and averaged"
            if self.average_viewings
            else "first viewing (run-1)",
            "trs_per_run": n_trs,
        }
        summaries = []
        for sub in self.subjects():
            t0 = time.perf_counter()
            blocks, cols = [], {k: [] for k in ("run", "tr")}
            vox = ref = fmt = None
            for seg, n in n_trs.items():
                Y, v, rf, ft = self._read_segment(sub, seg, n, mask, say)
                if vox is None:
                    vox, ref, fmt = v, rf, ft
                elif Y.shape[1] != blocks[0].shape[1]:
                    raise RecipeError(f"{sub} {seg}: {Y.shape[1]} voxels, earlier runs {blocks[0].shape[1]}")
                blocks.append(Y)
                cols["run"] += [seg] * n
                cols["tr"].append(np.arange(n, dtype=np.int32))
            Yall = np.concatenate(blocks)
            del blocks
            n_vox = Yall.shape[1]
            trs = np.concatenate(cols["tr"])
            resp = pa.table(
                {
                    "dataset": [DATASET] * len(trs),
                    "subject": [sub] * len(trs),
                    "stimulus_set": [STIMULUS_SET] * len(trs),
                    "run": cols["run"],
                    "tr": pa.array(trs),
                    "onset_s": pa.array(trs.astype(np.float64) * TR),
                    "bold": pa.FixedSizeListArray.from_arrays(pa.array(Yall.ravel()), n_vox),
                }
            )
            vtab = _voxel_rows(vox, sub, self.space, n_vox)
            say(f"writing {sub}: {len(trs):,} TRs x {n_vox:,} voxels")
            provenance = {
                "dataset": "CNeuroMod Movie10",
                "fmriprep": str(self.fmriprep_dir),
                "subjects": self.subjects(),
                "tr_s": TR,
                "space": self.space,
                "format": fmt,
                "preprocessing": preprocessing,
                "mask": str(mask) if mask else None,
                "atlas": str(self._path_option("atlas") or self._path_option("dlabel") or "") or None,
            }
            check_brain_tables(
                responses,
                voxels,
                n_vox,
                rows=f"{sub} has",
                hint="; write into a new output folder",
                error=RecipeError,
            )
            r_version, v_version = write_brain_tables(
                responses,
                resp,
                voxels,
                vtab,
                n_voxels=n_vox,
                provenance=provenance,
                voxels_provenance={"dataset": DATASET, "space": self.space, "reference": ref},
            )
            rois: dict[str, int] = {}
            for r in vtab.column("roi").to_pylist() if "roi" in vtab.column_names else []:
                rois[str(r)] = rois.get(str(r), 0) + 1
            summaries.append(
                IngestSummary(
                    responses_uri=str(responses),
                    voxels_uri=str(voxels),
                    responses_version=r_version,
                    voxels_version=v_version,
                    dataset=DATASET,
                    subjects=[sub],
                    runs={f"{sub}/{seg}": n for seg, n in n_trs.items()},
                    n_voxels=n_vox,
                    tr_s=TR,
                    space=self.space,
                    fmt=fmt,
                    preprocessing=preprocessing,
                    seconds=time.perf_counter() - t0,
                    rois=rois,
                )
            )
        self._ceilings.clear()
        return summaries

    # ---- ceiling -------------------------------------------------------------------------
    def ceiling(self, responses: Path, subject: str) -> np.ndarray | None:
        """Cross-subject ceiling of ``subject``: per voxel, Pearson r over the test runs between
        the subject's responses and the mean of the other subjects' (each z-scored per run),
        on the TRs every subject has. None with fewer than two subjects."""
        from brainalign.features import open_table

        table = open_table(responses)
        key = (str(responses), table.version)
        if key not in self._ceilings:
            self._ceilings = {key: cross_subject_ceilings(table, self.test_runs(), self.subjects())}
        return self._ceilings[key].get(subject)

    # ---- report --------------------------------------------------------------------------
    def report(self, ctx: Any, out: Path) -> ReportPart:
        """Per-ROI normalised alignment of each model, the ceiling per ROI, the group comparison
        per ROI and layer-wise profiles over relative depth (figures)."""
        return movie10_report(ctx, out, notes=self._scan().notes)


# ---- helpers ------------------------------------------------------------------------------
def _read_confounds(path: Path | None, columns: list[str]) -> np.ndarray:
    if path is None:
        raise RecipeError(f"confounds: no confounds TSV for columns {columns}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return np.array(
        [[float(r[c]) if r[c] not in ("", "n/a", "NaN") else np.nan for c in columns] for r in rows]
    )


def _voxel_rows(vox: dict, subject: str, space: str, n_vox: int):
    import pyarrow as pa

    cols = {
        "dataset": [DATASET] * n_vox,
        "subject": [subject] * n_vox,
        "voxel": pa.array(np.arange(n_vox, dtype=np.int32)),
        "space": [space] * n_vox,
    }
    valid_of = {"i": "_ijk_valid", "j": "_ijk_valid", "k": "_ijk_valid", "vertex": "_vertex_valid"}
    valid_of.update({"x": "_xyz_valid", "y": "_xyz_valid", "z": "_xyz_valid"})
    for c in ("i", "j", "k", "x", "y", "z", "vertex", "hemi", "roi"):
        if c not in vox:
            continue
        a = vox[c]
        if a.dtype == object:
            cols[c] = pa.array(a.tolist(), pa.string())
        else:
            valid = vox.get(valid_of.get(c, ""))
            cols[c] = pa.array(a, mask=None if valid is None else ~np.asarray(valid))
    return pa.table(cols)


def extract_audio(video: Path, out: Path, sample_rate: int = 16000) -> Path:
    """Decode the audio track of ``video`` with PyAV into a mono 16-bit WAV at ``sample_rate``
    (written to a temporary file and moved into place)."""
    try:
        import av
        import soundfile as sf
    except ImportError as exc:
        raise RecipeError(
            f"{video}: decoding its sound track needs PyAV and soundfile (the compute extra: "
            f"pip install 'brainalign-feature-store[compute]'), or put a {video.stem}.wav next to it "
            f"({exc})"
        ) from exc

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".wav", dir=out.parent)
    os.close(fd)
    try:
        with av.open(str(video)) as c:
            if not c.streams.audio:
                raise RecipeError(f"{video}: no audio track (put a {video.stem}.wav next to it)")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as wav:
                for frame in c.decode(c.streams.audio[0]):
                    for f in resampler.resample(frame):
                        wav.write(f.to_ndarray().reshape(-1))
                for f in resampler.resample(None):
                    wav.write(f.to_ndarray().reshape(-1))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _zscore_runs(Y: np.ndarray, runs: np.ndarray) -> np.ndarray:
    out = np.empty_like(Y, dtype=np.float64)
    for r in np.unique(runs):
        m = runs == r
        mu, sd = Y[m].mean(0), Y[m].std(0)
        out[m] = np.where(sd > 0, (Y[m] - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def cross_subject_ceilings(
    table, test_runs: list[str], subjects: list[str], *, chunk: int = 20_000
) -> dict[str, np.ndarray]:
    """Leave-one-subject-out ceilings ``{subject: (n_voxels,) r}`` over ``test_runs`` of a
    responses table: r between a subject's z-scored responses and the mean of the others', on
    the (run, tr) keys all of them share. Empty with fewer than two subjects."""
    if len(subjects) < 2 or not test_runs:
        return {}
    runs_sql = ", ".join("'" + r.replace("'", "''") + "'" for r in test_runs)
    subs_sql = ", ".join("'" + s.replace("'", "''") + "'" for s in subjects)
    t = table.to_table(
        columns=["subject", "run", "tr", "bold"],
        filter=f"dataset = '{DATASET}' AND run IN ({runs_sql}) AND subject IN ({subs_sql})",
    )
    if len(t) == 0:
        return {}
    subj = np.asarray(t.column("subject").to_pylist())
    run = np.asarray(t.column("run").to_pylist())
    tr = np.asarray(t.column("tr").to_numpy())
    bold = t.column("bold").combine_chunks()
    n_vox = bold.type.list_size
    Y = bold.flatten().to_numpy(zero_copy_only=False).reshape(len(t), n_vox)
    present = [s for s in subjects if (subj == s).any()]
    if len(present) < 2:
        return {}
    keys = {
        s: {(r, int(k)): i for i, (r, k) in enumerate(zip(run[subj == s], tr[subj == s], strict=True))}
        for s in present
    }
    common = sorted(set.intersection(*(set(k) for k in keys.values())))
    if not common:
        return {}
    crun = np.array([c[0] for c in common])
    rows = {s: np.flatnonzero(subj == s)[[keys[s][c] for c in common]] for s in present}
    out = {s: np.empty(n_vox, np.float32) for s in present}
    for a in range(0, n_vox, chunk):  # float64 copies of one block of voxels at a time
        mats = {s: _zscore_runs(Y[rows[s], a : a + chunk].astype(np.float64), crun) for s in present}
        total = sum(mats.values())
        for s in present:
            out[s][a : a + chunk] = _pearson(mats[s], (total - mats[s]) / (len(present) - 1))
    return out


def movie10_report(ctx: Any, out: Path, notes: list[str] | None = None) -> ReportPart:
    """Study tables and figures of the Movie10 recipe (see :meth:`Movie10.report`)."""
    from ...query import run_query

    part = ReportPart(notes=list(notes or []))
    tables = {k: v for k, v in ctx.tables.items() if Path(v).exists()}
    if "scores" not in tables:
        return part
    metric = ctx.metric
    agg = "median" if ctx.recipe.report.get("aggregate", "mean") == "median" else "avg"
    fit = "'" + ctx.fit.replace("'", "''") + "'"
    groups = {m.name: m.group for m in ctx.models}
    q = lambda sql: run_query(sql, ctx.dir, tables=tables).to_pylist()  # noqa: E731
    join = "LEFT JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject" if "voxels" in tables else ""
    roi = "coalesce(v.roi, 'unlabelled')" if join else "'unlabelled'"
    per_roi = q(
        f"""WITH per AS (SELECT s.subject, {roi} AS roi, s.model, s.instruction_id, s.layer,
                                {agg}(s.{metric}) AS score, count(s.{metric}) AS n
                         FROM scores s {join} WHERE s.fit = {fit} GROUP BY ALL),
                 a AS (SELECT roi, model, instruction_id, layer, avg(score) AS score, avg(n) AS n
                       FROM per GROUP BY ALL),
                 depth AS (SELECT model, max(layer) AS top FROM scores WHERE fit = {fit} GROUP BY ALL)
            SELECT roi, a.model, arg_max(instruction_id, score) AS best_instruction,
                   arg_max(layer, score) AS best_layer, arg_max(layer, score) / greatest(any_value(top), 1) AS relative_depth,
                   max(score) AS score, arg_max(n, score) AS n_voxels
            FROM a JOIN depth USING (model) GROUP BY roi, a.model ORDER BY roi, score DESC"""
    )
    label = "ceiling-normalised r" if metric == "r_norm" else "held-out r"
    part.tables["normalised alignment per ROI"] = [
        {
            "roi": r["roi"],
            "model": r["model"],
            "group": groups.get(r["model"], ""),
            **{k: r[k] for k in r if k not in ("roi", "model", "n_voxels")},
            # voxels with a score (a ceiling above min_ceiling when normalised), mean over subjects
            "n_voxels": None if r["n_voxels"] is None else round(r["n_voxels"]),
        }
        for r in per_roi
    ]
    ceil = q(
        f"""WITH c AS (SELECT s.subject, s.voxel, any_value(s.ceiling) AS ceiling FROM scores s
                       WHERE s.fit = {fit} GROUP BY ALL)
            SELECT {roi} AS roi, count(DISTINCT s.voxel) AS n_voxels, avg(s.ceiling) AS mean_ceiling,
                   avg(CASE WHEN s.ceiling >= {float(ctx.recipe.fit.get("min_ceiling", 0.0))} AND s.ceiling > 0
                            THEN 1.0 ELSE 0.0 END)
                       AS fraction_reliable
            FROM c s {join} GROUP BY ALL ORDER BY roi"""
    )
    if any(r["mean_ceiling"] is not None for r in ceil):
        part.tables["cross-subject ceiling per ROI"] = ceil
    # group comparison per ROI (the runner's table, as a figure)
    by_group: dict[tuple[str, str], list[float]] = {}
    for r in per_roi:
        if r["score"] is not None:
            by_group.setdefault((r["roi"], groups.get(r["model"], "")), []).append(r["score"])
    if by_group:
        part.figures["group comparison per ROI"] = _plot_groups(
            by_group, out / "movie10_groups.png", label
        ).name
    profile = q(
        f"""WITH per AS (SELECT subject, model, instruction_id, layer, {agg}({metric}) AS score
                         FROM scores WHERE fit = {fit} GROUP BY ALL),
                 a AS (SELECT model, instruction_id, layer, avg(score) AS score FROM per GROUP BY ALL)
            SELECT model, layer, avg(score) AS mean_over_instructions, max(score) AS best_instruction
            FROM a GROUP BY ALL ORDER BY model, layer"""
    )
    if profile:
        part.figures["layer-wise alignment by relative depth"] = _plot_depth(
            profile, groups, out / "movie10_layers.png", label
        ).name
    part.notes.append(
        "per-ROI alignment: the best (instruction, layer) of each model in each ROI; relative depth = layer / last layer"
    )
    return part


def _plot_groups(by_group: dict[tuple[str, str], list[float]], path: Path, label: str) -> Path:
    from ...report import plt  # the report module selects the Agg backend

    rois = list(dict.fromkeys(k[0] for k in by_group))
    names = list(dict.fromkeys(k[1] for k in by_group))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rois) * max(len(names), 1) / 2), 3.2))
    width = 0.8 / max(len(names), 1)
    for i, g in enumerate(names):
        vals = [float(np.mean(by_group[(r, g)])) if (r, g) in by_group else np.nan for r in rois]
        ax.bar(np.arange(len(rois)) + (i - (len(names) - 1) / 2) * width, vals, width, label=g)
    ax.set_xticks(np.arange(len(rois)), rois, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"mean best {label}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=7, title="group")
    ax.set_title("instruction-tuned vs non-instruction-tuned vs unimodal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_depth(rows: list[dict], groups: dict[str, str], path: Path, label: str) -> Path:
    from ...report import plt  # the report module selects the Agg backend

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    styles = {"instruction-tuned": "-", "non-instruction-tuned": "--", "unimodal": ":"}
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["layer"], r["mean_over_instructions"]) for r in rows if r["model"] == model)
        top = max(max(p[0] for p in pts), 1)
        ax.plot(
            [p[0] / top for p in pts],
            [p[1] for p in pts],
            styles.get(groups.get(model, ""), "-"),
            marker="o",
            ms=3,
            label=f"{model} ({groups.get(model, '')})",
        )
    ax.set_xlabel("relative layer depth")
    ax.set_ylabel(f"mean {label}\n(mean over instructions)", fontsize=8)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
