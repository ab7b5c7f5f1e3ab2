"""The Movie10 recipe (studies/movie10.toml) and its loader on a synthetic miniature of CNeuroMod
Movie10 in its real layout (tests/studies/mini_movie10.py), with tiny random-weight checkpoints
of the recipe's architectures: loader checks, ingest, the cross-subject ceiling, the audio
manifest, the recipe end to end (the planted instruction ranks first) and the command."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import mini_movie10 as mm
import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest

from brainalign.cli.studies import RecipeError, parse_recipe
from brainalign.cli.studies.datasets.movie10 import Movie10
from brainalign.cli.studies.recipe import apply_overrides
from brainalign.cli.studies.runner import run_recipe
from brainalign.features import open_table

RECIPE = Path(__file__).resolve().parents[2] / "studies" / "movie10.toml"
TUNED, BASE, UNIMODAL = "qwen25-vl-7b-instruct", "qwen2-vl-7b", "videomae-base"

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    # PyAV / transformers video utilities deprecations we cannot fix from here
    pytest.mark.filterwarnings("ignore::DeprecationWarning:av.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]


@pytest.fixture(scope="module")
def mini(tiny, tmp_path_factory):
    """The miniature (planted with the tiny Qwen2.5-VL) plus the unimodal stand-in tables."""
    pytest.importorskip("av")
    base = tmp_path_factory.mktemp("movie10")
    info = mm.build(base / "movie10", tiny("qwen2.5-vl"))
    info["baselines"] = base / "baselines"
    mm.write_unimodal_tables(info["root"], info["baselines"])
    info["audio_dir"] = base / "audio"
    return info


@pytest.fixture
def copy(mini, tmp_path):
    """A disposable copy of the miniature, to break."""
    dst = tmp_path / "movie10"
    shutil.copytree(mini["root"], dst)
    return dst


def loader(root, **options) -> Movie10:
    opts = {"atlas": mm.ATLAS, "atlas_labels": mm.ATLAS_LABELS, **options}
    return Movie10(root, opts)


def func_dir(root: Path, sub: str, ses: str) -> Path:
    return root / "derivatives" / "fmriprep" / sub / f"ses-{ses}" / "func"


# ---- loader ---------------------------------------------------------------------------------
def test_loader_finds_the_real_layout(mini):
    ld = loader(mini["root"])
    assert ld.check() == []
    assert ld.subjects() == ["sub-01", "sub-02"]
    assert ld.segments() == ["bourne01", "wolf01", "life01"]
    assert ld.test_runs() == ["life01"]
    # sub-02 has one more volume in the second viewing of life01: every run is cut to the shared count
    assert ld.n_trs() == mm.SEGMENTS
    assert [len(ld._viewings(s, "life01")) for s in ld.subjects()] == [2, 2]
    assert ld.video_path("wolf01") == mini["root"] / "stimuli" / "wolf" / "wolf01.mkv"
    summary = ld.summary()
    assert summary["n_samples"] == sum(mm.SEGMENTS.values()) and summary["runs"] == list(mm.SEGMENTS)
    # the video manifest is the one the planted features were computed from
    man = ld.manifest("video", frames_per_clip=mm.FRAMES_PER_CLIP)
    ref = mm.planted_manifest(mini["root"])
    assert [(s.stimulus_id, s.run, s.tr, s.frame_times) for s in man.items] == [
        (s.stimulus_id, s.run, s.tr, s.frame_times) for s in ref.items
    ]
    assert man.stimulus_set == "movie10" and man.spec["n_trs"] == mm.SEGMENTS
    with pytest.raises(RecipeError, match=r"embed\.video: unknown option"):
        ld.manifest("video", fps=2)


def test_audio_manifest_extracts_the_sound_track_once(mini):
    import soundfile as sf

    ld = loader(mini["root"], audio_dir=str(mini["audio_dir"]))
    man = ld.manifest("audio", sample_rate=16000)
    assert len(man) == sum(mm.SEGMENTS.values())
    first = man.items[0]
    assert (first.run, first.tr, first.window_start_s, first.window_end_s) == ("bourne01", 0, 0.0, mm.TR)
    wav = Path(first.audio)
    assert wav.parent == mini["audio_dir"] and sf.info(str(wav)).samplerate == 16000
    assert abs(sf.info(str(wav)).duration - mm.video_seconds("bourne01")) < 0.1
    stamp = wav.stat().st_mtime_ns
    ld.manifest("audio")
    assert wav.stat().st_mtime_ns == stamp  # cached, not extracted again


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing_bold", "sub-02 wolf01: no BOLD file"),
        ("wrong_tr", "has a repetition time of 2.0 s"),
        ("short_video", "inconsistent TR grids"),
        ("missing_video", "life01: no stimulus video"),
        ("unknown_option", "are not Movie10 options"),
        ("missing_subject", "subjects: ['sub-07'] not found"),
        ("missing_mask", "no brain mask"),
        ("mask_off_grid", "is not on the BOLD grid"),
        ("other_grid", "grid: the BOLD runs are not on one voxel grid"),
        ("no_test_movie", "test_movies: none of the selected segments"),
        ("missing_confounds", "confounds ['nope'] are not columns"),
    ],
)
def test_check_names_the_file_and_the_problem(copy, breakage, expected):
    opts = {}
    if breakage == "missing_bold":
        for p in func_dir(copy, "sub-02", "002").glob("*desc-preproc_bold.nii.gz"):
            p.unlink()
    elif breakage == "wrong_tr":
        bold = next(func_dir(copy, "sub-01", "001").glob("*desc-preproc_bold.nii.gz"))
        img = nib.load(str(bold))
        img.header.set_zooms((*img.header.get_zooms()[:3], 2.0))
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(bold))
        side = bold.with_name(bold.name.replace(".nii.gz", ".json"))
        side.write_text(json.dumps({"RepetitionTime": 2.0}))
    elif breakage == "short_video":
        mm.write_video(copy / "stimuli" / "life" / "life01.mkv", 12.0, seed=1)
    elif breakage == "missing_video":
        (copy / "stimuli" / "life" / "life01.mkv").unlink()
    elif breakage == "unknown_option":
        opts["frames"] = 8
    elif breakage == "missing_subject":
        opts["subjects"] = ["sub-01", "sub-07"]
    elif breakage == "missing_mask":
        next(func_dir(copy, "sub-01", "003").glob("*desc-brain_mask.nii.gz")).unlink()
    elif breakage == "mask_off_grid":
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), mm.AFFINE), str(copy / "mask.nii.gz"))
        opts["mask"] = "mask.nii.gz"
    elif breakage == "other_grid":
        for bold in func_dir(copy, "sub-02", "001").glob("*desc-preproc_bold.nii.gz"):
            img = nib.load(str(bold))
            data = np.asanyarray(img.dataobj)[:5]
            nib.save(nib.Nifti1Image(data, img.affine, img.header), str(bold))
    elif breakage == "no_test_movie":
        opts["movies"] = ["bourne", "wolf"]
    elif breakage == "missing_confounds":
        opts["confounds"] = ["trans_x", "nope"]
    problems = loader(copy, **opts).check()
    assert any(expected in p for p in problems), problems
    # every message names the file or option it is about
    if breakage in ("missing_bold", "missing_mask"):
        assert any("sub-0" in p and ".nii.gz" in p for p in problems)
    if breakage == "short_video":
        assert any("life01.mkv" in p and "grid_tolerance_s" in p for p in problems)
    if breakage == "missing_video":  # no video is needed when every model is pulled or a table
        assert loader(copy, stimuli=False).check() == []


def test_a_missing_second_viewing_is_noted_not_refused(copy):
    for p in func_dir(copy, "sub-01", "004").glob("*"):
        p.unlink()
    ld = loader(copy)
    assert ld.check() == []
    assert [len(ld._viewings(s, "life01")) for s in ld.subjects()] == [1, 2]
    assert any("life01: subjects have different numbers of viewings" in n for n in ld._scan().notes)


def test_ingest_averages_viewings_and_reruns_idempotently(mini, tmp_path):
    ld = loader(mini["root"])
    resp, vox = tmp_path / "responses.lance", tmp_path / "voxels.lance"
    out = ld.ingest(resp, vox)
    assert [s.subjects for s in out] == [["sub-01"], ["sub-02"]]
    assert out[0].n_voxels == mini["n_voxels"]  # the intersection of the brain masks
    assert out[0].rois == {"L_V1_ROI": 55, "L_MT_ROI": 60, "L_44_ROI": 59}
    t = open_table(resp)
    n = t.count_rows()
    assert n == 2 * sum(mm.SEGMENTS.values())
    keys = t.to_table(columns=["stimulus_set", "run", "tr"], filter="subject = 'sub-01'").to_pylist()
    assert {k["stimulus_set"] for k in keys} == {"movie10"}
    assert sorted({k["run"] for k in keys}) == sorted(mm.SEGMENTS)
    # life01 = mean of the two z-scored viewings: its variance is below one
    life = t.to_table(columns=["bold"], filter="subject = 'sub-01' AND run = 'life01'").column("bold")
    Y = np.asarray(life.combine_chunks().flatten()).reshape(mm.SEGMENTS["life01"], -1)
    assert 0.3 < Y.std(0).mean() < 0.99
    ld.ingest(resp, vox)
    assert open_table(resp).count_rows() == n and open_table(vox).count_rows() == 2 * mini["n_voxels"]
    # cross-subject ceiling: high where the shared planted signal is, low in the noise ROI
    rois = np.asarray(open_table(vox).to_table(filter="subject = 'sub-01'").column("roi").to_pylist())
    ceil = ld.ceiling(resp, "sub-01")
    assert ceil.shape == (mini["n_voxels"],)
    assert np.nanmean(ceil[rois == "L_V1_ROI"]) > 0.5 > np.nanmean(ceil[rois == "L_44_ROI"]) + 0.3
    # with two subjects each one's ceiling is r(sub-01, sub-02)
    np.testing.assert_allclose(ceil, ld.ceiling(resp, "sub-02"), atol=1e-6)
    assert loader(mini["root"], subjects=["sub-01"]).ceiling(resp, "sub-01") is None


def test_fslr_cifti_space(copy, tmp_path):
    """space = "fsLR": fMRIPrep's CIFTI runs, ROI labels from a dense label file."""
    info = mm.add_fslr(copy)
    ld = Movie10(copy, {"space": "fsLR", "dlabel": mm.DLABEL})
    assert ld.check() == [] and ld.n_trs() == mm.SEGMENTS
    assert ld.summary()["n_voxels"] == info["n_grayordinates"]
    out = ld.ingest(tmp_path / "responses.lance", tmp_path / "voxels.lance")
    assert out[0].fmt == "cifti" and out[0].rois == {"L_V1_ROI": 12, "R_V1_ROI": 12}
    vox = open_table(tmp_path / "voxels.lance").to_table(filter="subject = 'sub-01'")
    assert set(vox.column("hemi").to_pylist()) == {"L", "R"} and set(vox.column("space").to_pylist()) == {
        "fsLR"
    }
    ceil = ld.ceiling(tmp_path / "responses.lance", "sub-01")
    assert ceil.shape == (info["n_grayordinates"],) and np.nanmean(ceil) > 0.3
    # a label file over other grayordinates is refused before any work
    labels = nib.cifti2.LabelAxis(["x"], {0: ("???", (0, 0, 0, 0)), 1: ("A", (1, 0, 0, 1))})
    other = nib.cifti2.BrainModelAxis.from_mask(np.arange(32492) < 5, name="CortexLeft")
    nib.save(
        nib.Cifti2Image(np.ones((1, 5), np.float32), header=(labels, other)), str(copy / "other.dlabel.nii")
    )
    problems = Movie10(copy, {"space": "fsLR", "dlabel": "other.dlabel.nii"}).check()
    assert any("dlabel: the brain models" in p for p in problems), problems
    assert any("atlas" in p for p in Movie10(copy, {"space": "fsLR", "atlas": mm.ATLAS}).check())


def test_ceiling_matches_an_independent_computation(mini, tmp_path):
    """Three subjects: the ceiling is r(subject, mean of the others) over the test run."""
    from brainalign.cli.studies.datasets.movie10 import cross_subject_ceilings
    from brainalign.features import create_table

    rng = np.random.default_rng(0)
    shared = rng.standard_normal((20, 5))
    data = {
        s: shared + rng.standard_normal((20, 5)) * (0.5 + 0.5 * k)
        for k, s in enumerate(("sub-01", "sub-02", "sub-03"))
    }
    Y = np.concatenate(list(data.values())).astype(np.float32)
    t = create_table(tmp_path / "r.lance", "responses", n_voxels=5)
    t.write(
        pa.table(
            {
                "dataset": ["movie10"] * 60,
                "subject": [s for s in data for _ in range(20)],
                "stimulus_set": ["movie10"] * 60,
                "run": ["life01"] * 60,
                "tr": pa.array(np.tile(np.arange(20), 3), pa.int32()),
                "bold": pa.FixedSizeListArray.from_arrays(pa.array(Y.ravel()), 5),
            }
        )
    )
    got = cross_subject_ceilings(t, ["life01"], ["sub-01", "sub-02", "sub-03"], chunk=2)
    for s in data:
        z = {k: (v - v.mean(0)) / v.std(0) for k, v in data.items()}
        others = np.mean([z[o] for o in z if o != s], axis=0)
        want = [np.corrcoef(z[s][:, j], others[:, j])[0, 1] for j in range(5)]
        np.testing.assert_allclose(got[s], want, atol=1e-5)


# ---- the recipe end to end ------------------------------------------------------------------
def overrides(mini, tiny) -> list[str]:
    return [
        f"models.{TUNED}.checkpoint={tiny('qwen2.5-vl')}",
        f"models.{TUNED}.instructions={json.dumps(list(mm.INSTRUCTIONS))}",
        f"models.{BASE}.checkpoint={tiny('qwen2-vl')}",
        f"models.{UNIMODAL}.table={mini['baselines'] / 'videomae-base.lance'}",
        f"embed.batch_size={mm.BATCH_SIZE}",
        f"embed.max_new_tokens={mm.MAX_NEW_TOKENS}",
        "embed.dtype=float32",
        f"embed.video.frames_per_clip={mm.FRAMES_PER_CLIP}",
        f"data.atlas={mm.ATLAS}",
        f"data.atlas_labels={mm.ATLAS_LABELS}",
        f"data.audio_dir={mini['audio_dir']}",
        "data.subjects=['sub-01', 'sub-02']",
        "report.compare=[]",
        "report.max_maps=2",
    ]


def subset_recipe(mini, tiny, keep=(TUNED, BASE, UNIMODAL)):
    """The recipe file with only the models CI can afford (one tiny model per group)."""
    raw = tomllib.loads(RECIPE.read_text())
    raw["models"] = [m for m in raw["models"] if m["name"] in keep]
    raw = apply_overrides(raw, overrides(mini, tiny))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOVIE10_ROOT", str(mini["root"]))
        return parse_recipe(raw, path=RECIPE, data_root=mini["root"])


@pytest.fixture(scope="module")
def result(mini, tiny, tmp_path_factory):
    return run_recipe(subset_recipe(mini, tiny), tmp_path_factory.mktemp("run") / "out")


def test_planted_instruction_ranks_first(result):
    ranking = [r for r in result.tables["instruction ranking"] if r["model"] == TUNED]
    assert ranking[0]["instruction_id"] == mm.PLANTED, ranking
    assert ranking[0]["rank"] == 1 and ranking[0]["best_layer"] == mm.PLANTED_LAYER
    assert ranking[0]["score"] > ranking[1]["score"] + 0.05
    assert result.contexts["movie10"].metric == "r_norm"  # normalised by the cross-subject ceiling
    models = result.tables["model comparison"]
    assert models[0]["model"] == TUNED and models[0]["best_instruction"] == mm.PLANTED


def test_group_comparison_and_per_roi_tables(result):
    groups = {(g["roi"], g["group"]): g for g in result.tables["group comparison"]}
    for g in ("instruction-tuned", "non-instruction-tuned", "unimodal"):
        assert ("all", g) in groups
    assert groups[("all", "instruction-tuned")]["score"] > groups[("all", "unimodal")]["score"]
    per_roi = {(r["roi"], r["model"]): r for r in result.tables["normalised alignment per ROI"]}
    v1 = per_roi[("L_V1_ROI", TUNED)]
    assert v1["group"] == "instruction-tuned" and v1["best_instruction"] == mm.PLANTED
    assert v1["score"] > 0.3 and 0 <= v1["relative_depth"] <= 1
    ceil = {r["roi"]: r for r in result.tables["cross-subject ceiling per ROI"]}
    assert ceil["L_V1_ROI"]["mean_ceiling"] > ceil["L_44_ROI"]["mean_ceiling"]


def test_report_page_holds_every_table_and_figure(result):
    page = result.page.read_text()
    for name in (
        "instruction ranking",
        "model comparison",
        "group comparison",
        "normalised alignment per ROI",
        "cross-subject ceiling per ROI",
    ):
        assert f"<h2>{name}</h2>" in page, name
    for fig in (
        "movie10: layer profile per ROI",
        "movie10: instructions per ROI (best layer)",
        "movie10: group comparison per ROI",
        "movie10: layer-wise alignment by relative depth",
    ):
        assert f"<h2>{fig}</h2>" in page, fig
    srcs = [s.split("'")[0] for s in page.split("<img src='")[1:]]
    assert len(srcs) >= 4
    for src in srcs:
        assert (result.out / src).exists(), src
    scores = open_table(result.contexts["movie10"].tables["scores"]).to_table(columns=["ceiling", "r_norm"])
    assert scores.column("ceiling").null_count == 0


def test_audio_llms_and_the_base_vs_tuned_comparison(mini, tiny, tmp_path):
    """The recipe's audio half: Qwen2-Audio instruct (response tokens under audio instructions)
    against its base (no instruction), with the recipe's own base-vs-tuned comparison figure."""
    tuned, base = "qwen2-audio-7b-instruct", "qwen2-audio-7b"
    raw = tomllib.loads(RECIPE.read_text())
    raw["models"] = [m for m in raw["models"] if m["name"] in (tuned, base)]
    assert raw["report"]["compare"] == [[base, tuned]]
    raw = apply_overrides(
        raw,
        [
            f"models.{tuned}.checkpoint={tiny('qwen2-audio')}",
            f"models.{tuned}.instructions=['audio.understanding', 'audio.captioning']",
            f"models.{base}.checkpoint={tiny('qwen2-audio')}",
            f"embed.batch_size={mm.BATCH_SIZE}",
            f"embed.max_new_tokens={mm.MAX_NEW_TOKENS}",
            "embed.dtype=float32",
            f"data.atlas={mm.ATLAS}",
            f"data.atlas_labels={mm.ATLAS_LABELS}",
            f"data.audio_dir={mini['audio_dir']}",
            "data.subjects=['sub-01', 'sub-02']",
            "report.maps=false",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOVIE10_ROOT", str(mini["root"]))
        rec = parse_recipe(raw, path=RECIPE, data_root=mini["root"])
    res = run_recipe(rec, tmp_path / "out")
    ctx = res.contexts["movie10"]
    cols = ["model", "instruction_id", "pooling", "run"]
    rows, runs = set(), {}
    for name in (tuned, base):
        feats = open_table(ctx.features[name]).to_table(columns=cols)
        rows |= set(zip(*(feats.column(c).to_pylist() for c in cols[:3]), strict=True))
        runs[name] = set(feats.column("run").to_pylist())
    assert rows == {
        (tuned, "audio.understanding", "response"),
        (tuned, "audio.captioning", "response"),
        (base, "none", "stimulus"),
    }
    assert runs[tuned] == runs[base] == set(mm.SEGMENTS)  # audio windows on the TR grid of every run
    groups = {g["group"] for g in res.tables["group comparison"]}
    assert groups == {"instruction-tuned", "non-instruction-tuned"}
    page = res.page.read_text()
    assert "compare_qwen2-audio-7b_qwen2-audio-7b-instruct.png" in page
    srcs = [x.split("'")[0] for x in page.split("<img src='")[1:]]
    assert any(Path(x).name.startswith("compare_") for x in srcs), srcs
    for src in srcs:
        assert (res.out / src).exists(), src


# ---- the command ----------------------------------------------------------------------------
def test_command_dry_run_of_the_full_recipe(mini, tiny, monkeypatch, tmp_path):
    """The plan counts every model's stimuli from headers: no sound track is decoded."""
    from typer.testing import CliRunner

    from brainalign.cli.app import app

    monkeypatch.setenv("MOVIE10_ROOT", str(mini["root"]))
    monkeypatch.setenv("MOVIE10_BASELINES", str(mini["baselines"]))
    args = ["run", str(RECIPE), "--data", str(mini["root"]), "--dry-run", "--json"]
    audio_dir = tmp_path / "audio-cache"  # empty: the dry run must not fill it
    args += ["--set", f"data.audio_dir={audio_dir}", "--set", "data.subjects=['sub-01', 'sub-02']"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["datasets"][0]["test_runs"] == ["life01"]
    assert plan["datasets"][0]["runs"] == list(mm.SEGMENTS)
    embeds = {e["model"]: e for e in plan["embeds"]}
    assert len(embeds) == 12 and embeds["videochat-r1-7b"]["n_items"] == sum(mm.SEGMENTS.values())
    assert len(embeds["videochat-r1-7b"]["instructions"]) == 13
    assert len(embeds["qwen2-audio-7b-instruct"]["instructions"]) == 5
    assert embeds["qwen2-audio-7b-instruct"]["n_items"] == sum(mm.SEGMENTS.values())
    assert not audio_dir.exists() or not any(audio_dir.iterdir())
    # a broken copy is refused before any work, naming the problem
    res = CliRunner().invoke(app, [*args, "--set", "data.space=fsaverage6"])
    assert res.exit_code == 1 and "space: expected one of" in res.output and "Traceback" not in res.output
