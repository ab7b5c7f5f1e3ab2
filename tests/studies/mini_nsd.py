"""A synthetic miniature of the Natural Scenes Dataset in its real on-disk layout, with a planted
effect.

Layout (the names of the NSD bucket; see ``brainalign.cli.studies.datasets.nsd``)::

    ROOT/nsddata/experiments/nsd/nsd_expdesign.mat      masterordering (1 x 256), subjectim (8 x 160),
                                                        sharedix (1 x 32), written by scipy.io.savemat
    ROOT/nsddata/ppdata/subj0N/func1pt8mm/roi/{nsdgeneral,streams,floc-words}.nii.gz
    ROOT/nsddata/freesurfer/subj0N/label/{streams,floc-words}.mgz.ctab
    ROOT/nsddata_betas/ppdata/subj0N/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session0{1..4}.nii.gz
    ROOT/nsddata_stimuli/stimuli/nsd/images/nsd-NNNNN.png

Scaled down, same structure: 4 sessions of ``TRIALS_PER_SESSION`` = 64 trials (NSD: 40 x 750)
on a 5x6x5 grid of 1.8 mm voxels; ``masterordering`` indexes the columns of ``subjectim``, whose
first ``N_SHARED`` columns are the shared images (``sharedix``) shown 3 times each; each subject
also sees ``N_OWN`` images of its own, ``N_TWICE`` of them twice. Betas are int16 percent
signal change x 300 with a per-session offset and gain (which the loader's per-session z-scoring
removes). ``subj02`` has a smaller nsdgeneral mask than ``subj01``.

Planted effect (``checkpoint`` given): the response-pooled layer ``PLANTED_LAYER`` features of a
tiny LLaVA under ``PLANTED`` (computed with the same library calls as the recipe: a manifest
with the loader's keys, then ``embed``), z-scored over images, drive every voxel through random
weights and a per-voxel gain, plus independent noise per trial. The tiny model's features under
different instructions are much alike (they read the same image), so the signal is mostly
(``UNIQUE``) the part of the ``PLANTED`` features that the ``REFERENCE`` (captioning) features
do not predict (the residual of a ridge regression on them) and partly the features
themselves: ``PLANTED`` must rank first, and its unique variance against ``REFERENCE`` must be
the largest region. Without a checkpoint every image gets a random signal (for the loader
tests, which need no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (5, 6, 5)
AFFINE = np.diag([1.8, 1.8, 1.8, 1.0]) + np.array(
    [[0, 0, 0, -4.5], [0, 0, 0, -5.4], [0, 0, 0, -4.5], [0, 0, 0, 0]], float
)
TRIALS_PER_SESSION = 64
N_SESSIONS = 4
N_SHARED, N_OWN, N_TWICE = 32, 128, 32
N_SUBJECT_ROWS = 8  # subjectim has one row per NSD subject
INSTRUCTIONS = ("image.captioning", "image.vqa", "image.counting")
PLANTED = "image.vqa"
REFERENCE = "image.captioning"
UNIQUE = 0.7
PLANTED_LAYER = 2
MAX_NEW_TOKENS = 4
BATCH_SIZE = 32
NOISE = 0.6  # trial noise sd, relative to a unit-variance image signal
STREAMS = {
    0: "Unknown",
    1: "early",
    2: "midventral",
    3: "midlateral",
    4: "midparietal",
    5: "ventral",
    6: "lateral",
    7: "parietal",
}
WORDS = {0: "Unknown", 1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"}


@dataclass
class MiniNSD:
    root: Path
    subjects: tuple[str, ...]
    shared: list[int]
    own: dict[str, list[int]]
    n_voxels: dict[str, int]
    groups: dict[str, dict[int, str]] = field(default_factory=dict)
    gains: dict[str, np.ndarray] = field(default_factory=dict)  # signal sd per voxel


def _ids(rng: np.random.Generator, subjects) -> tuple[list[int], dict[str, list[int]]]:
    pool = rng.choice(np.arange(1, 73001), size=N_SHARED + N_OWN * N_SUBJECT_ROWS, replace=False)
    shared = sorted(int(i) for i in pool[:N_SHARED])
    own = {
        f"subj{k + 1:02d}": [int(i) for i in pool[N_SHARED + k * N_OWN : N_SHARED + (k + 1) * N_OWN]]
        for k in range(N_SUBJECT_ROWS)
    }
    return shared, own


def masterordering(rng: np.random.Generator) -> np.ndarray:
    """1-based columns of subjectim for every trial: shared columns 3x, own columns once, the
    first ``N_TWICE`` own columns twice; shuffled, with every shared image in 3 sessions."""
    cols = [c for c in range(1, N_SHARED + 1) for _ in range(3)]
    cols += list(range(N_SHARED + 1, N_SHARED + N_OWN + 1)) + list(
        range(N_SHARED + 1, N_SHARED + N_TWICE + 1)
    )
    assert len(cols) == N_SESSIONS * TRIALS_PER_SESSION
    return rng.permutation(np.asarray(cols))


def groups(order: np.ndarray, subjectim_row: np.ndarray, shared: set[int], folds: int = 4) -> dict[int, str]:
    """The loader's keys, recomputed independently: 73k id -> run."""
    out: dict[int, str] = {}
    for t, col in enumerate(order.tolist()):
        i = int(subjectim_row[col - 1])
        if i not in out:
            session = t // TRIALS_PER_SESSION + 1
            out[i] = "test" if i in shared else f"fold{(session - 1) * folds // N_SESSIONS + 1}"
    return out


def write_images(folder: Path, ids, rng: np.random.Generator) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((32, 32), Image.BILINEAR).save(folder / f"nsd-{i:05d}.png")


def planted_features(
    root: Path, ids_runs: dict[int, str], checkpoint: Path, work: Path
) -> dict[str, dict[int, np.ndarray]]:
    """Layer ``PLANTED_LAYER`` features per 73k id under ``PLANTED`` and ``REFERENCE``, computed
    like the recipe does."""
    from brainalign.features import FeatureStore
    from brainalign.features.extract import embed
    from brainalign.features.stimuli import Manifest, Stimulus

    folder = root / "nsddata_stimuli/stimuli/nsd/images"
    items = [
        Stimulus(stimulus_id=f"nsd-{i:05d}", run=run, tr=i, images=[str(folder / f"nsd-{i:05d}.png")])
        for i, run in sorted(ids_runs.items(), key=lambda kv: (kv[1] != "test", kv[1], kv[0]))
    ]
    store = work / "planted.lance"
    embed(
        Manifest("nsd", "image", items),
        str(checkpoint),
        [PLANTED, REFERENCE],
        store=str(store),
        layers=[PLANTED_LAYER],
        pooling=["response"],
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=BATCH_SIZE,
        progress=False,
    )
    out = {}
    for ins in (PLANTED, REFERENCE):
        keys, emb = FeatureStore.open(store).read(instruction=ins, layer=PLANTED_LAYER, pooling="response")
        out[ins] = {int(t): e for t, e in zip(keys.column("tr").to_pylist(), emb, strict=True)}
    return out


def _z(a: np.ndarray) -> np.ndarray:
    sd = a.std(0)
    return (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)


def planted_signal(S: np.ndarray, C: np.ndarray, rng: np.random.Generator, n_vox: int) -> np.ndarray:
    """``(n_images, n_vox)`` unit-variance signal from planted features ``S`` and reference
    features ``C`` (both ``(n_images, dim)``): ``UNIQUE`` x the residual of ``S`` after a ridge
    regression on ``C`` plus the rest x ``S``, through the same random weights."""
    S, C = _z(S.astype(np.float64)), _z(C.astype(np.float64))
    resid = S - C @ np.linalg.solve(C.T @ C + np.eye(C.shape[1]), C.T @ S)
    W = rng.standard_normal((S.shape[1], n_vox))
    return _z(UNIQUE * _z(resid @ W) + (1 - UNIQUE) * _z(S @ W))


def _save(data: np.ndarray, path: Path, dtype=np.int16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype), AFFINE)
    img.header.set_data_dtype(dtype)
    nib.save(img, path)


def _mask(subject: str) -> np.ndarray:
    """nsdgeneral: 1 in, 0 not in the ROI, -1 outside the brain."""
    m = np.ones(SHAPE, np.int16)
    m[0, 0, :] = -1
    m[-1, -1, :] = -1
    m[:, 0, 0] = 0
    if subject != "subj01":  # a smaller mask: another native grid size in real NSD
        m[:, :, -1] = 0
    return m


def _streams() -> np.ndarray:
    s = np.zeros(SHAPE, np.int16)
    s[:, :, :2] = 1  # early
    s[:, :, 2] = 5  # ventral
    s[:, :, 3:] = 6  # lateral
    s[2, 3, :] = 0  # unlabelled voxels inside the mask
    return s


def _words() -> np.ndarray:
    w = np.zeros(SHAPE, np.int16)
    w[1:3, 2:4, 2] = 2  # VWFA-1 inside the ventral stream
    w[3, 4, 3] = 1  # OWFA
    return w


def _ctab(path: Path, names: dict[int, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in names.items()))


def build(
    root: Path,
    *,
    subjects: tuple[str, ...] = ("subj01",),
    checkpoint: Path | None = None,
    work: Path | None = None,
    seed: int = 0,
) -> MiniNSD:
    """Write the miniature into ``root``; see the module docstring."""
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    shared, own = _ids(rng, subjects)
    subjectim = np.stack([np.asarray(shared + own[f"subj{k + 1:02d}"]) for k in range(N_SUBJECT_ROWS)])
    order = masterordering(rng)
    design = root / "nsddata/experiments/nsd/nsd_expdesign.mat"
    design.parent.mkdir(parents=True, exist_ok=True)
    savemat(
        design,
        {
            "masterordering": order[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": np.asarray(shared, np.float64)[None, :],
        },
    )
    info = MiniNSD(root, tuple(subjects), shared, {s: own[s] for s in subjects}, {})
    images = root / "nsddata_stimuli/stimuli/nsd/images"
    write_images(images, shared + [i for s in subjects for i in own[s]], rng)
    for s in subjects:
        info.groups[s] = {
            i: (r if r == "test" else f"{s}-{r}")
            for i, r in groups(order, subjectim[int(s[4:]) - 1], set(shared)).items()
        }
    feats = None
    if checkpoint is not None:
        work = Path(work or root.parent / "mini_nsd_work")
        work.mkdir(parents=True, exist_ok=True)
        feats = planted_features(
            root, {i: r for s in subjects for i, r in info.groups[s].items()}, checkpoint, work
        )

    for s in subjects:
        srng = np.random.default_rng([seed, int(s[4:])])
        roi = root / "nsddata/ppdata" / s / "func1pt8mm/roi"
        mask = _mask(s)
        _save(mask, roi / "nsdgeneral.nii.gz")
        _save(_streams(), roi / "streams.nii.gz")
        _save(_words(), roi / "floc-words.nii.gz")
        labels = root / "nsddata/freesurfer" / s / "label"
        _ctab(labels / "streams.mgz.ctab", STREAMS)
        _ctab(labels / "floc-words.mgz.ctab", WORDS)
        sel = mask > 0
        n_vox = int(sel.sum())
        info.n_voxels[s] = n_vox
        ids = list(info.groups[s])
        if feats is not None and all(i in feats[PLANTED] for i in ids):
            S = np.stack([feats[PLANTED][i] for i in ids])
            C = np.stack([feats[REFERENCE][i] for i in ids])
            sig = planted_signal(S, C, srng, n_vox)
        else:
            sig = srng.standard_normal((len(ids), n_vox))
        info.gains[s] = srng.uniform(0.6, 1.4, n_vox)
        sig = (sig - sig.mean(0)) / sig.std(0) * info.gains[s]
        row = dict(zip(ids, range(len(ids)), strict=True))
        betas = root / "nsddata_betas/ppdata" / s / "func1pt8mm/betas_fithrf_GLMdenoise_RR"
        col_ids = subjectim[int(s[4:]) - 1]
        for k in range(N_SESSIONS):
            trials = order[k * TRIALS_PER_SESSION : (k + 1) * TRIALS_PER_SESSION]
            Y = sig[[row[int(col_ids[c - 1])] for c in trials]] + NOISE * srng.standard_normal(
                (len(trials), n_vox)
            )
            psc = 1.5 * Y * srng.uniform(0.8, 1.2) + srng.normal(0.5, 0.3, n_vox)  # session gain/offset
            vol = srng.normal(0, 1, (*SHAPE, len(trials)))
            vol[sel] = psc.T
            _save(np.rint(vol * 300), betas / f"betas_session{k + 1:02d}.nii.gz")
    return info
