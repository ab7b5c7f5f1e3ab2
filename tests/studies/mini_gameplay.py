"""A miniature of OpenNeuro ds004323 (Atari-style VGDL gameplay, TR 2 s) in its real layout,
with a planted effect, for the gameplay study tests.

Layout (as documented in :mod:`brainalign.cli.studies.datasets.gameplay`): two subjects x three
runs x 30 volumes of a 6x6x5 grid; raw BIDS BOLD with sidecars and events, fMRIPrep-named
MNI outputs with confounds, a three-ROI hierarchy atlas (early-visual, parietal,
frontal-motor), 32x32 PNG game frames at 2 frames per second with ``frames.tsv`` and the
keypresses in ``actions.tsv`` (and in the events TSV), and an RL-agent features table.

Planted effect: the voxels follow the action prompt's features (``game.action.next-move``,
layer :data:`PLANTED_LAYER`, ``stimulus`` pooling) of the planted model, computed with the
loader's own manifest and :func:`brainalign.features.extract.embed` on a tiny Qwen2-VL (the
UI-TARS architecture). The drive is the part of those features the reasoning prompt's features
(``game.reasoning.goal``) do not share: the two canonical directions of the action features'
principal subspace (PCA fitted on the training runs, as the fit does) least correlated with the
reasoning features' subspace. The action prompt must rank first and the unique-action region
must be the largest partition region. The effect grows along the hierarchy (early visual <
parietal < frontal-motor), as reported for action models.

A random tiny model barely lets the prompt change the frame tokens' states (attention is
almost uniform, so the prompt only adds a constant); :func:`prompt_sensitive` scales the
query/key projections of the language model so that attention is content-selective, as in
trained models, and the two prompts give different features.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

TR = 2.0
SUBJECTS = ("sub-01", "sub-02")
N_RUNS = 3
N_TRS = 30
FPS = 2.0
SHAPE = (6, 6, 5)
ROIS = {1: "early-visual", 2: "parietal", 3: "frontal-motor"}
ROI_GAIN = {"early-visual": 0.5, "parietal": 0.8, "frontal-motor": 1.1}
PLANTED_MODEL = "ui-tars-7b-dpo"
PLANTED = "game.action.next-move"
OTHER = "game.reasoning.goal"
PLANTED_LAYER = 2
PCA = 8
FRAMES_PER_WINDOW = 2
GAMES = ("chase", "helper", "bait")
KEYS = ("UP", "DOWN", "LEFT", "RIGHT", "SPACE")
SPACE = "MNI152NLin2009cAsym"
ATLAS = f"derivatives/rois/tpl-{SPACE}_res-2_atlas-hierarchy_dseg.nii.gz"
ATLAS_LABELS = f"derivatives/rois/tpl-{SPACE}_res-2_atlas-hierarchy_dseg.tsv"
RL_TABLE = "derivatives/rl-agent/features.lance"
CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter")
AFFINE = np.array([[2.0, 0, 0, -6.0], [0, 2.0, 0, -6.0], [0, 0, 2.0, -4.0], [0, 0, 0, 1]])
#: the loader options the miniature is laid out for (the recipe's [data] keys)
OPTIONS = {
    "preprocessed": "derivatives/fmriprep",
    "space": SPACE,
    "atlas": ATLAS,
    "atlas_labels": ATLAS_LABELS,
    "confounds": list(CONFOUNDS),
}


def _prefix(subject: str, run: int) -> str:
    return f"{subject}_task-gameplay_run-{run:02d}"


def atlas() -> np.ndarray:
    """Labels 1..3 in slabs along i (the hierarchy), a corner column outside the brain."""
    a = np.zeros(SHAPE, np.int16)
    a[0:2], a[2:4], a[4:6] = 1, 2, 3
    a[0, 0, :] = 0
    return a


def _frame(rng: np.random.Generator, game: int, pos: np.ndarray, enemies: np.ndarray) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (30 + 60 * game, 40, 90 - 25 * game)
    img[0:2, :], img[-2:, :], img[:, 0:2], img[:, -2:] = 200, 200, 200, 200  # walls
    for ex, ey in enemies:
        img[ey : ey + 3, ex : ex + 3] = (220, 30, 30)
    x, y = pos
    img[y : y + 4, x : x + 4] = (250, 220, 40)  # the avatar
    noise = rng.integers(0, 12, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _write_bold(path: Path, Y: np.ndarray, sel: np.ndarray) -> None:
    vol = np.zeros((*SHAPE, Y.shape[0]), np.float32)
    vol[sel] = (1000.0 + 50.0 * Y).T
    img = nib.Nifti1Image(vol, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    nib.save(img, path)


def write_layout(root: Path, seed: int = 0) -> dict:
    """Write every file of the miniature, with noise as BOLD (see :func:`write_bold`)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "ds004323 miniature", "BIDSVersion": "1.8.0", "License": "CC0"})
    )
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"{s}\n" for s in SUBJECTS))
    (root / "README").write_text("Synthetic miniature of OpenNeuro ds004323 for brainalign tests.\n")
    rois = root / ATLAS
    rois.parent.mkdir(parents=True, exist_ok=True)
    lab = atlas()
    nib.save(nib.Nifti1Image(lab, AFFINE), rois)
    (root / ATLAS_LABELS).write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in ROIS.items()))
    sel = lab > 0
    n_vox = int(sel.sum())
    fmriprep = root / "derivatives" / "fmriprep"
    (fmriprep / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (fmriprep / "dataset_description.json").write_text(
        json.dumps({"Name": "fMRIPrep outputs", "BIDSVersion": "1.8.0", "DatasetType": "derivative"})
    )
    duration = N_TRS * TR
    for subject in SUBJECTS:
        func = root / subject / "func"
        dfunc = fmriprep / subject / "func"
        func.mkdir(parents=True, exist_ok=True)
        dfunc.mkdir(parents=True, exist_ok=True)
        for run in range(1, N_RUNS + 1):
            pre = _prefix(subject, run)
            # gameplay: three game blocks per run, the avatar moves with the keypresses
            n_frames = int(duration * FPS)
            times = np.arange(n_frames) / FPS
            press_t = np.sort(rng.uniform(0.0, duration - 0.5, size=rng.integers(30, 45)))
            press_k = rng.choice(KEYS, size=len(press_t))
            stim = root / "stimuli" / subject / f"run-{run:02d}"
            (stim / "frames").mkdir(parents=True, exist_ok=True)
            pos = np.array([14, 14])
            enemies = rng.integers(3, 26, size=(2, 2))
            rows = []
            k = 0
            for i, t in enumerate(times):
                while k < len(press_t) and press_t[k] <= t:
                    step = {"UP": (0, -3), "DOWN": (0, 3), "LEFT": (-3, 0), "RIGHT": (3, 0), "SPACE": (0, 0)}
                    pos = np.clip(pos + np.array(step[press_k[k]]), 2, 26)
                    k += 1
                enemies = np.clip(enemies + rng.integers(-1, 2, size=(2, 2)), 2, 27)
                game = int(t // (duration / len(GAMES)))
                name = f"frames/frame-{i:06d}.png"
                Image.fromarray(_frame(rng, game, pos, enemies)).save(stim / name)
                rows.append(f"{t:.3f}\t{name}\n")
            (stim / "frames.tsv").write_text("onset\tframe\n" + "".join(rows))
            (stim / "actions.tsv").write_text(
                "onset\taction\n" + "".join(f"{t:.3f}\t{a}\n" for t, a in zip(press_t, press_k, strict=True))
            )
            block = duration / len(GAMES)
            events = [(g * block, block, f"vgfmri3_{name}", "n/a") for g, name in enumerate(GAMES)]
            events += [(t, 0.0, "keypress", a) for t, a in zip(press_t, press_k, strict=True)]
            events.sort()
            (func / f"{pre}_events.tsv").write_text(
                "onset\tduration\ttrial_type\tkey\n"
                + "".join(f"{o:.3f}\t{d:.3f}\t{tt}\t{key}\n" for o, d, tt, key in events)
            )
            side = {"RepetitionTime": TR, "TaskName": "gameplay"}
            (func / f"{pre}_bold.json").write_text(json.dumps(side))
            dname = f"{pre}_space-{SPACE}_res-2_desc-preproc_bold"
            (dfunc / f"{dname}.json").write_text(json.dumps({**side, "SkullStripped": False}))
            conf = rng.standard_normal((N_TRS, len(CONFOUNDS))) * 0.1
            (dfunc / f"{pre}_desc-confounds_timeseries.tsv").write_text(
                "\t".join(CONFOUNDS) + "\n" + "".join("\t".join(f"{v:.5f}" for v in r) + "\n" for r in conf)
            )
    noise = {
        (s, r): np.random.default_rng(1000 * i + r).standard_normal((N_TRS, n_vox))
        for i, s in enumerate(SUBJECTS)
        for r in range(1, N_RUNS + 1)
    }
    write_bold(root, noise)
    return {"root": root, "n_voxels": n_vox, "roi_of": np.array([ROIS[c] for c in lab[sel]])}


def write_bold(root: Path, responses: dict) -> None:
    """Write ``responses[(subject, run)]`` ``(N_TRS, n_voxels)`` as the raw and the fMRIPrep
    BOLD of that run (the same values in both)."""
    sel = atlas() > 0
    for (subject, run), Y in responses.items():
        pre = _prefix(subject, run)
        _write_bold(Path(root) / subject / "func" / f"{pre}_bold.nii.gz", Y, sel)
        dfunc = Path(root) / "derivatives" / "fmriprep" / subject / "func"
        _write_bold(dfunc / f"{pre}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz", Y, sel)


def prompt_sensitive(checkpoint: Path, out: Path, scale: float = 15.0) -> Path:
    """A copy of a tiny checkpoint whose language-model attention is content-selective: the
    query and key projections of every decoder layer are multiplied by ``scale``."""
    from safetensors.numpy import load_file, save_file

    out = Path(out)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    weights = load_file(tmp / "model.safetensors")
    for k, v in weights.items():
        if not k.startswith(("model.visual", "visual")) and k.endswith(("q_proj.weight", "k_proj.weight")):
            weights[k] = v * scale
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    tmp.rename(out)
    return out


def _subject_features(store, subject: str, instruction: str) -> tuple[np.ndarray, np.ndarray]:
    keys, X = store.read(
        instruction=instruction, layer=PLANTED_LAYER, pooling="stimulus", where=f"run LIKE '{subject}-run-%'"
    )
    runs = np.array(keys.column("run").to_pylist())
    trs = np.array(keys.column("tr").to_pylist())
    order = np.lexsort((trs, np.array([int(r.rsplit("-", 1)[1]) for r in runs])))
    return X[order], runs[order]


def planted_drive(A_raw: np.ndarray, B_raw: np.ndarray, runs: np.ndarray, test_run: str) -> np.ndarray:
    """The two directions of the action features' training-fitted PCA subspace least correlated
    with the reasoning features' subspace: ``(n_samples, 2)``, z-scored per run."""
    from brainalign.cli.align import pca_train, zscore_by_run

    train = runs != test_run
    A = zscore_by_run(pca_train(A_raw[None], train, PCA)[0], runs)
    B = zscore_by_run(pca_train(B_raw[None], train, PCA)[0], runs)
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    u, _, _ = np.linalg.svd(qa.T @ qb)
    drive = qa @ u[:, -2:]  # smallest canonical correlations last
    return zscore_by_run(drive, runs)


def build(
    root: Path,
    checkpoint: Path,
    *,
    work: Path | None = None,
    seed: int = 0,
    noise: float = 0.6,
) -> dict:
    """Write the miniature with the planted effect (see the module docstring); ``checkpoint``
    is the planted model (a prompt-sensitive tiny Qwen2-VL)."""
    from brainalign.cli.studies.datasets.gameplay import Gameplay
    from brainalign.encoders import convolve_hrf
    from brainalign.features import FeatureStore
    from brainalign.features.extract import embed

    root = Path(root)
    info = write_layout(root, seed)
    loader = Gameplay(root, OPTIONS)
    man = loader.manifest("game", frames_per_window=FRAMES_PER_WINDOW)
    work = Path(work or root.parent / f"{root.name}-planting")
    uri = work / "planted.lance"
    shutil.rmtree(uri, ignore_errors=True)
    embed(
        man,
        str(checkpoint),
        [PLANTED, OTHER],
        store=str(uri),
        layers=[PLANTED_LAYER],
        pooling=["stimulus"],
        model_name=PLANTED_MODEL,
        progress=False,
        batch_size=8,
    )
    store = FeatureStore.open(uri)
    rng = np.random.default_rng(seed + 1)
    roi_of = info["roi_of"]
    gain = np.array([ROI_GAIN[r] for r in roi_of])
    responses = {}
    for subject in SUBJECTS:
        A, runs = _subject_features(store, subject, PLANTED)
        B, runs_b = _subject_features(store, subject, OTHER)
        assert (runs == runs_b).all()
        test = loader.test_runs(subject)[0]
        drive = planted_drive(A, B, runs, test)
        W = rng.standard_normal((2, info["n_voxels"]))
        sig = convolve_hrf(drive @ W, TR, groups=runs)
        sig = sig / sig.std(0) * gain
        Y = sig + noise * rng.standard_normal(sig.shape)
        for run in range(1, N_RUNS + 1):
            responses[(subject, run)] = Y[runs == f"{subject}-run-{run}"]
    write_bold(root, responses)
    write_rl_table(root, loader)
    return {**info, "checkpoint": Path(checkpoint), "rl_table": root / RL_TABLE, "planted_store": uri}


def write_rl_table(root: Path, loader) -> Path:
    """RL-agent baseline features in the documented schema: a random two-layer 'agent' over
    the TR's frames (mean colours of a 4x4 grid) and keypress counts; layers 0 and 1."""
    from PIL import Image

    from brainalign.features import FeatureStore

    rng = np.random.default_rng(99)
    man = loader.manifest("game", frames_per_window=FRAMES_PER_WINDOW)
    obs = []
    for it in man.items:
        px = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in it.images]).mean(0) / 255
        grid = px.reshape(4, 8, 4, 8, 3).mean((1, 3)).ravel()
        keys = np.array([it.actions.count(k) for k in KEYS], np.float32)
        obs.append(np.concatenate([grid, keys]))
    obs = np.stack(obs)
    h0 = np.tanh(obs @ rng.standard_normal((obs.shape[1], 16)) * 0.3)
    h1 = np.tanh(h0 @ rng.standard_normal((16, 16)))
    path = Path(root) / RL_TABLE
    shutil.rmtree(path, ignore_errors=True)
    store = FeatureStore.create(
        path, dim=16, provenance={"model": "rl-agent", "note": "synthetic DQN-like agent"}
    )
    n = len(man.items)
    for layer, H in enumerate((h0, h1)):
        store.write(
            {
                "stimulus_set": [man.stimulus_set] * n,
                "stimulus_id": [it.stimulus_id for it in man.items],
                "run": [it.run for it in man.items],
                "tr": np.array([it.tr for it in man.items], np.int32),
                "onset_s": np.array([it.onset_s for it in man.items]),
                "window_start_s": np.array([it.window_start_s for it in man.items]),
                "window_end_s": np.array([it.window_end_s for it in man.items]),
                "model": ["rl-agent"] * n,
                "instruction_id": ["none"] * n,
                "component": ["agent"] * n,
                "layer": np.full(n, layer, np.int16),
                "pooling": ["stimulus"] * n,
            },
            H.astype(np.float32),
        )
    return path
