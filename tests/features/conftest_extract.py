"""Session-scoped fixtures shared by the extraction tests (imported by the test modules, since
``tests/features/conftest.py`` belongs to the store tests).

Tiny checkpoints are built once per session into a temporary directory; media files (a short
MPEG-4 video whose frame brightness encodes the frame index, a WAV of noise) are written once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models

from brainalign.features import stimuli

VIDEO_FPS = 10
VIDEO_SECONDS = 4


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(name) -> Path`` of a saved tiny checkpoint (built once per session)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny_models")
    return lambda name: tiny_models.build(name, root)


def write_video(path: Path, seconds: int = VIDEO_SECONDS, fps: int = VIDEO_FPS, size=(48, 64)) -> Path:
    """An MPEG-4 video whose frame ``i`` has brightness ``6 * i``."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 6 * i, np.uint8), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("media")
    video = write_video(root / "clip.mp4")
    wav = root / "noise.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(22050 * 3).astype(np.float32) * 0.1, 22050)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    return {"video": video, "audio": wav, "images": images}


STORY = (
    "the old sailor walked along the grey harbour and thought about the storm that took his boat "
    "years ago while children laughed near the market"
).split()


def story_manifest(n_trs: int = 5, context_words: int = 6) -> stimuli.Manifest:
    onsets = np.arange(len(STORY)) * 0.45
    return stimuli.text_windows(
        STORY, onsets, tr=2.0, n_trs=n_trs, context_words=context_words, run="run-1", stimulus_set="story"
    )
