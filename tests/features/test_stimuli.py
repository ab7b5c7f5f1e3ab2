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
