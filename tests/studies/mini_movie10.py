"""A synthetic miniature of CNeuroMod Movie10 in its real on-disk layout, with a planted effect.

Layout (the names of the movie10 BIDS dataset, its movie10.fmriprep derivatives and the
movie10.stimuli segments)::

    ROOT/dataset_description.json
    ROOT/task-{bourne01,wolf01,life01}_events.tsv           onset, duration, stim_file
    ROOT/stimuli/{bourne,wolf,life}/<segment>.mkv           MPEG-4 video + PCM audio (Matroska)
    ROOT/derivatives/fmriprep/sub-0{1,2}/ses-00N/func/
        sub-01_ses-001_task-bourne01_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz (+ .json)
        sub-01_ses-001_task-bourne01_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz
        sub-01_ses-001_task-bourne01_desc-confounds_timeseries.tsv
        ... task-wolf01 (ses-002), task-life01_run-1 (ses-003), task-life01_run-2 (ses-004)
    ROOT/derivatives/atlas/tpl-MNI152NLin2009cAsym_res-02_atlas-Glasser_dseg.nii.gz (+ _dseg.tsv)

A 6x6x5 grid of 2 mm voxels, TR 1.49 s, ~30 volumes per run; Life was watched twice. The
fMRIPrep brain masks leave out one column of voxels (and one more voxel in one run of
``sub-02``), so the common mask is their intersection. Three Glasser-named ROIs: ``L_V1_ROI``
and ``L_MT_ROI`` follow the planted features, ``L_44_ROI`` is noise.

Planted effect: the response-pooled layer ``PLANTED_LAYER`` features of the tiny Qwen2.5-VL
under ``PLANTED`` (computed with the same library calls as the recipe: ``video_clips`` per
segment, then ``embed``) are z-scored per run, projected on random voxel weights, convolved with
the SPM HRF and added, the same for both subjects, to independent noise of each subject and
viewing. The recipe must rank ``PLANTED`` first for that model.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

TR = 1.49
SEGMENTS = {"bourne01": 30, "wolf01": 30, "life01": 32}
SESSIONS = {("bourne01", 1): "001", ("wolf01", 1): "002", ("life01", 1): "003", ("life01", 2): "004"}
VIEWINGS = {"bourne01": 1, "wolf01": 1, "life01": 2}
SUBJECTS = ("sub-01", "sub-02")
SHAPE = (6, 6, 5)
ROIS = {1: "L_V1_ROI", 2: "L_MT_ROI", 3: "L_44_ROI"}
SIGNAL_ROIS = ("L_V1_ROI", "L_MT_ROI")
INSTRUCTIONS = ("video.captioning", "video.emotion", "video.action-recognition")
PLANTED = "video.captioning"
PLANTED_LAYER = 2
FRAMES_PER_CLIP = 4
MAX_NEW_TOKENS = 4
BATCH_SIZE = 32
FPS = 8
FRAME_SIZE = (56, 56)
AUDIO_RATE = 16000
SPACE = "MNI152NLin2009cAsym"
ATLAS = "derivatives/atlas/tpl-MNI152NLin2009cAsym_res-02_atlas-Glasser_dseg.nii.gz"
ATLAS_LABELS = "derivatives/atlas/tpl-MNI152NLin2009cAsym_res-02_atlas-Glasser_dseg.tsv"
AFFINE = np.array([[2.0, 0, 0, -6.0], [0, 2.0, 0, -8.0], [0, 0, 2.0, -4.0], [0, 0, 0, 1]])


def movie(segment: str) -> str:
    return segment.rstrip("0123456789")


def video_seconds(segment: str) -> float:
    """The video is a little shorter than its run (the scanner keeps going during the fade-out)."""
    return SEGMENTS[segment] * TR - 0.6


def write_video(path: Path, seconds: float, seed: int) -> Path:
    """A Matroska file with an MPEG-4 video track (four coloured quadrants whose colours drift
    to new random values every 0.75 s) and a mono 16-bit PCM audio track (noise bursts)."""
    import av

    rng = np.random.default_rng(seed)
    n = round(seconds * FPS)
    hold = int(0.75 * FPS)
    colours = rng.integers(0, 256, (n // hold + 2, 4, 3)).astype(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = FRAME_SIZE
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("mpeg4", rate=FPS)
        vs.height, vs.width = h, w
        vs.pix_fmt = "yuv420p"
        aus = c.add_stream("pcm_s16le", rate=AUDIO_RATE)
        aus.layout = "mono"
        for i in range(n):
            k, a = divmod(i, hold)
            col = (1 - a / hold) * colours[k] + (a / hold) * colours[k + 1]
            img = np.empty((h, w, 3), np.uint8)
            img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = col[0], col[1]
            img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = col[2], col[3]
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        n_samples = int(seconds * AUDIO_RATE)
        env = np.repeat(rng.uniform(0.05, 1.0, n_samples // 4000 + 1), 4000)[:n_samples]
        samples = (rng.standard_normal(n_samples) * env * 6000).astype(np.int16)
        for s in range(0, n_samples, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, s : s + 1024], format="s16", layout="mono")
            frame.sample_rate = AUDIO_RATE
            for pkt in aus.encode(frame):
                c.mux(pkt)
        for pkt in aus.encode():
            c.mux(pkt)
    return path


def planted_manifest(root: Path):
    """The video manifest the recipe builds (``video_clips`` per segment), from the files."""
    from brainalign.features import stimuli

    parts = [
        stimuli.video_clips(
            root / "stimuli" / movie(seg) / f"{seg}.mkv",
            tr=TR,
            n_trs=n,
            frames_per_clip=FRAMES_PER_CLIP,
            run=seg,
            stimulus_set="movie10",
        )
        for seg, n in SEGMENTS.items()
    ]
    return stimuli.concat(parts, "movie10")


def planted_features(root: Path, checkpoint: Path, work: Path) -> np.ndarray:
    """``(n_trs_total, dim)``: the planted instruction's layer, response pooling, in manifest order."""
    from brainalign.features import FeatureStore
    from brainalign.features.extract import embed

    man = planted_manifest(root)
    uri = work / "planted.lance"
    embed(
        man,
        str(checkpoint),
        [PLANTED],
        store=str(uri),
        layers=[PLANTED_LAYER],
        pooling=("response",),
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=BATCH_SIZE,
        model_name="planted",
        dtype="float32",
        progress=False,
    )
    keys, emb = FeatureStore.open(uri).read(instruction=PLANTED, layer=PLANTED_LAYER, pooling="response")
    pos = {
        (r, t): i
        for i, (r, t) in enumerate(
            zip(keys.column("run").to_pylist(), keys.column("tr").to_pylist(), strict=True)
        )
    }
    order = [pos[(s.run, s.tr)] for s in man.items]
    return emb[order]


def _atlas() -> np.ndarray:
    atlas = np.zeros(SHAPE, np.int16)
    atlas[0:2], atlas[2:4], atlas[4:6] = 1, 2, 3
    return atlas


def _brain_mask(subject: str, segment: str) -> np.ndarray:
    m = np.ones(SHAPE, bool)
    m[0, 0, :] = False  # outside the brain in every run
    if subject == "sub-02" and segment == "wolf01":
        m[5, 5, 4] = False  # one run's mask is a little smaller: the common mask drops it
    return m


def _save_nifti(data: np.ndarray, path: Path, tr: float | None = None) -> None:
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _signal(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n_trs_total, n_grid_voxels)`` planted time courses (unit variance, zero outside the
    signal ROIs), grid voxels in C order."""
    from brainalign.encoders import convolve_hrf

    runs = np.repeat(list(SEGMENTS), list(SEGMENTS.values()))
    X = np.empty_like(features, dtype=np.float64)
    for r in SEGMENTS:
        m = runs == r
        sd = features[m].std(0)
        X[m] = (features[m] - features[m].mean(0)) / np.where(sd > 0, sd, 1.0)
    atlas = _atlas().reshape(-1)
    signal_vox = np.isin(atlas, [k for k, v in ROIS.items() if v in SIGNAL_ROIS])
    W = rng.standard_normal((X.shape[1], int(signal_vox.sum())))
    S = convolve_hrf(X @ W, TR, groups=runs)
    S = (S - S.mean(0)) / S.std(0)
    out = np.zeros((len(X), atlas.size))
    out[:, signal_vox] = S
    return out


def build(
    root: Path, checkpoint: Path, *, seed: int = 0, noise: float = 0.8, work: Path | None = None
) -> dict:
    """Write the miniature into ``root``; ``checkpoint`` is the tiny Qwen2.5-VL whose features
    are planted. Returns what the tests need to know."""
    root = Path(root)
    work = Path(work or root.parent / f"{root.name}-work")
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "cneuromod movie10 (synthetic miniature)", "BIDSVersion": "1.6.0"})
    )
    for i, seg in enumerate(SEGMENTS):
        write_video(root / "stimuli" / movie(seg) / f"{seg}.mkv", video_seconds(seg), seed=100 + i)
        (root / f"task-{seg}_events.tsv").write_text(
            f"onset\tduration\tstim_file\n0.0\t{video_seconds(seg):.2f}\t{movie(seg)}/{seg}.mkv\n"
        )
    features = planted_features(root, checkpoint, work)
    S = _signal(features, rng)
    starts = np.cumsum([0, *SEGMENTS.values()])
    fmriprep = root / "derivatives" / "fmriprep"
    fmriprep.mkdir(parents=True, exist_ok=True)
    (fmriprep / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fMRIPrep - fMRI PREProcessing workflow",
                "BIDSVersion": "1.4.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "20.2.5"}],
            }
        )
    )
    for sub in SUBJECTS:
        for k, (seg, n) in enumerate(SEGMENTS.items()):
            for view in range(1, VIEWINGS[seg] + 1):
                ses = SESSIONS[(seg, view)]
                n_vols = n + (1 if (sub, seg, view) == ("sub-02", "life01", 2) else 0)  # one extra volume
                sig = S[starts[k] : starts[k] + n]
                sig = np.vstack([sig, sig[-1:]])[:n_vols]
                Y = 1000.0 + 20.0 * (sig + noise * rng.standard_normal(sig.shape))
                mask = _brain_mask(sub, seg)
                vol = (Y.reshape(n_vols, *SHAPE) * mask).transpose(1, 2, 3, 0).astype(np.float32)
                run = f"_run-{view}" if VIEWINGS[seg] > 1 else ""
                prefix = f"{sub}_ses-{ses}_task-{seg}{run}"
                func = fmriprep / sub / f"ses-{ses}" / "func"
                bold = func / f"{prefix}_space-{SPACE}_desc-preproc_bold.nii.gz"
                _save_nifti(vol, bold, TR)
                bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
                    json.dumps({"RepetitionTime": TR, "SkullStripped": False, "TaskName": seg})
                )
                _save_nifti(mask.astype(np.uint8), func / f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz")
                cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement"]
                conf = rng.normal(0, 0.05, (n_vols, len(cols)))
                lines = ["\t".join(cols)]
                for t in range(n_vols):
                    vals = [f"{v:.5f}" for v in conf[t]]
                    if t == 0:
                        vals[-1] = "n/a"
                    lines.append("\t".join(vals))
                (func / f"{prefix}_desc-confounds_timeseries.tsv").write_text("\n".join(lines) + "\n")
    atlas_path = root / ATLAS
    _save_nifti(_atlas(), atlas_path)
    (root / ATLAS_LABELS).write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in ROIS.items()))
    return {
        "root": root,
        "work": work,
        "features": features,
        "subjects": list(SUBJECTS),
        "segments": dict(SEGMENTS),
        "atlas": atlas_path,
        "atlas_labels": root / ATLAS_LABELS,
        "n_voxels": int(np.prod(SHAPE)) - SHAPE[2] - 1,
    }


def write_unimodal_tables(root: Path, out: Path) -> dict[str, Path]:
    """Stand-ins for the unimodal baselines the extractor cannot embed (VideoMAE, AST): per-TR
    features computed from the miniature's media and written as features tables with the keys
    the recipe's ``source = "table"`` models expect (instruction ``none``, pooling ``stimulus``)."""
    from brainalign.features import stimuli

    out.mkdir(parents=True, exist_ok=True)
    man = planted_manifest(root)
    # video: mean colour of each quadrant over the clip's frames (12 values); layer 1 a random
    # nonlinear mixture of them
    vid = np.stack([_quadrant_colours(stimuli.load_video_clip(item)) for item in man.items])
    rng = np.random.default_rng(3)
    layers = {0: vid / 255.0, 1: np.tanh((vid / 255.0 - 0.5) @ rng.standard_normal((12, 12)))}
    paths = {"videomae-base": out / "videomae-base.lance"}
    _write(paths["videomae-base"], "videomae-base", "vision", man, layers)
    # audio: log energy of four quarter-windows per TR, from the .mkv sound track
    audio = []
    for seg, n in SEGMENTS.items():
        wav = _decode_audio(root / "stimuli" / movie(seg) / f"{seg}.mkv")
        for t in range(n):
            w = wav[int(t * TR * AUDIO_RATE) : int((t + 1) * TR * AUDIO_RATE)]
            audio.append([np.log(np.mean(q.astype(np.float64) ** 2) + 1.0) for q in np.array_split(w, 4)])
    audio = np.asarray(audio)
    layers = {0: audio, 1: np.tanh(audio @ rng.standard_normal((4, 4)) / 10.0)}
    paths["ast-audioset"] = out / "ast-audioset.lance"
    _write(paths["ast-audioset"], "ast-audioset", "audio", man, layers)
    return paths


def _quadrant_colours(frames: np.ndarray) -> np.ndarray:
    """Mean RGB of each quadrant over the frames ``(n, H, W, 3)``: 12 values."""
    h, w = frames.shape[1] // 2, frames.shape[2] // 2
    quads = [frames[:, :h, :w], frames[:, :h, w:], frames[:, h:, :w], frames[:, h:, w:]]
    return np.concatenate([q.reshape(-1, 3).mean(0) for q in quads])


def _decode_audio(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])])


def _write(uri: Path, model: str, component: str, man, layers: dict[int, np.ndarray]) -> None:
    from brainalign.features import FeatureStore

    dim = next(iter(layers.values())).shape[1]
    store = FeatureStore.create(uri, dim=dim, provenance={"model": model, "note": "synthetic stand-in"})
    n = len(man.items)
    for layer, emb in layers.items():
        store.write(
            {
                "stimulus_set": [man.stimulus_set] * n,
                "stimulus_id": [s.stimulus_id for s in man.items],
                "run": [s.run for s in man.items],
                "tr": [s.tr for s in man.items],
                "onset_s": [s.onset_s for s in man.items],
                "window_start_s": [s.window_start_s for s in man.items],
                "window_end_s": [s.window_end_s for s in man.items],
                "model": [model] * n,
                "instruction_id": ["none"] * n,
                "component": [component] * n,
                "layer": [layer] * n,
                "pooling": ["stimulus"] * n,
            },
            np.asarray(emb, np.float32),
        )


DLABEL = "derivatives/atlas/tpl-fsLR_den-91k_atlas-Glasser_dseg.dlabel.nii"


def _brain_models(n_left: int = 12, n_right: int = 12, n_vertices: int = 32492):
    left = nib.cifti2.BrainModelAxis.from_mask(np.arange(n_vertices) < n_left, name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_mask(np.arange(n_vertices) < n_right, name="CortexRight")
    return left + right


def add_fslr(root: Path, *, seed: int = 1) -> dict:
    """Add fMRIPrep's CIFTI outputs (``_space-fsLR_den-91k_bold.dtseries.nii``, a small brain
    model standing in for the 91k grayordinates) next to every volume run of the miniature,
    plus a dense label file with two Glasser-named ROIs. The two subjects share one signal."""
    rng = np.random.default_rng(seed)
    bm = _brain_models()
    shared = {seg: rng.standard_normal((n + 1, len(bm))) for seg, n in SEGMENTS.items()}
    for bold in sorted(
        (root / "derivatives" / "fmriprep").glob("sub-*/ses-*/func/*_desc-preproc_bold.nii.gz")
    ):
        n_vols = nib.load(str(bold)).shape[3]
        seg = bold.name.split("_task-")[1].split("_")[0]
        data = shared[seg][:n_vols] + rng.standard_normal((n_vols, len(bm)))
        series = nib.cifti2.SeriesAxis(start=0.0, step=TR, size=n_vols, unit="SECOND")
        out = bold.with_name(bold.name.split("_space-")[0] + "_space-fsLR_den-91k_bold.dtseries.nii")
        nib.save(nib.Cifti2Image(data.astype(np.float32), header=(series, bm)), str(out))
    labels = nib.cifti2.LabelAxis(
        ["Glasser"], {0: ("???", (0, 0, 0, 0)), 1: ("L_V1_ROI", (1, 0, 0, 1)), 2: ("R_V1_ROI", (0, 0, 1, 1))}
    )
    codes = np.r_[np.ones(12), np.full(12, 2)][None].astype(np.float32)
    path = root / DLABEL
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Cifti2Image(codes, header=(labels, bm)), str(path))
    return {"dlabel": path, "n_grayordinates": len(bm)}
