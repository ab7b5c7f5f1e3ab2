"""Provenance of several extraction runs into one table, the refusal to resume across runs that
differ, and revision pinning of Hub checkpoints (the Hub simulated with a local checkpoint)."""

from __future__ import annotations

import json
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


def _embed(model, uri, instructions=("text.describe",), layers_=(0, -1), **kw):
    return embed(
        story_manifest(n_trs=2),
        model,
        list(instructions),
        store=uri,
        layers=list(layers_),
        progress=False,
        **kw,
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


# ---- resume by stored rows, device maps, up-front checks -------------------------------------
def _rows(uri, **kw):
    t = FeatureStore.open(uri).to_table(columns=["stimulus_id", "layer", "pooling"])
    return sorted(zip(*[t.column(c).to_pylist() for c in ("stimulus_id", "layer", "pooling")], strict=True))


def test_resume_writes_the_rows_another_pooling_asks_for(tiny, tmp_path):
    """A unit is done when the rows this run asks for are stored, not when as many rows are:
    rows of another pooling do not make a rerun skip its units, and a unit with some of its rows
    stored gets only the missing ones."""
    uri = tmp_path / "f.lance"
    assert _embed(tiny("gpt2"), uri, pooling=["last"]).rows_written == 4
    res = _embed(tiny("gpt2"), uri, pooling=["stimulus"])
    assert res.units_skipped == 0 and res.rows_written == 4
    assert {p for _, _, p in _rows(uri)} == {"last", "stimulus"}
    again = _embed(tiny("gpt2"), uri, pooling=["stimulus", "last"])
    assert again.units_skipped == 2 and again.rows_written == 0
    plan = _embed(tiny("gpt2"), uri, pooling=["last", "all"], dry_run=True)
    assert plan.units_done == 0 and plan.rows_to_write == 4
    more = _embed(tiny("gpt2"), uri, pooling=["last", "all"])
    assert more.rows_written == 4  # the "all" rows; the stored "last" rows are not written twice
    rows = _rows(uri)
    assert len(rows) == len(set(rows)) == 12
    # another layer selection is another set of rows
    assert _embed(tiny("gpt2"), uri, pooling=["last"], layers_=[1]).rows_written == 2


def test_stack_layers_moves_states_of_a_split_model_to_one_device():
    import torch

    from brainalign.features.extract.runner import stack_layers

    hidden = [torch.ones(2, 3, 4, device="meta"), torch.ones(2, 3, 4), torch.ones(2, 3, 4)]
    with pytest.raises(RuntimeError):
        torch.stack([hidden[0], hidden[2]])
    out = stack_layers(hidden, [0, 2])
    assert out.shape == (2, 2, 3, 4) and out.device.type == "meta"
    cpu = stack_layers([torch.full((1, 2, 2), float(k)) for k in range(3)], [1, 2])
    assert cpu[:, 0, 0, 0].tolist() == [1.0, 2.0]


def test_provenance_records_the_device_map(tiny):
    a = load_adapter(tiny("gpt2"))
    assert a.provenance()["device"] == "cpu" and "device_map" not in a.provenance()
    a.model.hf_device_map = {"transformer.wte": 0, "transformer.h": 1, "lm_head": "cpu"}
    prov = a.provenance()
    assert prov["device"] == "cpu,cuda:0,cuda:1"
    assert prov["device_map"] == {"transformer.wte": 0, "transformer.h": 1, "lm_head": "cpu"}
    json.dumps(prov)


def test_encoders_refuse_response_pooling_before_writing(tiny, tmp_path):
    uri = tmp_path / "enc.lance"
    pattern = (
        r"pooling: 'response' needs a model that generates.*expected some of .*got \['stimulus', 'response'\]"
    )
    for dry in (True, False):
        with pytest.raises(ValueError, match=pattern):
            _embed(tiny("bert"), uri, pooling=["stimulus", "response"], dry_run=dry)
    assert not uri.exists()
    plan = _embed(tiny("bert"), uri, pooling=["stimulus", "last"], dry_run=True)
    assert plan.rows == 2 * 2 * 2


def test_shard_and_layer_errors_name_the_option(tiny, tmp_path):
    from brainalign.features.extract.runner import select_layers

    for bad in ("2", "1/2/3", "a/b"):
        with pytest.raises(ValueError, match=r"shard: expected 'i/n'.*got '" + bad):
            _embed(tiny("gpt2"), tmp_path / "f.lance", shard=bad, dry_run=True)
    with pytest.raises(ValueError, match=r"layers of component 'vision': relative depth 1.5"):
        select_layers([1.5], 5, "vision")
    with pytest.raises(ValueError, match=r"layers of component 'lm': 7 is outside 0..4"):
        select_layers([7], 5, "lm")
    with pytest.raises(ValueError, match=r"layers of component 'lm': expected 'all'.*got 'last'"):
        select_layers("last", 5, "lm")
    with pytest.raises(ValueError, match=r"layers of component 'lm': .* outside"):
        _embed(tiny("gpt2"), tmp_path / "f.lance", layers_=[9], dry_run=True)


def test_resume_refuses_other_decoding_settings_and_decoder_input(tiny, tmp_path):
    uri = tmp_path / "f.lance"
    _embed(tiny("gpt2"), uri, pooling=["last", "response"], max_new_tokens=2, model_name="m")
    with pytest.raises(ValueError, match=r"decoding: .* generated with max_new_tokens 2; this run uses max"):
        _embed(tiny("gpt2"), uri, pooling=["response"], max_new_tokens=3, model_name="m")
    with pytest.raises(ValueError, match=r"decoding: .* with seed 0; this run uses seed 1"):
        _embed(
            tiny("gpt2"), uri, pooling=["response"], max_new_tokens=2, seed=1, model_name="m", dry_run=True
        )
    assert _embed(tiny("gpt2"), uri, pooling=["last"], model_name="m").units_skipped == 2  # no responses
    assert (
        _embed(tiny("gpt2"), uri, pooling=["response"], max_new_tokens=2, model_name="m").units_skipped == 2
    )
    # a later run that writes rows without responses keeps the response rows' settings on record
    assert _embed(tiny("gpt2"), uri, pooling=["stimulus"], model_name="m").rows_written > 0
    with pytest.raises(ValueError, match=r"decoding: .* generated with max_new_tokens 2; this run uses max"):
        _embed(tiny("gpt2"), uri, pooling=["response"], max_new_tokens=3, model_name="m")
    t5 = tmp_path / "t5.lance"
    _embed(tiny("t5"), t5, pooling=["last"], components=["decoder"])
    with pytest.raises(ValueError, match=r"decoder_input: .* fed 'stimulus'; this run feeds 'start'"):
        _embed(tiny("t5"), t5, pooling=["last"], components=["decoder"], decoder_input="start")
    assert _embed(tiny("t5"), t5, pooling=["last"], components=["decoder"]).units_skipped == 2
