"""`brainalign responses ingest` on nibabel's own NIfTI / CIFTI-2 / GIFTI files, and on
malformed inputs, which must fail with one clear message and write nothing."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainalign.cli.ingest import IngestError, discover_bids, explicit_runs, ingest_responses, read_matrix
from brainalign.cli.report import write_brain_map
from brainalign.features import open_table

from .conftest import GIFTI_DATA, NIBABEL_DATA, run_cli

EXAMPLE4D = NIBABEL_DATA / "example4d.nii.gz"
FUNCTIONAL = NIBABEL_DATA / "functional.nii"


@pytest.fixture(scope="module")
def example_mask(tmp_path_factory) -> Path:
    """A brain mask of example4d: voxels brighter than the 90th percentile of the mean image."""
    d = tmp_path_factory.mktemp("mask")
    img = nib.load(EXAMPLE4D)
    mean = np.asanyarray(img.dataobj).mean(-1)
    nib.save(
        nib.Nifti1Image((mean > np.percentile(mean, 90)).astype(np.uint8), img.affine), d / "mask.nii.gz"
    )
    atlas = np.zeros(img.shape[:3], np.int16)
    atlas[: img.shape[0] // 2], atlas[img.shape[0] // 2 :] = 1, 2
    nib.save(nib.Nifti1Image(atlas, img.affine), d / "atlas.nii.gz")
    return d / "mask.nii.gz"


def _nothing_written(root: Path) -> None:
    left = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert not [n for n in left if ".lance" in n], left


def test_nifti_example4d_with_mask_and_atlas(example_mask, tmp_path):
    d = example_mask.parent
    res = run_cli(
        "responses",
        "ingest",
        EXAMPLE4D,
        EXAMPLE4D,
        "--run",
        "1",
        "--run",
        "2",
        "--subject",
        "sub-01",
        "--stimulus-set",
        "ex",
        "--mask",
        example_mask,
        "--atlas",
        d / "atlas.nii.gz",
        "--root",
        tmp_path,
        "--json",
    )
    info = json.loads(res.stdout)
    img = nib.load(EXAMPLE4D)
    data = np.asanyarray(img.dataobj)
    sel = np.asanyarray(nib.load(example_mask).dataobj) > 0
    assert info["n_voxels"] == int(sel.sum()) and info["tr_s"] == 2.0  # header says 2000 (ms)
    assert info["runs"] == {"sub-01/1": 2, "sub-01/2": 2}
    resp = open_table(tmp_path / "responses.lance").to_table(filter="run = '1'").sort_by("tr")
    bold = np.stack(resp.column("bold").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(bold, data[sel].T, rtol=1e-6)  # raw values, in mask order
    vox = open_table(tmp_path / "voxels.lance").to_table().to_pandas().sort_values("voxel")
    ijk = np.argwhere(sel)
    np.testing.assert_array_equal(vox[["i", "j", "k"]].to_numpy(), ijk)
    xyz = nib.affines.apply_affine(img.affine, ijk)
    np.testing.assert_allclose(vox[["x", "y", "z"]].to_numpy(), xyz, rtol=1e-5, atol=1e-4)
    assert set(vox["roi"]) == {"label-1", "label-2"}
    # a map written back lands on the voxels it came from
    vt = open_table(tmp_path / "voxels.lance")
    files = write_brain_map(
        np.arange(len(vox), dtype=np.float32),
        vt.to_table().sort_by("voxel"),
        vt.provenance["reference"],
        tmp_path / "map",
    )
    back = nib.load(files[0])
    np.testing.assert_allclose(back.affine, img.affine)
    np.testing.assert_array_equal(back.get_fdata()[sel], np.arange(len(vox)))
    assert files[-1].suffix == ".png" and files[-1].stat().st_size > 1000


def test_nifti_preprocessing_is_recorded(tmp_path):
    img = nib.load(FUNCTIONAL)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine), mask)
    s = ingest_responses(
        explicit_runs([FUNCTIONAL]),
        responses=tmp_path / "t/responses.lance",
        voxels=tmp_path / "t/voxels.lance",
        dataset="fn",
        subject="sub-1",
        stimulus_set="fn",
        mask=mask,
        detrend_order=1,
        zscore_runs=True,
        trim_start=2,
        trim_end=1,
    )
    assert s.runs == {"sub-1/1": 17} and s.tr_s == 2.0
    t = open_table(tmp_path / "t/responses.lance")
    assert t.provenance["preprocessing"] | {} == s.preprocessing
    assert s.preprocessing["detrend"] == 1 and s.preprocessing["trim_start"] == 2
    trs = sorted(t.to_table(columns=["tr"]).column("tr").to_pylist())
    assert trs == list(range(2, 19))  # trimmed TRs keep their numbers
    Y = np.stack(t.to_table().sort_by("tr").column("bold").to_numpy(zero_copy_only=False))
    nz = Y.std(0) > 0
    np.testing.assert_allclose(Y[:, nz].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(Y[:, nz].std(0), 1, atol=1e-3)


def _cifti_axis():
    return nib.load(NIBABEL_DATA / "row_major.dconn.nii").header.get_axis(1)


def test_cifti_dtseries_with_dlabel(tmp_path):
    src = _cifti_axis()  # the 10 voxels of nibabel's own CIFTI-2 test file, as a volume structure
    bm = nib.cifti2.BrainModelAxis(
        name=["ThalamusLeft"] * len(src), voxel=src.voxel, affine=src.affine, volume_shape=src.volume_shape
    )
    surf = nib.cifti2.BrainModelAxis.from_surface(np.array([0, 2, 5]), 8, name="CortexLeft")
    axis = surf + bm
    rng = np.random.default_rng(0)
    data = rng.standard_normal((12, len(axis))).astype(np.float32)
    series = nib.cifti2.SeriesAxis(start=0, step=1.5, size=12)
    nib.save(
        nib.Cifti2Image(data, header=(series, axis)), tmp_path / "sub-02_task-mov_run-1_bold.dtseries.nii"
    )
    codes = np.array([[1, 1, 2] + [2] * 10], dtype=np.float32)
    lab = nib.cifti2.LabelAxis(
        ["rois"], [{0: ("???", (0, 0, 0, 0)), 1: ("V1", (1, 0, 0, 1)), 2: ("MT", (0, 1, 0, 1))}]
    )
    nib.save(nib.Cifti2Image(codes, header=(lab, axis)), tmp_path / "rois.dlabel.nii")
    s = ingest_responses(
        explicit_runs([tmp_path / "sub-02_task-mov_run-1_bold.dtseries.nii"]),
        responses=tmp_path / "t/responses.lance",
        voxels=tmp_path / "t/voxels.lance",
        dataset="cf",
        labels=[tmp_path / "rois.dlabel.nii"],
    )
    assert s.subjects == ["sub-02"] and s.space == "fsLR" and s.tr_s == 1.5 and s.n_voxels == 13
    vt = open_table(tmp_path / "t/voxels.lance")
    vox = vt.to_table().sort_by("voxel").to_pydict()
    assert vox["vertex"][:3] == [0, 2, 5] and vox["hemi"][:3] == ["L", "L", "L"]
    assert vox["i"][:3] == [None] * 3 and vox["i"][3:] == bm.voxel[:, 0].tolist()
    assert vox["roi"] == ["V1", "V1"] + ["MT"] * 11
    Y = np.stack(
        open_table(tmp_path / "t/responses.lance")
        .to_table()
        .sort_by("tr")
        .column("bold")
        .to_numpy(zero_copy_only=False)
    )
    np.testing.assert_allclose(Y, data)
    files = write_brain_map(
        np.arange(13, dtype=np.float32),
        vt.to_table().sort_by("voxel"),
        vt.provenance["reference"],
        tmp_path / "map",
    )
    back = nib.load(files[0])
    assert back.header.get_axis(1) == axis
    np.testing.assert_allclose(back.get_fdata()[0], np.arange(13))


def test_cifti_dense_connectome_is_refused(tmp_path):
    res = run_cli(
        "responses",
        "ingest",
        NIBABEL_DATA / "row_major.dconn.nii",
        "--subject",
        "s",
        "--stimulus-set",
        "x",
        "--root",
        tmp_path,
        ok=False,
    )
    assert res.exit_code == 1 and "expected a dense time series" in res.output
    _nothing_written(tmp_path)


def _label_gii(path: Path, codes: np.ndarray, names: dict[int, str]) -> None:
    img = nib.GiftiImage(
        darrays=[
            nib.gifti.GiftiDataArray(
                codes.astype(np.int32), intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32"
            )
        ]
    )
    for key, name in names.items():
        lab = nib.gifti.GiftiLabel(key=key)
        lab.label = name
        img.labeltable.labels.append(lab)
    nib.save(img, path)


def test_gifti_hemispheres_with_label_files(tmp_path):
    func = GIFTI_DATA / "task.func.gii"  # 10 time points x 642 vertices
    lh, rh = tmp_path / "lh.func.gii", tmp_path / "rh.func.gii"
    shutil.copy(func, lh)
    shutil.copy(func, rh)
    codes = (np.arange(642) % 3).astype(np.int32)
    _label_gii(tmp_path / "lh.aparc.label.gii", codes, {0: "unknown", 1: "V1", 2: "MT"})
    _label_gii(tmp_path / "rh.aparc.label.gii", codes[::-1].copy(), {0: "unknown", 1: "V1", 2: "MT"})
    res = run_cli(
        "responses",
        "ingest",
        lh,
        rh,
        "--run",
        "1",
        "--run",
        "1",
        "--tr",
        "2",
        "--subject",
        "sub-03",
        "--stimulus-set",
        "task",
        "--space",
        "fsaverage",
        "--labels",
        tmp_path / "lh.aparc.label.gii",
        "--labels",
        tmp_path / "rh.aparc.label.gii",
        "--root",
        tmp_path / "t",
        "--json",
    )
    info = json.loads(res.stdout)
    assert info["n_voxels"] == 2 * 642 and info["fmt"] == "gifti" and info["runs"] == {"sub-03/1": 10}
    vt = open_table(tmp_path / "t/voxels.lance")
    vox = vt.to_table().sort_by("voxel").to_pydict()
    assert vox["hemi"][:642] == ["L"] * 642 and vox["hemi"][642:] == ["R"] * 642
    assert vox["vertex"][640:644] == [640, 641, 0, 1]
    assert vox["roi"][:3] == [None, "V1", "MT"] and vox["roi"][-3:] == ["MT", "V1", None]
    want = np.stack([da.data for da in nib.load(func).darrays])
    Y = np.stack(
        open_table(tmp_path / "t/responses.lance")
        .to_table()
        .sort_by("tr")
        .column("bold")
        .to_numpy(zero_copy_only=False)
    )
    np.testing.assert_allclose(Y[:, :642], want)
    files = write_brain_map(
        np.arange(1284, dtype=np.float32),
        vt.to_table().sort_by("voxel"),
        vt.provenance["reference"],
        tmp_path / "map",
    )
    right = nib.load(next(f for f in files if "hemi-R" in f.name))
    np.testing.assert_allclose(right.darrays[0].data, np.arange(642, 1284))


def test_bids_discovery_with_confounds(tmp_path):
    func = tmp_path / "bids" / "sub-07" / "func"
    func.mkdir(parents=True)
    img = nib.load(FUNCTIONAL)
    for r in (1, 2):
        shutil.copy(FUNCTIONAL, func / f"sub-07_task-rest_run-{r}_bold.nii")
        (func / f"sub-07_task-rest_run-{r}_desc-confounds_timeseries.tsv").write_text(
            "drift\n" + "".join(f"{t}\n" for t in range(20))
        )
        (func / f"sub-07_task-rest_run-{r}_events.tsv").write_text("onset\tduration\ttrial_type\n")
    runs = discover_bids(tmp_path / "bids")
    assert [(ri.subject, ri.task, ri.run) for ri in runs] == [
        ("sub-07", "rest", "1"),
        ("sub-07", "rest", "2"),
    ]
    assert runs[0].confounds.name.endswith("confounds_timeseries.tsv") and runs[0].events is not None
    mask = tmp_path / "mask.nii"
    nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine), mask)
    s = ingest_responses(
        runs,
        responses=tmp_path / "t/responses.lance",
        voxels=tmp_path / "t/voxels.lance",
        dataset="bids",
        mask=mask,
        confounds=["drift"],
    )
    assert s.runs == {"sub-07/1": 20, "sub-07/2": 20}
    Y = np.stack(
        open_table(tmp_path / "t/responses.lance")
        .to_table(filter="run = '1'")
        .sort_by("tr")
        .column("bold")
        .to_numpy(zero_copy_only=False)
    )
    t = np.arange(20)
    assert np.abs(np.corrcoef(t, Y[:, Y.std(0) > 0].T)[0, 1:]).max() < 1e-3  # the drift is regressed out


def test_npy_with_tr_table(tmp_path):
    Y = np.random.default_rng(1).standard_normal((30, 7)).astype(np.float32)
    np.save(tmp_path / "bold.npy", Y)
    (tmp_path / "trs.tsv").write_text(
        "run\ttr\n"
        + "".join(f"{'a' if i < 12 else 'b'}\t{i % 12 if i < 12 else i - 12}\n" for i in range(30))
    )
    s = ingest_responses(
        explicit_runs([tmp_path / "bold.npy"]),
        responses=tmp_path / "t/responses.lance",
        voxels=tmp_path / "t/voxels.lance",
        dataset="m",
        subject="s1",
        stimulus_set="x",
        tr=1.5,
        tr_table=tmp_path / "trs.tsv",
    )
    assert s.runs == {"s1/a": 12, "s1/b": 18}
    got = open_table(tmp_path / "t/responses.lance").to_table(filter="run = 'b'").sort_by("tr")
    assert got.column("onset_s").to_pylist()[:2] == [0.0, 1.5]
    np.testing.assert_allclose(np.stack(got.column("bold").to_numpy(zero_copy_only=False)), Y[12:])


def test_h5_matrix_matches_npy(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((30, 7)).astype(np.float32)
    with h5py.File(tmp_path / "bold.h5", "w") as f:
        f["bold"] = Y
        f["meta/onsets"] = np.arange(30.0)
    (tmp_path / "trs.tsv").write_text(
        "run\ttr\n"
        + "".join(f"{'a' if i < 12 else 'b'}\t{i % 12 if i < 12 else i - 12}\n" for i in range(30))
    )
    common = dict(dataset="m", subject="s1", stimulus_set="x", tr=1.5, tr_table=tmp_path / "trs.tsv")
    s = ingest_responses(
        explicit_runs([tmp_path / "bold.h5"]),
        responses=tmp_path / "h/r.lance",
        voxels=tmp_path / "h/v.lance",
        **common,
    )
    assert s.runs == {"s1/a": 12, "s1/b": 18}
    got = open_table(tmp_path / "h/r.lance").to_table(filter="run = 'b'").sort_by("tr")
    np.testing.assert_allclose(np.stack(got.column("bold").to_numpy(zero_copy_only=False)), Y[12:])
    # a file with several 2-D datasets needs the name: file.h5:/group/name
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["run1/betas"] = Y
        f["run1/other"] = Y[:, :3]
    with pytest.raises(IngestError, match="name the response matrix"):
        read_matrix(tmp_path / "two.h5")
    assert read_matrix(Path(f"{tmp_path / 'two.h5'}:/run1/betas")).Y.shape == (30, 7)
    with pytest.raises(IngestError, match="no dataset"):
        read_matrix(Path(f"{tmp_path / 'two.h5'}:/nope"))
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF")
    with pytest.raises(IngestError, match="truncated or not an HDF5 file"):
        read_matrix(tmp_path / "bad.h5")


# ---- malformed inputs: one clear message naming the argument; nothing written --------------------
def _shifted_mask(tmp_path: Path) -> Path:
    img = nib.load(EXAMPLE4D)
    aff = img.affine.copy()
    aff[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), aff), tmp_path / "shifted.nii.gz")
    return tmp_path / "shifted.nii.gz"


def _nan_bold(tmp_path: Path) -> Path:
    img = nib.load(FUNCTIONAL)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[3, 4, 1, 5] = np.nan
    out = nib.Nifti1Image(data, img.affine)
    out.header["pixdim"][4] = 2.0
    nib.save(out, tmp_path / "nan_bold.nii.gz")
    return tmp_path / "nan_bold.nii.gz"


def _truncated(tmp_path: Path) -> Path:
    raw = gzip.decompress(EXAMPLE4D.read_bytes())
    (tmp_path / "trunc.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return tmp_path / "trunc.nii.gz"


def _wrong_tr_table(tmp_path: Path) -> list[str]:
    np.save(tmp_path / "m.npy", np.zeros((10, 3), np.float32))
    (tmp_path / "trs.csv").write_text("run,tr\n" + "".join(f"1,{i}\n" for i in range(9)))
    return [str(tmp_path / "m.npy"), "--tr-table", str(tmp_path / "trs.csv"), "--tr", "2"]


def _full_mask(tmp_path: Path, src: Path = FUNCTIONAL) -> Path:
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine), tmp_path / "full.nii.gz")
    return tmp_path / "full.nii.gz"


CASES = {
    "wrong TR count": (_wrong_tr_table, "tr_table: .* has 9 rows but .* has 10 TRs"),
    "missing mask file": (lambda p: [str(EXAMPLE4D), "--mask", str(p / "nope.nii.gz")], "mask: no such file"),
    "no mask": (lambda p: [str(EXAMPLE4D)], "mask: a 4D NIfTI needs a brain or ROI mask"),
    "mismatched affine": (
        lambda p: [str(EXAMPLE4D), "--mask", str(_shifted_mask(p))],
        "mask: the affine of .* does not match the BOLD affine",
    ),
    "3D instead of 4D": (
        lambda p: [str(NIBABEL_DATA / "anatomical.nii"), "--mask", str(_full_mask(p))],
        r"bold: expected a 4D NIfTI .* got 3D shape \(33, 41, 25\)",
    ),
    "NaN voxels": (
        lambda p: [str(_nan_bold(p)), "--mask", str(_full_mask(p))],
        r"bold: 1 of 1,071 voxels contain NaN or inf .* --drop-bad-voxels",
    ),
    "truncated file": (
        lambda p: [str(_truncated(p)), "--mask", str(_full_mask(p, EXAMPLE4D))],
        r"bold: cannot read the data of .*trunc.nii.gz \(truncated or corrupt\?\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_fails_cleanly(case, tmp_path):
    make, pattern = CASES[case]
    args = make(tmp_path)
    root = tmp_path / "tables"
    res = run_cli(
        "responses", "ingest", *args, "--subject", "s", "--stimulus-set", "x", "--root", root, ok=False
    )
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)  # reported, not raised
    assert "Traceback" not in res.output
    msg = res.stderr.strip().splitlines()[-1]  # after the progress lines: one line
    assert msg.startswith("error: ")
    import re

    assert re.search(pattern, msg.replace("\n", " ")), msg
    _nothing_written(root)


def test_nan_voxels_can_be_dropped(tmp_path):
    s = ingest_responses(
        explicit_runs([_nan_bold(tmp_path)]),
        responses=tmp_path / "t/r.lance",
        voxels=tmp_path / "t/v.lance",
        dataset="d",
        subject="s",
        stimulus_set="x",
        mask=_full_mask(tmp_path),
        drop_bad_voxels=True,
    )
    assert s.dropped_voxels == 1 and s.n_voxels == 17 * 21 * 3 - 1


def test_failed_append_leaves_existing_tables_alone(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((5, 4), np.float32))
    kw = dict(
        responses=tmp_path / "t/r.lance",
        voxels=tmp_path / "t/v.lance",
        dataset="d",
        subject="s",
        stimulus_set="x",
        tr=1.0,
    )
    ingest_responses(explicit_runs([tmp_path / "a.npy"]), **kw)
    before = open_table(tmp_path / "t/r.lance").version, open_table(tmp_path / "t/v.lance").version
    with pytest.raises(IngestError, match=r"responses: .* holds 3 voxels per row, these inputs 4"):
        ingest_responses(explicit_runs([tmp_path / "b.npy"], ["2"]), **kw)
    assert (open_table(tmp_path / "t/r.lance").version, open_table(tmp_path / "t/v.lance").version) == before
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["r.lance", "v.lance"]
