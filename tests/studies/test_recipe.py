"""The recipe format and runner on a toy study (features supplied as a table, no torch)."""

from __future__ import annotations

import json
import re

import pytest
import toy_study
from typer.testing import CliRunner

from brainalign.cli.app import app
from brainalign.cli.studies import RecipeError, load_recipe, parse_recipe
from brainalign.cli.studies.recipe import apply_overrides
from brainalign.cli.studies.runner import plan_recipe, run_recipe


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    info = toy_study.build(root / "data")
    path = root / "toy.toml"
    path.write_text(toy_study.RECIPE.format(root=info["root"], features=info["features"]))
    return {**info, "recipe": path, "tmp": root}


@pytest.fixture(scope="module")
def result(toy):
    return run_recipe(load_recipe(toy["recipe"]), toy["tmp"] / "out")


def test_planted_instruction_ranks_first_and_owns_the_unique_variance(result):
    ranking = [r for r in result.tables["instruction ranking"] if r["model"] == "toy-tuned"]
    assert ranking[0]["instruction_id"] == toy_study.PLANTED and ranking[0]["rank"] == 1
    assert ranking[0]["best_layer"] in (1, 3)
    models = result.tables["model comparison"]
    assert [m["model"] for m in models] == ["toy-tuned", "toy-base"]
    groups = {(g["roi"], g["group"]): g["score"] for g in result.tables["group comparison"]}
    assert groups[("all", "instruction-tuned")] > groups[("all", "non-instruction-tuned")]
    assert groups[("early", "instruction-tuned")] > groups[("null", "instruction-tuned")] + 0.1
    parts = {
        (p["roi"], p["region"]): p["mean_r2"]
        for p in result.tables["partitions"]
        if p["model"] == "toy-tuned"
    }
    # the partition is fitted at the layer the two instructions predict best in training CV,
    # one of the planted layers: the ROI driven by that layer holds the planted unique variance
    (layer,) = {p["layer"] for p in result.tables["partitions"] if p["model"] == "toy-tuned"}
    roi = {1: "early", 3: "late"}[layer]
    vqa = parts[(roi, "image_vqa")]
    assert vqa > 0.1
    assert vqa > parts[(roi, "image_captioning")] and vqa > parts[(roi, "image_vqa&image_captioning")]


def test_report_page_holds_every_table_and_figure(result):
    page = result.page.read_text()
    for name in ("instruction ranking", "model comparison", "group comparison", "partitions"):
        assert f"<h2>{name}</h2>" in page
    for fig in ("layer profile per ROI", "toy-base vs toy-tuned", "partition toy-tuned"):
        assert fig in page
    for src in [s.split("'")[0] for s in page.split("<img src='")[1:]]:
        assert (result.out / src).exists(), src
    plan = json.loads((result.out / "plan.json").read_text())
    assert plan["plan"]["fits"][0]["subjects"] == ["sub-01", "sub-02"]


def test_rerun_replaces_rows_instead_of_adding(result, toy):
    from brainalign.features import open_table

    scores = result.contexts["toy"].tables["scores"]
    n = open_table(scores).count_rows()
    run_recipe(load_recipe(toy["recipe"]), toy["tmp"] / "out", stages=["fit", "report"])
    assert open_table(scores).count_rows() == n


def test_overrides_swap_one_line(toy):
    rec = load_recipe(toy["recipe"], overrides=["models.toy-base.group=baseline", "fit.alphas=[1, 10]"])
    assert rec.model("toy-base").group == "baseline" and rec.fit["alphas"] == [1, 10]
    with pytest.raises(RecipeError, match="matches no entry"):
        load_recipe(toy["recipe"], overrides=["models.nope.group=x"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=true"]) == {"a": {"b": 1, "c": True}}
    dotted = apply_overrides({"models": [{"name": "qwen2.5-vl"}]}, ["models.qwen2.5-vl.revision=abc"])
    assert dotted["models"][0]["revision"] == "abc"
    only = load_recipe(toy["recipe"], models=["toy-tuned"])
    assert [m.name for m in only.models] == ["toy-tuned"] and only.report["compare"] == []
    with pytest.raises(RecipeError, match="not models of this recipe"):
        load_recipe(toy["recipe"], models=["nope"])


def test_every_problem_is_listed_before_work(toy, tmp_path):
    raw = {
        "study": {"name": "bad name!"},
        "data": {"dataset": "nope", "root": str(tmp_path)},
        "models": [{"name": "m", "source": "embed"}, {"name": "m", "source": "table", "table": "x.lance"}],
        "fit": {"alphas": [0, 1], "preset": "huth", "bogus": 1},
        "partitions": [{"name": "p", "model": "zzz"}],
    }
    with pytest.raises(RecipeError) as exc:
        parse_recipe(raw)
    msg = str(exc.value)
    for part in (
        "study.name",
        "models[0] (m).checkpoint",
        "models[0] (m).modality",
        "models: names must be unique",
        "fit.alphas",
        "fit: unknown key(s) ['bogus']",
        "partitions[0]: give either",
        "partitions[0].model",
    ):
        assert part in msg, part
    rec = load_recipe(toy["recipe"], data_root=tmp_path / "missing")
    with pytest.raises(RecipeError, match="no such directory"):
        plan_recipe(rec)
    rec = load_recipe(toy["recipe"], overrides=["models.toy-tuned.instructions=['image.nope']"])
    with pytest.raises(RecipeError, match=r"image\.nope"):
        plan_recipe(rec)
    # an instruction id named inside a partition's SQL selection is checked up front too
    text = toy["recipe"].read_text()
    ref = 'reference = "image.captioning"'
    assert ref in text
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(
            ref,
            "spaces = { a = \"instruction_id = 'image.captioning'\", b = \"instruction_id = 'image.nope2'\" }",
        )
    )
    with pytest.raises(
        RecipeError, match=r"partitions \(vs-captioning\): instruction\(s\) \['image\.nope2'\]"
    ):
        plan_recipe(load_recipe(bad))


def test_env_variables_expand(toy, monkeypatch):
    monkeypatch.setenv("TOY_ROOT", "/somewhere/else")
    assert str(load_recipe(toy["recipe"]).data[0].root) == "/somewhere/else"


def test_command_dry_run_and_errors(toy):
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(toy["recipe"]), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert [f["model"] for f in plan["fits"]] == ["toy-tuned", "toy-base"]
    assert plan["partitions"][0]["selections"] == ["image_vqa", "image_captioning"]
    res = runner.invoke(app, ["run", str(toy["recipe"]), "--dry-run", "--set", "fit.preset=nope"])
    assert res.exit_code == 1 and "preset" in res.output and "Traceback" not in res.output


@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning")
def test_recipe_starts_from_published_embeddings(toy, result, tmp_path):
    """The same study with both models pulled from the (test) Hub instead of a local table."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hubserver import point_client
    from hubserver.server import serve

    from brainalign.features import open_table, push

    server = serve(tmp_path / "hub", {"hf_toy_token": "lab"})
    mp = point_client(server, tmp_path, "hf_toy_token")
    try:
        push(open_table(toy["features"]), "lab/toy-features", tag="v1")
        overrides = []
        for name in ("toy-tuned", "toy-base"):
            overrides += [
                f"models.{name}.source=pull",
                f"models.{name}.repo=lab/toy-features",
                f"models.{name}.pull_revision=v1",
            ]
        rec = load_recipe(toy["recipe"], overrides=overrides)
        assert {m.source for m in rec.models} == {"pull"}
        pulled = run_recipe(rec, tmp_path / "out", stages=["ingest", "fit", "report"])
    finally:
        mp.undo()
        server.close()
    key = ("model", "instruction_id", "best_layer", "rank")
    assert [[r[k] for k in key] for r in pulled.tables["instruction ranking"]] == [
        [r[k] for k in key] for r in result.tables["instruction ranking"]
    ]
    for a, b in zip(pulled.tables["instruction ranking"], result.tables["instruction ranking"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_poolings_are_ranked_apart(toy, result, tmp_path):
    rec = load_recipe(toy["recipe"], overrides=['models.toy-tuned.pooling=["response", "stimulus"]'])
    res = run_recipe(rec, tmp_path / "out")
    rows = {
        (r["pooling"], r["instruction_id"]): r
        for r in res.tables["instruction ranking"]
        if r["model"] == "toy-tuned"
    }
    # the response pooling keeps the score it has alone; the noise pooling is ranked on its own
    for ins in toy_study.INSTRUCTIONS:
        alone = next(
            r
            for r in result.tables["instruction ranking"]
            if r["model"] == "toy-tuned" and r["instruction_id"] == ins
        )
        assert rows[("response", ins)]["score"] == pytest.approx(alone["score"], abs=1e-6)
        assert rows[("stimulus", ins)]["score"] < 0.1
    top = next(m for m in res.tables["model comparison"] if m["model"] == "toy-tuned")
    assert top["best_pooling"] == "response" and top["best_instruction"] == toy_study.PLANTED


def test_early_stages_alone_and_baselines_without_the_reference(toy, tmp_path):
    # ingest only, on a fresh folder: no scores needed
    run_recipe(load_recipe(toy["recipe"]), tmp_path / "a", stages=["ingest"])
    assert (tmp_path / "a" / "toy" / "responses.lance").exists()
    # a model = "*" partition skips a model that lacks the reference instruction
    rec = load_recipe(
        toy["recipe"],
        overrides=['models.toy-base.instructions=["image.vqa"]', "partitions.vs-captioning.model=*"],
    )
    res = run_recipe(rec, tmp_path / "b")
    assert {p["model"] for p in res.tables["partitions"]} == {"toy-tuned"}


def test_resume_refuses_another_checkpoint(toy):
    from brainalign.cli.studies.recipe import ModelSpec
    from brainalign.cli.studies.runner import _same_checkpoint

    _same_checkpoint(toy["features"], ModelSpec(name="x", modality="image", checkpoint="toy"))
    with pytest.raises(RecipeError, match="holds embeddings of toy, the recipe now names org/other"):
        _same_checkpoint(toy["features"], ModelSpec(name="x", modality="image", checkpoint="org/other"))


def test_cheap_settings_are_checked_up_front(toy):
    for bad, msg in (
        ("fit.folds=blocks:x", "fit.folds"),
        ("report.aggregate=Median", "report.aggregate"),
        ("fit.batch=layers", "fit.batch"),
        ("fit.min_ceiling=2", "fit.min_ceiling"),
        ("models.toy-base.name=a:b", "models[1] (a:b).name"),
    ):
        with pytest.raises(RecipeError, match=re.escape(msg)):
            load_recipe(toy["recipe"], overrides=[bad])
    rec = load_recipe(toy["recipe"], overrides=["models.toy-base.revision=20240101", "fit.folds=blocks:3"])
    assert rec.model("toy-base").revision == "20240101"


def test_layers_are_fitted_in_chunks_under_a_small_memory_budget(toy, result, tmp_path):
    from brainalign.cli.studies.runner import _layer_chunks

    rec = load_recipe(toy["recipe"], overrides=["fit.max_gb=0.000001"])
    res = run_recipe(rec, tmp_path / "out", stages=["ingest", "fit", "report"])
    ctx = res.contexts["toy"]
    assert _layer_chunks(ctx, rec.model("toy-tuned"), toy_study_preset(), 1e-6) == [[0], [1], [2], [3]]
    assert len(ctx.summaries) == 2 * 2 * 2 * 4  # subjects x models x instructions x layer chunks
    key = ("model", "instruction_id", "best_layer", "rank")
    assert [[r[k] for k in key] for r in res.tables["instruction ranking"]] == [
        [r[k] for k in key] for r in result.tables["instruction ranking"]
    ]


def toy_study_preset():
    from brainalign.cli.align import get_preset

    return get_preset("fir4")


@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning")
def test_plan_reads_the_shape_of_a_hub_checkpoint_from_its_config_only(tmp_path):
    """A dry run sizes a Hub model from its config.json (fetched alone, no weights); offline and
    unknown repos leave the shape unknown instead of failing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hubserver import point_client
    from hubserver.server import serve
    from huggingface_hub import HfApi, constants

    from brainalign.cli.studies import runner
    from brainalign.cli.studies.recipe import ModelSpec
    from brainalign.cli.studies.runner import _model_shape

    server = serve(tmp_path / "hub", {"hf_toy_token": "lab"})
    mp = point_client(server, tmp_path, "hf_toy_token")
    try:
        api = HfApi()
        api.create_repo("lab/tiny-vlm")
        config = {"model_type": "qwen2_vl", "text_config": {"num_hidden_layers": 28, "hidden_size": 3584}}
        api.upload_file(
            path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id="lab/tiny-vlm"
        )
        api.upload_file(
            path_or_fileobj=b"\0" * 4096, path_in_repo="model.safetensors", repo_id="lab/tiny-vlm"
        )
        spec = ModelSpec(name="vlm", modality="image", checkpoint="lab/tiny-vlm")
        mp.setattr(runner, "_HUB_UNREACHABLE", False)
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        assert _model_shape(spec) == (None, None)  # offline and not cached
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        assert _model_shape(spec) == (29, 3584)
        assert not list((tmp_path / "hf_cache").rglob("model.safetensors"))  # the weights stay on the Hub
        # an unknown repo is that model's problem only
        assert _model_shape(ModelSpec(name="x", modality="image", checkpoint="lab/missing")) == (None, None)
        assert not runner._HUB_UNREACHABLE and _model_shape(spec) == (29, 3584)
        # an unreachable Hub costs one failed request, then the other models skip it
        dead = "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
        mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead)
        assert _model_shape(spec) == (None, None) and runner._HUB_UNREACHABLE
        mp.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        assert _model_shape(spec) == (None, None)
    finally:
        mp.undo()
        server.close()
