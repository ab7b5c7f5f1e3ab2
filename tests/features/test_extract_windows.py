"""Sliding long-context windows (``stimuli.text_sliding_windows``): one forward per window, one
``tr_words`` row per TR, equal to per-TR forwards over the same preceding words (causal LMs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from brainalign.features import FeatureStore, stimuli

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared fixtures live beside this file
import conftest_extract as cx

from brainalign.features.extract import embed

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]

tiny = cx.tiny

INS = ["text.describe", "text.emotion"]
N_TRS = 9
# the story read at 0.45 s a word from 2.2 s (TR 0 silent), a pause after word 12 (TR 4 silent),
# and a silent TR at the end
ONSETS = np.array([2.2 + 0.45 * i if i < 12 else 10.1 + 0.45 * (i - 12) for i in range(len(cx.STORY))])


def windows(window_words: int = 9, stride: int = 4) -> stimuli.Manifest:
    return stimuli.text_sliding_windows(
        cx.STORY,
        ONSETS,
        tr=2.0,
        n_trs=N_TRS,
        window_words=window_words,
        stride=stride,
        run="run-1",
        stimulus_set="story",
    )


def same_context(m: stimuli.Manifest) -> stimuli.Manifest:
    """The oracle: one per-TR item for each TR of each window, reading the window's text up to
    the TR's last word (the same preceding words), with the TR's words in focus."""
    items = [
        stimuli.Stimulus(
            stimulus_id=s.stimulus_id,
            run=s.run,
            tr=s.tr,
            onset_s=s.onset_s,
            window_start_s=s.window_start_s,
            window_end_s=s.window_end_s,
            text=w.text[: s.focus[1]],
            focus=s.focus,
        )
        for w in m.items
        for s in w.segments
    ]
    return stimuli.Manifest(m.stimulus_set, "text", items, {"oracle": "per-TR, same left context"})


def read_all(uri) -> tuple[list, np.ndarray]:
    keys, X = FeatureStore.open(uri).read()
    cols = ("instruction_id", "layer", "pooling", "stimulus_id", "run", "tr", "onset_s", "window_end_s")
    return list(zip(*[keys.column(c).to_pylist() for c in cols], strict=True)), X


@pytest.mark.parametrize(
    ("family", "layout"), [("gpt2", "instruction_first"), ("gpt2", "stimulus_first"), ("llama", None)]
)
def test_window_rows_equal_per_tr_forwards_with_the_same_left_context(family, layout, tiny, tmp_path):
    m = windows()
    silent = [s.tr for it in m.items for s in it.segments if s.focus[0] == s.focus[1]]
    assert silent == [0, 4, 8]  # leading, pause, trailing
    kw = {"layout": layout} if layout else {}  # llama: its chat template, instruction first
    model = tiny(family)
    kw.update(pooling=("tr_words",), progress=False)
    a = embed(m, model, INS, store=tmp_path / "w.lance", batch_size=2, **kw)
    b = embed(same_context(m), model, INS, store=tmp_path / "t.lance", batch_size=3, **kw)
    assert a.plan.n_items == len(m) < b.plan.n_items == N_TRS  # forwards per instruction
    assert a.rows_written == b.rows_written == N_TRS * len(INS) * 3
    ka, Xa = read_all(tmp_path / "w.lance")
    kb, Xb = read_all(tmp_path / "t.lance")
    assert ka == kb
    np.testing.assert_allclose(Xa, Xb, rtol=1e-4, atol=2e-5)
    # instruction first: the TR's tokens read it; after the stimulus, a causal LM's cannot (TR 0,
    # silent before any word, pools the last prompt token, after the instruction, in both modes)
    one, two = (Xa[[k[0] == ins and k[5] != 0 for k in ka]] for ins in INS)
    assert np.allclose(one, two, atol=1e-6) == (layout == "stimulus_first")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_long_window_equals_the_per_tr_mode_with_the_whole_context(family, tiny, tmp_path):
    """A window over the whole story gives every TR all preceding words, as ``text_windows``
    does with ``context_words`` >= the story: the two modes' rows agree, silent TRs included."""
    whole = windows(window_words=100, stride=100)
    per_tr = stimuli.text_windows(
        cx.STORY, ONSETS, tr=2.0, n_trs=N_TRS, context_words=100, run="run-1", stimulus_set="story"
    )
    assert len(whole) == 2  # the leading silence, then the story
    a = embed(whole, tiny(family), INS, store=tmp_path / "w.lance", pooling=("tr_words",), progress=False)
    b = embed(per_tr, tiny(family), INS, store=tmp_path / "t.lance", pooling=("tr_words",), progress=False)
    assert a.rows_written == b.rows_written
    ka, Xa = read_all(tmp_path / "w.lance")
    kb, Xb = read_all(tmp_path / "t.lance")
    assert ka == kb
    np.testing.assert_allclose(Xa, Xb, rtol=1e-4, atol=2e-5)


def test_no_instruction_and_a_silent_first_tr_read_the_start_token(tiny, tmp_path):
    """GPT-2 adds no BOS: with no instruction, the leading silent TR has an empty prompt. It reads
    the tokenizer's start token (GPT-2: <|endoftext|>) in both modes, never an empty forward."""
    whole = windows(window_words=100, stride=100)
    per_tr = stimuli.text_windows(
        cx.STORY, ONSETS, tr=2.0, n_trs=N_TRS, context_words=100, run="run-1", stimulus_set="story"
    )
    assert per_tr.items[0].text == ""
    kw = dict(pooling=("tr_words",), progress=False)
    a = embed(whole, tiny("gpt2"), ["none"], store=tmp_path / "w.lance", **kw)
    b = embed(per_tr, tiny("gpt2"), ["none"], store=tmp_path / "t.lance", **kw)
    assert a.rows_written == b.rows_written == N_TRS * 3
    ka, Xa = read_all(tmp_path / "w.lance")
    kb, Xb = read_all(tmp_path / "t.lance")
    assert ka == kb
    np.testing.assert_allclose(Xa, Xb, rtol=1e-4, atol=2e-5)
    assert np.isfinite(Xa).all()


def test_window_rows_cover_the_tr_grid_once(tiny, tmp_path):
    m = windows()
    uri = tmp_path / "w.lance"
    res = embed(m, tiny("gpt2"), INS, store=uri, layers=[0, 2], pooling=("tr_words",), progress=False)
    st = FeatureStore.open(uri)
    assert res.plan.rows == res.rows_written == st.count_rows() == N_TRS * len(INS) * 2
    assert res.plan.units_total == res.units_written == N_TRS * len(INS)
    t = st.to_table(columns=["instruction_id", "layer", "tr", "onset_s", "stimulus_id"])
    g = t.group_by(["instruction_id", "layer"]).aggregate([("tr", "list")])
    assert len(g) == len(INS) * 2
    for trs in g.column("tr_list").to_pylist():
        assert sorted(trs) == list(range(N_TRS))  # no gap, no duplicate
    np.testing.assert_allclose(t.column("onset_s").to_numpy(), t.column("tr").to_numpy() * 2.0)
    spec = st.provenance["stimulus_spec"]
    assert (spec["window_words"], spec["stride"], spec["n_windows"]) == (9, 4, len(m))


def test_resume_recomputes_a_window_but_writes_only_its_missing_trs(tiny, tmp_path):
    m = windows()
    model = tiny("gpt2")
    uri = tmp_path / "w.lance"
    kw = dict(pooling=("tr_words",), progress=False)
    first = embed(m, model, INS, store=uri, shard=(0, 2), **kw)  # windows 0, 2, 4, ...
    done_trs = {s.tr for it in m.items[0::2] for s in it.segments}
    assert first.units_written == len(done_trs) * len(INS)
    # one row of TR t (of a stored window) lost: that window is recomputed, and of its TRs only
    # t's missing row is written
    t = max(done_trs - {0})
    FeatureStore.open(uri).delete(f"tr = {t} AND layer = 1 AND instruction_id = '{INS[0]}'")
    missing = (N_TRS - len(done_trs)) * len(INS) + 1
    rows = (missing - 1) * 3 + 1
    plan = embed(m, model, INS, store=uri, dry_run=True, **kw)
    assert plan.units_done == N_TRS * len(INS) - missing and plan.rows_to_write == rows
    res = embed(m, model, INS, store=uri, **kw)
    assert res.units_written == missing and res.rows_written == rows
    again = embed(m, model, INS, store=uri, **kw)
    assert again.units_written == again.rows_written == 0
    # the store now holds what one uninterrupted run writes, once
    embed(m, model, INS, store=tmp_path / "full.lance", **kw)
    k, X = read_all(uri)
    kf, Xf = read_all(tmp_path / "full.lance")
    assert k == kf and len(set(k)) == len(k) == N_TRS * len(INS) * 3
    np.testing.assert_allclose(X, Xf, rtol=1e-5, atol=1e-6)


def test_windows_refuse_other_poolings_mixed_items_and_components_without_spans(tiny, tmp_path):
    m = windows()
    with pytest.raises(ValueError, match=r"^pooling:.*'stimulus'"):
        embed(m, tiny("gpt2"), INS, dry_run=True, pooling=("stimulus", "tr_words"), progress=False)
    mixed = stimuli.concat([m, stimuli.text_windows(cx.STORY, ONSETS, tr=2.0, run="run-2")])
    with pytest.raises(ValueError, match=r"^manifest: mixes"):
        embed(mixed, tiny("gpt2"), INS, dry_run=True, pooling=("tr_words",), progress=False)
    # the T5 decoder re-reads the stimulus on its own: it has no per-TR spans of the window
    with pytest.raises(ValueError, match="component decoder gives no per-TR spans"):
        embed(m, tiny("t5"), INS, store=tmp_path / "t5.lance", pooling=("tr_words",), progress=False)
    res = embed(
        m,
        tiny("t5"),
        INS,
        store=tmp_path / "t5e.lance",
        components=["encoder"],
        pooling=("tr_words",),
        progress=False,
    )
    assert res.rows_written == N_TRS * len(INS) * 3
