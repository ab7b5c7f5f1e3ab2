"""The Natural Scenes Dataset (NSD; Allen et al. 2022, Nature Neuroscience) as a study dataset.

Where to get it
---------------
https://naturalscenesdataset.org. Access is granted through the NSD Data Access Agreement form
on that site; the terms of use are stated there (acknowledge the dataset, cite Allen et al.
2022, do not redistribute the data). The data then sit in the public AWS bucket
``s3://natural-scenes-dataset`` (``aws s3 sync --no-sign-request ...``). The images are COCO
images and carry the COCO terms of use (https://cocodataset.org/#termsofuse). Only the files
below are needed; copy them with the same relative paths under one root directory::

    ROOT/
      nsddata/experiments/nsd/nsd_expdesign.mat            MATLAB v5 file: masterordering (1 x 30000,
                                                           1-based index into subjectim), subjectim
                                                           (8 x 10000, 1-based 73k ids per subject),
                                                           sharedix (1 x 1000, the shared 73k ids)
      nsddata/experiments/nsd/nsd_stim_info_merged.csv     optional, not read
      nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz   voxel mask (1 in, 0 / -1 out)
      nsddata/ppdata/subj01/func1pt8mm/roi/streams.nii.gz      ROI files named in ``rois``
      nsddata/ppdata/subj01/func1pt8mm/roi/floc-words.nii.gz
      nsddata/freesurfer/subj01/label/streams.mgz.ctab         their label names ("index name" lines)
      nsddata/freesurfer/subj01/label/floc-words.mgz.ctab
      nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz
      ...                                                  one 4D NIfTI per session (X, Y, Z, 750 trials),
                                                           int16 = percent signal change x 300
      nsddata_stimuli/stimuli/nsd/images/nsd-00001.png     one file per image, named by 73k id (1-based)
      ...

The same tree repeats for ``subj02`` ... ``subj08``. The images ship as one HDF5 brick
(``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``, dataset ``imgBrick``, 73000 x 425 x 425 x 3
uint8); brainalign does not depend on h5py, so export the brick to files once (only the images
of the subjects you use are needed)::

    import h5py
    from PIL import Image

    with h5py.File("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        for i in range(brick.shape[0]):  # row i holds the image with 73k id i + 1
            Image.fromarray(brick[i]).save(f"nsddata_stimuli/stimuli/nsd/images/nsd-{i + 1:05d}.png")

How files map to keys
---------------------
Trial ``t`` (0-based over a subject's sessions; ``trials_per_session`` = 750 per session) showed
the image with 73k id ``subjectim[subject, masterordering[t] - 1]``. Betas are divided by 300
(percent signal change), z-scored per voxel within each session (across its trials; the usual
NSD practice), and the repeats of an image (up to 3) are averaged: one response per image.

* ``stimulus_set`` ``"nsd"``; ``stimulus_id`` ``"nsd-%05d"`` (73k id, 1-based, as in subjectim);
* ``run`` is a cross-validation group: ``"test"`` holds the shared images (``sharedix``; the
  same for every subject, so scores are comparable across subjects); every other image (seen by
  one subject only) goes to ``"subjNN-foldK"``, K = 1..``folds``, by the session of its first
  presentation in contiguous blocks of the design's sessions (fold 1 = sessions 1-10 of 40 with
  4 folds). Training runs are these folds (leave one fold out for the ridge alphas);
* ``tr`` is the 73k id itself, so each image has one key whichever subjects are selected and
  a features table embedded once serves every subject; within a run, rows are ordered by it.

A subject's responses cover "test" and its own folds; with several subjects the features table
also holds the other subjects' folds, so a subject's fits join only "test" and its own folds
(:meth:`NSD.subject_runs`, from the design alone). Subjects with fewer sessions than the others
miss some test images; mixing them needs ``[fit] allow_trim = true``.

Responses of all subjects share one table whose ``bold`` width is fixed: subjects with fewer
nsdgeneral voxels than the largest are padded with zero columns. Padded columns have no row in
the voxels table and a NaN ceiling, so ceiling-normalised scores and every per-ROI figure leave
them out. Subjects live in their own native grids, so the report's brain maps are written per
subject by :meth:`NSD.report` (set ``[report] maps = false`` in the recipe).

Noise ceiling (``ceiling = "ncsnr"``): the NSD noise ceiling of Allen et al. 2022,
``NC = ncsnr^2 / (ncsnr^2 + 1/n)``, which is the Spearman–Brown prophecy for ``n`` averaged
trials of the single-trial explainable variance ``ncsnr^2 / (ncsnr^2 + 1)``. It is computed
from the test images' ``n`` = 3 repeats (2 where fewer images have 3) with
:func:`brainalign.encoders.explainable_variance` (bias-corrected, repeats z-scored) and
:func:`brainalign.encoders.spearman_brown`, clipped to [0, 1] and square-rooted to r units. It is
written beside the responses table at ingest (``nsd_ceiling/<subject>.npz``).

ROIs: every voxel of the mask gets the label of the first file of ``rois`` (in order) that
marks it (> 0), names from the file's ``.mgz.ctab``; other voxels are labelled ``"other"``.
``language_rois`` names the labels reported as language ROIs; the other labels are visual.
The default is the word-selective floc-words regions (OWFA, VWFA-1/2, mfs-words, mTL-words):
the only language-related regions inside ``nsdgeneral``, and they lie in ventral visual cortex.
The language network's temporal and frontal regions (e.g. ATL, IFG) lie outside that mask: to
report them, put a wider mask file in the ``roi`` folder (``mask = "<its name>"``), add the NSD
``HCP_MMP1`` parcellation to ``rois`` and name its areas (e.g. ``"44"``, ``"45"``, ``"TGd"``)
in ``language_rois``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from brainalign.encoders import normalize

from ..base import Progress, RecipeError, ReportPart, StudyDataset

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
BETAS_SCALE = 300.0  # NSD stores betas as int16 percent signal change x 300
STIMULUS_SET = "nsd"
TEST_RUN = "test"
DEFAULTS: dict[str, Any] = {
    "resolution": "func1pt8mm",
    "betas": "betas_fithrf_GLMdenoise_RR",
    "mask": "nsdgeneral",
    "rois": ["floc-words", "streams"],
    "language_rois": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    "images": "nsddata_stimuli/stimuli/nsd/images",
    "image_name": "nsd-{:05d}.png",
    "trials_per_session": 750,
    "sessions": None,
    "folds": 4,
    "ceiling": "ncsnr",
}
RESOLUTIONS = ("func1pt8mm", "func1mm")
CEILINGS = ("ncsnr", "none")
_SUBJ = re.compile(r"^subj(\d{2})$")
_SESSION = re.compile(r"^betas_session(\d{2})\.nii\.gz$")


def subject_code(subject: str) -> str:
    """``"sub-01"``, ``"01"``, ``"1"`` or ``"subj01"`` -> ``"subj01"`` (NSD's folder name)."""
    s = str(subject).removeprefix("sub-").removeprefix("subj")
    return f"subj{int(s):02d}" if s.isdigit() else f"subj{s}"


def subject_id(code: str) -> str:
    """``"subj01"`` -> ``"sub-01"`` (the ``subject`` value in the tables)."""
    return "sub-" + code.removeprefix("subj")


def read_ctab(path: Path) -> dict[int, str]:
    """Label names of a FreeSurfer colour table (``index name [r g b a]`` lines)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and parts[0].lstrip("-").isdigit():
            out[int(parts[0])] = parts[1]
    return out


@dataclass
class Design:
    """``nsd_expdesign.mat``: ``masterordering (n_trials,)`` and ``subjectim (n_subjects,
    n_images)`` (1-based), ``sharedix (n_shared,)`` (73k ids)."""

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray


@dataclass
class SubjectData:
    """One subject read from disk: one row per image, in (run, 73k id) order."""

    subject: str
    nsd_ids: np.ndarray  # (n_images,) 73k ids
    runs: list[str]
    counts: np.ndarray  # (n_images,) presentations averaged
    Y: np.ndarray  # (n_images, n_voxels) float32
    voxels: dict[str, np.ndarray]
    reference: dict
    ceiling: np.ndarray | None  # (n_voxels,) r units
    meta: dict = field(default_factory=dict)


class NSD(StudyDataset):
    """Loader of NSD GLMsingle betas (see the module docstring for files, keys and options)."""

    name = "nsd"
    modalities = ("image",)
    option_keys = tuple(DEFAULTS)
    tr = None

    # ---- options and paths -----------------------------------------------------------------
    def opt(self, key: str) -> Any:
        return self.options.get(key, DEFAULTS[key])

    @property
    def expdesign_path(self) -> Path:
        return self.root / EXPDESIGN

    def betas_dir(self, code: str) -> Path:
        return self.root / "nsddata_betas/ppdata" / code / self.opt("resolution") / self.opt("betas")

    def roi_path(self, code: str, name: str) -> Path:
        return self.root / "nsddata/ppdata" / code / self.opt("resolution") / "roi" / f"{name}.nii.gz"

    def ctab_path(self, code: str, name: str) -> Path:
        return self.root / "nsddata/freesurfer" / code / "label" / f"{name}.mgz.ctab"

    def image_path(self, nsd_id: int) -> Path:
        return self.root / self.opt("images") / self.opt("image_name").format(int(nsd_id))

    def _option_problems(self) -> list[str]:
        problems = []
        unknown = sorted(set(self.options) - set(DEFAULTS) - {"subjects"})
        if unknown:
            problems.append(f"data: unknown option(s) {unknown} for nsd; expected some of {sorted(DEFAULTS)}")
        if self.opt("resolution") not in RESOLUTIONS:
            problems.append(
                f"data.resolution: expected one of {list(RESOLUTIONS)}, got {self.opt('resolution')!r}"
            )
        if self.opt("ceiling") not in CEILINGS:
            problems.append(f"data.ceiling: expected one of {list(CEILINGS)}, got {self.opt('ceiling')!r}")
        for key in ("trials_per_session", "folds"):
            v = self.opt(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < (2 if key == "folds" else 1):
                problems.append(f"data.{key}: expected an integer >= {2 if key == 'folds' else 1}, got {v!r}")
        s = self.opt("sessions")
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1):
            problems.append(f"data.sessions: expected a number of sessions >= 1 (or leave it out), got {s!r}")
        for key in ("rois", "language_rois"):
            v = self.opt(key)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                problems.append(f"data.{key}: expected a list of names, got {v!r}")
        name = self.opt("image_name")
        try:
            name.format(1)
        except (AttributeError, IndexError, KeyError, ValueError):
            problems.append(
                f"data.image_name: expected a file name pattern like 'nsd-{{:05d}}.png', got {name!r}"
            )
        return problems

    # ---- design ----------------------------------------------------------------------------
    @cached_property
    def design(self) -> Design:
        """The experimental design (raises :class:`RecipeError` naming the file when unreadable)."""
        from scipy.io import loadmat

        path = self.expdesign_path
        if not path.exists():
            raise RecipeError(f"expdesign: no such file {path} (copy it from the NSD bucket, see the docs)")
        try:
            mat = loadmat(str(path), variable_names=["masterordering", "subjectim", "sharedix"])
        except NotImplementedError:
            raise RecipeError(f"expdesign: {path} is a MATLAB v7.3 (HDF5) file; expected MATLAB v5") from None
        except Exception as exc:  # scipy raises several types for damaged files
            raise RecipeError(f"expdesign: cannot read {path}: {exc}") from None
        missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
        if missing:
            raise RecipeError(f"expdesign: {path} lacks variable(s) {missing}")
        mo = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
        si = np.asarray(mat["subjectim"]).astype(np.int64)
        sh = np.asarray(mat["sharedix"]).astype(np.int64).ravel()
        if si.ndim != 2:
            raise RecipeError(
                f"expdesign: subjectim in {path} has shape {si.shape}, expected (subjects, images)"
            )
        if mo.size == 0 or mo.min() < 1 or mo.max() > si.shape[1]:
            raise RecipeError(
                f"expdesign: masterordering in {path} must index subjectim's {si.shape[1]} columns (1-based), "
                f"got values {mo.min() if mo.size else '-'}..{mo.max() if mo.size else '-'}"
            )
        return Design(mo, si, sh)

    @property
    def design_sessions(self) -> int:
        return len(self.design.masterordering) // self.opt("trials_per_session")

    # ---- subjects and sessions -------------------------------------------------------------
    def found_codes(self) -> list[str]:
        base = self.root / "nsddata_betas/ppdata"
        if not base.is_dir():
            return []
        return sorted(
            p.name for p in base.iterdir() if _SUBJ.match(p.name) and self.betas_dir(p.name).is_dir()
        )

    def selected_codes(self) -> list[str]:
        want = self.options.get("subjects")
        found = self.found_codes()
        if not want:
            return found
        return [subject_code(s) for s in want]

    def codes(self) -> list[str]:
        """The selected subjects present on disk (``subjNN``)."""
        found = set(self.found_codes())
        return [c for c in self.selected_codes() if c in found]

    def subjects(self) -> list[str]:
        return [subject_id(c) for c in self.codes()]

    def sessions(self, code: str) -> list[Path]:
        """Session files ``betas_session01.nii.gz`` ... (contiguous from 01, at most ``sessions``)."""
        d = self.betas_dir(code)
        nums = (
            sorted(int(m.group(1)) for p in d.iterdir() if (m := _SESSION.match(p.name)))
            if d.is_dir()
            else []
        )
        out = []
        for k, n in enumerate(nums, start=1):
            if n != k:
                break
            out.append(d / f"betas_session{n:02d}.nii.gz")
        limit = self.opt("sessions")
        return out[:limit] if limit else out

    def trials(self, code: str) -> tuple[np.ndarray, np.ndarray]:
        """``(nsd_ids, session)`` per trial of the subject's available sessions (73k ids; 1-based sessions)."""
        tps = self.opt("trials_per_session")
        n = len(self.sessions(code)) * tps
        row = int(code[4:]) - 1
        mo = self.design.masterordering[:n]
        ids = self.design.subjectim[row, mo - 1]
        return ids, np.arange(len(ids)) // tps + 1

    def groups(self, code: str) -> dict[int, str]:
        """73k id -> run (``"test"`` or ``"subjNN-foldK"``) of every image the subject saw."""
        ids, session = self.trials(code)
        shared = set(self.design.sharedix.tolist())
        k, n_design = self.opt("folds"), max(self.design_sessions, 1)
        out: dict[int, str] = {}
        for i, s in zip(ids.tolist(), session.tolist(), strict=True):
            if i in out:
                continue
            out[i] = TEST_RUN if i in shared else f"{code}-fold{min((s - 1) * k // n_design, k - 1) + 1}"
        return out

    # ---- checks ----------------------------------------------------------------------------
    def check(self) -> list[str]:
        import nibabel as nib

        problems = self._option_problems()
        if problems:
            return problems
        try:
            design = self.design
        except RecipeError as exc:
            return problems + exc.problems
        tps = self.opt("trials_per_session")
        if len(design.masterordering) % tps:
            problems.append(
                f"expdesign: masterordering has {len(design.masterordering)} trials, not a multiple of "
                f"trials_per_session = {tps}"
            )
        found = self.found_codes()
        if not found:
            problems.append(
                f"betas: no subject folders nsddata_betas/ppdata/subjNN/{self.opt('resolution')}/"
                f"{self.opt('betas')}/ under {self.root}"
            )
            return problems
        for code in self.selected_codes():
            if code not in found:
                problems.append(
                    f"subjects: {subject_id(code)} ({code}) not found; found {[subject_id(c) for c in found]}"
                )
                continue
            if int(code[4:]) > design.subjectim.shape[0]:
                problems.append(
                    f"expdesign: subjectim has {design.subjectim.shape[0]} rows, no row for {code}"
                )
                continue
            problems += self._check_subject(code, nib)
        return problems

    def _header(self, nib, arg: str, path: Path, problems: list[str]):
        if not path.exists():
            problems.append(f"{arg}: no such file {path}")
            return None
        try:
            return nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for damaged headers
            problems.append(f"{arg}: cannot read {path}: {' '.join(str(exc).split())}")
            return None

    def _check_subject(self, code: str, nib) -> list[str]:
        problems: list[str] = []
        tps = self.opt("trials_per_session")
        sessions = self.sessions(code)
        if not sessions:
            problems.append(f"betas: no betas_session01.nii.gz in {self.betas_dir(code)}")
            return problems
        if len(sessions) > self.design_sessions:
            problems.append(
                f"betas: {code} has {len(sessions)} sessions, the design (masterordering) only "
                f"{self.design_sessions} of {tps} trials"
            )
        mask = self._header(nib, "mask", self.roi_path(code, self.opt("mask")), problems)
        grid = (tuple(mask.shape[:3]), np.asarray(mask.affine)) if mask is not None else None
        for path in sessions:
            img = self._header(nib, "betas", path, problems)
            if img is None:
                continue
            if len(img.shape) != 4:
                problems.append(f"betas: {path} has shape {tuple(img.shape)}, expected 4D (x, y, z, trials)")
                continue
            if img.shape[3] != tps:
                problems.append(
                    f"betas: {path} holds {img.shape[3]} trials, expected trials_per_session = {tps} "
                    "(NSD sessions have 750)"
                )
            if grid is not None and (
                tuple(img.shape[:3]) != grid[0] or not np.allclose(img.affine, grid[1], atol=1e-3)
            ):
                problems.append(
                    f"betas: {path} has grid {tuple(img.shape[:3])}, the mask "
                    f"{self.roi_path(code, self.opt('mask'))} {grid[0]} (or other affines); use one resolution"
                )
        for name in self.opt("rois"):
            roi = self._header(nib, "rois", self.roi_path(code, name), problems)
            if roi is not None and grid is not None and tuple(roi.shape[:3]) != grid[0]:
                problems.append(
                    f"rois: {self.roi_path(code, name)} has grid {tuple(roi.shape[:3])}, expected {grid[0]}"
                )
            if not self.ctab_path(code, name).exists():
                problems.append(f"rois: no label names {self.ctab_path(code, name)} for ROI file {name!r}")
        missing = [i for i in sorted(self.groups(code)) if not self.image_path(i).exists()]
        if missing:
            problems.append(
                f"images: {len(missing):,} image(s) shown to {code} are missing, e.g. "
                f"{', '.join(str(self.image_path(i)) for i in missing[:3])}; export them from "
                "nsd_stimuli.hdf5 (see the nsd loader's docstring)"
            )
        return problems

    def summary(self) -> dict[str, Any]:
        import nibabel as nib

        n_samples, n_trials, n_voxels, runs = {}, {}, {}, set()
        for code in self.codes():
            g = self.groups(code)
            sid = subject_id(code)
            n_samples[sid] = len(g)
            n_trials[sid] = len(self.trials(code)[0])
            mask = nib.load(str(self.roi_path(code, self.opt("mask"))))
            n_voxels[sid] = int((np.asanyarray(mask.dataobj) > 0).sum())
            runs |= set(g.values())
        return {
            "n_samples": n_samples,
            "n_trials": n_trials,
            "n_voxels": n_voxels,
            "runs": sorted(runs, key=lambda r: (r != TEST_RUN, r)),
        }

    # ---- stimuli ---------------------------------------------------------------------------
    def manifest(self, modality: str, **options: Any):
        from brainalign.features.stimuli import Manifest, Stimulus

        if modality != "image":
            raise RecipeError(f"nsd: modality {modality!r} is not available; NSD provides 'image'")
        if options:
            raise RecipeError(f"embed.image: unknown option(s) {sorted(options)} for nsd (none are taken)")
        groups: dict[int, str] = {}
        for code in self.codes():
            groups.update(self.groups(code))
        items = [
            Stimulus(stimulus_id=f"nsd-{i:05d}", run=run, tr=int(i), images=[str(self.image_path(i))])
            for i, run in sorted(groups.items(), key=lambda kv: (kv[1] != TEST_RUN, kv[1], kv[0]))
        ]
        spec = {
            "modality": "image",
            "dataset": "nsd",
            "unit": "image (repeats averaged in the responses)",
            "keys": "run = 'test' (shared images) or 'subjNN-foldK'; tr = 73k id",
            "folds": self.opt("folds"),
            "subjects": self.subjects(),
        }
        return Manifest(STIMULUS_SET, "image", items, spec)

    def test_runs(self) -> list[str]:
        return [TEST_RUN]

    def subject_runs(self, subject: str) -> list[str]:
        """The runs of one subject: the shared ``"test"`` run and the subject's own folds
        (``"subjNN-foldK"``), from the design alone (no betas are read). A subject's fits join
        only these runs of the features table, not the images the other subjects saw."""
        code = subject_code(subject)
        own = set(self.groups(code).values()) if int(code[4:]) <= self.design.subjectim.shape[0] else set()
        return sorted(own | {TEST_RUN}, key=lambda r: (r != TEST_RUN, r))

    # ---- responses -------------------------------------------------------------------------
    def _labels(self, code: str, sel: np.ndarray, nib) -> np.ndarray:
        labels = np.full(int(sel.sum()), None, dtype=object)
        for name in self.opt("rois"):
            names = read_ctab(self.ctab_path(code, name))
            codes = np.rint(np.asanyarray(nib.load(str(self.roi_path(code, name))).dataobj)[sel]).astype(
                np.int64
            )
            todo = (labels == None) & (codes > 0)  # noqa: E711 (elementwise on an object array)
            labels[todo] = [names.get(int(c), f"{name}-{c}") for c in codes[todo]]
        labels[labels == None] = "other"  # noqa: E711
        return labels

    def read_subject(self, code: str, progress: Progress | None = None) -> SubjectData:
        """Read, scale, z-score (per session) and average one subject's betas."""
        import nibabel as nib

        from brainalign.encoders import explainable_variance, spearman_brown

        say = progress or (lambda _m: None)
        tps = self.opt("trials_per_session")
        mask_img = nib.load(str(self.roi_path(code, self.opt("mask"))))
        sel = np.asanyarray(mask_img.dataobj).reshape(mask_img.shape[:3]) > 0
        n_vox = int(sel.sum())
        ids, _session = self.trials(code)
        groups = self.groups(code)
        order = sorted(groups, key=lambda i: (groups[i] != TEST_RUN, groups[i], i))
        row_of = {i: r for r, i in enumerate(order)}
        sums = np.zeros((len(order), n_vox), np.float64)
        counts = np.zeros(len(order), np.int64)
        shared_rows: dict[int, list[np.ndarray]] = {}
        for s, path in enumerate(self.sessions(code)):
            say(f"reading {code} session {s + 1} ({path.name})")
            img = nib.load(str(path))
            if img.shape[3] != tps:
                raise RecipeError(
                    f"betas: {path} holds {img.shape[3]} trials, expected trials_per_session = {tps}"
                )
            B = np.asanyarray(img.dataobj)[sel].T.astype(np.float32) / BETAS_SCALE  # (trials, voxels)
            mu, sd = B.mean(0), B.std(0)
            B = np.where(sd > 0, (B - mu) / np.where(sd > 0, sd, 1.0), 0.0).astype(np.float32)
            sess_ids = ids[s * tps : (s + 1) * tps]
            rows = np.array([row_of[int(i)] for i in sess_ids])
            srt = np.argsort(rows, kind="stable")
            uniq, starts = np.unique(rows[srt], return_index=True)
            sums[uniq] += np.add.reduceat(B[srt], starts, axis=0)
            np.add.at(counts, rows, 1)
            for t, i in enumerate(sess_ids.tolist()):
                if groups[i] == TEST_RUN:
                    shared_rows.setdefault(i, []).append(B[t].copy())  # not a view of the session
        Y = (sums / counts[:, None]).astype(np.float32)
        ceiling, meta = None, {"method": "none"}
        if self.opt("ceiling") == "ncsnr":
            ceiling, meta = None, {"method": "ncsnr", "note": "fewer than 3 test images with 2+ repeats"}
            for m in (3, 2):
                imgs = sorted(i for i, reps in shared_rows.items() if len(reps) >= m)
                if len(imgs) >= 3:
                    rep = np.stack([np.stack([shared_rows[i][k] for i in imgs]) for k in range(m)])
                    nc = spearman_brown(explainable_variance(rep), m)
                    ceiling = np.sqrt(np.clip(np.nan_to_num(nc), 0.0, 1.0)).astype(np.float32)
                    meta = {
                        "method": "ncsnr",
                        "repeats": m,
                        "test_images": len(imgs),
                        "formula": "sqrt(clip(spearman_brown(explainable_variance(repeats), n), 0, 1))",
                    }
                    break
        ijk = np.argwhere(sel).astype(np.int32)
        xyz = (ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]).astype(np.float32)
        voxels = {
            "i": ijk[:, 0],
            "j": ijk[:, 1],
            "k": ijk[:, 2],
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "roi": self._labels(code, sel, nib),
        }
        ref = {"format": "nifti", "shape": list(sel.shape), "affine": np.asarray(mask_img.affine).tolist()}
        meta.update(sessions=len(self.sessions(code)), trials=len(ids))
        return SubjectData(
            subject=subject_id(code),
            nsd_ids=np.asarray(order, np.int64),
            runs=[groups[i] for i in order],
            counts=counts,
            Y=Y,
            voxels=voxels,
            reference=ref,
            ceiling=ceiling,
            meta=meta,
        )

    def _mask_counts(self) -> dict[str, int]:
        import nibabel as nib

        return {
            code: int((np.asanyarray(nib.load(str(self.roi_path(code, self.opt("mask")))).dataobj) > 0).sum())
            for code in self.codes()
        }

    def ingest(self, responses: Path, voxels: Path, *, progress: Progress | None = None) -> list[Any]:
        """Write one response per (subject, image) and the voxels of each subject; see the
        module docstring for the preprocessing. Rerunning replaces rows with the same keys."""
        import pyarrow as pa

        from brainalign.features import open_table

        from ...ingest import IngestSummary

        problems = self.check()
        if problems:
            raise RecipeError(problems)
        say = progress or (lambda _m: None)
        responses, voxels = Path(responses), Path(voxels)
        width = max(self._mask_counts().values())
        if responses.exists():
            have = open_table(responses).schema.field("bold").type.list_size
            if have != width:
                raise RecipeError(
                    f"responses: {responses} holds {have:,} voxels per row, these subjects need {width:,} "
                    "(the largest mask); write to a new output folder"
                )
        out = []
        for code in self.codes():
            t0 = time.perf_counter()
            d = self.read_subject(code, say)
            n_vox = d.Y.shape[1]
            Y = np.zeros((len(d.Y), width), np.float32)
            Y[:, :n_vox] = d.Y
            n = len(d.nsd_ids)
            resp = pa.table(
                {
                    "dataset": ["nsd"] * n,
                    "subject": [d.subject] * n,
                    "stimulus_set": [STIMULUS_SET] * n,
                    "run": d.runs,
                    "tr": pa.array(d.nsd_ids.astype(np.int32)),
                    "trial": pa.array([None] * n, pa.int32()),
                    "stimulus_id": [f"nsd-{i:05d}" for i in d.nsd_ids],
                    "onset_s": pa.array([None] * n, pa.float64()),
                    "bold": pa.FixedSizeListArray.from_arrays(pa.array(Y.ravel()), width),
                }
            )
            vtab = pa.table(
                {
                    "dataset": ["nsd"] * n_vox,
                    "subject": [d.subject] * n_vox,
                    "voxel": pa.array(np.arange(n_vox, dtype=np.int32)),
                    "space": [f"{self.opt('resolution')}-{code}"] * n_vox,
                    **{c: pa.array(d.voxels[c]) for c in ("i", "j", "k", "x", "y", "z")},
                    "roi": pa.array(d.voxels["roi"].tolist(), pa.string()),
                }
            )
            preprocessing = {
                "scale": f"betas / {BETAS_SCALE:g} (percent signal change)",
                "zscore": "per voxel within each session",
                "repeats": "averaged per image",
                "padded_voxels": width - n_vox,
            }
            prov = {
                "dataset": "nsd",
                "root": str(self.root),
                "betas": self.opt("betas"),
                "resolution": self.opt("resolution"),
                "mask": self.opt("mask"),
                "preprocessing": preprocessing,
                "folds": self.opt("folds"),
                "keys": "run = 'test' | 'subjNN-foldK'; tr = 73k id",
            }
            say(f"writing {n:,} images x {width:,} voxels of {d.subject}")
            r_ver, v_ver = self._write(responses, voxels, resp, vtab, width, prov, d)
            self._save_ceiling(responses, d, width)
            runs: dict[str, int] = {}
            for r in d.runs:
                runs[f"{d.subject}/{r}"] = runs.get(f"{d.subject}/{r}", 0) + 1
            rois: dict[str, int] = {}
            for r in d.voxels["roi"].tolist():
                rois[r] = rois.get(r, 0) + 1
            out.append(
                IngestSummary(
                    responses_uri=str(responses),
                    voxels_uri=str(voxels),
                    responses_version=r_ver,
                    voxels_version=v_ver,
                    dataset="nsd",
                    subjects=[d.subject],
                    runs=runs,
                    n_voxels=n_vox,
                    tr_s=0.0,
                    space=f"{self.opt('resolution')}-{code}",
                    fmt="nifti",
                    preprocessing=preprocessing,
                    seconds=time.perf_counter() - t0,
                    rois=rois,
                )
            )
        return out

    def _write(self, responses: Path, voxels: Path, resp, vtab, width: int, prov: dict, d: SubjectData):
        """Write one subject's rows: each table in one commit (a new table is built in a temporary
        folder and moved into place), after checking that no stale rows of the subject remain."""
        from brainalign.features import open_table

        from ...ingest import write_brain_tables

        if responses.exists():
            rt = open_table(responses)
            subj = d.subject.replace("'", "''")
            old = rt.to_table(columns=["run", "tr"], filter=f"dataset = 'nsd' AND subject = '{subj}'")
            new = {
                (r, t)
                for r, t in zip(resp.column("run").to_pylist(), resp.column("tr").to_pylist(), strict=True)
            }
            stale = [
                (r, t)
                for r, t in zip(old.column("run").to_pylist(), old.column("tr").to_pylist(), strict=True)
                if (r, t) not in new
            ]
            if stale:
                raise RecipeError(
                    f"responses: {responses} holds {len(stale):,} rows of {d.subject} under other keys "
                    f"(e.g. run {stale[0][0]!r}, tr {stale[0][1]}): the folds or sessions changed; "
                    "write to a new output folder"
                )
        if voxels.exists():
            vt = open_table(voxels)
            if vt.table_kind != "voxels":
                raise RecipeError(f"voxels: {voxels} is a {vt.table_kind} table")
            if vt.count_rows(filter=f"subject = '{d.subject}' AND voxel >= {len(vtab)}"):
                raise RecipeError(
                    f"voxels: {voxels} holds more voxels of {d.subject} than its mask now selects "
                    f"({len(vtab):,}): the mask changed; write to a new output folder"
                )
        return write_brain_tables(
            responses,
            resp,
            voxels,
            vtab,
            n_voxels=width,
            provenance=prov,
            voxels_provenance={"dataset": "nsd", "space": prov["resolution"], "reference": d.reference},
        )

    # ---- ceiling ---------------------------------------------------------------------------
    @staticmethod
    def ceiling_path(responses: Path, subject: str) -> Path:
        return Path(responses).parent / "nsd_ceiling" / f"{subject}.npz"

    def _save_ceiling(self, responses: Path, d: SubjectData, width: int) -> None:
        path = self.ceiling_path(responses, d.subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = np.full(width, np.nan, np.float32)
        if d.ceiling is not None:
            c[: len(d.ceiling)] = d.ceiling
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ceiling=c, n_voxels=len(d.Y[0]), meta=json.dumps(d.meta))
        os.replace(tmp, path)

    def ceiling(self, responses: Path, subject: str) -> np.ndarray | None:
        """Per-voxel NSD noise ceiling in r units (NaN for padded columns); None with ``ceiling = "none"``."""
        from brainalign.features import open_table

        if self.opt("ceiling") == "none":
            return None
        path = self.ceiling_path(responses, subject)
        width = open_table(responses).schema.field("bold").type.list_size
        if not path.exists():  # ingested elsewhere: recompute from the betas
            d = self.read_subject(subject_code(subject))
            self._save_ceiling(responses, d, width)
        with np.load(path) as z:
            c = z["ceiling"]
        if not np.isfinite(c).any():
            return None
        out = np.full(width, np.nan, np.float32)
        out[: min(width, len(c))] = c[:width]
        return out

    def ceiling_meta(self, responses: Path, subject: str) -> dict:
        path = self.ceiling_path(responses, subject)
        if not path.exists():
            return {}
        with np.load(path) as z:
            c = z["ceiling"]
            meta = json.loads(str(z["meta"]))
            n = int(z["n_voxels"])
        return {**meta, "n_voxels": n, "median_ceiling": float(np.nanmedian(c[:n])) if n else None}

    # ---- report ----------------------------------------------------------------------------
    def report(self, ctx: Any, out: Path) -> ReportPart:
        """NSD tables and figures: the data per subject (images, voxels, ceiling), each
        instruction's score in visual vs language ROIs at its best layer, and per-subject brain
        maps of each model's best instruction (native grids differ between subjects)."""
        from ...query import run_query
        from ...report import write_brain_map

        part = ReportPart()
        tables = {k: v for k, v in ctx.tables.items() if Path(v).exists()}
        if "scores" not in tables or "voxels" not in tables:
            part.notes.append("no scores or voxels table; the NSD tables are skipped")
            return part

        def q(sql: str) -> list[dict]:
            return run_query(sql, ctx.dir, tables=tables).to_pylist()

        def lit(v: str) -> str:
            return "'" + str(v).replace("'", "''") + "'"

        fit, metric = lit(ctx.fit), ctx.metric
        agg = "median" if ctx.recipe.report.get("aggregate", "mean") == "median" else "avg"
        min_ceiling = float(ctx.recipe.fit.get("min_ceiling", 0.0))

        # data per subject
        runs = q(
            "SELECT subject, run, count(*) AS n FROM responses WHERE dataset = 'nsd' GROUP BY ALL ORDER BY ALL"
        )
        for subject in ctx.subjects:
            rows = [r for r in runs if r["subject"] == subject]
            meta = self.ceiling_meta(ctx.tables["responses"], subject)
            ceil = self.ceiling(ctx.tables["responses"], subject) if meta else None
            part.tables.setdefault("NSD data per subject", []).append(
                {
                    "subject": subject,
                    "sessions": meta.get("sessions"),
                    "trials": meta.get("trials"),
                    "test images": sum(r["n"] for r in rows if r["run"] == TEST_RUN),
                    "train images": sum(r["n"] for r in rows if r["run"] != TEST_RUN),
                    "folds": len([r for r in rows if r["run"] != TEST_RUN]),
                    "voxels": meta.get("n_voxels"),
                    "ceiling repeats": meta.get("repeats"),
                    "median ceiling (r)": meta.get("median_ceiling"),
                    f"voxels with ceiling >= {min_ceiling:g}": None
                    if ceil is None
                    else int(np.sum(np.isfinite(normalize(1.0, ceil, min_ceiling=min_ceiling)))),
                }
            )

        # visual vs language ROIs at each instruction's best layer
        lang = ", ".join(lit(x) for x in self.opt("language_rois")) or "NULL"
        groups = {m.name: m.group for m in ctx.models}
        best = q(
            f"""WITH per AS (SELECT s.subject, s.model, s.instruction_id, s.layer, {agg}(s.{metric}) AS score
                             FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
                             WHERE s.fit = {fit} GROUP BY ALL),
                    a AS (SELECT model, instruction_id, layer, avg(score) AS score FROM per GROUP BY ALL)
                SELECT model, instruction_id, arg_max(layer, score) AS layer, max(score) AS score
                FROM a GROUP BY ALL ORDER BY model, score DESC"""
        )
        kinds = q(
            f"""WITH k AS (SELECT subject, voxel, CASE WHEN roi IN ({lang}) THEN 'language'
                                  WHEN roi IS NULL OR roi = 'other' THEN NULL ELSE 'visual' END AS kind
                           FROM voxels),
                    per AS (SELECT s.subject, s.model, s.instruction_id, s.layer, k.kind,
                                   {agg}(s.{metric}) AS score, count(*) AS n
                            FROM scores s JOIN k ON k.voxel = s.voxel AND k.subject = s.subject
                            WHERE s.fit = {fit} AND k.kind IS NOT NULL GROUP BY ALL)
                SELECT model, instruction_id, layer, kind, avg(score) AS score, sum(n) AS n FROM per GROUP BY ALL"""
        )
        lookup = {(r["model"], r["instruction_id"], r["layer"], r["kind"]): r["score"] for r in kinds}
        rows = []
        for b in best:
            vis = lookup.get((b["model"], b["instruction_id"], b["layer"], "visual"))
            lan = lookup.get((b["model"], b["instruction_id"], b["layer"], "language"))
            rows.append(
                {
                    "model": b["model"],
                    "group": groups.get(b["model"], ""),
                    "instruction_id": b["instruction_id"],
                    "best_layer": b["layer"],
                    "whole": b["score"],
                    "visual": vis,
                    "language": lan,
                }
            )
        part.tables["visual and language ROIs"] = rows
        if rows:
            part.figures["visual and language ROIs"] = _plot_roi_kinds(
                rows, out / "nsd_visual_language.png"
            ).name
        part.notes.append(
            "language ROIs = "
            + ", ".join(self.opt("language_rois"))
            + "; visual ROIs = the other labels of "
            + ", ".join(self.opt("rois"))
            + "; scores at each instruction's best layer over all labelled voxels"
        )

        # brain maps per subject: each model's best instruction at its best layer
        if self.opt("ceiling") == "ncsnr" and metric == "r":
            part.notes.append("no voxel passed the ceiling threshold; scores are raw Pearson r")
        for model in dict.fromkeys(b["model"] for b in best):
            top = next(b for b in best if b["model"] == model)
            for subject in ctx.subjects:
                vox = run_query(
                    f"SELECT * FROM voxels WHERE subject = {lit(subject)} ORDER BY voxel",
                    ctx.dir,
                    tables=tables,
                )
                vals = q(
                    f"""SELECT voxel, {metric} AS v FROM scores WHERE fit = {fit} AND subject = {lit(subject)}
                        AND model = {lit(model)} AND instruction_id = {lit(top["instruction_id"])}
                        AND layer = {int(top["layer"])} AND voxel < {len(vox)}"""
                )
                arr = np.full(len(vox), np.nan, np.float32)
                for r in vals:
                    arr[r["voxel"]] = np.nan if r["v"] is None else r["v"]
                mask = self._mask_image(subject_code(subject))
                ref = {
                    "format": "nifti",
                    "shape": list(mask.shape[:3]),
                    "affine": np.asarray(mask.affine).tolist(),
                }
                stem = out / re.sub(r"[^\w.-]", "_", f"nsd_map_{subject}_{model}_{top['instruction_id']}")
                title = f"{subject} {model}: {top['instruction_id']}, layer {top['layer']} ({metric})"
                files = write_brain_map(arr, vox, ref, stem, title=title)
                png = next(f for f in files if f.suffix == ".png")
                part.figures[f"map {subject} {model} {top['instruction_id']}"] = png.name
        return part

    def _mask_image(self, code: str):
        import nibabel as nib

        return nib.load(str(self.roi_path(code, self.opt("mask"))))


def _plot_roi_kinds(rows: list[dict], path: Path) -> Path:
    """One panel per model: each instruction's score in visual and language ROIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(max(4.0, 3.2 * len(models)), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        x = np.arange(len(mine))
        for k, kind in enumerate(("visual", "language")):
            vals = [np.nan if r[kind] is None else r[kind] for r in mine]
            ax.bar(x + (k - 0.5) * 0.4, vals, 0.4, label=kind)
        ax.set_xticks(x, [r["instruction_id"] for r in mine], rotation=40, ha="right", fontsize=7)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(model, fontsize=9)
    axes[0][0].set_ylabel("score at best layer")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
