"""Provenance of several extraction runs into one table, the refusal to resume across runs that
differ, and revision pinning of Hub checkpoints (the Hub simulated with a local checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from brainalign.features import FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared fixtures live beside this file
import conftest_extract as cx

from brainalign.features.extract import embed, load_adapter
from brainalign.features.extract.adapters import pinned_revision

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
]

tiny, story_manifest = cx.tiny, cx.story_manifest
SHA = "0123456789abcdef0123456789abcdef01234567"


def _embed(model, uri, instructions=("text.describe",), **kw):
    return embed(
        story_manifest(n_trs=2), model, list(instructions), store=uri, layers=[0, -1], progress=False, **kw
    )


def test_a_second_model_and_instruction_are_recorded(tiny, tmp_path):
    uri = tmp_path / "f.lance"
    _embed(tiny("gpt2"), uri, model_name="gpt2")
    _embed(tiny("gpt2"), uri, ["none"], model_name="gpt2")  # same run settings, another instruction
    _embed(tiny("llama"), uri, model_name="llama")
    prov = FeatureStore.open(uri).provenance
    assert prov["model_key"] == "gpt2"  # the first writer's keys stay at the top level
    assert set(prov["writers"]) == {"gpt2", "llama"}
    assert set(prov["writers"]["gpt2"]["instructions"]) == {"text.describe", "none"}
    assert prov["writers"]["llama"]["revision"].startswith("local-sha256:")
    assert prov["writers"]["llama"]["revision"] != prov["writers"]["gpt2"]["revision"]
    assert set(prov["instructions"]) == {"text.describe", "none"}
    # a rerun with nothing left to do commits nothing, not even metadata
    version = FeatureStore.open(uri).version
    assert _embed(tiny("llama"), uri, model_name="llama").rows_written == 0
    assert FeatureStore.open(uri).version == version


def test_resume_refuses_rows_of_another_revision_dtype_or_prompt(tiny, tmp_path):
    uri = tmp_path / "f.lance"
    _embed(tiny("gpt2"), uri, model_name="m")
    with pytest.raises(
        ValueError, match=r"model: .* holds rows of m from revision local-sha256:.*dtype float32"
    ):
        _embed(tiny("llama"), uri, model_name="m")  # another checkpoint under the same name
    with pytest.raises(ValueError, match=r"this run is revision .*\(dtype bfloat16\).*--model-name"):
        _embed(tiny("gpt2"), uri, model_name="m", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"prompt sha256 text.describe [0-9a-f]{12}"):
        _embed(tiny("gpt2"), uri, model_name="m", layout="stimulus_first")
    with pytest.raises(ValueError, match="holds rows of m"):
        _embed(tiny("gpt2"), uri, model_name="m", dtype="bfloat16", resume=False)
    # the same settings resume; another model name is another run
    assert _embed(tiny("gpt2"), uri, model_name="m").units_skipped == 2
    assert _embed(tiny("gpt2"), uri, model_name="m-bf16", dtype="bfloat16").units_written == 2


def test_local_checkpoints_are_not_pinned(tiny):
    adapter = load_adapter(tiny("gpt2"), revision="v1")
    assert adapter.resolved_revision is None and adapter._load_kwargs["revision"] == "v1"
    assert adapter.provenance()["revision"].startswith("local-sha256:")


def test_hub_checkpoints_load_everything_at_the_configs_commit(tiny, monkeypatch):
    import transformers

    path = str(tiny("gpt2"))
    calls: list[tuple[str, str, str | None]] = []

    def served(cls):
        """``cls.from_pretrained`` as if ``org/tiny`` were on the Hub: the local checkpoint, with
        the commit transformers records for a Hub download."""
        load = cls.from_pretrained

        def from_pretrained(model_id, *args, **kw):
            calls.append((cls.__name__, str(model_id), kw.get("revision")))
            kw.pop("revision", None)
            obj = load(path if model_id == "org/tiny" else model_id, *args, **kw)
            if isinstance(obj, transformers.PretrainedConfig):
                obj._commit_hash = SHA
            return obj

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        served(cls)
    adapter = load_adapter("org/tiny", revision="v1")
    prov = adapter.provenance()  # loads the model
    assert calls[0] == ("AutoConfig", "org/tiny", "v1")  # the one resolution of the branch
    assert ("AutoTokenizer", "org/tiny", SHA) in calls and ("AutoModelForCausalLM", "org/tiny", SHA) in calls
    assert all(rev == SHA for _, model_id, rev in calls[1:] if model_id == "org/tiny")
    assert prov["revision_requested"] == "v1" and prov["revision"] == SHA
    assert pinned_revision("org/tiny", adapter.config) == SHA
    assert pinned_revision(path, adapter.config) is None  # a local directory is hashed instead
