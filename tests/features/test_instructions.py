"""The instruction registry: counts per study, ids, controls, and that the data ship as files."""

from __future__ import annotations

from importlib import resources

import pytest

from brainalign.features.instructions import (
    Instruction,
    available_versions,
    get_instruction,
    load_registry,
    resolve_instructions,
)


def test_registry_holds_the_seed_study_sets():
    reg = load_registry()
    assert reg.version == "1" and "1" in available_versions()
    assert len(reg.family("video")) == 13
    assert len(reg.family("image")) == 10
    assert len(reg.family("audio")) == 5
    assert len(reg.family("gameplay-action")) >= 2 and len(reg.family("gameplay-reasoning")) >= 2


def test_controls_none_nonsense_and_paraphrases():
    reg = load_registry()
    assert get_instruction("none").text == ""
    assert get_instruction("nonsense").family == "control"
    paraphrases = [i for i in reg.instructions if i.paraphrase_of]
    assert paraphrases
    for p in paraphrases:
        original = reg[p.paraphrase_of]
        assert p.text and p.text != original.text
    assert reg.paraphrases("video.captioning")[0].id == "paraphrase.video.captioning"


def test_entries_are_complete_and_unique():
    reg = load_registry()
    ids = reg.ids()
    assert len(ids) == len(set(ids))
    for ins in reg.instructions:
        assert ins.id and ins.source and ins.family
        assert ins.text.strip() == ins.text
        assert ins.id == "none" or ins.text.endswith((".", "?")) or ins.family == "control"
    assert len(reg.sha256) == 64


def test_data_files_ship_inside_the_package():
    path = resources.files("brainalign.features") / "data" / "instructions" / "v1.json"
    assert path.is_file()


def test_resolve_instructions():
    got = resolve_instructions(["none", "family:audio"])
    assert [i.id for i in got][:2] == ["none", "audio.understanding"] and len(got) == 6
    custom = resolve_instructions({"mine": "Count the dogs."})
    assert custom == [Instruction("mine", "Count the dogs.", "custom", "user-supplied")]
    with pytest.raises(KeyError, match="not in registry"):
        resolve_instructions(["no-such-id"])
    with pytest.raises(ValueError, match="duplicate"):
        resolve_instructions(["none", "none"])
    with pytest.raises(ValueError, match="no instruction registry"):
        load_registry("99")
