"""`brainalign embed` options reach the extraction (and its provenance), and what it writes is
what `brainalign query` shows: a tiny random-weight GPT-2 checkpoint, no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from brainalign.features import FeatureStore, open_table, stimuli

from .conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))  # the tiny checkpoints
import tiny_models

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
]

TEXTS = ["the old sailor walked along the harbour", "children laughed near the market"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers.utils import logging as tf_logging

    # quiet while building; restored after, as later tests assert on huggingface_hub's bars
    # (transformers' switch turns those off too)
    was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        path = tiny_models.build("gpt2", tmp_path_factory.mktemp("tiny_cli"))
    finally:
        if was_on:
            tf_logging.enable_progress_bar()
    return path


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no project file of the working tree applies
    monkeypatch.delenv("BRAINALIGN_PROJECT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = stimuli.text_items(TEXTS, ids=["sailor", "market"]).save(tmp_path / "stimuli.json")
    return tmp_path, manifest


def test_embed_dry_run_prints_the_plan(gpt2, study):
    root, manifest = study
    args = ["embed", manifest, "--model", gpt2, "--root", root / "tables", "--instruction", "text.describe"]
    res = run_cli(*args, "--component", "lm", "--layers", "0,-1", "--dtype", "float16", "--dry-run", "--json")
    plan = json.loads(res.stdout)
    assert plan["components"] == {"lm": [0, 2]} and plan["instructions"] == ["text.describe"]
    assert plan["rows"] == plan["rows_to_write"] == len(TEXTS) * 2
    assert not (root / "tables" / "features.lance").exists()
    bad = run_cli(*args, "--dtype", "float64", "--dry-run", ok=False)
    assert bad.exit_code == 1 and "dtype: expected float32, bfloat16 or float16" in bad.output


def test_embed_options_reach_provenance_and_query_views(gpt2, study):
    from brainalign.features.instructions import resolve_instructions

    root, manifest = study
    tables = root / "tables"
    run_cli(
        "embed",
        manifest,
        "--model",
        gpt2,
        "--model-name",
        "tiny-gpt2",
        "--root",
        tables,
        "--instruction",
        "text.describe",
        "--pooling",
        "stimulus",
        "--pooling",
        "response",
        "--revision",
        "main",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--max-new-tokens",
        "3",
        "--seed",
        "5",
        "--storage-dtype",
        "float16",
        "--no-resume",
        "--json",
    )
    st = FeatureStore.open(tables / "features.lance")
    prov = st.provenance
    assert prov["dtype"] == "float32" and prov["device"] == "cpu" and prov["trust_remote_code"] is False
    assert prov["revision_requested"] == "main" and prov["revision"].startswith("local-sha256:")
    assert prov["decoding"]["max_new_tokens"] == 3 and prov["decoding"]["seed"] == 5
    assert st.storage_dtype == "float16" and prov["storage_dtype"] == "float16"
    # the query views find what embed wrote: generations, and the instructions' text
    gens = json.loads(
        run_cli("query", "--root", tables, "--format", "json", "SELECT * FROM generations").stdout
    )
    assert sorted(g["stimulus_id"] for g in gens) == ["market", "sailor"]
    assert not (tables / "features.generations.lance").exists()
    rows = json.loads(
        run_cli(
            "query",
            "--root",
            tables,
            "--format",
            "json",
            "SELECT instruction_id, text, prompt_sha256 FROM instructions WHERE in_features",
        ).stdout
    )
    text = resolve_instructions(["text.describe"])[0].text
    assert rows == [
        {
            "instruction_id": "text.describe",
            "text": text,
            "prompt_sha256": prov["instructions"]["text.describe"]["prompt_sha256"],
        }
    ]
    assert open_table(tables / "generations.lance").provenance["model_key"] == "tiny-gpt2"


def test_embed_bad_layers_is_a_usage_error(gpt2, study):
    root, manifest = study
    args = ["embed", manifest, "--model", gpt2, "--root", root / "tables", "--dry-run"]
    for bad in ("a", "0,x", ","):
        res = run_cli(*args, "--layers", bad, ok=False)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert "--layers" in out and "comma-separated layer indices" in out and "relative depths" in out
    plan = json.loads(run_cli(*args, "--layers", "0.5,-1", "--json").stdout)
    assert plan["components"] == {"lm": [1, 2]}
    res = run_cli(*args, "--shard", "2", ok=False)
    assert res.exit_code == 1 and "shard: expected 'i/n'" in res.output
