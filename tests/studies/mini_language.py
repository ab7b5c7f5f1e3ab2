"""A miniature of the language study's datasets in their real layouts, with a planted effect.

Writes, under one directory (the recipe's ``--data``)::

    pereira2018/M02|M04|M07/data_384sentences.mat, data_243sentences.mat   (scipy.io.savemat, the
                                      real variable names; 3 subjects, ~180 voxels, 16/12 passages)
    wehbe2014/subject_1.mat           (data, time, words, meta; 4 runs x 40 TRs of 2 s, a word every
                                      0.5 s)
    blank2014/sub-<UID>.csv + audio/<n>_aligned.TextGrid   (3 subjects, 3 stories x 30 TRs, 12 fROIs)
    naturalstories/naturalstories_RTS/processed_RTs.tsv + all_stories.tok   (2 stories, 6 readers)

Planted effect: the responses of every fMRI dataset are generated from the features of ONE
model (the "instruction-tuned" tiny Llama) at ONE layer, computed with the same library calls the
recipe runs (the loader's manifest -> :func:`brainalign.features.extract.embed`, pooling
``last``), through each dataset's alignment (Pereira: one beta per sentence; Blank: a 2-TR shift;
Wehbe: Lanczos to TRs, 10 principal components, FIR delays 1-4), with voxel weights shared
across subjects plus independent noise. The reading times are generated from the same model's
surprisal minus the base model's (:func:`word_surprisal`). The recipe must rank that model
first and show tuned > base.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from brainalign.cli.studies.datasets.language import (
    NATURAL_STORIES,
    Blank2014,
    Pereira2018,
    Wehbe2014,
    word_surprisal,
)

PLANTED_LAYER = 2
RHO = 0.6  # fraction of a signal voxel's variance explained by the planted features
RHO_BLANK = 0.85  # fROI means: stronger signal (TR windows of one story overlap, so models look alike)

ADJ = [
    "old",
    "quiet",
    "bright",
    "small",
    "clever",
    "angry",
    "gentle",
    "tall",
    "lazy",
    "brave",
    "cold",
    "busy",
]
NOUN = [
    "farmer",
    "river",
    "teacher",
    "dog",
    "city",
    "sailor",
    "garden",
    "child",
    "storm",
    "baker",
    "king",
    "bird",
]
VERB = [
    "watched",
    "followed",
    "found",
    "painted",
    "crossed",
    "visited",
    "carried",
    "called",
    "missed",
    "built",
]
PLACE = ["old bridge", "market", "forest", "harbour", "mountain", "school", "castle", "station", "village"]


def sentences(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct short sentences from templates."""
    out: list[str] = []
    seen = set()
    while len(out) < n:
        s = (
            f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)} "
            f"near the {rng.choice(PLACE)}."
        )
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def words(n: int, rng: np.random.Generator) -> list[str]:
    return " ".join(sentences(n // 8 + 2, rng)).split()[:n]


# ---- MATLAB helpers -----------------------------------------------------------------------------
def _cell_row(items) -> np.ndarray:
    a = np.empty((1, len(items)), dtype=object)
    for i, x in enumerate(items):
        a[0, i] = x
    return a


def _cell_col(items) -> np.ndarray:
    a = np.empty((len(items), 1), dtype=object)
    for i, x in enumerate(items):
        a[i, 0] = x
    return a


def _savemat(path: Path, variables: dict) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), variables, do_compression=False)


def _signal(X: np.ndarray, n_vox: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance voxel signals ``(n, n_vox)`` linear in the z-scored ``X (n, d)``."""
    Xz = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    S = Xz @ rng.standard_normal((X.shape[1], n_vox))
    return (S - S.mean(0)) / np.where(S.std(0) > 0, S.std(0), 1.0)


def planted_features(manifest, checkpoint: Path, tmp: Path, layer: int = PLANTED_LAYER) -> np.ndarray:
    """Layer ``layer`` of ``checkpoint`` (pooling ``last``, no instruction) for every manifest
    item, in manifest order: ``(n_items, dim)``."""
    from brainalign.features import FeatureStore
    from brainalign.features.extract import embed

    store = tmp / f"planted-{manifest.stimulus_set}.lance"
    if store.exists():
        shutil.rmtree(store)
    embed(
        manifest,
        str(checkpoint),
        ["none"],
        store=str(store),
        layers=[layer],
        pooling=["last"],
        model_name="planted",
        progress=False,
        batch_size=16,
    )
    keys, emb = FeatureStore.open(store).read(columns=["stimulus_id"])
    row = {sid: i for i, sid in enumerate(keys.column("stimulus_id").to_pylist())}
    return emb[[row[it.stimulus_id] for it in manifest.items]]


# ---- Pereira 2018 ---------------------------------------------------------------------------------
PEREIRA_SUBJECTS = ("M02", "M04", "M07")
PEREIRA_EXPERIMENTS = {"384": (4, 4, (4,)), "243": (4, 3, (3, 4))}  # categories, passages/category, sentences
ATLASES = ["aal_1ofN", "languageLH", "languageRH"]
LANG_ROIS = {"languageLH": ["LH_IFG", "LH_PostTemp", "LH_AntTemp"], "languageRH": ["RH_IFG", "RH_PostTemp"]}


def _pereira_voxels(subject: str):
    """Columns of one subject: coordinates (1-based) on a 20^3 grid, atlas ROI membership."""
    base = [(x, y, z) for x in range(3, 9) for y in range(3, 9) for z in range(3, 8)]  # 180 voxels
    coords = list(base)
    if subject == "M07":  # a subject-specific mask: 5 voxels missing, 3 extra
        coords = [*coords[5:], (15, 15, 15), (15, 15, 16), (15, 16, 15)]
    coords = np.array(coords)
    # language ROIs: x < 7 (LH rois by y band) / x >= 7 (RH); z == 7 is outside both (aal only)
    roi_of = []
    for x, y, z in coords:
        if z == 7 or x > 12:
            roi_of.append(None)
        elif x < 7:
            roi_of.append(("languageLH", LANG_ROIS["languageLH"][min(y - 3, 5) // 2]))
        else:
            roi_of.append(("languageRH", LANG_ROIS["languageRH"][min(y - 3, 5) // 3]))
    return coords, roi_of


def _pereira_meta(coords: np.ndarray, roi_of: list) -> dict:
    n = len(coords)
    rois_cells, col_cells, multimask = [], [], []
    # aal_1ofN: two AAL regions by x
    aal = ["Frontal_Inf_Oper_L", "Temporal_Mid_L"]
    aal_idx = [1 if x < 7 else 2 for x, _, _ in coords]
    rois_cells.append(_cell_col(aal))
    col_cells.append(_cell_col([np.array([[j + 1] for j in range(n) if aal_idx[j] == k]) for k in (1, 2)]))
    multimask.append(np.array(aal_idx, float)[:, None])
    for atlas in ("languageLH", "languageRH"):
        names = LANG_ROIS[atlas]
        rois_cells.append(_cell_col(names))
        cols = []
        mm = np.zeros((n, 1))
        for k, name in enumerate(names):
            js = [j for j in range(n) if roi_of[j] == (atlas, name)]
            cols.append(np.array([[j + 1] for j in js], dtype=float).reshape(-1, 1))
            mm[js, 0] = k + 1
        col_cells.append(_cell_col(cols))
        multimask.append(mm)
    return {
        "nVoxels": float(n),
        "dimensions": np.array([[20, 20, 20]], float),
        "colToCoord": coords.astype(float),
        "indicesIn3D": np.array(
            [[(z - 1) * 400 + (y - 1) * 20 + x] for x, y, z in coords], dtype=float
        ),  # MATLAB linear index
        "atlases": _cell_row(ATLASES),
        "rois": _cell_row(rois_cells),
        "roiColumns": _cell_row(col_cells),
        "roiMultimask": _cell_row(multimask),
        "roiMultimaskAAL": np.array(aal_idx, float)[:, None],
    }


def write_pereira(root: Path, checkpoint: Path | None, tmp: Path, seed: int = 0) -> None:
    """Both experiments for :data:`PEREIRA_SUBJECTS`; responses planted from ``checkpoint``
    (zeros when None, e.g. for check-only tests)."""
    rng = np.random.default_rng(seed)
    vox = {s: _pereira_voxels(s) for s in PEREIRA_SUBJECTS}
    for exp, (n_cat, per_cat, lengths) in PEREIRA_EXPERIMENTS.items():
        n_pass = n_cat * per_cat
        n_sent_of = [lengths[p % len(lengths)] for p in range(n_pass)]
        sents = sentences(sum(n_sent_of), rng)
        passage = np.repeat(np.arange(1, n_pass + 1), n_sent_of)
        pcat = np.repeat(np.arange(1, n_cat + 1), per_cat)  # passages are grouped by category
        cats = ["animal", "building", "weather", "music", "clothing"][:n_cat]
        common = {
            "keySentences": _cell_col(sents),
            "labelsPassageForEachSentence": passage[:, None].astype(float),
            "labelsPassageCategory": pcat[:, None].astype(float),
            "keyPassageCategory": _cell_row(cats),
            "keyPassages": _cell_col([f"{cats[c - 1]}_{k % per_cat + 1}" for k, c in enumerate(pcat)]),
            "labelsSentences": np.arange(1, len(sents) + 1, dtype=float)[:, None],
        }
        for s in PEREIRA_SUBJECTS:
            coords, roi_of = vox[s]
            _savemat(
                root / s / f"data_{exp}sentences.mat",
                {
                    **common,
                    "examples_passagesentences": np.zeros((len(sents), len(coords))),
                    "examples_passages": np.zeros((n_pass, len(coords))),
                    "meta": _pereira_meta(coords, roi_of),
                },
            )
        if checkpoint is None:
            continue
        man = Pereira2018(root, {"experiment": exp}).manifest("text")
        X = planted_features(man, checkpoint, tmp)
        union = sorted({tuple(c) for s in PEREIRA_SUBJECTS for c in vox[s][0].tolist()})
        S = _signal(X, len(union), rng)
        col_of = {c: i for i, c in enumerate(union)}
        for s in PEREIRA_SUBJECTS:
            coords, roi_of = vox[s]
            idx = [col_of[tuple(c)] for c in coords.tolist()]
            Y = np.sqrt(RHO) * S[:, idx] + np.sqrt(1 - RHO) * rng.standard_normal((len(sents), len(coords)))
            path = root / s / f"data_{exp}sentences.mat"
            import scipy.io

            d = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
            d["examples_passagesentences"] = 1.5 * Y + 0.2
            d["examples_passages"] = np.stack([Y[passage == p].mean(0) for p in range(1, n_pass + 1)])
            _savemat(path, d)


# ---- Wehbe 2014 -----------------------------------------------------------------------------------
WEHBE_RUNS, WEHBE_TRS, WEHBE_TR = 4, 32, 2.0
WEHBE_WORDS = (2, 26)  # words shown from TR 2 to TR 26 of each run
WEHBE_CONTEXT = 20  # the recipe's context_words


def _wehbe_words(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Words, their start times (experiment seconds) and the TR start times of each run."""
    per_run = int((WEHBE_WORDS[1] - WEHBE_WORDS[0]) * WEHBE_TR / 0.5)
    text = words(per_run * WEHBE_RUNS, rng)
    text = [("+" if i % 37 == 36 else w) for i, w in enumerate(text)]  # paragraph marks as displayed
    run_start = np.array([10.0 + r * (WEHBE_TRS * WEHBE_TR + 16.0) for r in range(WEHBE_RUNS)])
    starts = np.concatenate(
        [run_start[r] + WEHBE_WORDS[0] * WEHBE_TR + 0.5 * np.arange(per_run) for r in range(WEHBE_RUNS)]
    )
    return text, starts, run_start


def write_wehbe(root: Path, checkpoint: Path | None, tmp: Path, seed: int = 1, subjects=(1,)) -> None:
    from brainalign.cli.align import lanczos_resample

    rng = np.random.default_rng(seed)
    text, starts, run_start = _wehbe_words(rng)
    t = np.concatenate([run_start[r] + WEHBE_TR * np.arange(WEHBE_TRS) for r in range(WEHBE_RUNS)])
    run = np.repeat(np.arange(1, WEHBE_RUNS + 1), WEHBE_TRS)
    coords = np.array([(x, y, z) for x in range(10, 16) for y in range(10, 15) for z in range(5, 9)])  # 120
    names = [f"AAL_{k}" for k in range(1, 117)] + ["Not_labelled"]
    roi_num = np.where(coords[:, 0] < 13, 81, 85)  # two AAL regions (Temporal_Sup_L-like numbers)
    names[80], names[84] = "Temporal_Sup_L", "Temporal_Mid_L"
    words_struct = np.zeros((1, len(text)), dtype=[("text", object), ("start", object), ("length", object)])
    for i, (w, st) in enumerate(zip(text, starts, strict=True)):
        words_struct[0, i] = (np.array([w]), np.array([[st]]), np.array([[0.5]]))
    meta = {
        "subject": 1.0,
        "nTRs": float(len(t)),
        "nvoxels": float(len(coords)),
        "dimx": 51.0,
        "dimy": 61.0,
        "dimz": 23.0,
        "colToCoord": coords.astype(float),
        "colToROInum": roi_num[:, None].astype(float),
        "ROInumToName": _cell_row(names),
        "voxel_size": np.array([[3.0, 3.0, 3.0]]),
        "matrix": np.array([[-3, 0, 0, 78], [0, 3, 0, -112], [0, 0, 3, -50], [0, 0, 0, 1]], float),
    }
    base = {"time": np.stack([t, run], 1).astype(float), "words": words_struct, "meta": meta}
    for s in subjects:
        _savemat(root / f"subject_{s}.mat", {**base, "data": np.zeros((len(t), len(coords)))})
    if checkpoint is None:
        return
    loader = Wehbe2014(root, {"context_words": WEHBE_CONTEXT})
    man = loader.manifest("text")
    X = planted_features(man, checkpoint, tmp)  # word level
    on = np.array([it.onset_s for it in man.items])
    runs = np.array([it.run for it in man.items])
    tr_on = np.arange(WEHBE_TRS) * WEHBE_TR
    F = np.concatenate(
        [lanczos_resample(X[runs == f"run-{r}"], on[runs == f"run-{r}"], tr_on) for r in range(1, 5)]
    )
    F = (F - F.mean(0)) / np.where(F.std(0) > 0, F.std(0), 1.0)
    _, _, Vt = np.linalg.svd(F, full_matrices=False)
    P = F @ Vt[:10].T
    sig = np.zeros((len(t), len(coords)))
    for d in (1, 2, 3, 4):
        W = rng.standard_normal((P.shape[1], len(coords)))
        for r in range(WEHBE_RUNS):
            a = r * WEHBE_TRS
            sig[a + d : a + WEHBE_TRS] += P[a : a + WEHBE_TRS - d] @ W
    sig = (sig - sig.mean(0)) / sig.std(0)
    for s in subjects:
        Y = np.sqrt(RHO) * sig + np.sqrt(1 - RHO) * rng.standard_normal(sig.shape)
        _savemat(root / f"subject_{s}.mat", {**base, "data": 100.0 + 5.0 * Y})


# ---- Blank 2014 ---------------------------------------------------------------------------------
BLANK_SUBJECTS = ("sub-061", "sub-085", "sub-088")
BLANK_STORIES = (1, 2, 4)  # Boar, Aqua, KingOfBirds
BLANK_TRS, BLANK_ONSET = 30, 8.0
FROIS = [
    "01_LH_PostTemp",
    "02_LH_AntTemp",
    "03_LH_IFG",
    "04_LH_IFGorb",
    "05_LH_MFG",
    "06_LH_AngG",
    "07_RH_PostTemp",
    "08_RH_AntTemp",
    "09_RH_IFG",
    "10_RH_IFGorb",
    "11_RH_MFG",
    "12_RH_AngG",
]


def write_textgrid(path: Path, intervals: list[tuple[float, float, str]], xmax: float) -> None:
    """A Praat TextGrid (long text format) with a ``words`` interval tier."""
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0",
        f"xmax = {xmax}",
        "tiers? <exists>",
        "size = 1",
        "item []:",
        "    item [1]:",
        '        class = "IntervalTier"',
        '        name = "words"',
        "        xmin = 0",
        f"        xmax = {xmax}",
        f"        intervals: size = {len(intervals)}",
    ]
    for i, (a, b, w) in enumerate(intervals, start=1):
        lines += [
            f"        intervals [{i}]:",
            f"            xmin = {a}",
            f"            xmax = {b}",
            f'            text = "{w}"',
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_blank(root: Path, checkpoint: Path | None, tmp: Path, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    audio_s = BLANK_TRS * 2.0 - BLANK_ONSET - 6.0
    for n in BLANK_STORIES:
        iv, tt = [(0.0, 0.3, "")], 0.3
        for w in words(int(audio_s / 0.4), rng):
            iv.append((round(tt, 3), round(tt + 0.35, 3), w))
            tt += 0.4
            if rng.random() < 0.08:
                iv.append((round(tt, 3), round(tt + 0.2, 3), "sp"))
                tt += 0.2
        write_textgrid(root / "audio" / f"{n}_aligned.TextGrid", iv, round(tt + 0.5, 3))
    Ys = {
        s: {NATURAL_STORIES[n]: np.zeros((BLANK_TRS, len(FROIS))) for n in BLANK_STORIES}
        for s in BLANK_SUBJECTS
    }

    def dump():
        for s in BLANK_SUBJECTS:
            with (root / f"{s}.csv").open("w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["story", "tr", *FROIS])
                for story, Y in Ys[s].items():
                    for k in range(BLANK_TRS):
                        wr.writerow([story, k, *[f"{v:.5f}" for v in Y[k]]])

    dump()
    if checkpoint is None:
        return
    loader = Blank2014(root, {"audio_onset_s": BLANK_ONSET})
    man = loader.manifest("text")
    X = planted_features(man, checkpoint, tmp)
    runs = np.array([it.run for it in man.items])
    for story in set(runs.tolist()):  # features z-scored per story, as the recipe's fit does
        m = runs == story
        X[m] = (X[m] - X[m].mean(0)) / np.where(X[m].std(0) > 0, X[m].std(0), 1.0)
    S = _signal(X, len(FROIS), rng)
    for story in {it.run for it in man.items}:
        rows = [i for i, it in enumerate(man.items) if it.run == story]
        trs = [man.items[i].tr for i in rows]
        sig = np.zeros((BLANK_TRS, len(FROIS)))
        for i, t in zip(rows, trs, strict=True):
            if t + 2 < BLANK_TRS:
                sig[t + 2] = S[i]  # BOLD 2 TRs (4 s) after the words
        for s in BLANK_SUBJECTS:
            Ys[s][story] = np.sqrt(RHO_BLANK) * sig + np.sqrt(1 - RHO_BLANK) * rng.standard_normal(sig.shape)
    dump()


# ---- Futrell 2018 -------------------------------------------------------------------------------
RT_HEADER = [
    "WorkerId",
    "WorkTimeInSeconds",
    "correct",
    "item",
    "zone",
    "RT",
    "word",
    "nItem",
    "meanItemRT",
    "sdItemRT",
    "gmeanItemRT",
    "gsdItemRT",
]


def write_futrell(root: Path, checkpoint: Path | None, base: Path | None = None, seed: int = 3) -> None:
    """Reading times ``RT = 280 + 40 z + reader offset + noise`` where ``z`` is the planted
    model's surprisal with the part the ``base`` model's surprisal explains regressed out: what
    tuning changed. (Surprisals of random tiny models mostly count tokens, which every model
    shares, so raw surprisal cannot tell the models apart.)"""
    rng = np.random.default_rng(seed)
    d = root / "naturalstories_RTS"
    d.mkdir(parents=True, exist_ok=True)
    stories = {1: words(60, rng), 2: words(50, rng)}
    with (d / "all_stories.tok").open("w") as f:
        f.write("word\tzone\titem\n")
        for item, ws in stories.items():
            for z, w in enumerate(ws, start=1):
                f.write(f"{w}\t{z}\t{item}\n")
    z = {item: np.zeros(len(ws)) for item, ws in stories.items()}
    if checkpoint is not None:
        tuned = word_surprisal(checkpoint, stories, device="cpu")
        ref = word_surprisal(base, stories, device="cpu") if base is not None else None
        keys = [(i, k) for i, ws in stories.items() for k in range(len(ws))]
        y = np.array([tuned[i][k] for i, k in keys])
        cols = [np.ones(len(keys))] + ([np.array([ref[i][k] for i, k in keys])] if ref is not None else [])
        A = np.stack(cols, 1)
        ok = np.isfinite(y) & np.isfinite(A).all(1)
        resid = np.zeros(len(keys))
        resid[ok] = y[ok] - A[ok] @ np.linalg.lstsq(A[ok], y[ok], rcond=None)[0]
        resid /= resid[ok].std()
        for (i, k), v in zip(keys, resid, strict=True):
            z[i][k] = v
    with (d / "processed_RTs.tsv").open("w") as f:
        f.write("\t".join(RT_HEADER) + "\n")
        for k in range(6):
            worker = f"A{k:03d}XYZ"
            correct = 3 if k == 5 else 6  # the last reader fails the comprehension questions
            for item, ws in stories.items():
                for zone, w in enumerate(ws, start=1):
                    rt = 280 + 40 * z[item][zone - 1] + 20 * k + rng.normal(0, 15)
                    if rng.random() < 0.02:
                        rt = 50.0  # too fast: filtered
                    f.write(f"{worker}\t1200\t{correct}\t{item}\t{zone}\t{rt:.0f}\t{w}\t1\t0\t0\t0\t0\n")


# ---- everything ---------------------------------------------------------------------------------
def build_tuned_llama(base: Path, out: Path, seed: int = 7) -> Path:
    """A second tiny Llama with the base's config and tokenizer but other weights and a 20x
    output head (the "instruction-tuned" model of the miniature)."""
    import torch
    import transformers as tf

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    cfg = tf.AutoConfig.from_pretrained(base)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions, as tuning gives (hidden states unchanged)
        model.lm_head.weight.mul_(20.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tf.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def build(root: Path, planted: Path | None, *, base: Path | None = None, tmp: Path | None = None) -> Path:
    """Write the whole miniature under ``root``; responses planted from checkpoint ``planted``
    (reading times from its surprisal minus that of ``base``)."""
    root = Path(root)
    tmp = Path(tmp or root / ".planting")
    tmp.mkdir(parents=True, exist_ok=True)
    write_pereira(root / "pereira2018", planted, tmp)
    write_wehbe(root / "wehbe2014", planted, tmp)
    write_blank(root / "blank2014", planted, tmp)
    write_futrell(root / "naturalstories", planted, base)
    shutil.rmtree(tmp, ignore_errors=True)
    return root
