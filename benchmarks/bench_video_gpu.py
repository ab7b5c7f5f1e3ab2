"""Video extraction on a GPU: a Qwen2.5-VL-shaped model with random weights, in bf16.

A random-weight checkpoint with Qwen2.5-VL's architecture is built once into a temporary
directory (language model of Qwen2.5-1.5B's shape: hidden 1536, 28 layers, 12 query / 2 KV
heads, MLP 8960, vocabulary 151936, tied embeddings; vision tower of Qwen2.5-VL's real size:
32 blocks of width 1280, MLP 3420, 16 heads, 14 px patches, 2 x 2 merge, 2-frame temporal
patches, 112 px attention windows with full attention in blocks 7, 15, 23, 31), with a locally
trained byte-level BPE tokenizer of a few hundred tokens (the vocabulary size only matters for
the embedding lookup and the logits, which are counted with the real size) and the real
processor classes at Qwen2.5-VL's video pixel limits. It is saved in bf16 safetensors and loaded
back through ``from_pretrained`` by :func:`brainalign.features.extract.load_adapter`, exactly
like a downloaded checkpoint.

A synthetic video (moving gradients, a moving square and film-grain noise, H.264) is cut into
one 8-frame clip per TR with :func:`brainalign.features.stimuli.video_clips`, and the script
times, separately:

1. decoding alone (:func:`~brainalign.features.stimuli.load_video_clip`, the call the adapter
   makes for each clip);
2. the model forward alone, on inputs the processor prepared beforehand and already on the
   GPU (with the vision tower's share, from hooks);
3. the whole :func:`~brainalign.features.extract.embed` (all layers, ``stimulus`` pooling, into a
   temporary Lance store) at batch sizes 4 and 8, split into decode / processor / model forward / rest by
   timing the adapter's own calls while it runs.

Forward FLOPs per clip (multiply-add = 2 FLOPs; norms, rotary embeddings and softmax ignored):
``2 * P_lm * n + 4 * L * d * n**2 + 2 * V * d`` for the language model (``P_lm`` the weights
of its decoder layers, ``n`` the clip's tokens, ``L`` layers, ``d`` width; the attention term
counts the full ``n x n`` scores as SDPA computes them under a padding mask; the last term is
the logits over the vocabulary ``V``, which the adapter asks for at the last position only)
plus ``2 * (P_blocks + P_patch) * p + 2 * P_merger * p / 4 + 4 * d_v * sum_blocks sum_chunks
len**2`` for the vision tower (``p`` patches of the clip, chunks the 112 px windows in windowed
blocks and whole frames in full-attention blocks). Achieved FLOP/s is that count over the
measured forward time, compared with the GPU's dense bf16 peak (from a table by device name)
and with a bf16 8192^3 matmul measured in the same run.

Run on a GPU (about 5 minutes on an H100 with the default 60 s video, model construction
included; further repeats stop at ``--budget-s``; writes the ``video_gpu`` block of BENCHMARKS.md):
``uv run --locked python benchmarks/bench_video_gpu.py [--save DIR] [--no-write]``.
CPU smoke run of the whole path with a tiny model of the same architecture, float32:
``uv run --locked python benchmarks/bench_video_gpu.py --quick``. Parameter counts of the full
configuration without building it: ``--params``. ``--save DIR`` writes ``video_gpu.json`` and
``video_gpu.md``; ``--render DIR/video_gpu.json`` prints that run's block and writes it here.

On the lent GPU machines (no uv, no network; python3 with torch but transformers 5.17, no PyAV,
no pylance) carry wheels of ``av`` and ``transformers==5.23.0`` (about 48 MB) in an ignored
``.whl`` folder, ``pip install --target`` them and put them and ``packages/feature-store/src``
on ``PYTHONPATH``. pylance's wheel (85 MB) is over the carry limit: without it ``--store auto``
runs ``embed()`` with a writer that casts and counts the rows instead of writing them (the
block says so); a Lance write of these few rows (layers x clips x 1536 floats) is small next to
the forward.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCE_LOG", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "features"))

import av
import numpy as np
import torch
import transformers as tf
from _report import machine, write_block


def _stub_lance() -> bool:
    """Import pylance, or put a stand-in in its place so that brainalign imports without it
    (the lent GPU machines have no pylance and its wheel is larger than what can be carried
    there); ``embed()`` then writes into :class:`_NullWriter`. True when the real one loaded."""
    try:
        import lance  # whether it imports

        return True
    except ImportError:
        import types

        lance = types.ModuleType("lance")
        fragment = types.ModuleType("lance.fragment")
        lance.LanceDataset = type("LanceDataset", (), {})
        lance.LanceOperation = type("LanceOperation", (), {})
        fragment.FragmentMetadata = type("FragmentMetadata", (), {})
        lance.fragment = fragment
        sys.modules["lance"], sys.modules["lance.fragment"] = lance, fragment
        return False


HAVE_LANCE = _stub_lance()

from tiny_models import CHATML, _ids, train_tokenizer  # noqa: E402

from brainalign.features import stimuli  # noqa: E402
from brainalign.features.extract import adapters as adapters_mod  # noqa: E402
from brainalign.features.extract import embed, load_adapter  # noqa: E402
from brainalign.features.extract import runner as runner_mod  # noqa: E402
from brainalign.features.instructions import get_instruction  # noqa: E402

INSTRUCTION = "video.captioning"
TR, FRAMES_PER_CLIP = 1.49, 8
# Qwen2.5-VL's video pixel limits (transformers' Qwen2VLVideoProcessor defaults, qwen-vl-utils)
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28

FULL = {
    "text": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        vocab_size=151936,
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=1536,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
}
QUICK = {
    "text": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        vocab_size=None,  # the tokenizer's
    ),
    "vision": dict(FULL["vision"], depth=4, hidden_size=32, intermediate_size=64, num_heads=2)
    | {"out_hidden_size": 64, "fullatt_block_indexes": [1, 3]},
}

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name
PEAKS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def gpu_peak(name: str) -> float | None:
    return next((p for key, p in PEAKS if key in name), None)


class Timers:
    """Accumulated wall time per name; ``sync`` waits for the GPU at each boundary."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t: dict[str, float] = defaultdict(float)
        self._open: dict[str, float] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self, name: str) -> None:
        self.sync()
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.sync()
        self.t[name] += time.perf_counter() - self._open.pop(name)

    def reset(self) -> None:
        self.t.clear()


class _TimedProcessor:
    """The adapter's processor, with its calls timed (every attribute is the processor's)."""

    def __init__(self, proc, timers: Timers):
        self.__dict__["_proc"], self.__dict__["_timers"] = proc, timers

    def __getattr__(self, name):
        return getattr(self._proc, name)

    def __call__(self, *args, **kwargs):
        self._timers.start("processor")
        try:
            return self._proc(*args, **kwargs)
        finally:
            self._timers.stop("processor")


def instrument(adapter, timers: Timers) -> None:
    """Time the adapter's decoding, processor and model forward (and the vision tower in it)."""
    adapter.processor = _TimedProcessor(adapter.processor, timers)
    model = adapter.model
    for mod, name in ((model, "model"), (model.model.visual, "vision")):
        mod.register_forward_pre_hook(lambda *_a, n=name: timers.start(n))
        mod.register_forward_hook(lambda *_a, n=name: timers.stop(n))


class patched_decoder:
    """Within the block, the adapter's ``load_video_clip`` is ``fn`` (timed, or from a cache)."""

    def __init__(self, fn):
        self.fn = fn

    def __enter__(self):
        self.old = adapters_mod.load_video_clip
        adapters_mod.load_video_clip = self.fn

    def __exit__(self, *exc):
        adapters_mod.load_video_clip = self.old


def timed_decoder(timers: Timers):
    def load(item):
        t = time.perf_counter()
        try:
            return stimuli.load_video_clip(item)
        finally:
            timers.t["decode"] += time.perf_counter() - t

    return load


class _NullWriter:
    """``embed()``'s writer without a store: rows are cast to float32 (as a write would) and
    counted, nothing is written."""

    def __init__(self, uris, provenance, storage_dtype, defer):
        self.rows, self.fragments = 0, {}

    def add(self, component, keys, emb) -> None:
        np.ascontiguousarray(emb, dtype=np.float32)
        self.rows += len(emb)

    def pending(self) -> int:
        return 0

    def flush(self) -> None:
        pass


def use_null_store() -> None:
    runner_mod._Writer = _NullWriter
    runner_mod._check_same_run = lambda *a, **k: None


# ---- checkpoint ------------------------------------------------------------------------------
def make_config(shape: dict, tok) -> tf.Qwen2_5_VLConfig:
    ids = _ids(tok, image="<|image_pad|>", video="<|video_pad|>", vs="<|vision_start|>", ve="<|vision_end|>")
    text = dict(shape["text"])
    text["vocab_size"] = text["vocab_size"] or len(tok)
    text |= dict(
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return tf.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(shape["vision"]),
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vs"],
        vision_end_token_id=ids["ve"],
        tie_word_embeddings=True,
    )


def make_tokenizer():
    return train_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)


def param_counts(model) -> dict[str, int]:
    def n(mod) -> int:
        return sum(p.numel() for p in mod.parameters())

    lm, vis = model.model.language_model, model.model.visual
    out = {
        "lm_layers": n(lm.layers),
        "lm_embedding": n(lm.embed_tokens),
        "vision_blocks": n(vis.blocks),
        "vision_patch_embed": n(vis.patch_embed),
        "vision_merger": n(vis.merger),
        "total": sum(p.numel() for p in model.parameters()),  # tied lm_head counted once
    }
    out["lm_head_tied"] = int(model.lm_head.weight is lm.embed_tokens.weight)
    return out


def build_checkpoint(path: Path, shape: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Build, count and save (safetensors, ``dtype``) the random-weight checkpoint with its
    tokenizer and processor; returns the parameter counts and timings."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = make_config(shape, tok)
    with torch.device(device):
        model = tf.Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    counts = param_counts(model)
    t_build = time.perf_counter() - t0
    image_proc = tf.Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_proc = tf.Qwen2VLVideoProcessor(
        min_pixels=VIDEO_MIN_PIXELS,
        max_pixels=VIDEO_MAX_PIXELS,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        do_sample_frames=False,
        cap_pixels_per_frame=True,
    )
    proc = tf.Qwen2_5_VLProcessor(
        image_processor=image_proc, video_processor=video_proc, tokenizer=tok, chat_template=CHATML
    )
    t1 = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    proc.save_pretrained(path)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return {"params": counts, "build_s": t_build, "save_s": time.perf_counter() - t1, "bytes": size}


def meta_counts(shape: dict) -> dict:
    tok = make_tokenizer()
    with torch.device("meta"):
        model = tf.Qwen2_5_VLForConditionalGeneration(make_config(shape, tok))
    return param_counts(model)


# ---- video -----------------------------------------------------------------------------------
def write_video(path: Path, seconds: float, fps: int, width: int, height: int, gop: int) -> dict:
    """H.264 (libx264 veryfast, crf 23, yuv420p, keyframe every ``gop`` frames, B-frames on):
    moving colour gradients, a moving square and grain noise, so frames differ and decoding is
    the work a real film's would be."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    grain = rng.integers(-12, 13, size=(16, height, width, 1), dtype=np.int16)
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.int16)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"crf": "23", "preset": "veryfast", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(round(seconds * fps)):
            t = i / fps
            img[..., 0] = 127 + 100 * np.sin(x / 60 + 2.0 * t)
            img[..., 1] = 127 + 100 * np.sin(y / 45 - 1.3 * t)
            img[..., 2] = 127 + 100 * np.sin((x + y) / 80 + 0.7 * t)
            img += grain[i % len(grain)]
            cx, cy = int(width / 2 + width / 3 * np.sin(t)), int(height / 2 + height / 3 * np.cos(1.3 * t))
            img[max(cy - 30, 0) : cy + 30, max(cx - 30, 0) : cx + 30] = (240, 40, 40)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {
        "seconds": seconds,
        "fps": fps,
        "width": width,
        "height": height,
        "gop": gop,
        "bytes": path.stat().st_size,
        "write_s": time.perf_counter() - t0,
    }


# ---- FLOPs -----------------------------------------------------------------------------------
def _sizes(n: int, m: int) -> list[int]:
    return [min(m, n - i) for i in range(0, n, m)]


def clip_flops(params: dict, shape: dict, vocab: int, n_tokens: int, grid_thw) -> dict:
    """Forward FLOPs of one clip (see the module docstring)."""
    t, h, w = (int(v) for v in grid_thw)
    tx, vi = shape["text"], shape["vision"]
    d, L, dv = tx["hidden_size"], tx["num_hidden_layers"], vi["hidden_size"]
    patches = t * h * w
    merge = vi["spatial_merge_size"]
    m = vi["window_size"] // merge // vi["patch_size"]  # window side in merged units
    win = [
        a * b * merge * merge for a in _sizes(h // merge, m) for b in _sizes(w // merge, m)
    ]  # patches per window of one temporal slice
    full_blocks = len(vi["fullatt_block_indexes"])
    sq = t * ((vi["depth"] - full_blocks) * sum(x * x for x in win) + full_blocks * (h * w) ** 2)
    out = {
        "lm_linear": 2 * params["lm_layers"] * n_tokens,
        "lm_attention": 4 * L * d * n_tokens**2,
        "logits": 2 * vocab * d,  # the last position only (the adapter passes logits_to_keep=1)
        "vision_linear": 2 * (params["vision_blocks"] + params["vision_patch_embed"]) * patches
        + 2 * params["vision_merger"] * patches // (merge * merge),
        "vision_attention": 4 * dv * sq,
    }
    out["total"] = sum(out.values())
    return out


# ---- measurements ----------------------------------------------------------------------------
class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def another(self, times: list[float], repeats: int, reserve: float = 0.0) -> bool:
        """Repeat while fewer than ``repeats`` runs and another run, plus ``reserve`` seconds
        kept for the measurements still to come, fits in the time budget."""
        if not times:
            return True
        return len(times) < repeats and self.elapsed() + max(times) + reserve < self.budget


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, iters: int = 20) -> float:
    """Achieved TFLOP/s of ``n x n @ n x n`` in ``dtype`` (median of ``iters`` timed products)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            a @ b
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def decode_all(manifest) -> tuple[float, dict]:
    t = time.perf_counter()
    frames = {it.stimulus_id: stimuli.load_video_clip(it) for it in manifest.items}
    return time.perf_counter() - t, frames


def bench_model(adapter, manifest, frames, bs, timers: Timers, clock: Clock, repeats: int, reserve) -> dict:
    """Processor on pre-decoded frames, then the model forward alone on the prepared inputs."""
    ins = get_instruction(INSTRUCTION)
    items = manifest.items
    dev = adapter.device
    timers.reset()
    batches, tokens, video_tokens, grids = [], [], [], []
    vid = adapter.config.video_token_id
    with patched_decoder(lambda it: frames[it.stimulus_id]):
        for i in range(0, len(items), bs):
            chunk = items[i : i + bs]
            inputs = adapter._processor_inputs(chunk, [adapter.render(ins, it).text for it in chunk], "right")
            tokens += inputs["attention_mask"].sum(1).tolist()
            video_tokens += ((inputs["input_ids"] == vid) & inputs["attention_mask"].bool()).sum(1).tolist()
            grids += inputs["video_grid_thw"].tolist()
            batches.append({k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()})
    processor_s = timers.t["processor"]

    def run(batches):
        with torch.inference_mode():
            for inputs in batches:
                out = adapter.model(
                    **inputs,
                    output_hidden_states=True,
                    return_dict=True,
                    use_cache=False,
                    **adapter._logits_kw,
                )
                del out

    run(batches[:1])  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, vision = [], []
    while clock.another(times, repeats, reserve(times[0], processor_s) if times else 0.0):
        timers.reset()
        timers.start("pass")
        run(batches)
        timers.stop("pass")
        times.append(timers.t["pass"])
        vision.append(timers.t["vision"])
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    del batches
    k = int(np.argsort(times)[len(times) // 2])
    return {
        "batch_size": bs,
        "processor_s": processor_s,
        "runs_s": times,
        "median_s": times[k],
        "vision_s": vision[k],
        "peak_bytes": peak,
        "tokens": tokens,
        "video_tokens": video_tokens,
        "grids": grids,
    }


def bench_embed(
    adapter, manifest, bs, root: Path, timers: Timers, clock: Clock, repeats: int, reserve
) -> dict:
    dev = adapter.device

    def run(m) -> float:
        uri = root / f"b{bs}.lance"
        shutil.rmtree(uri, ignore_errors=True)
        timers.reset()
        timers.start("embed")
        with patched_decoder(timed_decoder(timers)):
            res = embed(
                m,
                adapter,
                [INSTRUCTION],
                store=uri,
                layers="all",
                pooling=("stimulus",),
                batch_size=bs,
                progress=False,
                resume=False,
                model_name="bench-qwen25vl",
            )
        timers.stop("embed")
        assert res.units_written == len(m), res
        return timers.t["embed"]

    warm = stimuli.Manifest(manifest.stimulus_set, "video", manifest.items[: 2 * bs], manifest.spec)
    run(warm)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs: list[dict] = []
    while clock.another([r["total_s"] for r in runs], repeats, reserve(runs[0]["total_s"]) if runs else 0.0):
        total = run(manifest)
        runs.append(
            {"total_s": total, **{k: timers.t[k] for k in ("decode", "processor", "model", "vision")}}
        )
    runs.sort(key=lambda r: r["total_s"])
    med = dict(runs[len(runs) // 2])
    med["other_s"] = med["total_s"] - med["decode"] - med["processor"] - med["model"]
    return {
        "batch_size": bs,
        "runs_s": [r["total_s"] for r in runs],
        "median": med,
        "peak_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
    }


# ---- report ----------------------------------------------------------------------------------
def _count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}" if unit == "B" else f"{n / div:.0f}{unit}"
    return f"{n:.0f}"


def _flop(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} "


def render(r: dict) -> str:
    n_clips, fpc = r["n_clips"], FRAMES_PER_CLIP
    p = r["checkpoint"]["params"]
    fl = r["flops"]
    tok, vtok = r["tokens_per_clip"], r["video_tokens_per_clip"]
    peak, mm = r["peak_tflops"], r["matmul_tflops"]
    v, tx, vi = r["video"], r["shape"]["text"], r["shape"]["vision"]
    dec = statistics.median(r["decode_runs_s"])
    total_flops = fl["total"] * n_clips
    mib = 1 << 20

    def rate(seconds: float) -> str:
        x = total_flops / seconds
        parts = [f"{_flop(x)}FLOP/s"]
        if peak:
            parts.append(f"**{100 * x / 1e12 / peak:.1f}%** of the {peak:.0f} TFLOP/s bf16 peak")
        if mm:
            parts.append(f"{100 * x / 1e12 / mm:.1f}% of the measured matmul")
        return ", ".join(parts)

    def mem(b) -> str:
        return f"; peak GPU memory {b / mib:,.0f} MiB" if b else ""

    rows = [
        f"| decoding alone (PyAV, `load_video_clip`), {n_clips} clips | {dec:.2f} s: {n_clips / dec:.1f} clips/s, "
        f"{n_clips * fpc / dec:.0f} frames/s, {1e3 * dec / n_clips:.0f} ms/clip |"
    ]
    for m in r["model"]:
        s = m["median_s"]
        rows += [
            f"| processor alone (frames decoded beforehand), batch {m['batch_size']} | {m['processor_s']:.2f} s: "
            f"{1e3 * m['processor_s'] / n_clips:.0f} ms/clip |",
            f"| model forward alone (inputs on the device), batch {m['batch_size']} | {s:.2f} s: "
            f"{n_clips / s:.1f} clips/s, {n_clips * fpc / s:.0f} frames/s, {sum(m['tokens']) / s:,.0f} LM tokens/s; "
            f"{rate(s)}; vision tower {100 * m['vision_s'] / s:.0f}% of the time"
            f"{mem(m['peak_bytes'])}{' (with all clips prepared on the GPU)' if m['peak_bytes'] else ''} |",
        ]
    for e in r["embed"]:
        md = e["median"]
        s = md["total_s"]
        pct = {k: 100 * md[k] / s for k in ("decode", "processor", "model", "other_s")}
        rows.append(
            f"| `embed()` end to end, batch {e['batch_size']} | {s:.2f} s: **{n_clips / s:.2f} clips/s, "
            f"{n_clips * fpc / s:.0f} frames/s**, {n_clips * tok / s:,.0f} LM tokens/s, {rate(s)}. "
            f"Decode {md['decode']:.2f} s ({pct['decode']:.0f}%), processor {md['processor']:.2f} s "
            f"({pct['processor']:.0f}%), model forward {md['model']:.2f} s ({pct['model']:.0f}%: {rate(md['model'])}), "
            f"rest {md['other_s']:.2f} s ({pct['other_s']:.0f}%){mem(e['peak_bytes'])} |"
        )
    best = min(r["embed"], key=lambda e: e["median"]["total_s"])
    b = best["median"]
    ratio = b["decode"] / b["model"]
    verdict = (
        f"decoding **is the bottleneck** ({ratio:.2f}x the forward's time at batch {best['batch_size']})"
        if ratio > 1
        else f"decoding is **not** the bottleneck ({ratio:.2f}x the forward's time at batch {best['batch_size']})"
    )
    peak_line = (
        f"bf16 dense peak of this GPU {peak:.0f} TFLOP/s (spec sheet)"
        if peak
        else "no spec-sheet bf16 peak known for this device"
    )
    mm_line = (
        f"bf16 {r['matmul_n']}³ matmul in this run {mm:.0f} TFLOP/s"
        if mm
        else "no matmul rate measured (CPU)"
    )
    store = (
        "a temporary Lance store"
        if r["store"] == "lance"
        else "no store (pylance missing: rows counted, not written)"
    )
    vis_params = p["vision_blocks"] + p["vision_patch_embed"] + p["vision_merger"]
    return f"""### Video extraction on a GPU (Qwen2.5-VL architecture, random weights, {r["dtype"]})

Machine: {r["machine"]}; {r["device_name"]}; torch {r["torch"]}, transformers {r["transformers"]}, PyAV {r["pyav"]}; attention `{r["attn"]}`. Command: `{r["command"]}` ({r["wall_s"]:.0f} s wall, model construction included).
Model: {_count(p["total"])} parameters: language model {_count(p["lm_layers"])} in {tx["num_hidden_layers"]} decoder layers of width {tx["hidden_size"]} + {_count(p["lm_embedding"])} embedding (vocabulary {r["vocab"]:,}, tied to the logits; the tokenizer is a local one of {r["tokenizer_size"]} tokens), vision tower {_count(vis_params)} ({vi["depth"]} blocks of width {vi["hidden_size"]}, merger {_count(p["vision_merger"])}). Built in {r["checkpoint"]["build_s"]:.0f} s, saved ({r["checkpoint"]["bytes"] / 2**30:.2f} GiB safetensors) in {r["checkpoint"]["save_s"]:.0f} s, loaded by `load_adapter` in {r["load_s"]:.0f} s.
Video: synthetic, {v["seconds"]:.0f} s, {v["fps"]} fps, {v["width"]}x{v["height"]}, H.264 (veryfast, crf 23, keyframe every {v["gop"]} frames, {v["bytes"] / mib:.1f} MiB); `video_clips(tr={TR}, frames_per_clip={fpc})`: {n_clips} clips of {tok} LM tokens each ({vtok} video + {tok - vtok} prompt, instruction `{INSTRUCTION}`) from {r["patches_per_clip"]} patches (grid t, h, w = {r["grid"]}). `embed()`: all {r["lm_states"]} LM states, `stimulus` pooling, into {store}.
FLOPs per clip: {_flop(fl["total"])} = LM linear {_flop(fl["lm_linear"])} + LM attention {_flop(fl["lm_attention"])} + logits {_flop(fl["logits"])} + vision linear {_flop(fl["vision_linear"])} + vision attention {_flop(fl["vision_attention"])} (formula in the script's docstring); {peak_line}; {mm_line}.

| measurement | result |
|---|---|
{chr(10).join(rows)}

Medians of up to {r["repeats"]} runs each, as the time budget allowed (all runs in `--save`'s JSON), after a warm-up;
the timers wait for the GPU at each boundary. `embed()` decodes, runs the processor and the forward one
after the other, with no overlap, so decoding adds to the wall time: {verdict}.
"Rest" is input padding and span masks, host-to-device copies, pooling of every layer and the store writes.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, short video, one run (CPU smoke test)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--params", action="store_true", help="parameter counts of the full config (meta device)")
    ap.add_argument("--render", type=Path, help="print (and write) the block of a saved video_gpu.json")
    ap.add_argument("--save", type=Path, help="directory for video_gpu.json and video_gpu.md")
    ap.add_argument("--seconds", type=float, help="video length in seconds (default 60; quick 6)")
    ap.add_argument("--gop", type=int, default=48, help="keyframe interval in frames (default 48 = 2 s)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 4,8; quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 3; quick 1)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="no further repeats past this (seconds)")
    ap.add_argument("--attn", default=None, help="attn_implementation (default transformers': sdpa)")
    ap.add_argument(
        "--store", choices=("auto", "lance", "null"), default="auto", help="auto: Lance if installed"
    )
    args = ap.parse_args()

    if args.render:
        r = json.loads(args.render.read_text())
        md = render(r)
        print(md)
        if not args.no_write and not r["quick"]:
            write_block("video_gpu", md)
        return 0
    if args.params:
        c = meta_counts(FULL)
        vis = c["vision_blocks"] + c["vision_patch_embed"] + c["vision_merger"]
        print(json.dumps(c, indent=1))
        print(
            f"LM decoder layers {_count(c['lm_layers'])} + embedding {_count(c['lm_embedding'])}; "
            f"vision tower {_count(vis)}; total {_count(c['total'])}"
        )
        return 0

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print(
            "bench_video_gpu: no CUDA device here; the full benchmark needs a GPU. "
            "Use --quick for a CPU smoke test of the whole path.",
            file=sys.stderr,
        )
        return 2
    store = (
        "lance" if args.store == "auto" and HAVE_LANCE else ("null" if args.store == "auto" else args.store)
    )
    if store == "lance" and not HAVE_LANCE:
        print("bench_video_gpu: --store lance needs pylance, which is not installed", file=sys.stderr)
        return 2
    if store == "null":
        use_null_store()
    clock = Clock(args.budget_s)
    device = torch.device("cuda" if cuda else "cpu")
    dtype_name = "bfloat16" if cuda else "float32"
    dtype = getattr(torch, dtype_name)
    shape = QUICK if args.quick else FULL
    seconds = args.seconds or (6.0 if args.quick else 60.0)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("2" if args.quick else "4,8")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    _ = tf.Qwen2_5_VLForConditionalGeneration  # import the modelling code now, not inside the build timer
    torch.manual_seed(0)

    def log(msg: str) -> None:
        print(f"[{clock.elapsed():5.0f} s] {msg}", flush=True)

    r: dict = {
        "quick": args.quick,
        "machine": machine() + f", load average {os.getloadavg()[0]:.1f} at the start",
        "device_name": torch.cuda.get_device_name() if cuda else "CPU (no CUDA)",
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "pyav": av.__version__,
        "dtype": dtype_name,
        "shape": shape,
        "repeats": repeats,
        "store": store,
        "command": "python benchmarks/bench_video_gpu.py " + " ".join(sys.argv[1:]),
    }
    # a practical peak, measured first, while nothing else holds the GPU
    r["matmul_n"] = 8192
    r["matmul_tflops"] = matmul_rate(device, r["matmul_n"], dtype) if cuda else None
    r["peak_tflops"] = gpu_peak(r["device_name"]) if cuda else None
    log(f"{r['device_name']}: bf16 matmul {r['matmul_tflops']} TFLOP/s, spec peak {r['peak_tflops']}")

    root = Path(tempfile.mkdtemp(prefix="bench_video_gpu_"))
    try:
        ckpt = root / "qwen25vl-random"
        r["checkpoint"] = build_checkpoint(ckpt, shape, device, dtype)
        cfg = json.loads((ckpt / "config.json").read_text())
        r["vocab"] = cfg["text_config"]["vocab_size"]
        r["tokenizer_size"] = len(make_tokenizer())
        log(f"checkpoint {json.dumps(r['checkpoint'])}")

        video = root / "synthetic.mp4"
        r["video"] = write_video(video, seconds, 24, 640, 360, args.gop)
        manifest = stimuli.video_clips(
            video, tr=TR, frames_per_clip=FRAMES_PER_CLIP, run="r1", stimulus_set="bench-video"
        )
        r["n_clips"] = len(manifest)
        log(f"video {json.dumps(r['video'])}, {len(manifest)} clips")

        t = time.perf_counter()
        adapter = load_adapter(ckpt, device=str(device), dtype=dtype_name, attn_implementation=args.attn)
        _ = adapter.model
        r["load_s"] = time.perf_counter() - t
        r["attn"] = adapter.model.config._attn_implementation
        r["lm_states"] = adapter.components()["lm"][0]
        timers = Timers(device)
        instrument(adapter, timers)
        log(f"loaded in {r['load_s']:.1f} s, attention {r['attn']}, store {store}")

        dec_s, frames = decode_all(manifest)
        r["decode_runs_s"] = [dec_s]
        log(f"decode {dec_s:.2f} s")

        def model_reserve(j):
            # the model passes of the batch sizes after j, then every batch size's embed()
            rest = len(batch_sizes) - j - 1
            return lambda t, proc: rest * (t + proc) + len(batch_sizes) * 1.3 * (dec_s + proc + t)

        r["model"] = []
        for j, bs in enumerate(batch_sizes):
            m = bench_model(adapter, manifest, frames, bs, timers, clock, repeats, model_reserve(j))
            r["model"].append(m)
            log(f"model bs={bs}: runs {[round(x, 2) for x in m['runs_s']]} s, vision {m['vision_s']:.2f} s")
        del frames
        m0 = r["model"][0]
        if len(set(m0["tokens"])) != 1 or len({tuple(g) for g in m0["grids"]}) != 1:
            raise RuntimeError(f"clips differ in size: tokens {set(m0['tokens'])}, grids {m0['grids'][:3]}")
        r["tokens_per_clip"], r["video_tokens_per_clip"] = m0["tokens"][0], m0["video_tokens"][0]
        r["grid"] = m0["grids"][0]
        r["patches_per_clip"] = math.prod(r["grid"])
        r["flops"] = clip_flops(r["checkpoint"]["params"], shape, r["vocab"], r["tokens_per_clip"], r["grid"])

        r["embed"] = []
        for j, bs in enumerate(batch_sizes):
            rest = len(batch_sizes) - j - 1
            e = bench_embed(adapter, manifest, bs, root, timers, clock, repeats, lambda t, n=rest: n * t)
            r["embed"].append(e)
            log(
                f"embed bs={bs}: runs {[round(x, 2) for x in e['runs_s']]} s, median {json.dumps(e['median'])}"
            )

        while clock.another(r["decode_runs_s"], repeats):  # decoding alone again, if time is left
            r["decode_runs_s"].append(decode_all(manifest)[0])
        log(f"decode runs {[round(x, 2) for x in r['decode_runs_s']]} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r["wall_s"] = clock.elapsed()
    md = render(r)
    print(md)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "video_gpu.json").write_text(json.dumps(r, indent=1))
        (args.save / "video_gpu.md").write_text(md)
    if not args.no_write and not args.quick:
        write_block("video_gpu", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
