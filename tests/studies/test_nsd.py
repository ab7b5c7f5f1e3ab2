"""The NSD loader and the ``studies/nsd.toml`` recipe on a miniature NSD (tests/studies/mini_nsd.py)."""

from __future__ import annotations

import json
import shutil

import mini_nsd
import nibabel as nib
import numpy as np
import pytest
from conftest import STUDIES

from brainalign.cli.studies import RecipeError, load_recipe
from brainalign.cli.studies.datasets.nsd import NSD, read_ctab
from brainalign.encoders import spearman_brown
from brainalign.features import open_table

RECIPE = STUDIES / "nsd.toml"
MODELS = {
    "llava-1.5-7b": "llava",
    "instructblip-vicuna-7b": "instructblip",
    "qwen2.5-vl-7b": "qwen2.5-vl",
    "idefics-9b-instruct": "idefics",
    "blip2-opt-6.7b": "blip-2",
}
PLANTED_MODEL = "llava-1.5-7b"
OPTS = {"trials_per_session": mini_nsd.TRIALS_PER_SESSION}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Two subjects, random signals (no model needed)."""
    root = tmp_path_factory.mktemp("nsd") / "data"
    return mini_nsd.build(root, subjects=("subj01", "subj02"))


@pytest.fixture(scope="module")
def ingested(mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("nsd_out")
    ds = NSD(mini.root, OPTS)
    summaries = ds.ingest(out / "responses.lance", out / "voxels.lance")
    return ds, out, summaries


def _broken(mini, tmp_path, break_it):
    root = tmp_path / "data"
    shutil.copytree(mini.root, root)
    break_it(root)
    return root


# ---- loader checks ------------------------------------------------------------------------------
def test_check_passes_and_summary(mini):
    ds = NSD(mini.root, OPTS)
    assert ds.check() == []
    assert ds.subjects() == ["sub-01", "sub-02"]
    s = ds.summary()
    assert s["n_voxels"] == {"sub-01": mini.n_voxels["subj01"], "sub-02": mini.n_voxels["subj02"]}
    assert s["n_samples"] == {"sub-01": 160, "sub-02": 160} and s["n_trials"]["sub-01"] == 256
    assert s["runs"][0] == "test" and "subj02-fold4" in s["runs"]
    assert read_ctab(mini.root / "nsddata/freesurfer/subj01/label/streams.mgz.ctab")[5] == "ventral"
    two = NSD(mini.root, {**OPTS, "sessions": 2, "subjects": ["02"]}).summary()
    assert two["n_trials"] == {"sub-02": 128} and two["runs"] == ["test", "subj02-fold1", "subj02-fold2"]


@pytest.mark.parametrize(
    ("break_it", "options", "message"),
    [
        (lambda r: (r / "nsddata/experiments/nsd/nsd_expdesign.mat").unlink(), {}, "expdesign: no such file"),
        (lambda r: None, {"trials_per_session": 750}, "holds 64 trials, expected trials_per_session = 750"),
        (
            lambda r: (
                (r / "nsddata_stimuli/stimuli/nsd/images")
                .joinpath(sorted(p.name for p in (r / "nsddata_stimuli/stimuli/nsd/images").iterdir())[0])
                .unlink()
            ),
            {},
            "images: 1 image(s) shown to subj0",
        ),
        (
            lambda r: (r / "nsddata/freesurfer/subj01/label/streams.mgz.ctab").unlink(),
            {},
            "rois: no label names",
        ),
        (
            lambda r: (r / "nsddata/ppdata/subj02/func1pt8mm/roi/nsdgeneral.nii.gz").unlink(),
            {},
            "mask: no such file",
        ),
        (lambda r: None, {"bogus": 1, "folds": 1}, "unknown option(s) ['bogus']"),
        (lambda r: None, {"subjects": ["sub-03"]}, "subjects: sub-03 (subj03) not found"),
        (lambda r: None, {"resolution": "func2mm"}, "data.resolution: expected one of"),
        (
            lambda r: nib.save(
                nib.Nifti1Image(np.zeros((4, 4, 4, 64), np.int16), np.eye(4)),
                r
                / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session02.nii.gz",
            ),
            {},
            "betas_session02.nii.gz has grid (4, 4, 4)",
        ),
        (
            lambda r: shutil.rmtree(r / "nsddata_betas"),
            {},
            "betas: no subject folders nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/",
        ),
    ],
    ids=["expdesign", "trials", "image", "ctab", "mask", "options", "subject", "resolution", "grid", "betas"],
)
def test_check_names_the_problem(mini, tmp_path, break_it, options, message):
    root = _broken(mini, tmp_path, break_it)
    problems = NSD(root, {**OPTS, **options}).check()
    assert any(message in p for p in problems), problems
    with pytest.raises(RecipeError) as exc:  # nothing is read or written before the checks pass
        NSD(root, {**OPTS, **options}).ingest(tmp_path / "r.lance", tmp_path / "v.lance")
    assert message in str(exc.value) and not (tmp_path / "r.lance").exists()


def test_expdesign_variables_are_checked(mini, tmp_path):
    from scipy.io import savemat

    root = _broken(
        mini,
        tmp_path,
        lambda r: savemat(
            r / "nsddata/experiments/nsd/nsd_expdesign.mat", {"masterordering": np.ones((1, 256))}
        ),
    )
    (problem,) = NSD(root, OPTS).check()
    assert "lacks variable(s) ['subjectim', 'sharedix']" in problem


# ---- keys, ingest and ceiling -------------------------------------------------------------------
def test_manifest_keys_match_an_independent_grouping(mini):
    m = NSD(mini.root, OPTS).manifest("image")
    assert m.stimulus_set == "nsd" and m.modality == "image"
    want = {(r, i) for g in mini.groups.values() for i, r in g.items()}
    assert {(it.run, it.tr) for it in m.items} == want
    assert len(m) == len(mini.shared) + 2 * mini_nsd.N_OWN  # shared images once
    it = m.items[0]
    assert (
        it.run == "test"
        and it.stimulus_id == f"nsd-{it.tr:05d}"
        and it.images[0].endswith(f"nsd-{it.tr:05d}.png")
    )
    with pytest.raises(RecipeError, match="modality 'video'"):
        NSD(mini.root, OPTS).manifest("video")


def test_responses_are_zscored_per_session_and_averaged(mini, ingested):
    """Oracle: the betas read with nibabel, divided by 300, z-scored within each session and
    averaged over the repeats of each image."""
    from scipy.io import loadmat

    _, out, summaries = ingested
    assert [s.subjects for s in summaries] == [["sub-01"], ["sub-02"]]
    design = loadmat(mini.root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    order = design["masterordering"].ravel().astype(int)
    for code, sid in (("subj01", "sub-01"), ("subj02", "sub-02")):
        ids = design["subjectim"][int(code[4:]) - 1].astype(int)[order - 1]
        mask = nib.load(mini.root / f"nsddata/ppdata/{code}/func1pt8mm/roi/nsdgeneral.nii.gz").get_fdata() > 0
        z = []
        for k in range(mini_nsd.N_SESSIONS):
            path = mini.root / f"nsddata_betas/ppdata/{code}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
            b = nib.load(path / f"betas_session{k + 1:02d}.nii.gz").get_fdata()[mask].T / 300.0
            z.append((b - b.mean(0)) / b.std(0))
        z = np.concatenate(z)
        rows = open_table(out / "responses.lance").to_table(filter=f"subject = '{sid}'").to_pylist()
        assert len(rows) == 160
        n = mini.n_voxels[code]
        for r in rows[:5] + rows[-5:]:
            want = z[ids == r["tr"]].mean(0)
            np.testing.assert_allclose(np.asarray(r["bold"])[:n], want, atol=1e-4)
            assert r["stimulus_id"] == f"nsd-{r['tr']:05d}" and r["run"] == mini.groups[code][r["tr"]]
            assert not np.any(np.asarray(r["bold"])[n:])  # zero padding of the smaller mask
    vox = open_table(out / "voxels.lance").to_table().to_pylist()
    assert sum(v["subject"] == "sub-02" for v in vox) == mini.n_voxels["subj02"]
    rois = {v["roi"] for v in vox}
    assert {"early", "ventral", "lateral", "VWFA-1", "OWFA", "other"} == rois


def test_ceiling_matches_the_planted_reliability(mini, ingested):
    """Each voxel's signal sd is its gain g, the trial noise sd NOISE: the single-trial
    explainable variance is g^2 / (g^2 + NOISE^2), its 3-repeat Spearman-Brown prophecy the
    ceiling of R^2, and its square root the ceiling of r."""
    ds, out, _ = ingested
    for code, sid in (("subj01", "sub-01"), ("subj02", "sub-02")):
        c = ds.ceiling(out / "responses.lance", sid)
        n = mini.n_voxels[code]
        assert c.shape == (mini.n_voxels["subj01"],) and np.isnan(c[n:]).all()
        g2 = mini.gains[code] ** 2
        want = np.sqrt(spearman_brown(g2 / (g2 + mini_nsd.NOISE**2), 3))
        assert np.median(np.abs(c[:n] - want)) < 0.03
        meta = ds.ceiling_meta(out / "responses.lance", sid)
        assert meta["repeats"] == 3 and meta["test_images"] == mini_nsd.N_SHARED
    assert NSD(mini.root, {**OPTS, "ceiling": "none"}).ceiling(out / "responses.lance", "sub-01") is None


def test_ingest_again_replaces_rows(mini, ingested, tmp_path):
    ds, out, _ = ingested
    n = open_table(out / "responses.lance").count_rows()
    ds.ingest(out / "responses.lance", out / "voxels.lance")
    assert open_table(out / "responses.lance").count_rows() == n == 320
    with pytest.raises(RecipeError, match="under other keys"):
        NSD(mini.root, {**OPTS, "folds": 2}).ingest(out / "responses.lance", out / "voxels.lance")
    one = NSD(mini.root, {**OPTS, "subjects": ["sub-02"]})
    one.ingest(tmp_path / "r.lance", tmp_path / "v.lance")
    with pytest.raises(RecipeError, match="holds 108 voxels per row"):
        ds.ingest(tmp_path / "r.lance", tmp_path / "v.lance")


# ---- the recipe, end to end ---------------------------------------------------------------------
def test_recipe_declares_the_study(tmp_path):
    from brainalign.cli.studies.runner import expand_instructions

    rec = load_recipe(RECIPE, data_root=tmp_path)
    assert rec.data[0].dataset == "nsd" and rec.data[0].subjects == ["sub-01", "sub-02", "sub-05", "sub-07"]
    assert [m.name for m in rec.models] == list(MODELS)
    image = expand_instructions(["family:image"])
    assert len(image) == 10 and "image.captioning" in image
    for m in rec.models:
        assert (
            m.modality == "image"
            and m.pooling == ["response"]
            and expand_instructions(m.instructions) == image
        )
    assert {m.group for m in rec.models} == {"instruction-tuned", "non-instruction-tuned"}
    assert rec.fit["preset"] == "none" and rec.fit["zscore"] is True and "allow_trim" not in rec.fit
    (p,) = rec.partitions
    assert p.reference == "image.captioning" and p.layer == "best" and p.model == "*"
    assert rec.report["compare"] == [["blip2-opt-6.7b", "instructblip-vicuna-7b"]]


def _overrides(ckpts: dict[str, str]) -> list[str]:
    """Tiny checkpoints of the same architectures, the miniature's trials per session, short
    generations; the planted model reads 3 instructions, the others 2, and only the planted
    instruction is partitioned against captioning (to keep the test short)."""
    out = [
        f"data.trials_per_session={mini_nsd.TRIALS_PER_SESSION}",
        'data.subjects=["01"]',
        f"embed.max_new_tokens={mini_nsd.MAX_NEW_TOKENS}",
        f"embed.batch_size={mini_nsd.BATCH_SIZE}",
        "embed.device=cpu",
        "embed.dtype=float32",
        f"partitions.0.model={PLANTED_MODEL}",
        f"partitions.0.instructions={json.dumps([mini_nsd.PLANTED])}",
    ]
    for name, path in ckpts.items():
        ins = list(mini_nsd.INSTRUCTIONS) if name == PLANTED_MODEL else list(mini_nsd.INSTRUCTIONS[:2])
        out += [f"models.{name}.checkpoint={path}", f"models.{name}.instructions={json.dumps(ins)}"]
    return out


@pytest.fixture(scope="module")
def e2e(tiny, tmp_path_factory):
    from brainalign.cli.studies.runner import run_recipe

    tmp = tmp_path_factory.mktemp("nsd_e2e")
    ckpts = {name: str(tiny(b)) for name, b in MODELS.items()}
    info = mini_nsd.build(tmp / "data", checkpoint=ckpts["llava-1.5-7b"], work=tmp / "work")
    recipe = load_recipe(RECIPE, overrides=_overrides(ckpts), data_root=info.root)
    res = run_recipe(recipe, tmp / "out")
    return {"info": info, "res": res, "ckpts": ckpts, "tmp": tmp}


def test_recipe_recovers_the_planted_instruction(e2e):
    res = e2e["res"]
    ranking = [r for r in res.tables["instruction ranking"] if r["model"] == "llava-1.5-7b"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    top = ranking[0]
    assert top["instruction_id"] == mini_nsd.PLANTED and top["best_layer"] == mini_nsd.PLANTED_LAYER
    assert top["score"] > 0.5 and top["score"] > ranking[1]["score"] + 0.2
    models = {m["model"]: m for m in res.tables["model comparison"]}
    assert set(models) == set(MODELS) and models["llava-1.5-7b"]["best_instruction"] == mini_nsd.PLANTED
    assert max(models.values(), key=lambda m: m["score"])["model"] == "llava-1.5-7b"
    groups = {g["group"] for g in res.tables["group comparison"]}
    assert groups == {"instruction-tuned", "non-instruction-tuned"}
    (pf,) = [
        p
        for p in res.contexts["nsd"].partition_fits
        if p["model"] == "llava-1.5-7b" and p["names"][0] == "image_vqa"
    ]
    assert pf["names"] == ["image_vqa", "image_captioning"] and pf["layer"] == mini_nsd.PLANTED_LAYER
    assert any(p["model"] == "llava-1.5-7b" and p["region"] == "image_vqa" for p in res.tables["partitions"])
    part = open_table(res.contexts["nsd"].tables["partitions"]).to_table(filter=f"fit = '{pf['fit']}'")
    parts = {
        r["region"]: r["r2_mean"] for r in part.group_by("region").aggregate([("r2", "mean")]).to_pylist()
    }
    vqa = parts["image_vqa"]
    assert vqa > 0.2
    assert vqa > parts["image_captioning"] and vqa > parts["image_vqa&image_captioning"]


def test_report_page_holds_every_table_and_figure(e2e):
    res = e2e["res"]
    page = res.page.read_text()
    for name in (
        "instruction ranking",
        "model comparison",
        "group comparison",
        "partitions",
        "NSD data per subject",
        "visual and language ROIs",
    ):
        assert f"<h2>{name}</h2>" in page, name
    for fig in (
        "layer profile per ROI",
        "blip2-opt-6.7b vs instructblip-vicuna-7b",
        "nsd: partition llava-1.5-7b image_vqa vs image_captioning",
        "nsd: visual and language ROIs",
        "nsd: map sub-01 llava-1.5-7b image.vqa",
    ):
        assert fig in page, fig
    for src in [s.split("'")[0] for s in page.split("<img src='")[1:]]:
        assert (res.out / src).exists(), src
    data = res.tables["NSD data per subject"][0]
    assert data["test images"] == mini_nsd.N_SHARED and data["train images"] == mini_nsd.N_OWN
    rows = {(r["model"], r["instruction_id"]): r for r in res.tables["visual and language ROIs"]}
    assert rows[("llava-1.5-7b", mini_nsd.PLANTED)]["visual"] > 0.5
    assert rows[("llava-1.5-7b", mini_nsd.PLANTED)]["language"] is not None
    feats = open_table(res.out / "features" / "llava-1.5-7b.lance")
    assert feats.provenance["decoding"]["max_new_tokens"] == mini_nsd.MAX_NEW_TOKENS
    assert set(feats.to_table(columns=["pooling"]).column(0).to_pylist()) == {"response"}


def test_command_dry_run_and_report_stage(e2e):
    from typer.testing import CliRunner

    from brainalign.cli.app import app

    runner = CliRunner()
    sets = [a for o in _overrides(e2e["ckpts"]) for a in ("--set", o)]
    data = str(e2e["info"].root)
    res = runner.invoke(app, ["run", str(RECIPE), "--data", data, *sets, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    (d,) = plan["datasets"]
    assert d["test_runs"] == ["test"] and d["n_samples"] == {"sub-01": 160}
    emb = {e["model"]: e for e in plan["embeds"]}
    assert emb["llava-1.5-7b"]["n_items"] == 160 and emb["llava-1.5-7b"]["rows"] == 160 * 3 * 3
    out = e2e["res"].out
    res = runner.invoke(
        app, ["run", str(RECIPE), "--data", data, "--out", str(out), *sets, "--stage", "report"]
    )
    assert res.exit_code == 0, res.output
    assert "report ->" in res.output
    # without the miniature's trials per session: the real NSD's 750 is checked
    sets = [a for o in _overrides(e2e["ckpts"]) if not o.startswith("data.trials") for a in ("--set", o)]
    res = runner.invoke(app, ["run", str(RECIPE), "--data", data, *sets, "--dry-run"])
    assert res.exit_code != 0 and "expected trials_per_session = 750" in res.output
