"""A toy dataset loader and study for the recipe framework tests (no torch needed).

BIDS tree ``bids/sub-0{1,2}/func/sub-0X_task-toy_run-{1..4}_bold.nii.gz`` (TR 2 s), a 3-ROI
atlas, and a features table of two models (``toy-tuned`` instruction-tuned, ``toy-base``) under
``image.captioning`` and ``image.vqa`` at layers 0..3. ROI ``early`` follows layer 1 and ROI
``late`` layer 3 of ``toy-tuned`` under ``image.vqa`` (the planted instruction); ROI ``null`` is
noise. ``toy-base`` features are the tuned ones mixed with noise.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainalign.cli.ingest import discover_bids, ingest_responses
from brainalign.cli.studies import StudyDataset
from brainalign.encoders import convolve_hrf
from brainalign.features import FeatureStore

TR = 2.0
N_RUNS, N_TRS, DIM, N_LAYERS = 4, 60, 6, 4
SHAPE = (5, 5, 4)
ROIS = {1: "early", 2: "late", 3: "null"}
ROI_LAYER = {"early": 1, "late": 3}
INSTRUCTIONS = ("image.captioning", "image.vqa")
PLANTED = "image.vqa"
SUBJECTS = ("sub-01", "sub-02")


class ToyDataset(StudyDataset):
    name = "toy"
    modalities = ("image",)
    option_keys = ("subjects", "test_run")
    tr = TR

    def check(self) -> list[str]:
        problems = [f"unknown option {k!r}" for k in self.options if k not in self.option_keys]
        if not (self.root / "bids").is_dir():
            problems.append(f"root: expected a bids/ folder under {self.root}")
        if not (self.root / "atlas.nii.gz").exists():
            problems.append(f"atlas: missing {self.root / 'atlas.nii.gz'}")
        return problems

    def subjects(self) -> list[str]:
        found = sorted(p.name for p in (self.root / "bids").glob("sub-*"))
        want = self.options.get("subjects")
        return [s for s in found if not want or s in want]

    def summary(self) -> dict:
        return {"n_samples": N_RUNS * N_TRS, "n_voxels": int(np.prod(SHAPE)), "runs": N_RUNS}

    def manifest(self, modality, **options):
        raise NotImplementedError("the toy study uses a features table")

    def ingest(self, responses, voxels, *, progress=None):
        out = []
        for s in self.subjects():
            out.append(
                ingest_responses(
                    discover_bids(self.root / "bids", subject=s),
                    responses=responses,
                    voxels=voxels,
                    dataset="toy",
                    stimulus_set="toy",
                    atlas=self.root / "atlas.nii.gz",
                    atlas_labels=self.root / "atlas.tsv",
                    progress=progress,
                )
            )
        return out

    def test_runs(self) -> list[str]:
        return [str(self.options.get("test_run", N_RUNS))]


def build(root: Path, seed: int = 7) -> dict:
    """Write the toy dataset and its features table under ``root``."""
    rng = np.random.default_rng(seed)
    n = N_RUNS * N_TRS
    runs = np.repeat(np.arange(1, N_RUNS + 1), N_TRS).astype(str)
    trs = np.tile(np.arange(N_TRS, dtype=np.int32), N_RUNS)
    feats = {}
    for ins in INSTRUCTIONS:
        for layer in range(N_LAYERS):
            tuned = rng.standard_normal((n, DIM))
            feats[("toy-tuned", ins, layer)] = tuned
            feats[("toy-base", ins, layer)] = 0.5 * tuned + 0.9 * rng.standard_normal((n, DIM))
    atlas = np.zeros(SHAPE, np.int16)
    atlas[0:2], atlas[2:4], atlas[4:] = 1, 2, 3
    sel = atlas > 0
    roi_of = np.array([ROIS[c] for c in atlas[sel]])
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for subject in SUBJECTS:
        Y = 0.8 * rng.standard_normal((n, int(sel.sum())))
        for roi, layer in ROI_LAYER.items():
            m = roi_of == roi
            w = np.random.default_rng(100 + layer).standard_normal((DIM, m.sum()))
            sig = convolve_hrf(feats[("toy-tuned", PLANTED, layer)] @ w, TR, groups=runs)
            Y[:, m] += 0.9 * sig / sig.std(0)
        func = root / "bids" / subject / "func"
        func.mkdir(parents=True)
        for r in range(1, N_RUNS + 1):
            vol = np.zeros((*SHAPE, N_TRS), np.float32)
            vol[sel] = (100 + Y[runs == str(r)]).T
            img = nib.Nifti1Image(vol, affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header["pixdim"][4] = TR
            nib.save(img, func / f"{subject}_task-toy_run-{r}_bold.nii.gz")
    nib.save(nib.Nifti1Image(atlas, affine), root / "atlas.nii.gz")
    (root / "atlas.tsv").write_text("index\tname\n1\tearly\n2\tlate\n3\tnull\n")
    store = FeatureStore.create(root / "features.lance", dim=DIM, provenance={"model": "toy"})
    for (model, ins, layer), F in feats.items():
        store.write(
            {
                "stimulus_set": ["toy"] * n,
                "stimulus_id": [f"{r}-{t}" for r, t in zip(runs, trs, strict=True)],
                "run": runs.tolist(),
                "tr": trs,
                "onset_s": trs * TR,
                "model": [model] * n,
                "instruction_id": [ins] * n,
                "component": ["lm"] * n,
                "layer": np.full(n, layer, np.int16),
                "pooling": ["response"] * n,
            },
            F.astype(np.float32),
        )
    # a second pooling of toy-tuned that carries no signal: the study tables must keep poolings apart
    for ins in INSTRUCTIONS:
        for layer in range(N_LAYERS):
            store.write(
                {
                    "stimulus_set": ["toy"] * n,
                    "stimulus_id": [f"{r}-{t}" for r, t in zip(runs, trs, strict=True)],
                    "run": runs.tolist(),
                    "tr": trs,
                    "onset_s": trs * TR,
                    "model": ["toy-tuned"] * n,
                    "instruction_id": [ins] * n,
                    "component": ["lm"] * n,
                    "layer": np.full(n, layer, np.int16),
                    "pooling": ["stimulus"] * n,
                },
                rng.standard_normal((n, DIM)).astype(np.float32),
            )
    return {"root": root, "features": root / "features.lance"}


RECIPE = """
[study]
name = "toy-study"
title = "Toy study"
reference = "tests/studies/toy_study.py"

[data]
name = "toy"
dataset = "toy_study:ToyDataset"
root = "${{TOY_ROOT:-{root}}}"

[[models]]
name = "toy-tuned"
source = "table"
table = "{features}"
group = "instruction-tuned"
instructions = ["image.captioning", "image.vqa"]
pooling = ["response"]

[[models]]
name = "toy-base"
source = "table"
table = "{features}"
group = "non-instruction-tuned"
instructions = ["image.captioning", "image.vqa"]
pooling = ["response"]

[fit]
preset = "fir4"
alphas = [1.0, 10.0, 100.0, 1000.0]

[[partitions]]
name = "vs-captioning"
model = "toy-tuned"
reference = "image.captioning"

[report]
format = "html"
compare = [["toy-base", "toy-tuned"]]
maps = false
"""
