"""The real `brainalign` command in subprocesses: ingest -> fit -> partition -> query -> report,
with table locations from a brainalign.toml project file, plus its exit codes and error output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainalign.encoders import convolve_hrf
from brainalign.features import FeatureStore

BRAINALIGN = Path(sys.executable).parent / "brainalign"
N_RUNS, N_TRS, N_VOX, DIM = 3, 50, 20, 4


def _run(*args, env=None, expect: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(BRAINALIGN), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == expect, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(11)
    n = N_RUNS * N_TRS
    runs = np.repeat(np.arange(1, N_RUNS + 1), N_TRS).astype(str)
    trs = np.tile(np.arange(N_TRS, dtype=np.int32), N_RUNS)
    feats = {
        (ins, layer): rng.standard_normal((n, DIM)).astype(np.float32)
        for ins in ("a", "b")
        for layer in (0, 1)
    }
    s = convolve_hrf(feats[("a", 1)] @ rng.standard_normal((DIM, N_VOX)), 2.0, groups=runs)
    Y = s / s.std(0) + rng.standard_normal((n, N_VOX))
    np.save(d / "bold.npy", Y.astype(np.float32))
    (d / "trs.csv").write_text("run,tr\n" + "".join(f"{r},{t}\n" for r, t in zip(runs, trs, strict=True)))
    tables = d / "tables"
    store = FeatureStore.create(tables / "features.lance", dim=DIM, provenance={"test": "e2e"})
    for (ins, layer), F in feats.items():
        store.write(
            {
                "stimulus_set": ["x"] * n,
                "stimulus_id": [f"{r}-{t}" for r, t in zip(runs, trs, strict=True)],
                "run": runs.tolist(),
                "tr": trs,
                "onset_s": trs * 2.0,
                "model": ["m"] * n,
                "instruction_id": [ins] * n,
                "component": ["lm"] * n,
                "layer": np.full(n, layer, np.int16),
                "pooling": ["mean"] * n,
            },
            F,
        )
    (d / "brainalign.toml").write_text('[project]\nroot = "tables"\n[fit]\ntest_runs = ["3"]\n')
    env = {**os.environ, "BRAINALIGN_PROJECT": str(d / "brainalign.toml")}
    return {"dir": d, "env": env}


def test_pipeline_through_the_real_command(project):
    d, env = project["dir"], project["env"]
    info = json.loads(
        _run(
            "responses",
            "ingest",
            d / "bold.npy",
            "--tr-table",
            d / "trs.csv",
            "--tr",
            "2",
            "--subject",
            "sub-1",
            "--stimulus-set",
            "x",
            "--dataset",
            "sim",
            "--json",
            env=env,
        ).stdout
    )
    assert info["n_voxels"] == N_VOX and info["responses_uri"] == str(d / "tables" / "responses.lance")
    fit = json.loads(_run("fit", "--name", "e2e", "--json", env=env).stdout)
    assert fit["n_spaces"] == 4 and fit["test_runs"] == ["3"] and fit["device"]
    part = json.loads(
        _run(
            "partition",
            "--name",
            "ab",
            "--space",
            "a=instruction_id = 'a' AND layer = 1",
            "--space",
            "b=instruction_id = 'b' AND layer = 1",
            "--json",
            env=env,
        ).stdout
    )
    assert part["mean_r2"]["a"] > part["mean_r2"]["b"]
    res = _run(
        "query",
        "--format",
        "csv",
        "SELECT instruction_id, layer, round(avg(r), 3) AS mean_r FROM scores "
        "GROUP BY ALL ORDER BY mean_r DESC",
        env=env,
    )
    lines = res.stdout.splitlines()
    assert lines[0] == "instruction_id,layer,mean_r" and lines[1].startswith("a,1,")
    _run("report", "--fit", "e2e", "--partition-fit", "ab", "--page", "md", "--out", d / "report", env=env)
    page = (d / "report" / "index.md").read_text()
    assert "partitions.png" in page and (d / "report" / "layer_profiles.png").exists()
    assert list((d / "report").glob("map_*.npy"))  # a matrix input gets its map as .npy


def test_errors_exit_codes_and_debug(tmp_path):
    res = _run("query", "--root", tmp_path, "SELECT 1", expect=1)
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: root: no brainalign tables (*.lance) under {tmp_path}"
    ]
    res = _run("--debug", "query", "--root", tmp_path, "SELECT 1", expect=1)
    assert "Traceback" in res.stderr
    res = _run("query", "--bogus", "SELECT 1", expect=2)
    assert "No such option" in res.stderr
