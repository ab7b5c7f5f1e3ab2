"""`brainalign fit` options: key mismatches, presets (Lanczos, PCA, shifts), the project file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.decomposition import PCA

from brainalign.cli.align import get_preset, lanczos_resample, pca_train, prepare_design
from brainalign.features import FeatureStore, open_table

from .conftest import N_RUNS, N_TRS, TR, run_cli


def _features(path, runs_trs: dict[str, int], *, word_level: bool = False, dim: int = 3, seed: int = 0):
    """A features table over the study's stimulus set: per TR, or per word (every 0.5 s)."""
    rng = np.random.default_rng(seed)
    store = FeatureStore.create(path, dim=dim, provenance={"test": True})
    for run, n in runs_trs.items():
        onsets = np.arange(0, n * TR, 0.5) if word_level else np.arange(n) * TR
        k = len(onsets)
        store.write(
            {
                "stimulus_set": ["story"] * k,
                "stimulus_id": [f"{run}-{i}" for i in range(k)],
                "run": [run] * k,
                "tr": pa.nulls(k, pa.int32()) if word_level else np.arange(k, dtype=np.int32),
                "onset_s": onsets,
                "model": ["m"] * k,
                "instruction_id": ["none"] * k,
                "component": ["lm"] * k,
                "layer": np.zeros(k, np.int16),
                "pooling": ["word" if word_level else "tr"] * k,
            },
            rng.standard_normal((k, dim)).astype(np.float32),
        )
    return path


def test_key_mismatch_is_reported_and_refused(pipeline, tmp_path):
    runs = {str(r): N_TRS for r in range(1, N_RUNS + 1)}
    runs["2"] = N_TRS - 5
    f = _features(tmp_path / "f.lance", runs)
    args = [
        "fit",
        "--features",
        f,
        "--responses",
        pipeline["tables"] / "responses.lance",
        "--scores",
        tmp_path / "s.lance",
        "--test-run",
        "4",
    ]
    res = run_cli(*args, ok=False)
    assert res.exit_code == 1
    assert (
        "run 2: features have 55 TRs, responses 60: 5 TRs unmatched (0 only in features, 5 only in responses)"
        in res.stderr
    )
    assert "allow_trim" in res.stderr and not (tmp_path / "s.lance").exists()
    res = run_cli(*args, "--allow-trim", "--json")
    out = json.loads(res.stdout)
    assert out["dropped"] == [
        "run 2: features have 55 TRs, responses 60: 5 TRs unmatched (0 only in features, 5 only in responses)"
    ]
    assert out["n_train"] == 3 * N_TRS - 5 and out["n_test"] == N_TRS


def test_word_level_features_need_lanczos_then_fit(pipeline, tmp_path):
    f = _features(tmp_path / "words.lance", {str(r): N_TRS for r in range(1, N_RUNS + 1)}, word_level=True)
    base = [
        "fit",
        "--features",
        f,
        "--responses",
        pipeline["tables"] / "responses.lance",
        "--scores",
        tmp_path / "s.lance",
        "--test-run",
        "4",
    ]
    res = run_cli(*base, "--preset", "fir4", ok=False)
    assert "word-level features" in res.stderr and "Lanczos" in res.stderr
    res = run_cli(*base, "--preset", "huth", "--trim-start", "3", "--trim-end", "2", "--json")
    out = json.loads(res.stdout)
    assert out["preset"]["lanczos_window"] == 3 and out["preset"]["trim_start"] == 3
    assert out["n_test"] == N_TRS - 5 and out["n_features"] == 3 * 4
    assert open_table(tmp_path / "s.lance").count_rows() == pipeline["n_voxels"]


def test_lanczos_resample_of_a_slow_sinusoid():
    """Closed form: a signal far below the new Nyquist rate passes the Lanczos filter unchanged,
    scaled by the number of old samples per new sample (the kernel is not normalised)."""
    old = np.arange(0, 200, 0.25)
    new = np.arange(10, 190, 2.0)
    f = 0.02  # Hz, well below 1 / (2 * 2 s)
    out = lanczos_resample(np.sin(2 * np.pi * f * old)[:, None], old, new, window=3)[:, 0]
    np.testing.assert_allclose(out / 8.0, np.sin(2 * np.pi * f * new), atol=0.02)


def test_pca_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 50, 8)) @ rng.standard_normal((8, 8))
    train = np.arange(50) < 35
    X[:, ~train] *= 10  # test rows must not steer the components
    got = pca_train(X, train, 3)
    for s in range(2):
        want = PCA(3).fit(X[s, train]).transform(X[s])
        np.testing.assert_allclose(np.abs(got[s]), np.abs(want), rtol=1e-4, atol=1e-4)


def test_presets_and_overrides():
    p = get_preset("huth", delays=[2], pca=0, trim_end=0)
    assert p.delays == (2,) and p.pca is None and p.trim_start == 10 and p.lanczos_window == 3
    X = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    runs = np.array(["a"] * 3 + ["b"] * 3)
    D = prepare_design(X, runs, get_preset("none", delays=[1]))
    np.testing.assert_array_equal(D[0, :, 0], [0, 0, 2, 0, 6, 8])  # shifted within runs only
    with pytest.raises(ValueError, match="preset: expected one of"):
        get_preset("nope")


def test_project_file_supplies_tables_and_defaults(pipeline, tmp_path):
    (tmp_path / "brainalign.toml").write_text(
        f'[project]\nroot = "{pipeline["tables"]}"\n[tables]\nscores = "mine/scores.lance"\n'
        '[fit]\ntest_runs = ["3"]\npreset = "shift3"\n'
    )
    (tmp_path / "mine").mkdir()
    res = run_cli(
        "--project",
        tmp_path / "brainalign.toml",
        "fit",
        "--name",
        "proj",
        "--instruction",
        "caption",
        "--layer",
        "1",
        "--model",
        "toy/tuned",
        "--json",
    )
    out = json.loads(res.stdout)
    assert out["test_runs"] == ["3"] and out["preset"]["delays"] == [3]
    assert out["scores_uri"] == str(tmp_path / "mine" / "scores.lance")
    res = run_cli(
        "--project",
        tmp_path / "brainalign.toml",
        "query",
        "--format",
        "json",
        "SELECT count(*) AS n FROM scores WHERE fit = 'proj'",
    )
    assert json.loads(res.stdout) == [{"n": pipeline["n_voxels"]}]


def test_usage_errors_exit_2(pipeline):
    res = run_cli("fit", "--no-such-option", ok=False)
    assert res.exit_code == 2
    res = run_cli("fit", "--root", pipeline["tables"], "--test-run", "9", ok=False)
    assert res.exit_code == 1 and "test_runs: expected a non-empty subset of the runs" in res.stderr


def test_help_has_a_worked_example():
    for cmd in (
        ["fit"],
        ["partition"],
        ["query"],
        ["report"],
        ["responses", "ingest"],
        ["demo"],
        ["store", "info"],
        ["push"],
        ["pull"],
        ["embed"],
    ):
        res = run_cli(*cmd, "--help")
        assert "Example" in res.stdout, cmd


def test_pull_offline_uncached_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("pull", "nobody/not-cached", "--cache-dir", tmp_path, ok=False)
    assert res.exit_code == 1
    assert res.stderr.strip().startswith("error: ") and "Traceback" not in res.output
    assert "not-cached" in res.stderr


def test_ceiling_normalised_scores_and_pca(pipeline, tmp_path):
    n_vox = pipeline["n_voxels"]
    ceiling = np.full(n_vox, 0.5, np.float32)
    ceiling[:5] = 0.01  # unreliable voxels: no normalised score
    np.save(tmp_path / "ceiling.npy", ceiling)
    res = run_cli(
        "fit", "--root", pipeline["tables"], "--scores", tmp_path / "s.lance", "--name", "ceil",
        "--model", "toy/tuned", "--instruction", "caption", "--layer", "1", "--test-run", "4",
        "--pca", "3", "--ceiling", tmp_path / "ceiling.npy", "--min-ceiling", "0.05", "--json",
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert out["n_features"] == 3 * 4 and out["preset"]["pca"] == 3
    s = open_table(tmp_path / "s.lance").to_table().to_pandas().sort_values("voxel")
    assert s["r_norm"].iloc[:5].isna().all()
    np.testing.assert_allclose(s["r_norm"].iloc[5:], s["r"].iloc[5:] / 0.5, rtol=1e-5)
    np.testing.assert_allclose(s["ceiling"], ceiling)
    bad = run_cli("fit", "--root", pipeline["tables"], "--scores", tmp_path / "s2.lance", "--test-run", "4",
                  "--ceiling", tmp_path / "nope.npy", ok=False)  # fmt: skip
    assert "ceiling: no such file" in bad.stderr


def test_standardize_uses_training_statistics_only():
    from brainalign.cli.align import get_preset
    from brainalign.cli.fitting import design

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 40, 3)) * np.array([1.0, 50.0, 1e3]) + 7.0
    X[:, 30:] += 100.0  # test rows far off: must not leak into the statistics
    train = np.arange(40) < 30
    runs = np.array(["a"] * 40)
    pre = get_preset("none", standardize=True)
    out = design(X, runs, train, pre)
    Xt = X[:, :30]
    want = (X - Xt.mean(1, keepdims=True)) / Xt.std(1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[:, :30].mean(1), 0, atol=1e-5)


def test_standardize_comes_before_pca():
    from brainalign.cli.fitting import design

    rng = np.random.default_rng(1)
    n, train = 60, np.arange(60) < 45
    runs = np.array(["a"] * n)
    shared = rng.standard_normal((n, 1))
    X = np.concatenate(
        [
            shared + 0.3 * rng.standard_normal((n, 5)),  # five features with one common factor
            1e4 * rng.standard_normal((n, 1)),  # and one unrelated feature of huge variance
        ],
        axis=1,
    )[None]
    X[:, ~train] += 50.0  # test rows must not leak into the statistics or the components
    out = design(X, runs, train, get_preset("none", standardize=True, pca=3))
    Xt = X[0, train]
    Z = (X[0] - Xt.mean(0)) / Xt.std(0)
    _, _, Vt = np.linalg.svd(Z[train], full_matrices=False)  # Z[train] has zero column means
    want = Z @ Vt[:3].T
    assert out.shape == (1, n, 3)
    np.testing.assert_allclose(np.abs(out[0]), np.abs(want), rtol=1e-4, atol=1e-4)

    def first(D):  # |correlation| of the first component with the huge feature
        return abs(np.corrcoef(D[0, train, 0], X[0, train, -1])[0, 1])

    # z-scored first: the first component is the common factor, not the huge feature
    assert first(out) < 0.3 and abs(np.corrcoef(out[0, train, 0], shared[train, 0])[0, 1]) > 0.95
    # PCA alone is unchanged: its first component is the huge feature
    alone = design(X, runs, train, get_preset("none", pca=3))
    assert first(alone) > 0.999
    np.testing.assert_allclose(np.abs(alone), np.abs(pca_train(X, train, 3)), rtol=1e-5, atol=1e-3)
