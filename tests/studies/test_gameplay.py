"""The gameplay study (VLMs vs large action models, OpenNeuro ds004323): the loader's checks on
broken miniatures, and ``studies/gameplay.toml`` end to end on a miniature with a planted
effect (see mini_gameplay.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mini_gameplay as mg
import nibabel as nib
import numpy as np
import pytest
from conftest import STUDIES
from typer.testing import CliRunner

from brainalign.cli.app import app
from brainalign.cli.studies import RecipeError, load_recipe
from brainalign.cli.studies.datasets.gameplay import Gameplay

RECIPE = STUDIES / "gameplay.toml"
VLM, LAM = "qwen25-vl-7b", mg.PLANTED_MODEL
MODELS = [VLM, LAM, "rl-agent"]

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]


# ---- the loader on the layout alone (no torch) ----------------------------------------------
@pytest.fixture(scope="module")
def layout_template(tmp_path_factory):
    return mg.write_layout(tmp_path_factory.mktemp("layout") / "ds004323")["root"]


@pytest.fixture
def layout(layout_template, tmp_path):
    root = tmp_path / "ds004323"
    shutil.copytree(layout_template, root)
    return root


def check(root: Path, **options) -> list[str]:
    return Gameplay(root, {**mg.OPTIONS, **options}).check()


def test_miniature_layout_passes_and_maps_files_to_keys(layout_template):
    loader = Gameplay(layout_template, mg.OPTIONS)
    assert loader.check() == []
    assert loader.subjects() == list(mg.SUBJECTS)
    assert loader.test_runs() == ["sub-01-run-3", "sub-02-run-3"]
    assert Gameplay(layout_template, {**mg.OPTIONS, "test_run": 1}).test_runs("sub-02") == ["sub-02-run-1"]
    s = loader.summary()
    assert (s["n_samples"], s["runs"], s["n_voxels"]) == (
        mg.N_RUNS * mg.N_TRS,
        mg.N_RUNS,
        int((mg.atlas() > 0).sum()),
    )
    man = loader.manifest("game", frames_per_window=2)
    assert man.stimulus_set == "ds004323" and len(man) == len(mg.SUBJECTS) * mg.N_RUNS * mg.N_TRS
    first = man.items[0]
    assert (first.run, first.tr, first.stimulus_id) == ("sub-01-run-1", 0, "sub-01-run-1-tr00000")
    assert (first.window_start_s, first.window_end_s) == (0.0, 2.0)
    assert first.frame_times == [0.5, 1.5] and first.text.startswith("Player actions: ")
    assert {it.run for it in man.items} == {f"{s}-run-{r}" for s in mg.SUBJECTS for r in (1, 2, 3)}
    # keypresses from the BIDS events TSV are the same as actions.tsv; raw BOLD gives the same grid
    raw = Gameplay(layout_template, {**mg.OPTIONS, "preprocessed": "", "confounds": [], "actions": "events"})
    assert raw.check() == []
    assert [it.actions for it in raw.manifest("game", frames_per_window=2).items] == [
        it.actions for it in man.items
    ]
    with pytest.raises(RecipeError, match=r"embed\.game: unknown option"):
        loader.manifest("game", frames=3)
    with pytest.raises(RecipeError, match="'game' stimuli"):
        loader.manifest("video")


def _edit_tsv(path: Path, fn) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(fn(lines)))


def _break(root: Path, what: str) -> dict:
    """Damage the miniature; return the loader options to use."""
    stim = root / "stimuli" / "sub-01" / "run-02"
    dfunc = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    if what == "missing frames.tsv":
        (stim / "frames.tsv").unlink()
    elif what == "missing frame":
        (stim / "frames" / "frame-000010.png").unlink()
    elif what == "wrong TR":
        side = dfunc / f"sub-01_task-gameplay_run-02_space-{mg.SPACE}_res-2_desc-preproc_bold.json"
        side.write_text(json.dumps({"RepetitionTime": 1.5}))
    elif what == "frames shorter than the run":
        _edit_tsv(stim / "frames.tsv", lambda lines: lines[: len(lines) // 2])
    elif what == "frames start late":
        _edit_tsv(stim / "frames.tsv", lambda lines: lines[:1] + lines[21:])
    elif what == "action after the run":
        (stim / "actions.tsv").write_text("onset\taction\n3.0\tLEFT\n500.0\tUP\n")
    elif what == "atlas on another grid":
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), mg.AFFINE), root / mg.ATLAS)
    elif what == "no confounds":
        (dfunc / "sub-01_task-gameplay_run-02_desc-confounds_timeseries.tsv").unlink()
    elif what == "no fmriprep":
        shutil.rmtree(root / "derivatives" / "fmriprep")
    elif what == "missing actions":
        (stim / "actions.tsv").unlink()
    elif what == "unknown option":
        return {"bogus": 1}
    elif what == "test run":
        return {"test_run": 7}
    elif what == "events column":
        return {"actions": "events", "action_column": "button"}
    elif what == "subject":
        return {"subjects": ["sub-09"]}
    return {}


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (
            "missing frames.tsv",
            "frames: no stimuli/sub-01/run-02/frames.tsv for derivatives/fmriprep/sub-01/func/",
        ),
        (
            "missing frame",
            "frames: 1 of 120 frame files listed in stimuli/sub-01/run-02/frames.tsv are missing",
        ),
        ("wrong TR", "gives RepetitionTime 1.5 s, expected 2.0 s"),
        ("frames start late", "frames.tsv spans 10.0-59.5 s but"),
        (
            "frames shorter than the run",
            "spans 0.0-29.0 s but derivatives/fmriprep/sub-01/func/sub-01_task-gameplay",
        ),
        (
            "action after the run",
            "1 keypress(es) of sub-01-run-2 fall outside the run's 0-60.0 s (e.g. at 500.0 s)",
        ),
        ("atlas on another grid", "has grid (4, 4, 4), expected the BOLD grid (6, 6, 5)"),
        ("no confounds", "confounds: no sub-01_task-gameplay_run-02_desc-confounds_timeseries.tsv beside"),
        ("no fmriprep", "preprocessed: no fMRIPrep folder"),
        ("missing actions", "actions: no stimuli/sub-01/run-02/actions.tsv"),
        ("unknown option", "option 'bogus': unknown"),
        ("test run", "test_run: sub-01 has no run 7 (runs [1, 2, 3])"),
        ("events column", "has no column 'button' (set 'action_column')"),
        ("subject", "subjects: sub-09 has no BOLD runs"),
    ],
)
def test_check_names_the_file_and_the_problem(layout, what, message):
    problems = check(layout, **_break(layout, what))
    assert any(message in p for p in problems), problems


def test_grid_problem_explains_the_mismatch(layout):
    _break(layout, "frames shorter than the run")
    (msg,) = check(layout)
    assert "30 volumes x 2.0 s = 60.0 s" in msg and "TR grids of the frames and the BOLD run disagree" in msg


def test_recipe_lists_every_problem_before_work(layout, tmp_path):
    from brainalign.cli.studies.runner import plan_recipe

    _break(layout, "wrong TR")
    _break(layout, "missing frames.tsv")
    rec = load_recipe(
        RECIPE, data_root=layout, overrides=[f"models.rl-agent.table={tmp_path / 'none.lance'}"]
    )
    with pytest.raises(RecipeError) as err:
        plan_recipe(rec)
    msg = str(err.value)
    for part in (
        "data (gameplay): tr:",
        "data (gameplay): frames: no stimuli/sub-01/run-02",
        "models (rl-agent).table",
    ):
        assert part in msg, msg


# ---- the recipe end to end -------------------------------------------------------------------
def overrides(info: dict, vlm: Path) -> list[str]:
    """The recipe with tiny checkpoints: the planted action model and the VLM, two instructions,
    two layers, two frames per window (run with ``models=MODELS``: InternVL3 and OS-Atlas are
    left out)."""
    out = [
        f"models.{LAM}.checkpoint={info['checkpoint']}",
        f"models.{VLM}.checkpoint={vlm}",
        f"models.rl-agent.table={info['rl_table']}",
        "embed.device=cpu",
        "embed.dtype=float32",
        "embed.batch_size=8",
        f"embed.game.frames_per_window={mg.FRAMES_PER_WINDOW}",
        f"fit.pca={mg.PCA}",
        "report.maps=false",
    ]
    for m in (LAM, VLM):
        out += [f"models.{m}.instructions=['{mg.PLANTED}', '{mg.OTHER}']", f"models.{m}.layers=[1, 2]"]
    return out


@pytest.fixture(scope="module")
def study(tiny, tmp_path_factory):
    from brainalign.cli.studies.runner import run_recipe

    base = tmp_path_factory.mktemp("gameplay")
    lam = mg.prompt_sensitive(tiny("qwen2-vl"), base / "ui-tars-tiny")
    info = mg.build(base / "ds004323", lam)
    sets = overrides(info, tiny("qwen2.5-vl"))
    rec = load_recipe(RECIPE, overrides=sets, data_root=info["root"], models=MODELS)
    res = run_recipe(rec, base / "out")
    return {"info": info, "result": res, "overrides": sets, "out": base / "out"}


def test_planted_action_prompt_ranks_first_and_owns_the_unique_variance(study):
    tables = study["result"].tables
    ranking = [r for r in tables["instruction ranking"] if r["model"] == LAM]
    top = min(ranking, key=lambda r: r["rank"])
    assert (top["instruction_id"], top["best_layer"]) == (mg.PLANTED, mg.PLANTED_LAYER)
    assert tables["model comparison"][0]["model"] == LAM
    parts = {
        (r["roi"], r["region"]): r["mean_r2"]
        for r in tables["partitions"]
        if r["model"] == LAM and r["partition"] == "action-vs-reasoning"
    }
    for roi in ("all", *mg.ROIS.values()):
        regions = {g: parts[(roi, g)] for g in ("action", "reasoning", "action&reasoning")}
        assert max(regions, key=regions.get) == "action", (roi, regions)
    # the effect grows along the hierarchy, as planted
    shares = {r["roi"]: r for r in tables["action vs reasoning variance shares"] if r["model"] == LAM}
    assert list(shares) == [*mg.ROIS.values(), "all"]
    assert shares["frontal-motor"]["total R²"] > shares["early-visual"]["total R²"]
    assert shares["all"]["unique action (%)"] > max(
        shares["all"]["unique reasoning (%)"], shares["all"]["shared (%)"]
    )


def test_report_page_holds_every_table_and_figure(study):
    res = study["result"]
    page = res.page.read_text()
    for name in (
        "instruction ranking",
        "model comparison",
        "group comparison",
        "partitions",
        "action vs reasoning variance shares",
        "action vs reasoning prompts per ROI",
    ):
        assert res.tables[name], name
        assert f"<h2>{name}</h2>" in page, name
    assert {r["group"] for r in res.tables["group comparison"]} == {"vlm", "action-model", "rl-baseline"}
    figures = [
        "layer profile per ROI",
        "instructions per ROI",
        f"partition {LAM} action vs reasoning",
        f"partition {VLM} action vs reasoning",
        "action vs reasoning variance shares",
    ]
    for name in figures:
        assert name in page, name
    for src in page.split("<img src='")[1:]:
        assert (res.out / src.split("'")[0]).exists(), src
    gains = {r["roi"]: r for r in res.tables["action vs reasoning prompts per ROI"] if r["model"] == LAM}
    assert all(g["action - reasoning"] > 0 for g in gains.values())


def test_a_baseline_narrower_than_the_pca_is_refused_up_front(study):
    """PCA keeps at most a table's width: a 16-dimensional agent under pca = 32 would not be
    matched to the MLLMs' 32 components, so the plan refuses it, naming the numbers."""
    from brainalign.cli.studies.runner import plan_recipe

    info = study["info"]
    sets = [*study["overrides"], "fit.pca=32"]
    rec = load_recipe(RECIPE, overrides=sets, data_root=info["root"], models=MODELS)
    with pytest.raises(RecipeError) as err:
        plan_recipe(rec)
    assert "models (rl-agent).table: embeddings of 16 dimensions, but [fit] pca = 32" in str(err.value)
    ok = load_recipe(
        RECIPE, overrides=[*study["overrides"], "fit.pca=16"], data_root=info["root"], models=MODELS
    )
    assert plan_recipe(ok).fits


def test_command_plans_and_rebuilds_the_report(study):
    info, sets = study["info"], study["overrides"]
    args = ["run", str(RECIPE), "--data", str(info["root"]), *[x for s in sets for x in ("--set", s)]]
    args += [x for m in MODELS for x in ("--model", m)]
    res = CliRunner().invoke(app, [*args, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert [f["model"] for f in plan["fits"]] == [VLM, LAM, "rl-agent"]
    assert plan["datasets"][0]["test_runs"] == ["sub-01-run-3", "sub-02-run-3"]
    assert {p["model"] for p in plan["partitions"]} == {VLM, LAM}
    page = study["result"].page
    before = page.stat().st_mtime_ns
    res = CliRunner().invoke(app, [*args, "--out", str(study["out"]), "--stage", "report"])
    assert res.exit_code == 0, res.output
    assert page.stat().st_mtime_ns > before
    assert "action vs reasoning variance shares" in page.read_text()
