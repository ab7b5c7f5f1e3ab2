"""Stimulus manifests: what a model reads, keyed the way the features table is keyed.

A :class:`Manifest` is a stimulus set plus a list of :class:`Stimulus` items, one per future
features row group: one per TR for time-locked stimuli (text, video, audio, game frames), one
per trial for images. A sliding long-context text window (:func:`text_sliding_windows`) is one
item — one forward pass — whose ``segments`` are the TRs it scores, one row group each. Media
are referenced (a path and a time window) and decoded lazily by :func:`load_video_clip` /
:func:`load_audio_window`, so a manifest of a two-hour movie is small and JSON-serialisable
(:meth:`Manifest.save` / :meth:`Manifest.load`).

TR grid convention: TR ``t`` of a run spans ``[t * tr, (t + 1) * tr)`` seconds from run start.
A window *ending* at the end of its TR (``align="end"``, the default) holds only what the
subject has seen or heard by the end of that TR.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODALITIES = ("text", "image", "video", "audio", "game")


@dataclass
class Stimulus:
    """One stimulus item.

    ``text`` is the text the model reads (text stimuli, or action logs for game frames);
    ``focus`` is a character span ``(start, end)`` inside ``text`` of the words that belong to
    this TR (the rest is preceding context); ``images`` are paths (or in-memory arrays / PIL
    images) of images or game frames; ``video`` / ``audio`` name a media file and
    ``frame_times`` / ``(window_start_s, window_end_s)`` say what to decode.

    ``segments`` (sliding text windows only): the TRs this item's forward pass scores, each a
    key-only :class:`Stimulus` (``stimulus_id``, ``run``, ``tr``, times) whose ``focus`` is the
    character span of its words inside this item's ``text``; rows are keyed by the segments,
    and the item's own keys are never written.
    """

    stimulus_id: str
    run: str | None = None
    tr: int | None = None
    onset_s: float | None = None
    window_start_s: float | None = None
    window_end_s: float | None = None
    text: str | None = None
    focus: tuple[int, int] | None = None
    images: list[Any] | None = None
    video: str | None = None
    frame_times: list[float] | None = None
    audio: str | None = None
    sample_rate: int | None = None
    actions: list[str] | None = None
    segments: list[Stimulus] | None = None

    def keys(self) -> dict[str, Any]:
        return {
            "stimulus_id": self.stimulus_id,
            "run": self.run,
            "tr": self.tr,
            "onset_s": self.onset_s,
            "window_start_s": self.window_start_s,
            "window_end_s": self.window_end_s,
        }


@dataclass
class Manifest:
    """A stimulus set: ``modality`` (one of :data:`MODALITIES`), items, and the window spec."""

    stimulus_set: str
    modality: str
    items: list[Stimulus]
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {MODALITIES}, got {self.modality!r}")
        ids = [(s.stimulus_id, s.run, s.tr) for s in self.units()]
        if len(set(ids)) != len(ids):
            raise ValueError("items: duplicate (stimulus_id, run, tr) keys in the manifest")

    def __len__(self) -> int:
        return len(self.items)

    def units(self) -> list[Stimulus]:
        """What the features rows are keyed by: the items, or the segments of sliding windows."""
        return [u for it in self.items for u in (it.segments or [it])]

    def shard(self, index: int, count: int) -> Manifest:
        """Items ``index, index + count, ...`` (a round-robin shard ``index/count``)."""
        if not 0 <= index < count:
            raise ValueError(f"shard: expected 0 <= index < count, got {index}/{count}")
        spec = {**self.spec, "shard": f"{index}/{count}"}
        return Manifest(self.stimulus_set, self.modality, self.items[index::count], spec)

    def to_dict(self) -> dict[str, Any]:
        items = []
        for s in self.items:
            d = asdict(s)
            if d["images"] is not None and not all(isinstance(i, (str, Path)) for i in d["images"]):
                raise ValueError("items: in-memory images cannot be saved; reference files instead")
            d["images"] = None if d["images"] is None else [str(i) for i in d["images"]]
            items.append(d)
        return {
            "stimulus_set": self.stimulus_set,
            "modality": self.modality,
            "spec": self.spec,
            "items": items,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        raw = json.loads(Path(path).read_text())
        items = [_stimulus(d) for d in raw["items"]]
        return cls(raw["stimulus_set"], raw["modality"], items, raw.get("spec", {}))


def _stimulus(d: dict[str, Any]) -> Stimulus:
    d = dict(d)
    if d.get("focus") is not None:
        d["focus"] = tuple(d["focus"])
    if d.get("segments") is not None:
        d["segments"] = [_stimulus(s) for s in d["segments"]]
    return Stimulus(**d)


def _tr_windows(n_trs: int, tr: float, window_s: float, align: str) -> list[tuple[float, float]]:
    if align == "end":
        return [((t + 1) * tr - window_s, (t + 1) * tr) for t in range(n_trs)]
    if align == "center":
        return [((t + 0.5) * tr - window_s / 2, (t + 0.5) * tr + window_s / 2) for t in range(n_trs)]
    if align == "start":
        return [(t * tr, t * tr + window_s) for t in range(n_trs)]
    raise ValueError(f"align: expected 'end', 'center' or 'start', got {align!r}")


def tr_index(times: Any, tr: float) -> np.ndarray:
    """The TR ``floor(times / tr)`` of times in seconds from run start, with a time on a TR
    boundary in the TR it starts despite floating point (``40.23 / 1.49`` is ``26.99999...``):
    a relative tolerance of 1e-9 TR."""
    q = np.asarray(times, dtype=float) / float(tr)
    return np.floor(q + 1e-9 * np.maximum(1.0, np.abs(q))).astype(int)


# ---- text ------------------------------------------------------------------------------------
def _tr_word_ranges(
    words: Sequence[str],
    onsets: Sequence[float],
    tr: float,
    n_trs: int | None,
    offsets: Sequence[float] | None,
) -> tuple[list[str], int, np.ndarray, np.ndarray]:
    """``(words, n_trs, first, last)``: per TR ``t`` the word range ``[first[t], last[t])`` of
    the words with onset in ``[t * tr, (t + 1) * tr)``; a TR without onsets has
    ``first == last ==`` the index of the next word."""
    words = [str(w) for w in words]
    onsets = np.asarray(onsets, dtype=float)
    if onsets.shape != (len(words),):
        raise ValueError(f"onsets: expected shape ({len(words)},), got {onsets.shape}")
    if np.any(np.diff(onsets) < 0):
        raise ValueError("onsets: expected non-decreasing word onsets")
    if offsets is not None and np.asarray(offsets).shape != (len(words),):
        raise ValueError(f"offsets: expected shape ({len(words)},), got {np.asarray(offsets).shape}")
    if n_trs is None:
        n_trs = int(tr_index(onsets.max(), tr)) + 1 if len(words) else 0
    word_tr = tr_index(onsets, tr)  # non-decreasing
    trs = np.arange(n_trs)
    return words, n_trs, np.searchsorted(word_tr, trs, "left"), np.searchsorted(word_tr, trs, "right")


def _tr_item(run: str | None, t: int, tr: float, **kw) -> Stimulus:
    """The text item of TR ``t`` (one key scheme for per-TR items and sliding-window segments)."""
    return Stimulus(
        stimulus_id=f"{run or 'run'}-tr{t:05d}",
        run=run,
        tr=t,
        onset_s=t * tr,
        window_start_s=t * tr,
        window_end_s=(t + 1) * tr,
        **kw,
    )


def text_windows(
    words: Sequence[str],
    onsets: Sequence[float],
    *,
    tr: float,
    n_trs: int | None = None,
    context_words: int = 20,
    run: str | None = None,
    stimulus_set: str = "text",
    offsets: Sequence[float] | None = None,
) -> Manifest:
    """One item per TR: the words with onset in that TR plus up to ``context_words`` words of
    preceding context.

    ``words (n_words,)`` and ``onsets (n_words,)`` in seconds from run start. The item's
    ``text`` is the context followed by the TR's words; ``focus`` is the character span of
    the TR's words (empty ``(len, len)`` for a TR without word onsets). ``context_words``
    counts words *before* the TR's first word. :func:`text_sliding_windows` gives the same
    rows from one forward pass per long window instead of one per TR.
    """
    words, n_trs, firsts, lasts = _tr_word_ranges(words, onsets, tr, n_trs, offsets)
    items = []
    for t in range(n_trs):
        first, last = int(firsts[t]), int(lasts[t])
        ctx = words[max(0, first - context_words) : first]
        prefix = " ".join(ctx)
        now = " ".join(words[first:last])
        text = (prefix + " " + now).strip() if now and prefix else (prefix or now)
        start = len(text) - len(now)
        items.append(_tr_item(run, t, tr, text=text, focus=(start, len(text))))
    spec = {
        "modality": "text",
        "tr_s": tr,
        "n_trs": n_trs,
        "context_words": context_words,
        "tr_words": "words with onset in [t*tr, (t+1)*tr)",
    }
    return Manifest(stimulus_set, "text", items, spec)


def text_sliding_windows(
    words: Sequence[str],
    onsets: Sequence[float],
    *,
    tr: float,
    window_words: int,
    stride: int,
    n_trs: int | None = None,
    run: str | None = None,
    stimulus_set: str = "text",
    offsets: Sequence[float] | None = None,
) -> Manifest:
    """Sliding long-context windows: one item (one forward pass) per window of up to
    ``window_words`` words, one row per TR.

    Each window scores the TRs whose last word falls in its last ``stride`` words (the first
    window scores all of its TRs), so every TR of the grid is scored exactly once, with at
    least ``window_words - stride`` words of left context (all preceding words near the run's
    start). Windows end on TR boundaries, never inside a TR; a TR of more than ``stride`` words
    gets a window long enough for that context. A TR without word onsets is scored at the end
    of the word before it: its pooling falls back to the last token of that word, as in
    :func:`text_windows`; the TRs before the first word share one window of empty text, which
    reads like their :func:`text_windows` items.

    The item's ``text`` is the window's words joined by spaces and its ``segments`` are its
    TRs, keyed exactly like :func:`text_windows` items, each with the ``focus`` of its words in
    the window's text. For a causal LM a TR's ``tr_words`` embedding equals that of a per-TR
    forward over the same preceding words; a bidirectional encoder also sees the window's right
    context. Only ``tr_words`` pooling applies. About ``n_words / stride`` forwards replace
    ``n_trs``. ``window_words`` and ``stride`` are recorded in the spec (provenance).
    """
    for name, v in (("window_words", window_words), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1 (words), got {v!r}")
    if stride > window_words:
        raise ValueError(f"stride: expected at most window_words ({window_words}), got {stride}")
    words, n_trs, firsts, lasts = _tr_word_ranges(words, onsets, tr, n_trs, offsets)
    items: list[Stimulus] = []
    t = prev = 0
    while t < n_trs:
        limit = window_words if prev == 0 else prev + stride  # prev == 0: no words read yet
        u = max(int(np.searchsorted(lasts, limit, "right")), t + 1)
        end = int(lasts[u - 1])
        start = 0 if prev == 0 else max(0, min(end - window_words, prev - (window_words - stride)))
        if lasts[t] == 0:  # silence before the first word: an empty window of its own
            u, end = int(np.searchsorted(lasts, 0, "right")), 0
        text = " ".join(words[start:end])
        char = np.cumsum([0] + [len(w) + 1 for w in words[start:end]])  # char start of each word
        segments = []
        for k in range(t, u):
            a, b = int(firsts[k]) - start, int(lasts[k]) - start
            if b > a:
                focus = (int(char[a]), int(char[b]) - 1)
            else:  # no onsets: the end of the word before, where the TR's words would start
                pos = int(char[a]) - 1 if a > 0 else 0
                focus = (pos, pos)
            segments.append(_tr_item(run, k, tr, focus=focus))
        items.append(
            Stimulus(
                stimulus_id=f"{run or 'run'}-win{len(items):05d}",
                run=run,
                onset_s=t * tr,
                window_start_s=t * tr,
                window_end_s=u * tr,
                text=text,
                focus=(segments[0].focus[0], segments[-1].focus[1]),
                segments=segments,
            )
        )
        t, prev = u, end
    spec = {
        "modality": "text",
        "tr_s": tr,
        "n_trs": n_trs,
        "window_words": int(window_words),
        "stride": int(stride),
        "n_windows": len(items),
        "windows": "sliding: one forward per window; each TR scored once, in the window that holds its "
        "last word, after at least window_words - stride words of left context",
        "tr_words": "words with onset in [t*tr, (t+1)*tr)",
    }
    return Manifest(stimulus_set, "text", items, spec)


def text_items(
    texts: Sequence[str], *, ids: Sequence[str] | None = None, stimulus_set: str = "text"
) -> Manifest:
    """One item per sentence or passage (trial-based text stimuli)."""
    ids = list(ids) if ids is not None else [f"s{i:05d}" for i in range(len(texts))]
    items = [Stimulus(stimulus_id=i, text=t, focus=(0, len(t))) for i, t in zip(ids, texts, strict=True)]
    return Manifest(stimulus_set, "text", items, {"modality": "text", "unit": "item"})


def concat(manifests: Sequence[Manifest], stimulus_set: str | None = None) -> Manifest:
    """Join manifests of one modality (e.g. one per run) into one stimulus set."""
    if not manifests:
        raise ValueError("manifests: expected at least one manifest")
    mods = {m.modality for m in manifests}
    if len(mods) != 1:
        raise ValueError(f"manifests: mixed modalities {sorted(mods)}")
    items = [s for m in manifests for s in m.items]
    spec = {**manifests[0].spec, "runs": [m.spec.get("run") for m in manifests]}
    return Manifest(stimulus_set or manifests[0].stimulus_set, mods.pop(), items, spec)


# ---- images ----------------------------------------------------------------------------------
def image_items(
    images: Sequence[Any], *, ids: Sequence[str] | None = None, stimulus_set: str = "images"
) -> Manifest:
    """One item per image (paths, ``(H, W, 3)`` uint8 arrays, or PIL images)."""
    ids = (
        list(ids)
        if ids is not None
        else [Path(im).stem if isinstance(im, (str, Path)) else f"img{i:05d}" for i, im in enumerate(images)]
    )
    items = [Stimulus(stimulus_id=i, images=[im]) for i, im in zip(ids, images, strict=True)]
    return Manifest(stimulus_set, "image", items, {"modality": "image"})


def load_image(image: Any):
    """A PIL RGB image from a path, an ``(H, W, 3)`` uint8 array or a PIL image."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    return image.convert("RGB")


# ---- video -----------------------------------------------------------------------------------
def video_duration(path: str | Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        return float(c.duration) / 1e6


def video_clips(
    path: str | Path,
    *,
    tr: float,
    n_trs: int | None = None,
    window_s: float | None = None,
    frames_per_clip: int = 8,
    align: str = "end",
    run: str | None = None,
    stimulus_set: str | None = None,
) -> Manifest:
    """One clip per TR of a video: ``frames_per_clip`` frames uniformly spread over a window of
    ``window_s`` seconds (default one TR) aligned to the TR (``align``: end, center, start).

    Frame timestamps are the midpoints of ``frames_per_clip`` equal sub-intervals of the window,
    clipped to ``[0, duration)``; they are stored per item (``frame_times``).
    """
    window_s = tr if window_s is None else float(window_s)
    duration = video_duration(path)
    if n_trs is None:
        n_trs = int(tr_index(duration, tr))
    items = []
    eps = 1e-3
    for t, (a, b) in enumerate(_tr_windows(n_trs, tr, window_s, align)):
        mids = a + (np.arange(frames_per_clip) + 0.5) * (b - a) / frames_per_clip
        times = np.clip(mids, 0.0, max(duration - eps, 0.0))
        items.append(
            Stimulus(
                stimulus_id=f"{run or Path(path).stem}-tr{t:05d}",
                run=run,
                tr=t,
                onset_s=t * tr,
                window_start_s=a,
                window_end_s=b,
                video=str(path),
                frame_times=[round(float(x), 6) for x in times],
            )
        )
    spec = {
        "modality": "video",
        "source": str(path),
        "tr_s": tr,
        "n_trs": n_trs,
        "window_s": window_s,
        "stride_s": tr,
        "frames_per_clip": frames_per_clip,
        "clip_fps": frames_per_clip / window_s,
        "align": align,
        "decoder": "pyav",
        "frame_sampling": "midpoints of equal sub-intervals, nearest decoded frame",
        "duration_s": duration,
    }
    return Manifest(stimulus_set or Path(path).stem, "video", items, spec)


def decode_frames(path: str | Path, times: Sequence[float]) -> np.ndarray:
    """Frames ``(n, H, W, 3)`` uint8 nearest to ``times`` (seconds), decoded with PyAV.

    Seeks once to the keyframe before the earliest time and decodes forward, so a clip costs
    one seek; the frame shown at time ``t`` (the last frame with pts <= t) is taken.
    """
    import av

    times = np.asarray(times, dtype=float)
    order = np.argsort(times)
    out: list[np.ndarray | None] = [None] * len(times)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = float(stream.time_base)
        c.seek(max(int(times.min() / tb) - 1, 0), stream=stream, backward=True, any_frame=False)
        k = 0
        prev = None
        for frame in c.decode(stream):
            ft = float(frame.pts * tb) if frame.pts is not None else 0.0
            while k < len(order) and ft > times[order[k]] + 1e-6:
                out[order[k]] = prev if prev is not None else frame.to_ndarray(format="rgb24")
                k += 1
            if k >= len(order):
                break
            prev = frame.to_ndarray(format="rgb24")
        while k < len(order):  # past the last frame: hold it
            out[order[k]] = prev
            k += 1
    if any(o is None for o in out):
        raise ValueError(f"path: could not decode frames at {list(times)} from {path}")
    return np.stack(out)


def clip_fps(item: Stimulus, n_frames: int | None = None) -> float:
    """Frames per second of a video clip: its ``n_frames`` (default ``len(frame_times)``) over
    its window ``window_end_s - window_start_s``; without a window, from the spacing of its
    ``frame_times``."""
    times = item.frame_times or []
    n = len(times) if n_frames is None else int(n_frames)
    a, b = item.window_start_s, item.window_end_s
    if a is not None and b is not None and b > a and n > 0:
        return n / (b - a)
    if len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    raise ValueError(
        f"item: {item.stimulus_id} has neither a window nor distinct frame times to give its frame rate"
    )


def load_video_clip(item: Stimulus) -> np.ndarray:
    """The frames ``(frames_per_clip, H, W, 3)`` uint8 of a video item."""
    if item.video is None or item.frame_times is None:
        raise ValueError(f"item: {item.stimulus_id} is not a video clip")
    return decode_frames(item.video, item.frame_times)


# ---- audio -----------------------------------------------------------------------------------
def audio_windows(
    path: str | Path,
    *,
    tr: float,
    n_trs: int | None = None,
    window_s: float | None = None,
    align: str = "end",
    sample_rate: int = 16000,
    run: str | None = None,
    stimulus_set: str | None = None,
) -> Manifest:
    """One audio window per TR (``window_s``, default one TR), resampled to ``sample_rate`` on
    load. Samples before 0 s are zero-padded."""
    import soundfile as sf

    window_s = tr if window_s is None else float(window_s)
    info = sf.info(str(path))
    duration = info.frames / info.samplerate
    if n_trs is None:
        n_trs = int(tr_index(duration, tr))
    items = [
        Stimulus(
            stimulus_id=f"{run or Path(path).stem}-tr{t:05d}",
            run=run,
            tr=t,
            onset_s=t * tr,
            window_start_s=a,
            window_end_s=b,
            audio=str(path),
            sample_rate=sample_rate,
        )
        for t, (a, b) in enumerate(_tr_windows(n_trs, tr, window_s, align))
    ]
    spec = {
        "modality": "audio",
        "source": str(path),
        "tr_s": tr,
        "n_trs": n_trs,
        "window_s": window_s,
        "stride_s": tr,
        "align": align,
        "sample_rate": sample_rate,
        "source_sample_rate": info.samplerate,
        "resampling": "linear interpolation",
        "duration_s": duration,
    }
    return Manifest(stimulus_set or Path(path).stem, "audio", items, spec)


def load_audio_window(item: Stimulus) -> np.ndarray:
    """Mono float32 samples ``(n,)`` of an audio item at ``item.sample_rate``."""
    import soundfile as sf

    if item.audio is None:
        raise ValueError(f"item: {item.stimulus_id} is not an audio window")
    info = sf.info(item.audio)
    sr = info.samplerate
    a, b = item.window_start_s, item.window_end_s
    start, stop = round(a * sr), round(b * sr)
    data, _ = sf.read(item.audio, start=max(start, 0), stop=max(stop, 0), dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    x = np.concatenate([np.zeros(max(-start, 0), np.float32), x])
    x = np.pad(x, (0, max(stop - start - len(x), 0)))
    target = item.sample_rate or sr
    if target != sr:
        n_out = round(len(x) * target / sr)
        x = np.interp(np.arange(n_out) * sr / target, np.arange(len(x)), x).astype(np.float32)
    return x.astype(np.float32)


# ---- game frames -----------------------------------------------------------------------------
def game_windows(
    frames: Sequence[Any],
    frame_times: Sequence[float],
    *,
    tr: float,
    n_trs: int | None = None,
    window_s: float | None = None,
    frames_per_window: int = 4,
    actions: Sequence[tuple[float, str]] = (),
    include_actions: bool = True,
    align: str = "end",
    run: str | None = None,
    stimulus_set: str = "game",
) -> Manifest:
    """One item per TR: ``frames_per_window`` game frames (paths or arrays) from a sliding
    window, plus the actions logged in that window.

    ``frames (n_frames,)`` with ``frame_times (n_frames,)`` seconds; ``actions`` is a log of
    ``(time_s, action)``. With ``include_actions`` the item's ``text`` reads
    ``"Player actions: LEFT, FIRE"`` (``"Player actions: none"`` without any), which the prompt
    places as the stimulus text after the frames.
    """
    window_s = tr if window_s is None else float(window_s)
    ft = np.asarray(frame_times, dtype=float)
    if ft.shape != (len(frames),):
        raise ValueError(f"frame_times: expected shape ({len(frames)},), got {ft.shape}")
    if n_trs is None:
        n_trs = int(tr_index(ft.max(), tr)) + 1
    items = []
    for t, (a, b) in enumerate(_tr_windows(n_trs, tr, window_s, align)):
        targets = a + (np.arange(frames_per_window) + 0.5) * (b - a) / frames_per_window
        idx = [int(np.clip(np.searchsorted(ft, x, side="right") - 1, 0, len(ft) - 1)) for x in targets]
        acts = [act for (at, act) in actions if a <= at < b]
        text = ("Player actions: " + (", ".join(acts) if acts else "none")) if include_actions else None
        items.append(
            Stimulus(
                stimulus_id=f"{run or 'game'}-tr{t:05d}",
                run=run,
                tr=t,
                onset_s=t * tr,
                window_start_s=a,
                window_end_s=b,
                images=[frames[i] for i in idx],
                frame_times=[float(ft[i]) for i in idx],
                actions=acts,
                text=text,
                focus=None if text is None else (0, len(text)),
            )
        )
    spec = {
        "modality": "game",
        "tr_s": tr,
        "n_trs": n_trs,
        "window_s": window_s,
        "frames_per_window": frames_per_window,
        "align": align,
        "include_actions": include_actions,
    }
    return Manifest(stimulus_set, "game", items, spec)
