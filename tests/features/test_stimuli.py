"""Stimulus manifests: TR grids, context windows, frame timestamps, audio windows, game frames."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from brainalign.features import stimuli

sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_text_windows_one_item_per_tr_with_context():
    words = [f"w{i}" for i in range(10)]
    onsets = np.array([0.1, 0.5, 0.9, 2.2, 2.4, 4.0, 4.1, 4.2, 8.5, 9.9])
    m = stimuli.text_windows(words, onsets, tr=2.0, n_trs=6, context_words=2, run="r1")
    assert [s.tr for s in m.items] == list(range(6))
    assert [s.onset_s for s in m.items] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    it = m.items[1]  # words 3, 4 with two words of context
    assert it.text == "w1 w2 w3 w4" and it.text[slice(*it.focus)] == "w3 w4"
    it = m.items[3]  # silent TR: context only, empty focus
    assert it.text == "w6 w7" and it.focus == (len(it.text), len(it.text))
    assert m.items[0].text[slice(*m.items[0].focus)] == "w0 w1 w2"
    with pytest.raises(ValueError, match="onsets"):
        stimuli.text_windows(words, onsets[:3], tr=2.0)


def _gappy_story(n_words: int = 30) -> tuple[list[str], np.ndarray]:
    """Words every 0.8 s from 4 s (TRs 0-1 silent), a pause (TR 7 silent), then more words."""
    words = [f"w{i}" for i in range(n_words)]
    onsets = np.array([4.0 + 0.8 * i if i < 12 else 16.1 + 0.8 * (i - 12) for i in range(n_words)])
    return words, onsets


def test_text_sliding_windows_score_every_tr_once_with_enough_left_context(tmp_path):
    words, onsets = _gappy_story()
    W, S = 8, 3
    m = stimuli.text_sliding_windows(words, onsets, tr=2.0, n_trs=16, window_words=W, stride=S, run="r1")
    per_tr = stimuli.text_windows(words, onsets, tr=2.0, n_trs=16, run="r1")
    keys = ("stimulus_id", "run", "tr", "onset_s", "window_start_s", "window_end_s")
    # one unit per TR of the grid, keyed exactly like the per-TR manifest
    assert [[getattr(u, k) for k in keys] for u in m.units()] == [
        [getattr(u, k) for k in keys] for u in per_tr.items
    ]
    assert len(m) == m.spec["n_windows"] < 16 and (m.spec["window_words"], m.spec["stride"]) == (W, S)
    word_tr = np.floor(onsets / 2.0).astype(int)  # oracle: the TR of each word
    for it in m.items:
        assert len(it.text.split()) <= W
        for s in it.segments:
            own = [i for i in range(len(words)) if word_tr[i] == s.tr]
            assert it.text[slice(*s.focus)] == " ".join(words[i] for i in own)
            first = own[0] if own else int(np.sum(onsets < s.tr * 2.0))  # the next word
            before = it.text[: s.focus[0]].split()
            assert before == words[first - len(before) : first]  # the words just before the TR
            assert len(before) >= min(first, W - S)
    # leading silence: an empty window read like the per-TR items (empty text, empty focus)
    assert m.items[0].text == "" and [(s.tr, s.focus) for s in m.items[0].segments] == [
        (0, (0, 0)),
        (1, (0, 0)),
    ]
    # a pause: the focus sits at the end of the word before it
    pause = next(s for it in m.items for s in it.segments if s.tr == 7)
    assert pause.focus[0] == pause.focus[1]
    back = stimuli.Manifest.load(m.save(tmp_path / "w.json"))
    assert back.items == m.items and back.spec == m.spec
    assert [u.tr for u in m.shard(1, 2).units()] == [u.tr for it in m.items[1::2] for u in it.segments]
    # one window holding the whole story scores every TR with all preceding words
    whole = stimuli.text_sliding_windows(words, onsets, tr=2.0, n_trs=16, window_words=100, stride=1)
    assert len(whole) == 2 and whole.items[1].text == " ".join(words)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"window_words": 0, "stride": 1}, "window_words"),
        ({"window_words": 8.5, "stride": 1}, "window_words"),
        ({"window_words": 8, "stride": 0}, "stride"),
        ({"window_words": 8, "stride": 9}, "stride"),
    ],
)
def test_text_sliding_windows_reject_bad_window_or_stride(kw, name):
    words, onsets = _gappy_story()
    with pytest.raises(ValueError, match=f"^{name}:"):
        stimuli.text_sliding_windows(words, onsets, tr=2.0, **kw)


def test_manifest_shard_and_roundtrip(tmp_path):
    m = stimuli.text_items(["a b", "c d", "e f", "g h", "i"])
    shards = [m.shard(i, 2) for i in range(2)]
    assert sorted(s.stimulus_id for sh in shards for s in sh.items) == sorted(s.stimulus_id for s in m.items)
    back = stimuli.Manifest.load(m.save(tmp_path / "m.json"))
    assert back.items == m.items
    with pytest.raises(ValueError, match="duplicate"):
        stimuli.Manifest("x", "text", [m.items[0], m.items[0]])


def test_video_clips_on_the_tr_grid_decode_the_right_frames(tmp_path):
    pytest.importorskip("av")
    from conftest_extract import write_video

    path = write_video(tmp_path / "v.mp4", seconds=4, fps=10)
    m = stimuli.video_clips(path, tr=1.0, frames_per_clip=4)
    assert len(m) == 4 and m.spec["frames_per_clip"] == 4
    it = m.items[2]
    assert (it.window_start_s, it.window_end_s) == (2.0, 3.0)
    np.testing.assert_allclose(it.frame_times, [2.125, 2.375, 2.625, 2.875])
    frames = stimuli.load_video_clip(it)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    # frame i has brightness 6 i: the frame shown at t is floor(t * fps)
    np.testing.assert_allclose(
        frames[:, 10:20, 10:20].mean(axis=(1, 2, 3)), [6 * 21, 6 * 23, 6 * 26, 6 * 28], atol=4
    )
    # a 2-s window ending at the TR's end reaches before 0 s for TR 0: clipped to the first frame
    m2 = stimuli.video_clips(path, tr=1.0, window_s=2.0, frames_per_clip=2)
    assert m2.items[0].frame_times[0] == 0.0


def test_audio_windows_resample_and_pad(tmp_path):
    sf = pytest.importorskip("soundfile")
    sr = 8000
    x = np.sin(2 * np.pi * 5 * np.arange(sr * 3) / sr).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, sr)
    m = stimuli.audio_windows(tmp_path / "a.wav", tr=1.0, window_s=1.5, sample_rate=16000)
    assert len(m) == 3 and m.spec["source_sample_rate"] == sr
    first = stimuli.load_audio_window(m.items[0])
    assert first.shape == (24000,) and np.all(first[:8000] == 0)  # 0.5 s before the start: zeros
    last = stimuli.load_audio_window(m.items[2])
    np.testing.assert_allclose(last[::2][:100], x[int(1.5 * sr) :][:100], atol=2e-3)


def test_game_windows_frames_and_actions():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(8)]
    m = stimuli.game_windows(
        frames,
        np.arange(8) * 0.5,
        tr=2.0,
        frames_per_window=2,
        actions=[(0.1, "LEFT"), (0.7, "FIRE"), (2.5, "UP")],
        run="r1",
    )
    assert len(m) == 2
    assert m.items[0].actions == ["LEFT", "FIRE"] and m.items[0].text == "Player actions: LEFT, FIRE"
    assert m.items[1].actions == ["UP"]
    assert m.items[0].frame_times == [0.5, 1.5] and m.items[1].frame_times == [2.5, 3.5]
    assert int(m.items[1].images[0][0, 0, 0]) == 5


def test_words_on_a_tr_boundary_start_that_tr():
    """``k * 1.49 / 1.49`` floors to ``k - 1`` for some ``k`` in floating point: a word onset on
    a TR boundary still belongs to the TR it starts, in every manifest built from onsets."""
    tr = 1.49
    onsets = np.array([k * tr for k in range(2000)])
    assert (np.floor(onsets / tr) != np.arange(2000)).any()  # the trap the TR grid avoids
    np.testing.assert_array_equal(stimuli.tr_index(onsets, tr), np.arange(2000))
    assert stimuli.tr_index(40.23, tr) == 27
    assert stimuli.tr_index(40.23 - 1e-6, tr) == 26
    words = [f"w{k}" for k in range(2000)]
    m = stimuli.text_windows(words, onsets, tr=tr, context_words=0)
    assert len(m) == 2000
    assert [it.text[slice(*it.focus)] for it in m.items] == words
    w = stimuli.text_sliding_windows(words, onsets, tr=tr, window_words=50, stride=10)
    segs = w.units()
    assert [s.tr for s in segs] == list(range(2000))
    by_tr = {s.tr: (it.text, s.focus) for it in w.items for s in it.segments}
    assert all(text[slice(*f)] == f"w{k}" for k, (text, f) in by_tr.items())
    g = stimuli.game_windows([np.zeros((2, 2, 3), np.uint8)] * 2, [0.0, 27 * tr], tr=tr)
    assert len(g) == 28
