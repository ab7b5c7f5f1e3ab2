"""Fixtures of the feature-store tests: small features tables and a Hub-compatible server.

The server (``tests/hubserver``) runs on 127.0.0.1 on a free port for the whole session;
``HF_ENDPOINT`` points at it, ``HF_HOME`` at a temporary directory and ``HF_TOKEN`` holds a
token it accepts. ``huggingface_hub`` reads these when it is imported, and other test modules
may have imported it already, so its constants are patched too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("LANCE_LOG", "error")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes `hubserver` importable
from hubserver.server import serve

TOKEN = "hf_brainalignTESTtoken_7f3c9a"  # the server's only valid token; tests check it never leaks
USER = "lab"


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """The Hub test server, one per session, on 127.0.0.1 and a free port."""
    root = tmp_path_factory.mktemp("hub")
    server = serve(root / "server", {TOKEN: USER})
    server.home = root
    yield server
    server.close()


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The running test Hub (``hub.endpoint``, ``hub.state``: repos, byte counters), with
    ``huggingface_hub`` and ``datasets`` pointed at it for the duration of one test.

    Other test modules set ``HF_HUB_OFFLINE=1`` for their model loading, so it is switched off
    here, per test, and restored afterwards.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    root, server = hub_server.home, hub_server
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_CACHE": str(root / "hf_cache"),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_CACHE": str(root / "hf_datasets"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # the plain LFS upload path (the server does not speak Xet)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HOME", env["HF_HOME"])
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(root / "hf_home" / "token"))
    try:
        import datasets.config as dconfig

        monkeypatch.setattr(dconfig, "HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(
            dconfig, "HUB_DATASETS_URL", server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", False, raising=False)
        monkeypatch.setattr(dconfig, "HF_DATASETS_OFFLINE", False, raising=False)
    except ImportError:  # datasets is a core dependency; keep the Hub tests usable without it
        pass
    disable_progress_bars()
    yield server
    enable_progress_bars()


def feature_keys(
    n_stimuli: int, layers, instructions=("describe",), model="tiny-mllm", stimulus_set="movie", runs=("1",)
) -> pa.Table:
    """Key columns of ``n_stimuli`` TRs per run × layers × instructions, in key order."""
    rows = {
        c: []
        for c in (
            "stimulus_set",
            "stimulus_id",
            "run",
            "tr",
            "onset_s",
            "model",
            "instruction_id",
            "component",
            "layer",
            "pooling",
        )
    }
    for ins in instructions:
        for layer in layers:
            for run in runs:
                for tr in range(n_stimuli):
                    rows["stimulus_set"].append(stimulus_set)
                    rows["stimulus_id"].append(f"{run}-{tr:05d}")
                    rows["run"].append(run)
                    rows["tr"].append(tr)
                    rows["onset_s"].append(2.0 * tr)
                    rows["model"].append(model)
                    rows["instruction_id"].append(ins)
                    rows["component"].append("lm")
                    rows["layer"].append(layer)
                    rows["pooling"].append("mean")
    return pa.table(rows)


def embeddings_for(keys: pa.Table, dim: int) -> np.ndarray:
    """Deterministic embeddings computed from the keys (an oracle independent of the store)."""
    tr = np.asarray(keys.column("tr").to_pylist(), dtype=np.float64)
    layer = np.asarray(keys.column("layer").to_pylist(), dtype=np.float64)
    ins = np.asarray(
        [sum(map(ord, s)) % 7 for s in keys.column("instruction_id").to_pylist()], dtype=np.float64
    )
    run = np.asarray([int(r) for r in keys.column("run").to_pylist()], dtype=np.float64)
    j = np.arange(dim, dtype=np.float64)
    return (np.sin(0.01 * tr[:, None] * (j + 1) + layer[:, None] + 0.3 * ins[:, None] + run[:, None])).astype(
        np.float32
    )


@pytest.fixture
def tables():
    """The table builders and the server's user and token, for test modules to use."""
    return SimpleNamespace(feature_keys=feature_keys, embeddings_for=embeddings_for, TOKEN=TOKEN, USER=USER)


@pytest.fixture
def make_store(tmp_path):
    """``make_store(name, n_stimuli, layers, instructions, dim, dtype)`` → a written FeatureStore."""
    from brainalign.features import FeatureStore

    def make(
        name="f", n_stimuli=8, layers=(0, 1, 2), instructions=("describe",), dim=16, dtype="float32", **kw
    ):
        store = FeatureStore.create(
            tmp_path / f"{name}.lance",
            dim=dim,
            dtype=dtype,
            provenance={
                "model": {"repo_id": "org/tiny-mllm", "revision": "0" * 40},
                "dtype": dtype,
                "instructions": {i: f"Please {i} the scene." for i in instructions},
            },
        )
        keys = feature_keys(n_stimuli, layers, instructions, **kw)
        store.write(keys, embeddings_for(keys, dim))
        return store

    return make
