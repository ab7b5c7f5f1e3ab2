"""The language loaders (Pereira 2018, Blank 2014, Wehbe 2014, Futrell 2018) and the
``studies/language.toml`` recipe on a miniature of the four datasets (tests/studies/mini_language.py)."""

from __future__ import annotations

import json
import shutil

import mini_language as ml
import numpy as np
import pytest
import scipy.io
from conftest import STUDIES

from brainalign.cli.studies import RecipeError, load_recipe
from brainalign.cli.studies.datasets.language import (
    Blank2014,
    Futrell2018,
    Pereira2018,
    Wehbe2014,
    common_columns,
    read_textgrid_words,
)
from brainalign.features import open_table

RECIPE = STUDIES / "language.toml"
PLANTED, BASE, OTHER = "alpaca-7b", "llama-7b", "gpt2"
FMRI = ("pereira2018-384", "pereira2018-243", "blank2014", "wehbe2014")

pytestmark = [pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning")]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The miniature's layout with zero responses (no model needed)."""
    return ml.build(tmp_path_factory.mktemp("language") / "data", None)


def _copy(clean, tmp_path, break_it=None):
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    if break_it is not None:
        break_it(root)
    return root


def _resave(path, **changes):
    d = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    scipy.io.savemat(str(path), d)


def _wehbe_time(root, fn):
    path = root / "wehbe2014/subject_1.mat"
    t = scipy.io.loadmat(str(path))["time"].copy()
    _resave(path, time=fn(t))


def _late_words(root):
    path = root / "wehbe2014/subject_1.mat"
    w = scipy.io.loadmat(str(path))["words"]
    w[0, -1]["start"] = np.array([[9999.0]])
    _resave(path, words=w)


def _short_story(root):
    csv = root / "blank2014/sub-085.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(line for line in lines if not line.startswith("Aqua,29,")) + "\n")


def _no_rt(root):
    p = root / "naturalstories/naturalstories_RTS/processed_RTs.tsv"
    p.write_text(p.read_text().replace("\tRT\t", "\tReadingTime\t", 1))


# ---- loader checks ------------------------------------------------------------------------------
def test_checks_pass_on_the_miniature(clean):
    assert Pereira2018(clean / "pereira2018", {"experiment": "384"}).check() == []
    assert Pereira2018(clean / "pereira2018", {"experiment": "243"}).check() == []
    assert Wehbe2014(clean / "wehbe2014").check() == []
    assert Blank2014(clean / "blank2014").check() == []
    assert Futrell2018(clean / "naturalstories").check() == []
    assert Pereira2018(clean / "pereira2018").subjects() == ["sub-M02", "sub-M04", "sub-M07"]
    assert Wehbe2014(clean / "wehbe2014").subjects() == ["sub-1"]
    assert Blank2014(clean / "blank2014").test_runs() == ["KingOfBirds"]
    assert Wehbe2014(clean / "wehbe2014", {"test_run": 2}).test_runs() == ["run-2"]


@pytest.mark.parametrize(
    ("cls", "sub", "options", "break_it", "message"),
    [
        (
            Pereira2018,
            "pereira2018",
            {"subjects": ["M04"]},
            lambda r: (r / "pereira2018/M04/data_384sentences.mat").unlink(),
            "subjects: ['sub-M04'] not found",
        ),
        (
            Pereira2018,
            "pereira2018",
            {"experiment": "243"},
            lambda r: (r / "pereira2018/M02/data_243sentences.mat").write_bytes(b"not matlab"),
            "not a readable MATLAB v5 file",
        ),
        (
            Pereira2018,
            "pereira2018",
            {},
            lambda r: _resave(r / "pereira2018/M04/data_384sentences.mat", keySentences=None),
            "variable(s) ['keySentences'] missing",
        ),
        (
            Pereira2018,
            "pereira2018",
            {},
            lambda r: _resave(
                r / "pereira2018/M07/data_384sentences.mat", labelsPassageForEachSentence=np.ones((60, 1))
            ),
            "labelsPassageForEachSentence has shape (60, 1), expected 64 rows",
        ),
        (Pereira2018, "pereira2018", {"atlases": ["languageXX"]}, None, "atlases: ['languageXX'] not in"),
        (Pereira2018, "pereira2018", {"experimnt": "384"}, None, "option(s) ['experimnt'] unknown"),
        (Pereira2018, "pereira2018", {"experiment": "180"}, None, "experiment: expected '384' or '243'"),
        (
            Pereira2018,
            "pereira2018",
            {"test_passages": [99]},
            None,
            "test_passages: passage(s) [99] do not exist",
        ),
        (
            Wehbe2014,
            "wehbe2014",
            {},
            lambda r: _wehbe_time(r, lambda t: np.stack([t[:, 0] * 0.75, t[:, 1]], 1)),
            "expected TR 2.0 s within each run, found steps of [1.5] s in run 1",
        ),
        (
            Wehbe2014,
            "wehbe2014",
            {},
            lambda r: _wehbe_time(r, lambda t: t[:-1]),
            "data has 128 rows but time has 127",
        ),
        (Wehbe2014, "wehbe2014", {}, _late_words, "1 word(s) start outside the scanned time"),
        (Wehbe2014, "wehbe2014", {"test_run": "run-9"}, None, "test_run: 'run-9' is not one of the runs"),
        (Blank2014, "blank2014", {}, _short_story, "story Aqua: the subjects' TR grids differ"),
        (
            Blank2014,
            "blank2014",
            {},
            lambda r: (r / "blank2014/audio/2_aligned.TextGrid").unlink(),
            "2_aligned.TextGrid: missing",
        ),
        (Blank2014, "blank2014", {"audio_onset_s": 40.0}, None, "the TR grid and the stimulus disagree"),
        (Futrell2018, "naturalstories", {}, _no_rt, "column(s) ['RT'] missing"),
        (Futrell2018, "naturalstories", {"min_rt": -1}, None, "min_rt: expected a number >= 0"),
    ],
)
def test_check_names_the_problem(clean, tmp_path, cls, sub, options, break_it, message):
    root = _copy(clean, tmp_path, break_it)
    problems = cls(root / sub, options).check()
    assert any(message in p for p in problems), problems


def test_empty_roots_say_what_is_expected(tmp_path):
    assert "no subject folder holds data_384sentences.mat" in Pereira2018(tmp_path).check()[0]
    assert "subject_1.mat .. subject_8.mat" in Wehbe2014(tmp_path).check()[0]
    assert "no sub-<UID>.csv files" in Blank2014(tmp_path).check()[0]
    assert all("missing" in p for p in Futrell2018(tmp_path).check())


# ---- keys, splits and voxels --------------------------------------------------------------------
def test_pereira_manifest_split_and_voxels(clean, tmp_path):
    path = clean / "pereira2018/M02/data_384sentences.mat"
    raw = scipy.io.loadmat(str(path))
    sents = [str(c[0]) for c in raw["keySentences"][:, 0]]
    passage = raw["labelsPassageForEachSentence"][:, 0].astype(int)
    ds = Pereira2018(clean / "pereira2018", {"experiment": "384"})
    man = ds.manifest("text")
    assert man.stimulus_set == "pereira2018-384" and len(man) == len(sents) == 64
    for i, it in enumerate(man.items):
        same = [s for j, s in enumerate(sents[: i + 1]) if passage[j] == passage[i]]
        assert it.text == " ".join(same) and it.text[it.focus[0] : it.focus[1]] == sents[i]
        assert it.run == f"passage-{passage[i]:03d}" and it.tr == len(same) - 1
    # the last passage of each of the 4 categories (4 passages each) is held out
    assert ds.test_runs() == ["passage-004", "passage-008", "passage-012", "passage-016"]
    assert Pereira2018(clean / "pereira2018", {"experiment": "243"}).test_runs() == [
        "passage-003",
        "passage-006",
        "passage-009",
        "passage-012",
    ]
    ds.ingest(tmp_path / "r.lance", tmp_path / "v.lance")
    ds.ingest(tmp_path / "r.lance", tmp_path / "v.lance")  # again: rows replaced, not added
    resp = open_table(tmp_path / "r.lance").to_table(columns=["subject", "run", "tr", "stimulus_id"])
    assert len(resp) == 3 * 64
    keys = {(it.run, it.tr) for it in man.items}
    assert {(r, t) for r, t in zip(resp["run"].to_pylist(), resp["tr"].to_pylist(), strict=True)} == keys
    # independent oracle of the common language voxels: the mini's coordinates and ROIs
    expected = None
    for s in ml.PEREIRA_SUBJECTS:
        coords, roi_of = ml._pereira_voxels(s)
        lang = {tuple(c) for c, r in zip(coords.tolist(), roi_of, strict=True) if r is not None}
        expected = lang if expected is None else expected & lang
    vox = open_table(tmp_path / "v.lance").to_table(filter="subject = 'sub-M07'")
    got = {(i + 1, j + 1, k + 1) for i, j, k in zip(*(vox[c].to_pylist() for c in "ijk"), strict=True)}
    assert got == expected and len(got) == 140
    assert set(vox["roi"].to_pylist()) == {f"{a}.{r}" for a, rois in ml.LANG_ROIS.items() for r in rois}


def test_common_columns_match_coordinates():
    a = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    b = np.array([[3, 3, 3], [9, 9, 9], [1, 1, 1]])
    cols = common_columns({"a": a, "b": b})
    np.testing.assert_array_equal(a[cols["a"]], b[cols["b"]])
    assert len(cols["a"]) == 2


def test_wehbe_word_level_manifest_and_tr_grid(clean, tmp_path):
    ds = Wehbe2014(clean / "wehbe2014", {"context_words": 3})
    raw = scipy.io.loadmat(str(clean / "wehbe2014/subject_1.mat"))
    t = raw["time"]
    starts = np.array([w["start"][0, 0] for w in raw["words"][0]])
    man = ds.manifest("text")
    assert all(it.tr is None for it in man.items) and len(man) == len(starts)
    run_start = {r: t[t[:, 1] == r, 0].min() for r in (1, 2, 3, 4)}
    for k, it in enumerate(man.items):
        r = int(it.run.split("-")[1])
        assert it.onset_s == pytest.approx(starts[k] - run_start[r])
        assert 0 <= it.onset_s < ml.WEHBE_TRS * ml.WEHBE_TR
        assert len(it.text.split()) == min(k, 3) + 1
    ds.ingest(tmp_path / "r.lance", tmp_path / "v.lance")
    resp = open_table(tmp_path / "r.lance").to_table(columns=["run", "tr", "onset_s"])
    assert len(resp) == 4 * ml.WEHBE_TRS
    np.testing.assert_allclose(resp["onset_s"].to_numpy(), resp["tr"].to_numpy() * 2.0)
    rois = open_table(tmp_path / "v.lance").to_table(columns=["roi"])["roi"].to_pylist()
    assert set(rois) == {"Temporal_Sup_L", "Temporal_Mid_L"}


def test_blank_textgrid_and_first_tr(clean):
    iv = read_textgrid_words(clean / "blank2014/audio/1_aligned.TextGrid")
    assert iv and all(w not in ("", "sp") for _, _, w in iv)
    ds = Blank2014(clean / "blank2014")
    man = ds.manifest("text")
    first = int(np.floor((iv[0][0] + 8.0) / 2.0))
    boar = [it for it in man.items if it.run == "Boar"]
    assert boar[0].tr == first and boar[-1].tr == ml.BLANK_TRS - 1
    assert boar[-1].text == " ".join(w for _, _, w in iv)  # the whole story so far


def test_brain_scores_take_the_best_component_and_layer(tmp_path):
    """Oracle: numpy median over voxels of r divided by the median ceiling (Brain-Score's order:
    aggregate, then normalise), mean over subjects, argmax over (component, layer)."""
    from brainalign.cli.fitting import scores_table
    from brainalign.cli.studies.datasets.language import brain_scores
    from brainalign.features import create_table

    rng = np.random.default_rng(0)
    spaces = [
        {"model": "t5", "instruction_id": "none", "component": c, "layer": k, "pooling": "last"}
        for c in ("encoder", "decoder")
        for k in range(3)
    ]
    table = create_table(tmp_path / "scores.lance", "scores")
    vals = {}
    for s in ("sub-1", "sub-2"):
        r = rng.uniform(-0.2, 0.8, (len(spaces), 50))
        ceil = rng.uniform(0.01, 1.0, 50)
        ceil[:3] = np.nan  # voxels without a ceiling keep their r and leave the median ceiling
        vals[s] = np.median(r, axis=1) / np.nanmedian(ceil)
        table.write(scores_table("fit", "d", s, spaces, r, r**2, np.ones_like(r), ceil, r / ceil))
    (row,), metric = brain_scores(tmp_path / "scores.lance", "fit", aggregate="median")
    per = np.mean([vals[s] for s in vals], axis=0)
    best = int(np.argmax(per))
    assert metric == "r/ceiling" and row["model"] == "t5" and row["n_subjects"] == 2
    assert (row["component"], row["best_layer"]) == (spaces[best]["component"], spaces[best]["layer"])
    assert row["score"] == pytest.approx(per[best], rel=1e-5)


def test_word_surprisal_matches_prefix_probabilities(tmp_path_factory):
    """Oracle: -log2 P(w_i | w_<i) = log2 P(prefix_{i-1}) - log2 P(prefix_i), each prefix scored
    by its own forward pass; sliding windows change nothing while the story fits one window."""
    torch = pytest.importorskip("torch")
    import tiny_models
    import transformers as tf

    from brainalign.cli.studies.datasets.language import word_surprisal

    ckpt = tmp_path_factory.mktemp("llama") / "llama"
    tiny_models.build_llama(ckpt, chat=False)
    tok = tf.AutoTokenizer.from_pretrained(ckpt)
    model = tf.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    words = "The old farmer watched the storm near the harbour.".split()

    def logp(text):
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        return float(sum(lp[i - 1, ids[i]] for i in range(1, len(ids)))) / np.log(2)

    prefix = [logp(" ".join(words[: i + 1])) for i in range(len(words))]
    oracle = -np.diff([0.0, *prefix])
    got = word_surprisal(ckpt, {1: words}, device="cpu")[1]
    np.testing.assert_allclose(got, oracle, rtol=1e-4, atol=1e-4)
    small = word_surprisal(ckpt, {1: words}, device="cpu", max_context=8)[1]
    assert np.isfinite(small).all() and np.allclose(small[:2], oracle[:2], atol=1e-4)


# ---- the recipe, end to end ---------------------------------------------------------------------
def _overrides(ckpts: dict[str, str]) -> list[str]:
    out = [
        "embed.dtype=float32",
        "embed.storage_dtype=float32",
        "embed.batch_size=16",
        "embed.device=cpu",
        "fit.alphas=[1,10,100,1000,10000]",
        # 32-TR runs: trim 2 TRs at the start and 1 at the end instead of 20 and 15
        "data.wehbe2014.fit.trim_start=2",
        "data.wehbe2014.fit.trim_end=1",
        f'models.{OTHER}.datasets=["pereira2018-384", "futrell2018"]',
    ]
    return out + [f"models.{name}.checkpoint={path}" for name, path in ckpts.items()]


@pytest.fixture(scope="module")
def e2e(tiny, tmp_path_factory):
    import tiny_models

    from brainalign.cli.studies.runner import run_recipe

    tmp = tmp_path_factory.mktemp("language_e2e")
    base = tmp / "llama-base"
    tiny_models.build_llama(base, chat=False)  # no chat template: models read the raw text
    ckpts = {
        BASE: str(base),
        PLANTED: str(ml.build_tuned_llama(base, tmp / "llama-tuned")),
        OTHER: str(tiny("gpt2")),
    }
    root = ml.build(tmp / "data", ckpts[PLANTED], base=base)
    recipe = load_recipe(RECIPE, overrides=_overrides(ckpts), data_root=root, models=list(ckpts))
    res = run_recipe(recipe, tmp / "out")
    return {"res": res, "ckpts": ckpts, "root": root}


def test_planted_model_ranks_first_and_tuning_helps(e2e):
    res = e2e["res"]
    for d in FMRI:
        rows = [r for r in res.tables["model comparison"] if r["dataset"] == d]
        assert rows[0]["model"] == PLANTED, (d, rows)
        if d != "blank2014":  # fROI means of overlapping story windows: the tiny layers look alike
            assert rows[0]["best_layer"] == ml.PLANTED_LAYER, (d, rows)
        (cmp,) = res.tables[f"{d}: tuned vs base"]
        assert cmp["base"] == BASE and cmp["tuned"] == PLANTED
        assert cmp["tuned_score"] > cmp["base_score"] and cmp["change_pct"] > 0
        scores = {r["model"]: r for r in res.tables[f"{d}: brain score per model"]}
        assert scores[PLANTED]["score"] == pytest.approx(rows[0]["score"], abs=1e-6)
    metric = {d: res.tables[f"{d}: brain score per model"][0]["metric"] for d in FMRI}
    assert metric["pereira2018-384"] == "median r/ceiling"  # 3 subjects: subject-pool ceiling
    assert metric["wehbe2014"] == "median r"  # 1 subject: no ceiling
    assert {r["model"] for r in res.tables["model comparison"] if r["dataset"] == "pereira2018-384"} == {
        PLANTED,
        BASE,
        OTHER,
    }
    (size,) = res.tables["pereira2018-384: alignment vs model size"]
    per_model = res.tables["pereira2018-384: brain score per model"]
    params = [r["params_b"] for r in per_model]
    want = np.corrcoef(params, [r["score"] for r in per_model])[0, 1]
    assert size["n_models"] == 3 and size["pearson_r_size"] == pytest.approx(want, abs=1e-9)


def test_surprisal_and_summary_tables(e2e):
    res = e2e["res"]
    sur = {r["model"]: r for r in res.tables["futrell2018: surprisal vs reading time"]}
    assert set(sur) == {PLANTED, BASE, OTHER}
    # 5 readers pass the comprehension filter; every word has a mean RT
    assert sur[PLANTED]["n_words"] == 110
    # RTs follow what the tuned model's surprisal adds to the base model's
    assert sur[PLANTED]["r"] > 0.1 and sur[PLANTED]["r"] > sur[BASE]["r"] + 0.1
    (beh,) = res.tables["futrell2018: surprisal-RT tuned vs base"]
    assert beh["tuned_score"] > beh["base_score"]
    summary = {r["model"]: r for r in res.tables["futrell2018: brain alignment (all datasets)"]}
    # Pereira's two experiments are averaged into one column first, so it weighs as one dataset
    block = {d: {r["model"]: r["score"] for r in res.tables[f"{d}: brain score per model"]} for d in FMRI}
    assert summary[PLANTED]["pereira2018"] == pytest.approx(
        (block["pereira2018-384"][PLANTED] + block["pereira2018-243"][PLANTED]) / 2
    )
    assert summary[OTHER]["pereira2018"] == pytest.approx(block["pereira2018-384"][OTHER])
    columns = ("pereira2018", "blank2014", "wehbe2014")
    assert summary[PLANTED]["n_datasets"] == 3 and summary[OTHER]["n_datasets"] == 1
    assert summary[PLANTED]["mean"] == pytest.approx(np.mean([summary[PLANTED][d] for d in columns]))
    effect = [r for r in res.tables["futrell2018: instruction tuning effect"] if r["scores"] == "mean"]
    assert effect and effect[0]["change_pct"] > 0
    tsv = e2e["res"].out / "futrell2018/report/surprisal_alpaca-7b.tsv"
    assert tsv.read_text().splitlines()[0] == "item\tzone\tword\tsurprisal_bits\tmean_rt_ms"


def test_t5_encoder_and_decoder_layers_both_count(e2e, tiny, tmp_path):
    """Flan-T5 through the recipe: encoder and decoder layers are stored as separate components
    and the brain score takes the best (component, layer)."""
    from brainalign.cli.studies.runner import run_recipe

    name = "flan-t5-large"
    over = _overrides({name: str(tiny("t5"))})
    over = [o for o in over if not o.startswith(f"models.{OTHER}.")]
    over.append(f'models.{name}.datasets=["pereira2018-384"]')
    recipe = load_recipe(RECIPE, overrides=over, data_root=e2e["root"], models=[name])
    res = run_recipe(recipe, tmp_path / "out", stages=["ingest", "embed", "fit", "report"])
    ctx = res.contexts["pereira2018-384"]
    feats = open_table(ctx.features[name]).to_table(columns=["component", "layer"])
    comps = set(zip(feats.column("component").to_pylist(), feats.column("layer").to_pylist(), strict=True))
    assert {c for c, _ in comps} == {"encoder", "decoder"}
    assert list(res.contexts) == ["pereira2018-384"]  # the datasets no selected model reads are skipped
    (row,) = res.tables["brain score per model"]
    assert row["model"] == name and row["component"] in ("encoder", "decoder")
    assert (row["component"], row["best_layer"]) in comps


def test_report_page_holds_every_table_and_figure(e2e):
    res = e2e["res"]
    page = res.page.read_text()
    tables = ["instruction ranking", "model comparison", "group comparison"]
    for d in FMRI:
        tables += [f"{d}: brain score per model", f"{d}: tuned vs base", f"{d}: alignment vs model size"]
    tables += [
        "futrell2018: surprisal vs reading time",
        "futrell2018: surprisal-RT tuned vs base",
        "futrell2018: brain alignment (all datasets)",
        "futrell2018: instruction tuning effect",
        "futrell2018: alignment vs model size (all datasets)",
    ]
    for name in tables:
        assert f"<h2>{name}</h2>" in page, name
    figures = [f"{d}: layer profile per ROI" for d in FMRI] + [f"{d}: {BASE} vs {PLANTED}" for d in FMRI]
    figures += [
        "futrell2018: surprisal vs reading time",
        "futrell2018: brain alignment vs model size",
        "futrell2018: instruction-tuned vs base",
    ]
    for name in figures:
        assert f"<h2>{name}</h2>" in page, name
    for src in [s.split("'")[0] for s in page.split("<img src='")[1:]]:
        assert (res.out / src).exists(), src


def test_command_dry_run_lists_plan_and_problems(e2e):
    from typer.testing import CliRunner

    from brainalign.cli.app import app

    runner = CliRunner()
    sets = [a for o in _overrides(e2e["ckpts"]) for a in ("--set", o)]
    sets += [a for m in e2e["ckpts"] for a in ("--model", m)]
    data = str(e2e["root"])
    res = runner.invoke(app, ["run", str(RECIPE), "--data", data, *sets, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    ds = {d["name"]: d for d in plan["datasets"]}
    assert set(ds) == {*FMRI, "futrell2018"}
    assert ds["wehbe2014"]["test_runs"] == ["run-4"] and ds["wehbe2014"]["n_words"] == 384
    assert ds["pereira2018-384"]["test_runs"][0] == "passage-004"
    emb = {(e["model"], e["data"]): e for e in plan["embeds"]}
    assert (
        emb[(PLANTED, "wehbe2014")]["n_items"] == 384 and emb[(PLANTED, "pereira2018-243")]["n_items"] == 42
    )
    bad = [*sets, "--set", 'data.pereira2018-384.atlases=["languageXX"]']
    res = runner.invoke(app, ["run", str(RECIPE), "--data", data, *bad, "--dry-run"])
    assert res.exit_code != 0 and "atlases: ['languageXX'] not in" in res.output


def test_recipe_checks_unknown_loader_options(clean):
    with pytest.raises(RecipeError, match="option"):
        from brainalign.cli.studies.runner import open_datasets

        open_datasets(load_recipe(RECIPE, overrides=["data.wehbe2014.test_rn=run-1"], data_root=clean))
