"""A small simulated study on disk, shared by the CLI tests.

BIDS tree ``bids/sub-01/func/sub-01_task-story_run-{1..4}_bold.nii.gz`` (a 5x5x4 grid, 60 TRs
per run, TR 2 s) with events TSVs, a 3-ROI atlas, and a features table with two models
(``toy/base``, ``toy/tuned``) x two instructions (``caption``, ``vqa``) x layers 0..3.
Voxels of ROI ``early`` are driven by layer 1 and ROI ``late`` by layer 3 of
``toy/tuned``/``caption`` (HRF-convolved, half the variance); ROI ``null`` is noise. The base
model's features are the tuned ones mixed with noise, so the tuned model should score higher.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from brainalign.cli.app import app
from brainalign.encoders import convolve_hrf
from brainalign.features import FeatureStore

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
GIFTI_DATA = Path(nib.__file__).parent / "gifti" / "tests" / "data"
TR = 2.0
N_RUNS, N_TRS, DIM, N_LAYERS = 4, 60, 6, 4
SHAPE = (5, 5, 4)
ROIS = {1: "early", 2: "late", 3: "null"}
ROI_LAYER = {"early": 1, "late": 3, "null": None}
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
AFFINE[:3, 3] = [-6.0, -6.0, -4.5]


def run_cli(*args: str, ok: bool = True):
    """Invoke the command in-process; assert success unless ``ok`` is False."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    if ok and res.exit_code != 0:
        raise AssertionError(
            f"brainalign {' '.join(map(str, args))} exited {res.exit_code}:\n{res.output}"
            + (f"\n{res.exception!r}" if res.exception else "")
        )
    return res


def _features(rng):
    """(model, instruction, layer) -> (N_RUNS * N_TRS, DIM) features."""
    n = N_RUNS * N_TRS
    out = {}
    for ins in ("caption", "vqa"):
        for layer in range(N_LAYERS):
            tuned = rng.standard_normal((n, DIM))
            out[("toy/tuned", ins, layer)] = tuned
            out[("toy/base", ins, layer)] = 0.6 * tuned + 0.8 * rng.standard_normal((n, DIM))
    return out


def build_study(root: Path) -> dict:
    rng = np.random.default_rng(7)
    feats = _features(rng)
    runs = np.repeat(np.arange(1, N_RUNS + 1), N_TRS).astype(str)
    trs = np.tile(np.arange(N_TRS, dtype=np.int32), N_RUNS)
    # atlas: three ROI slabs along i, the corner voxel column outside the brain (label 0)
    atlas = np.zeros(SHAPE, np.int16)
    atlas[0:2], atlas[2:4], atlas[4:] = 1, 2, 3
    atlas[0, 0, :] = 0
    sel = atlas > 0
    n_vox = int(sel.sum())
    roi_of = np.array([ROIS[c] for c in atlas[sel]])
    Y = 0.8 * rng.standard_normal((len(runs), n_vox))
    for roi, layer in ROI_LAYER.items():
        if layer is None:
            continue
        m = roi_of == roi
        s = convolve_hrf(
            feats[("toy/tuned", "caption", layer)] @ rng.standard_normal((DIM, m.sum())), TR, groups=runs
        )
        Y[:, m] += 0.8 * s / s.std(0)
    bids = root / "bids"
    func = bids / "sub-01" / "func"
    func.mkdir(parents=True)
    for r in range(1, N_RUNS + 1):
        vol = np.zeros((*SHAPE, N_TRS), np.float32)
        vol[sel] = (100 + Y[runs == str(r)]).T
        img = nib.Nifti1Image(vol, AFFINE)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = TR
        nib.save(img, func / f"sub-01_task-story_run-{r}_bold.nii.gz")
        (func / f"sub-01_task-story_run-{r}_events.tsv").write_text(
            "onset\tduration\ttrial_type\n0\t120\tstory\n"
        )
    nib.save(nib.Nifti1Image(atlas, AFFINE), root / "atlas.nii.gz")
    (root / "atlas.tsv").write_text("index\tname\n1\tearly\n2\tlate\n3\tnull\n")

    tables = root / "tables"
    store = FeatureStore.create(
        tables / "features.lance",
        dim=DIM,
        provenance={
            "model": "toy",
            "instructions": {"caption": "Describe the scene in one sentence.", "vqa": "What is happening?"},
        },
    )
    n = len(runs)
    for (model, ins, layer), F in feats.items():
        store.write(
            {
                "stimulus_set": ["story"] * n,
                "stimulus_id": [f"{r}-{t}" for r, t in zip(runs, trs, strict=True)],
                "run": runs.tolist(),
                "tr": trs,
                "onset_s": trs * TR,
                "model": [model] * n,
                "instruction_id": [ins] * n,
                "component": ["lm"] * n,
                "layer": np.full(n, layer, np.int16),
                "pooling": ["mean"] * n,
            },
            F.astype(np.float32),
        )
    return {
        "root": root,
        "bids": bids,
        "tables": tables,
        "atlas": root / "atlas.nii.gz",
        "atlas_labels": root / "atlas.tsv",
        "n_voxels": n_vox,
        "roi_of": roi_of,
    }


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> dict:
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="session")
def pipeline(study) -> dict:
    """ingest -> fit -> partition -> report through the command, once per session."""
    t = study["tables"]
    run_cli(
        "responses",
        "ingest",
        "--bids",
        study["bids"],
        "--dataset",
        "toy",
        "--atlas",
        study["atlas"],
        "--atlas-labels",
        study["atlas_labels"],
        "--zscore",
        "--space",
        "MNI-toy",
        "--root",
        t,
    )
    run_cli("fit", "--root", t, "--name", "main", "--test-run", "4", "--preset", "fir4")
    run_cli(
        "partition",
        "--root",
        t,
        "--name",
        "cap-vs-vqa",
        "--test-run",
        "4",
        "--space",
        "cap=model = 'toy/tuned' AND instruction_id = 'caption' AND layer = 1",
        "--space",
        "vqa=model = 'toy/tuned' AND instruction_id = 'vqa' AND layer = 1",
    )
    out = study["root"] / "report"
    run_cli(
        "report",
        "--root",
        t,
        "--fit",
        "main",
        "--partition-fit",
        "cap-vs-vqa",
        "--compare",
        "toy/base",
        "--compare",
        "toy/tuned",
        "--out",
        out,
        "--max-maps",
        "2",
    )
    return {**study, "report": out}
