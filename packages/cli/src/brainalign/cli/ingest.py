"""Bring fMRI into brainalign: a responses table (BOLD per TR) plus a voxels table.

Readers (all through nibabel, except plain matrices):

* 4D NIfTI ``(x, y, z, t)`` with a brain or ROI ``mask`` (3D, same grid and affine), ROI labels
  from a NIfTI ``atlas`` (integer labels, names from an optional ``index<TAB>name`` TSV);
* CIFTI-2 dense time series (``.dtseries.nii``), grayordinates in file order, ROI labels from a
  CIFTI-2 ``.dlabel.nii`` over the same brain models;
* GIFTI functional files (``.func.gii``), one per hemisphere, left then right, ROI labels from
  GIFTI label files (``.label.gii``) of the same hemisphere;
* ``.npy`` and HDF5 (``.h5``/``.hdf5``, extra ``hdf5``: h5py) matrices ``(n_trs, n_voxels)``
  with an optional TR table (CSV/TSV with columns ``run`` and/or ``tr``) that splits the rows
  into runs. An HDF5 file's matrix is its only 2-D dataset, or the one named ``bold`` or
  ``data``; ``file.h5:/group/name`` names another.

Every input is read and checked before anything is written; new tables are written into a
temporary directory next to the destination and moved into place, and rows for existing
tables go in as one Lance commit per table, so a failed ingest leaves nothing partial.

Preprocessing, applied per run in this order and recorded in the tables' provenance:
confound regression (columns of the BIDS confounds TSV), polynomial detrending
(``detrend`` = order; 0 removes the mean), trimming of ``trim_start``/``trim_end`` TRs (TR
numbers are kept, so responses still join features by (stimulus_set, run, tr)), z-scoring.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from brainalign.features import create_table, open_table

from .progress import tick

BOLD_SUFFIXES = (".dtseries.nii", ".func.gii", ".nii.gz", ".nii", ".npy", ".h5", ".hdf5")
_ENTITY = re.compile(r"(?:^|_)(sub|ses|task|acq|run|space|hemi|desc)-([A-Za-z0-9]+)")


class IngestError(ValueError):
    """An input cannot be ingested; the message names the argument and the file."""


@dataclass
class RunInput:
    """One run to ingest: its BOLD file(s) and where it came from.

    ``paths`` holds one file, or two GIFTI files (left then right hemisphere).
    """

    paths: list[Path]
    run: str
    subject: str | None = None
    task: str | None = None
    space: str | None = None
    events: Path | None = None
    confounds: Path | None = None
    sidecar: Path | None = None


@dataclass
class Brain:
    """One run read from disk: ``Y (n_trs, n_voxels)`` plus the voxel descriptions."""

    Y: np.ndarray
    tr_s: float | None
    voxels: dict[str, np.ndarray]
    reference: dict
    fmt: str


@dataclass
class IngestSummary:
    responses_uri: str
    voxels_uri: str
    responses_version: int
    voxels_version: int
    dataset: str
    subjects: list[str]
    runs: dict[str, int]
    n_voxels: int
    tr_s: float
    space: str
    fmt: str
    preprocessing: dict
    dropped_voxels: int = 0
    seconds: float = 0.0
    rois: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# discovery
def entities(path: str | Path) -> dict[str, str]:
    """BIDS entities in a file name, e.g. ``{'sub': '01', 'task': 'movie', 'run': '2'}``."""
    return dict(_ENTITY.findall(Path(path).name))


def _stem(path: Path) -> str:
    name = path.name
    for suf in BOLD_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _hemi(path: Path) -> str | None:
    ent = entities(path).get("hemi")
    if ent:
        return ent.upper()[0]
    name = path.name.lower()
    if name.startswith("lh.") or ".l." in name or "_lh" in name or "left" in name:
        return "L"
    if name.startswith("rh.") or ".r." in name or "_rh" in name or "right" in name:
        return "R"
    return None


def discover_bids(
    root: str | Path,
    *,
    subject: str | None = None,
    task: str | None = None,
    space: str | None = None,
) -> list[RunInput]:
    """Find ``sub-*/[ses-*/]func/*_task-*_run-*_bold.*`` runs under a BIDS(-derivatives) tree.

    Events (``*_events.tsv``) and confounds (``*_desc-confounds_timeseries.tsv`` or
    ``*_confounds.tsv``) of the same subject, task and run are attached. GIFTI hemispheres of
    one run become one input (left, right).
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"bids: {root} is not a directory")
    found: dict[tuple, RunInput] = {}
    for path in sorted(root.glob("sub-*/**/func/*_bold.*")):
        if not any(path.name.endswith(s) for s in BOLD_SUFFIXES):
            continue
        ent = entities(path)
        if "task" not in ent:
            continue
        if subject and ent.get("sub") != subject.removeprefix("sub-"):
            continue
        if task and ent["task"] != task:
            continue
        if space and "space" in ent and ent["space"] != space:
            continue
        run = ent.get("run", "1").lstrip("0") or "0"
        key = (ent.get("sub"), ent.get("ses"), ent["task"], run, ent.get("space"))
        ri = found.get(key)
        if ri is None:
            prefix = "_".join(f"{k}-{ent[k]}" for k in ("sub", "ses", "task", "acq", "run") if k in ent)
            func = path.parent
            ev = sorted(func.glob(f"{prefix}*_events.tsv")) or sorted(
                (root / f"sub-{ent['sub']}").glob(f"**/func/{prefix}*_events.tsv")
            )
            conf = sorted(func.glob(f"{prefix}*_desc-confounds_timeseries.tsv")) or sorted(
                func.glob(f"{prefix}*_confounds.tsv")
            )
            side = func / (_stem(path) + ".json")
            ri = RunInput(
                paths=[],
                run=(f"{ent['ses']}-{run}" if "ses" in ent else run),
                subject=f"sub-{ent.get('sub')}",
                task=ent["task"],
                space=ent.get("space"),
                events=ev[0] if ev else None,
                confounds=conf[0] if conf else None,
                sidecar=side if side.exists() else None,
            )
            found[key] = ri
        ri.paths.append(path)
    runs = list(found.values())
    for ri in runs:
        if len(ri.paths) > 1:
            ri.paths.sort(key=lambda p: {"L": 0, "R": 1}.get(_hemi(p) or "", 2))
    if not runs:
        raise IngestError(
            f"bids: no sub-*/func/*_task-*_run-*_bold.* files under {root}"
            + (f" for subject={subject!r}" if subject else "")
            + (f" task={task!r}" if task else "")
        )
    return runs


def explicit_runs(paths: Sequence[str | Path], runs: Sequence[str] | None = None) -> list[RunInput]:
    """Runs from an explicit list of files. ``runs`` labels each file (default: the BIDS
    ``run-`` entity in its name, else 1, 2, ...); files sharing a label are the two GIFTI
    hemispheres of one run."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise IngestError("bold: no input files given (pass files, or --bids DIR)")
    if runs and len(runs) != len(paths):
        raise IngestError(f"run: got {len(runs)} run label(s) for {len(paths)} file(s); give one per file")
    labels = (
        list(runs)
        if runs
        else [(entities(p).get("run", "").lstrip("0") or str(i + 1)) for i, p in enumerate(paths)]
    )
    grouped: dict[str, RunInput] = {}
    for p, lab in zip(paths, labels, strict=True):
        ent = entities(p)
        ri = grouped.setdefault(
            lab,
            RunInput(
                paths=[],
                run=str(lab),
                task=ent.get("task"),
                space=ent.get("space"),
                subject=f"sub-{ent['sub']}" if "sub" in ent else None,
            ),
        )
        ri.paths.append(p)
    for ri in grouped.values():
        if len(ri.paths) > 2 or (len(ri.paths) == 2 and not all(p.name.endswith(".gii") for p in ri.paths)):
            raise IngestError(
                f"run: run {ri.run!r} has files {[str(p) for p in ri.paths]}; only the two GIFTI "
                "hemispheres of a run may share a run label"
            )
        if len(ri.paths) == 2:
            ri.paths.sort(key=lambda p: {"L": 0, "R": 1}.get(_hemi(p) or "", 2))
    return list(grouped.values())


# ---------------------------------------------------------------------------------------------
# readers
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _load(arg: str, path: Path):
    import nibabel as nib

    if not path.exists():
        raise IngestError(f"{arg}: no such file {path}")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise IngestError(f"{arg}: cannot read {path}: {_one_line(exc)}") from None


def _data(arg: str, path: Path, getter):
    try:
        return getter()
    except Exception as exc:  # truncated or corrupt data blocks (EOFError, zlib.error, OSError, ...)
        raise IngestError(
            f"{arg}: cannot read the data of {path} (truncated or corrupt?): {_one_line(exc)}"
        ) from None


def _read_label_tsv(path: Path) -> dict[int, str]:
    out = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh, delimiter="\t" if path.suffix != ".csv" else ","):
            if len(row) >= 2 and row[0].strip().lstrip("-").isdigit():
                out[int(row[0])] = row[1].strip()
    if not out:
        raise IngestError(f"atlas_labels: {path} has no 'index<TAB>name' rows")
    return out


def _nifti_tr(img) -> float | None:
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3]:
        return None
    _, tunit = img.header.get_xyzt_units()
    tr = float(zooms[3])
    # headers written with msec units, or with "sec" but a value only milliseconds make sense of
    if tunit == "msec" or tr > 100:
        tr /= 1000.0
    elif tunit == "usec":
        tr /= 1e6
    return tr


def read_nifti(
    path: Path, *, mask: Path | None, atlas: Path | None = None, atlas_labels: Path | None = None
) -> Brain:
    """A 4D NIfTI inside ``mask`` (or inside ``atlas > 0`` when no mask is given)."""
    img = _load("bold", path)
    if len(img.shape) != 4:
        raise IngestError(
            f"bold: expected a 4D NIfTI (x, y, z, time), got {len(img.shape)}D shape "
            f"{tuple(img.shape)} in {path}"
        )
    shape3 = tuple(img.shape[:3])
    if mask is None and atlas is None:
        raise IngestError(
            f"mask: a 4D NIfTI needs a brain or ROI mask (--mask) or an atlas (--atlas) for {path}"
        )

    def grid(arg, p):
        m = _load(arg, p)
        if tuple(m.shape[:3]) != shape3 or (len(m.shape) > 3 and any(s != 1 for s in m.shape[3:])):
            raise IngestError(f"{arg}: {p} has shape {tuple(m.shape)}, expected the BOLD grid {shape3}")
        if not np.allclose(m.affine, img.affine, atol=1e-3):
            raise IngestError(
                f"{arg}: the affine of {p} does not match the BOLD affine of {path} "
                f"(max difference {np.abs(m.affine - img.affine).max():.3g}); resample it to the BOLD grid"
            )
        return np.asanyarray(_data(arg, p, lambda: m.get_fdata(dtype=np.float32))).reshape(shape3)

    lab = grid("atlas", atlas) if atlas is not None else None
    sel = grid("mask", mask) > 0 if mask is not None else lab > 0
    if not sel.any():
        raise IngestError(f"mask: {mask or atlas} selects no voxels")
    data = _data("bold", path, lambda: np.asanyarray(img.dataobj))
    Y = np.ascontiguousarray(data[sel].T, dtype=np.float32)  # (n_trs, n_voxels)
    ijk = np.argwhere(sel).astype(np.int32)
    xyz = (ijk @ img.affine[:3, :3].T + img.affine[:3, 3]).astype(np.float32)
    vox = {"i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if lab is not None:
        names = _read_label_tsv(atlas_labels) if atlas_labels else {}
        codes = np.rint(lab[sel]).astype(np.int64)
        vox["roi"] = np.array(
            [None if c == 0 else names.get(int(c), f"label-{c}") for c in codes], dtype=object
        )
    ref = {"format": "nifti", "shape": list(shape3), "affine": np.asarray(img.affine).tolist()}
    return Brain(Y, _nifti_tr(img), vox, ref, "nifti")


def _structure_hemi(name: str) -> str | None:
    if name.endswith("_LEFT"):
        return "L"
    if name.endswith("_RIGHT"):
        return "R"
    return None


def read_cifti(path: Path, *, dlabel: Path | None = None) -> Brain:
    """A CIFTI-2 dense time series (series x brain models)."""
    import nibabel as nib

    img = _load("bold", path)
    if not isinstance(img, nib.Cifti2Image):
        raise IngestError(f"bold: {path} is not a CIFTI-2 file")
    ax0, ax1 = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(ax0, nib.cifti2.SeriesAxis) or not isinstance(ax1, nib.cifti2.BrainModelAxis):
        raise IngestError(
            f"bold: {path} is a CIFTI-2 {type(ax0).__name__} x {type(ax1).__name__} file, "
            "expected a dense time series (.dtseries.nii: SeriesAxis x BrainModelAxis)"
        )
    Y = np.ascontiguousarray(_data("bold", path, lambda: img.get_fdata(dtype=np.float32)))
    n = len(ax1)
    vertex = np.where(ax1.surface_mask, ax1.vertex, -1).astype(np.int64)
    vox_ijk = np.where(ax1.volume_mask[:, None], ax1.voxel, -1).astype(np.int64)
    hemi = np.array([_structure_hemi(s) for s in ax1.name], dtype=object)
    vox = {"vertex": np.where(vertex >= 0, vertex, 0).astype(np.int32), "hemi": hemi}
    vox["_vertex_valid"] = ax1.surface_mask
    vox["_ijk_valid"] = ax1.volume_mask
    vox["i"], vox["j"], vox["k"] = (vox_ijk[:, c].astype(np.int32) for c in range(3))
    if ax1.affine is not None and ax1.volume_mask.any():
        xyz = vox_ijk @ ax1.affine[:3, :3].T + ax1.affine[:3, 3]
        vox["x"], vox["y"], vox["z"] = (xyz[:, c].astype(np.float32) for c in range(3))
        vox["_xyz_valid"] = ax1.volume_mask
    if dlabel is not None:
        lab = _load("labels", dlabel)
        if not isinstance(lab, nib.Cifti2Image) or not isinstance(
            lab.header.get_axis(0), nib.cifti2.LabelAxis
        ):
            raise IngestError(f"labels: {dlabel} is not a CIFTI-2 dense label file (.dlabel.nii)")
        lax1 = lab.header.get_axis(1)
        if lax1 != ax1:
            raise IngestError(f"labels: the brain models of {dlabel} do not match those of {path}")
        table = lab.header.get_axis(0).label[0]
        codes = np.rint(_data("labels", dlabel, lambda: lab.get_fdata())[0]).astype(np.int64)
        vox["roi"] = np.array(
            [None if c == 0 else table.get(int(c), (f"label-{c}",))[0] for c in codes], dtype=object
        )
    # contiguous blocks of one structure: enough to rebuild the brain model axis for maps
    blocks = [
        [str(name), int(sl.start or 0), int((sl.stop if sl.stop is not None else n) - (sl.start or 0))]
        for name, sl, _ in ax1.iter_structures()
    ]
    ref = {
        "format": "cifti",
        "structures": blocks,
        "nvertices": {k: int(v) for k, v in ax1.nvertices.items()},
        "affine": None if ax1.affine is None else np.asarray(ax1.affine).tolist(),
        "volume_shape": None if ax1.volume_shape is None else list(ax1.volume_shape),
    }
    tr = float(ax0.step) * {"SECOND": 1.0, "MILLISECOND": 1e-3}.get(
        getattr(ax0, "unit", "SECOND").upper(), 1.0
    )
    return Brain(Y.astype(np.float32), tr if tr > 0 else None, vox, ref, "cifti")


def _gifti_tr(img) -> float | None:
    meta = dict(img.meta) if img.meta is not None else {}
    for key in ("TimeStep", "RepetitionTime"):
        if key in meta:
            v = float(meta[key])
            return v / 1000.0 if v > 100 or key == "TimeStep" else v
    return None


def read_gifti(paths: Sequence[Path], *, labels: Sequence[Path] = ()) -> Brain:
    """GIFTI functional files, one per hemisphere (left first)."""
    import nibabel as nib

    Ys, vertex, hemi, roi, nverts, trs = [], [], [], [], {}, set()
    lab_by_hemi = {}
    for lp in labels:
        h = _hemi(lp)
        lab_by_hemi[h or ("L" if not lab_by_hemi else "R")] = lp
    for n, p in enumerate(paths):
        img = _load("bold", p)
        if not isinstance(img, nib.GiftiImage):
            raise IngestError(f"bold: {p} is not a GIFTI file")
        arrays = _data("bold", p, lambda img=img: [da.data for da in img.darrays])
        if not arrays:
            raise IngestError(f"bold: {p} holds no data arrays")
        if len(arrays) == 1 and arrays[0].ndim == 2:
            y = arrays[0].T if arrays[0].shape[0] != 1 else arrays[0]
        else:
            if any(a.ndim != 1 and a.shape[-1] != 1 for a in arrays):
                raise IngestError(f"bold: {p} is not a functional GIFTI (one data array per time point)")
            y = np.stack([a.reshape(-1) for a in arrays])
        h = _hemi(p) or ("L" if n == 0 else "R")
        Ys.append(np.asarray(y, dtype=np.float32))
        nv = y.shape[1]
        nverts[h] = nv
        vertex.append(np.arange(nv, dtype=np.int32))
        hemi += [h] * nv
        t = _gifti_tr(img)
        if t:
            trs.add(round(t, 6))
        if lab_by_hemi:
            lp = lab_by_hemi.get(h)
            if lp is None:
                raise IngestError(
                    f"labels: no GIFTI label file for hemisphere {h} (got {[str(x) for x in labels]})"
                )
            limg = _load("labels", lp)
            codes = _data("labels", lp, lambda limg=limg: limg.darrays[0].data).reshape(-1)
            if codes.shape[0] != nv:
                raise IngestError(f"labels: {lp} labels {codes.shape[0]} vertices, {p} has {nv}")
            names = limg.labeltable.get_labels_as_dict()
            roi += [None if int(c) == 0 else names.get(int(c), f"label-{c}") or f"label-{c}" for c in codes]
    if len({y.shape[0] for y in Ys}) > 1:
        raise IngestError(
            f"bold: the hemispheres {[str(p) for p in paths]} have different numbers of TRs "
            f"{[y.shape[0] for y in Ys]}"
        )
    vox = {"vertex": np.concatenate(vertex), "hemi": np.array(hemi, dtype=object)}
    if lab_by_hemi:
        vox["roi"] = np.array(roi, dtype=object)
    ref = {"format": "gifti", "nvertices": nverts}
    return Brain(np.hstack(Ys), trs.pop() if len(trs) == 1 else None, vox, ref, "gifti")


def read_tr_table(path: Path) -> dict[str, np.ndarray]:
    """A CSV/TSV with one row per TR and columns among ``run``, ``tr``, ``onset_s``."""
    if not path.exists():
        raise IngestError(f"tr_table: no such file {path}")
    delim = "," if path.suffix == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    if not rows or not ({"run", "tr", "onset_s"} & set(rows[0])):
        raise IngestError(f"tr_table: {path} needs a header with columns among run, tr, onset_s")
    out = {}
    for c in ("run", "tr", "onset_s"):
        if c in rows[0]:
            vals = [r[c] for r in rows]
            out[c] = np.array(vals, dtype=object) if c == "run" else np.array(vals, dtype=np.float64)
    return out


def _is_h5(path: Path) -> bool:
    """An HDF5 file, or ``file.h5:/dataset`` (a dataset inside one)."""
    return re.search(r"\.(h5|hdf5)(:|$)", str(path)) is not None


def _read_h5(path: Path) -> np.ndarray:
    """The response matrix of an HDF5 file: ``file.h5:/name`` names the dataset, else the only
    2-D dataset, or the one called ``bold`` or ``data``."""
    text = str(path)
    name = None
    for ext in (".h5:", ".hdf5:"):
        if ext in text:
            head, _, name = text.partition(ext)
            path = Path(head + ext[:-1])
    try:
        import h5py
    except ImportError:
        raise IngestError(
            f"bold: {path}: HDF5 input needs h5py (pip install 'brainalign-cli[hdf5]'), "
            "or save the matrix with numpy.save as .npy"
        ) from None
    if not path.exists():
        raise IngestError(f"bold: no such file {path}")
    try:
        with h5py.File(path, "r") as f:
            found: dict[str, tuple] = {}
            f.visititems(lambda k, v: found.__setitem__(k, v.shape) if isinstance(v, h5py.Dataset) else None)
            if name is None:
                two_d = [k for k, shp in found.items() if len(shp) == 2]
                named = [k for k in two_d if k.rsplit("/", 1)[-1] in ("bold", "data")]
                pick = two_d if len(two_d) == 1 else named
                if len(pick) != 1:
                    raise IngestError(
                        f"bold: {path} holds the datasets {found}; name the response matrix as {path}:/NAME"
                    )
                name = pick[0]
            key = name.lstrip("/")
            if key not in found:
                raise IngestError(f"bold: {path} has no dataset {name!r}; it holds {sorted(found)}")
            return np.asarray(f[key][()])
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(
            f"bold: cannot read {path} (truncated or not an HDF5 file?): {_one_line(exc)}"
        ) from None


def read_matrix(path: Path) -> Brain:
    """A ``.npy`` or HDF5 matrix ``(n_trs, n_voxels)`` (see :func:`_read_h5` for HDF5)."""
    if _is_h5(path):
        Y = _read_h5(path)
    else:
        if not path.exists():
            raise IngestError(f"bold: no such file {path}")
        try:
            Y = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise IngestError(
                f"bold: cannot read {path} (truncated or not a .npy file?): {_one_line(exc)}"
            ) from None
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise IngestError(f"bold: expected a (n_trs, n_voxels) matrix in {path}, got shape {Y.shape}")
    n = Y.shape[1]
    return Brain(np.asarray(Y, dtype=np.float32), None, {}, {"format": "matrix", "n_voxels": n}, "matrix")


def read_run(ri: RunInput, *, mask=None, atlas=None, atlas_labels=None, labels=()) -> Brain:
    p = ri.paths[0]
    name = p.name
    if name.endswith(".dtseries.nii"):
        return read_cifti(p, dlabel=labels[0] if labels else None)
    if name.endswith(".gii"):
        return read_gifti(ri.paths, labels=labels)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = _load("bold", p)
        if isinstance(img, nib.Cifti2Image):
            return read_cifti(p, dlabel=labels[0] if labels else None)
        return read_nifti(p, mask=mask, atlas=atlas, atlas_labels=atlas_labels)
    if name.endswith(".npy") or _is_h5(p):
        return read_matrix(p)
    raise IngestError(
        f"bold: unsupported file type {p} (expected .nii[.gz], .dtseries.nii, .func.gii, .npy, .h5)"
    )


# ---------------------------------------------------------------------------------------------
# preprocessing
def detrend(Y: np.ndarray, order: int) -> np.ndarray:
    """Remove a polynomial of ``order`` in time (Legendre basis on [-1, 1]) from each column."""
    n = Y.shape[0]
    t = np.linspace(-1, 1, n)
    B = np.polynomial.legendre.legvander(t, order)
    coef, *_ = np.linalg.lstsq(B, Y.astype(np.float64), rcond=None)
    return (Y - B @ coef).astype(np.float32)


def regress_out(Y: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Residuals of ``Y (n, v)`` after least squares on ``C (n, c)`` plus an intercept."""
    B = np.column_stack([np.ones(len(C)), np.nan_to_num(C)])
    coef, *_ = np.linalg.lstsq(B, Y.astype(np.float64), rcond=None)
    return (Y - B @ coef).astype(np.float32)


def zscore(Y: np.ndarray) -> np.ndarray:
    mu, sd = Y.mean(0), Y.std(0)
    return np.where(sd > 0, (Y - mu) / np.where(sd > 0, sd, 1.0), 0.0).astype(np.float32)


def _read_confounds(path: Path, columns: Sequence[str], n: int) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise IngestError(f"confounds: columns {missing} are not in {path}")
    if len(rows) != n:
        raise IngestError(f"confounds: {path} has {len(rows)} rows, the BOLD run has {n} TRs")
    return np.array(
        [[float(r[c]) if r[c] not in ("", "n/a", "NaN") else np.nan for c in columns] for r in rows]
    )


# ---------------------------------------------------------------------------------------------
def _atomic_new_table(uri: Path, kind: str, **kw):
    """Create a table in a temporary directory beside ``uri``; return (table, tmp path)."""
    uri.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{uri.name}.", suffix=".tmp", dir=uri.parent))
    return create_table(tmp / uri.name, kind, **kw), tmp


def check_brain_tables(
    responses_uri: str | Path,
    voxels_uri: str | Path,
    n_voxels: int,
    *,
    rows: str = "these inputs",
    hint: str = "; write them to another table",
    error: type[Exception] = IngestError,
) -> None:
    """Refuse existing tables that cannot take rows of ``n_voxels`` voxels: a responses table of
    another kind or width (the message names the width of ``rows`` and ends with ``hint``), or a
    voxels table of another kind. Tables that do not exist yet pass."""
    r_uri, v_uri = Path(responses_uri), Path(voxels_uri)
    if r_uri.exists():
        rt = open_table(r_uri)
        if rt.table_kind != "responses":
            raise error(f"responses: {r_uri} is a {rt.table_kind} table")
        have = rt.schema.field("bold").type.list_size
        if have != n_voxels:
            raise error(f"responses: {r_uri} holds {have:,} voxels per row, {rows} {n_voxels:,}{hint}")
    if v_uri.exists():
        kind = open_table(v_uri).table_kind
        if kind != "voxels":
            raise error(f"voxels: {v_uri} is a {kind} table")


def write_brain_tables(
    responses_uri: str | Path,
    responses_rows: pa.Table,
    voxels_uri: str | Path,
    voxels_rows: pa.Table,
    *,
    n_voxels: int,
    provenance: dict,
    voxels_provenance: dict,
) -> tuple[int, int]:
    """Write rows into a responses table and its voxels table, one commit each; return the new
    versions ``(responses, voxels)``.

    A table that does not exist yet is created (``n_voxels`` and ``provenance`` for the
    responses table, ``voxels_provenance`` for the voxels table) in a temporary directory beside
    its destination and moved into place only after both writes succeeded, so a failed write
    leaves no partial new table; an existing table gets one :meth:`write` (rows with the same
    keys are replaced). The temporary directories are removed in every case.
    """
    r_uri, v_uri = Path(responses_uri), Path(voxels_uri)
    pending: list[tuple[Path, Path]] = []
    try:
        if r_uri.exists():
            rt = open_table(r_uri)
        else:
            rt, tmp = _atomic_new_table(r_uri, "responses", n_voxels=n_voxels, provenance=provenance)
            pending.append((tmp, r_uri))
        if v_uri.exists():
            vt = open_table(v_uri)
        else:
            vt, tmp = _atomic_new_table(v_uri, "voxels", provenance=voxels_provenance)
            pending.append((tmp, v_uri))
        v_version = vt.write(voxels_rows)
        r_version = rt.write(responses_rows)
        for tmp, dest in pending:
            os.replace(tmp / dest.name, dest)
            shutil.rmtree(tmp, ignore_errors=True)
        pending.clear()
    finally:
        for tmp, _ in pending:
            shutil.rmtree(tmp, ignore_errors=True)
    return r_version, v_version


def ingest_responses(
    inputs: Sequence[RunInput],
    *,
    responses: str | Path,
    voxels: str | Path,
    dataset: str,
    subject: str | None = None,
    stimulus_set: str | None = None,
    tr: float | None = None,
    space: str | None = None,
    mask: str | Path | None = None,
    atlas: str | Path | None = None,
    atlas_labels: str | Path | None = None,
    labels: Sequence[str | Path] = (),
    tr_table: str | Path | None = None,
    detrend_order: int | None = None,
    zscore_runs: bool = False,
    trim_start: int = 0,
    trim_end: int = 0,
    confounds: Sequence[str] = (),
    drop_bad_voxels: bool = False,
    progress: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Read every run, check them, preprocess, and write responses + voxels tables.

    Parameters
    ----------
    inputs : runs from :func:`discover_bids` or :func:`explicit_runs`.
    responses, voxels : table locations (created if missing, else rows are added/replaced).
    dataset : dataset name stored in every row. ``subject`` overrides the BIDS subject.
    stimulus_set : the stimuli the runs were recorded with (default: the BIDS task); features
        join responses on (stimulus_set, run, tr).
    tr : repetition time in seconds; overrides the file headers (required when none has it).
    tr_table : for one ``.npy`` input, a table with one row per TR giving its ``run`` (and
        ``tr``), which splits the matrix into runs.
    progress : called with a message per step; a :class:`brainalign.cli.progress.Progress` is
        also told the count of runs read.
    """
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    mask = Path(mask) if mask else None
    atlas = Path(atlas) if atlas else None
    atlas_labels = Path(atlas_labels) if atlas_labels else None
    labels = [Path(p) for p in labels]
    for arg, p in (
        ("mask", mask),
        ("atlas", atlas),
        ("atlas_labels", atlas_labels),
        *(("labels", q) for q in labels),
    ):
        if p is not None and not p.exists():
            raise IngestError(f"{arg}: no such file {p}")
    if trim_start < 0 or trim_end < 0:
        raise IngestError(f"trim: expected non-negative TR counts, got start={trim_start}, end={trim_end}")
    if detrend_order is not None and not 0 <= detrend_order <= 5:
        raise IngestError(f"detrend: expected a polynomial order 0..5, got {detrend_order}")
    if not inputs:
        raise IngestError("bold: nothing to ingest")

    # ---- read and check everything first -----------------------------------------------
    rows: list[dict] = []
    ref = vox = None
    fmt = None
    tr_seen: set[float] = set()
    per_subject_runs: dict[str, dict[str, int]] = {}
    sources = []
    for n_in, ri in enumerate(inputs):
        tick(
            progress,
            "read runs",
            n_in,
            len(inputs),
            unit="run",
            message=f"reading run {ri.run} ({', '.join(p.name for p in ri.paths)}) [{n_in + 1}/{len(inputs)}]",
        )
        b = read_run(ri, mask=mask, atlas=atlas, atlas_labels=atlas_labels, labels=labels)
        if ref is None:
            ref, vox, fmt = b.reference, b.voxels, b.fmt
        else:
            if b.fmt != fmt:
                raise IngestError(
                    f"bold: run {ri.run} is {b.fmt}, earlier runs are {fmt}; ingest one format at a time"
                )
            if b.Y.shape[1] != next(iter(rows))["Y"].shape[1]:
                raise IngestError(
                    f"bold: run {ri.run} ({ri.paths[0]}) has {b.Y.shape[1]} voxels, earlier runs "
                    f"{rows[0]['Y'].shape[1]}; every run must cover the same voxels"
                )
            if b.reference.get("affine") is not None and not np.allclose(
                b.reference["affine"], ref["affine"], atol=1e-3
            ):
                raise IngestError(
                    f"bold: the affine of {ri.paths[0]} does not match the first run's; "
                    "resample the runs to one grid"
                )
        run_tr = tr
        if run_tr is None and ri.sidecar is not None:
            run_tr = json.loads(ri.sidecar.read_text()).get("RepetitionTime")
        run_tr = run_tr if run_tr is not None else b.tr_s
        if run_tr is None or not run_tr > 0:
            raise IngestError(f"tr: {ri.paths[0]} does not state its repetition time; pass --tr SECONDS")
        tr_seen.add(round(float(run_tr), 6))
        Y = b.Y
        # split a matrix into runs with its TR table
        if tr_table is not None and b.fmt == "matrix":
            tt = read_tr_table(Path(tr_table))
            n_rows = len(next(iter(tt.values())))
            if n_rows != Y.shape[0]:
                raise IngestError(
                    f"tr_table: {tr_table} has {n_rows} rows but {ri.paths[0]} has {Y.shape[0]} TRs; "
                    "one row per TR is needed"
                )
            run_col = tt.get("run", np.array([ri.run] * n_rows, dtype=object))
            tr_col = tt.get("tr")
            for r in dict.fromkeys(run_col.tolist()):
                m = run_col == r
                trs = (
                    tr_col[m].astype(np.int32)
                    if tr_col is not None
                    else np.arange(int(m.sum()), dtype=np.int32)
                )
                rows.append({"ri": ri, "run": str(r), "Y": Y[m], "trs": trs, "tr_s": float(run_tr)})
        else:
            rows.append(
                {
                    "ri": ri,
                    "run": ri.run,
                    "Y": Y,
                    "trs": np.arange(Y.shape[0], dtype=np.int32),
                    "tr_s": float(run_tr),
                }
            )
        sources.append([str(p) for p in ri.paths])
    tick(progress, "read runs", len(inputs), len(inputs), unit="run")
    if len(tr_seen) > 1:
        raise IngestError(
            f"tr: the runs have different repetition times {sorted(tr_seen)}; ingest them separately"
        )
    tr_s = tr_seen.pop()

    n_vox = rows[0]["Y"].shape[1]
    bad = np.zeros(n_vox, dtype=bool)
    for r in rows:
        bad |= ~np.isfinite(r["Y"]).all(0)
    n_bad = int(bad.sum())
    if n_bad and not drop_bad_voxels:
        first = np.flatnonzero(bad)[:3].tolist()
        raise IngestError(
            f"bold: {n_bad:,} of {n_vox:,} voxels contain NaN or inf (e.g. voxel(s) {first}); "
            "fix the mask, or pass --drop-bad-voxels to leave them out"
        )
    keep = ~bad
    if not keep.any():
        raise IngestError("bold: every voxel contains NaN or inf")
    for r in rows:
        n = r["Y"].shape[0]
        if n <= trim_start + trim_end:
            raise IngestError(
                f"trim: run {r['run']} has {n} TRs, fewer than trim_start + trim_end = {trim_start + trim_end}"
            )
        if r["Y"].ndim != 2 or n == 0:
            raise IngestError(f"bold: run {r['run']} has no TRs")

    # ---- preprocess ---------------------------------------------------------------------
    subj_default = subject
    out_rows = {k: [] for k in ("dataset", "subject", "stimulus_set", "run", "tr", "onset_s")}
    blocks = []
    seen_keys = set()
    for r in rows:
        ri: RunInput = r["ri"]
        subj = subj_default or ri.subject
        if not subj:
            raise IngestError(
                f"subject: no subject for {ri.paths[0]}; pass --subject (or use BIDS names sub-XX)"
            )
        sset = stimulus_set or ri.task
        if not sset:
            raise IngestError(
                f"stimulus_set: no stimulus set for {ri.paths[0]}; pass --stimulus-set "
                "(BIDS files default to their task)"
            )
        if (subj, r["run"]) in seen_keys:
            raise IngestError(f"run: run {r['run']!r} of {subj} appears twice in the inputs")
        seen_keys.add((subj, r["run"]))
        Y = r["Y"][:, keep]
        if confounds:
            if ri.confounds is None:
                raise IngestError(f"confounds: no confounds TSV found for run {r['run']} ({ri.paths[0]})")
            Y = regress_out(Y, _read_confounds(ri.confounds, confounds, Y.shape[0]))
        if detrend_order is not None:
            Y = detrend(Y, detrend_order)
        sl = slice(trim_start, Y.shape[0] - trim_end)
        Y, trs = Y[sl], r["trs"][sl]
        if zscore_runs:
            Y = zscore(Y)
        blocks.append(Y.astype(np.float32))
        n = Y.shape[0]
        per_subject_runs.setdefault(subj, {})[r["run"]] = n
        out_rows["dataset"] += [dataset] * n
        out_rows["subject"] += [subj] * n
        out_rows["stimulus_set"] += [sset] * n
        out_rows["run"] += [r["run"]] * n
        out_rows["tr"].append(trs)
        out_rows["onset_s"].append(trs.astype(np.float64) * r["tr_s"])
    Yall = np.concatenate(blocks)
    n_vox_kept = int(keep.sum())
    resp = pa.table(
        {
            **{k: out_rows[k] for k in ("dataset", "subject", "stimulus_set", "run")},
            "tr": pa.array(np.concatenate(out_rows["tr"]).astype(np.int32)),
            "onset_s": pa.array(np.concatenate(out_rows["onset_s"])),
            "bold": pa.FixedSizeListArray.from_arrays(pa.array(Yall.ravel()), n_vox_kept),
        }
    )
    space = (
        space
        or inputs[0].space
        or {"nifti": "native", "cifti": "fsLR", "gifti": "surface", "matrix": "matrix"}[fmt]
    )
    vtables = []
    idx = np.arange(n_vox_kept, dtype=np.int32)
    for subj in per_subject_runs:
        cols = {
            "dataset": [dataset] * n_vox_kept,
            "subject": [subj] * n_vox_kept,
            "voxel": idx,
            "space": [space] * n_vox_kept,
        }
        for c in ("i", "j", "k", "x", "y", "z", "vertex", "hemi", "roi"):
            if c in vox:
                a = vox[c][keep]
                valid = vox.get(
                    {
                        "i": "_ijk_valid",
                        "j": "_ijk_valid",
                        "k": "_ijk_valid",
                        "x": "_xyz_valid",
                        "y": "_xyz_valid",
                        "z": "_xyz_valid",
                        "vertex": "_vertex_valid",
                    }.get(c, "")
                )
                if a.dtype == object:
                    cols[c] = pa.array(a.tolist(), pa.string())
                else:
                    cols[c] = pa.array(a, mask=None if valid is None else ~valid[keep])
        vtables.append(pa.table(cols))
    vtab = pa.concat_tables(vtables)
    preprocessing = {
        "confounds": list(confounds),
        "detrend": detrend_order,
        "zscore_per_run": bool(zscore_runs),
        "trim_start": trim_start,
        "trim_end": trim_end,
        "dropped_voxels": n_bad,
        "tr_numbering": "original (trimmed TRs keep their numbers)",
    }
    kept_idx = np.flatnonzero(keep).tolist() if n_bad else None
    provenance = {
        "dataset": dataset,
        "tr_s": tr_s,
        "space": space,
        "format": fmt,
        "preprocessing": preprocessing,
        "sources": sources,
        "mask": str(mask) if mask else None,
        "atlas": str(atlas) if atlas else None,
        "labels": [str(p) for p in labels],
        "tr_table": str(tr_table) if tr_table else None,
        "events": {ri.run: str(ri.events) for ri in inputs if ri.events},
        "confounds_files": {ri.run: str(ri.confounds) for ri in inputs if ri.confounds},
    }
    vprov = {"dataset": dataset, "space": space, "reference": ref, "kept_input_columns": kept_idx}

    # ---- write ---------------------------------------------------------------------------
    say(f"writing {len(resp):,} TRs x {n_vox_kept:,} voxels")
    r_uri, v_uri = Path(responses), Path(voxels)
    check_brain_tables(r_uri, v_uri, n_vox_kept)
    r_version, v_version = write_brain_tables(
        r_uri, resp, v_uri, vtab, n_voxels=n_vox_kept, provenance=provenance, voxels_provenance=vprov
    )
    rois = {}
    if "roi" in vtab.column_names:
        for v in vtab.column("roi").to_pylist()[:n_vox_kept]:
            rois[str(v)] = rois.get(str(v), 0) + 1
    return IngestSummary(
        responses_uri=str(r_uri),
        voxels_uri=str(v_uri),
        responses_version=r_version,
        voxels_version=v_version,
        dataset=dataset,
        subjects=list(per_subject_runs),
        runs={f"{s}/{r}": n for s, d in per_subject_runs.items() for r, n in d.items()},
        n_voxels=n_vox_kept,
        tr_s=tr_s,
        space=space,
        fmt=fmt,
        preprocessing=preprocessing,
        dropped_voxels=n_bad,
        seconds=time.perf_counter() - t0,
        rois=rois,
    )
