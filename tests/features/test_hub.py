"""push/pull against the Hub-compatible test server, with the real ``huggingface_hub`` client."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from brainalign.features import FeatureStore, HubError, pull, push
from brainalign.features.hub import INDEX_FILE

# huggingface_hub's plain LFS upload (the path a Hub without Xet takes) passes a file object as
# `data=` to httpx2, which deprecates that spelling; nothing we call can change it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
)

TOKEN = "hf_brainalignTESTtoken_7f3c9a"  # the test server's token (tests/features/conftest.py)
USER = "lab"


@pytest.fixture(autouse=True)
def _builders(tables):
    global feature_keys, embeddings_for
    feature_keys, embeddings_for = tables.feature_keys, tables.embeddings_for
    assert tables.TOKEN == TOKEN and tables.USER == USER


def _files_under(path: Path) -> dict[str, int]:
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def test_push_v1_v2_pull_by_tag(hub, make_store, tmp_path):
    repo = f"{USER}/tags"
    store = make_store("tags", n_stimuli=6, layers=(0, 1))
    r1 = push(store, repo, tag="v1")
    assert r1["tag"] == "v1" and r1["version"] == store.version
    assert "README.md" in r1["uploaded"] and INDEX_FILE in r1["uploaded"]
    # v2 rewrites layer 1 with new values and adds layer 2
    keys = feature_keys(6, (1, 2))
    new = embeddings_for(keys, 16) + 1.0
    store.write(keys, new)
    r2 = push(store, repo, tag="v2")
    assert r2["version"] > r1["version"]
    # only the new data files, the new manifest and small metadata moved; v1's data files did not
    assert not any(p in r2["uploaded"] for p in r1["uploaded"] if "/data/" in p)
    assert r2["unchanged"] > 0

    # the Hub tag is the Lance tag: v1 on the Hub is the Lance table at its v1 version
    v1 = pull(repo, revision="v1", cache_dir=tmp_path / "cache")
    assert v1.version == r1["version"] and v1.count_rows() == 12
    _, X1 = v1.read(layer=1)
    k1 = feature_keys(6, (1,))
    np.testing.assert_allclose(X1, embeddings_for(k1, 16), rtol=0, atol=0)
    v2 = pull(repo, revision="v2", cache_dir=tmp_path / "cache")
    assert v2.count_rows() == 18
    _, X2 = v2.read(layer=1)
    np.testing.assert_allclose(X2, embeddings_for(k1, 16) + 1.0, rtol=0, atol=0)
    assert {t["tags"][0] for t in v2.versions() if t["tags"]} >= {"v1", "v2"}
    assert v2.checkout("v1").count_rows() == 12  # Lance tags travel with the table
    assert v2.verify()["ok"]

    # pushing the same table again uploads nothing and makes no commit
    commits = hub.state.stats["commits"]
    r3 = push(store, repo, tag="v2")
    assert r3["uploaded"] == [] and hub.state.stats["commits"] == commits


def test_card_and_index(hub, make_store, tmp_path):
    from huggingface_hub import hf_hub_download

    repo = f"{USER}/card"
    store = make_store("card", layers=(0, 3), instructions=("describe", "count"))
    push(store, repo, license="apache-2.0")
    readme = Path(
        hf_hub_download(repo, "README.md", repo_type="dataset", cache_dir=tmp_path / "c")
    ).read_text()
    front = readme.split("---")[1]
    assert "license: apache-2.0" in front and "feature-extraction" in front and "configs:" in front
    for needle in (
        "`describe`",
        "`count`",
        "`tiny-mllm`",
        "org/tiny-mllm",
        "load_dataset",
        "duckdb",
        "from brainalign.features import pull",
        "| `embedding` |",
    ):
        assert needle in readme, needle
    index = json.loads(
        Path(hf_hub_download(repo, INDEX_FILE, repo_type="dataset", cache_dir=tmp_path / "c")).read_text()
    )
    entry = index["tables"]["features.lance"]
    assert entry["rows"] == store.count_rows() and len(entry["groups"]) == 4
    # every group sits in its own data files: a one-layer pull needs one group's files only
    assert all(len(g["fragments"]) == 1 for g in entry["groups"])


def test_pull_one_layer_moves_only_its_files(hub, make_store, tmp_path):
    repo = f"{USER}/partial"
    store = make_store("partial", n_stimuli=64, layers=tuple(range(8)), instructions=("a", "b"), dim=64)
    push(store, repo)
    hub.state.reset_stats()
    keys, X = pull(repo, instruction="b", layer=5, as_arrays=True, cache_dir=tmp_path / "cache")
    moved = hub.state.stats["resolve_bytes"]
    expect = feature_keys(64, (5,), ("b",))
    np.testing.assert_array_equal(X, embeddings_for(expect, 64))
    assert keys.column("tr").to_pylist() == list(range(64))
    total = sum(_files_under(Path(store.uri)).values())
    one_group = 64 * 64 * 4  # raw float32 values of the selected layer
    assert moved < total / 8, (moved, total)  # 1 of 16 groups, plus the index and one manifest
    assert moved >= one_group
    served = hub.state.served
    assert sum("/data/" in p for p in served) == 1


def test_offline_pull_from_cache(hub, make_store, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = f"{USER}/offline"
    store = make_store("offline", layers=(0, 1, 2))
    push(store, repo, tag="v1")
    cache = tmp_path / "cache"
    keys, X = pull(repo, revision="v1", layer=2, as_arrays=True, cache_dir=cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.state.reset_stats()
    keys2, X2 = pull(repo, revision="v1", layer=2, as_arrays=True, cache_dir=cache)
    assert hub.state.stats["resolve_requests"] == 0
    np.testing.assert_array_equal(X, X2)
    assert keys.equals(keys2)
    with pytest.raises(HubError, match="not in the local cache"):
        pull(repo, revision="v1", layer=2, as_arrays=True, cache_dir=tmp_path / "empty-cache")


def test_unknown_repo_revision_and_selection(hub, make_store, tmp_path):
    repo = f"{USER}/errors"
    push(make_store("errors", layers=(0, 1)), repo, tag="v1")
    cache = tmp_path / "cache"
    with pytest.raises(HubError, match="no dataset repo"):
        pull(f"{USER}/does-not-exist", cache_dir=cache)
    with pytest.raises(HubError, match=r"'v9'.*tags \['v1'\]"):
        pull(repo, revision="v9", cache_dir=cache)
    with pytest.raises(HubError, match=r"layer: .* no layer \[7\]; available: \[0, 1\]"):
        pull(repo, layer=7, cache_dir=cache)
    with pytest.raises(HubError, match=r"instruction: .*available: \['describe'\]"):
        pull(repo, instruction="summarize", cache_dir=cache)
    with pytest.raises(HubError, match=r"model: .*available: \['tiny-mllm'\]"):
        pull(repo, model="gpt", cache_dir=cache)


def test_integrity_check_catches_a_corrupted_cache(hub, make_store, tmp_path):
    repo = f"{USER}/integrity"
    push(make_store("integrity", layers=(0,)), repo)
    cache = tmp_path / "cache"
    store = pull(repo, layer=0, cache_dir=cache)
    assert store.verify()["ok"]
    blobs = cache / f"datasets--{USER}--integrity" / "blobs"
    data_blob = next(
        p for p in blobs.iterdir() if len(p.name) == 64 and p.stat().st_size > 1000
    )  # LFS: sha256
    data_blob.write_bytes(b"\0" * data_blob.stat().st_size)
    with pytest.raises(HubError, match=r"integrity: .* does not match its SHA-256"):
        pull(repo, layer=0, cache_dir=cache)
    index_blob = Path(
        os.path.realpath(next((cache / f"datasets--{USER}--integrity" / "snapshots").iterdir()) / INDEX_FILE)
    )
    index_blob.write_bytes(index_blob.read_bytes().replace(b'"rows"', b'"rowz"'))
    with pytest.raises(HubError, match=f"integrity: {INDEX_FILE}"):
        pull(repo, layer=0, cache_dir=cache)


def test_bad_token_and_no_token_leak(hub, make_store, tmp_path, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    store = make_store("leak", layers=(0,))
    bad = "hf_WRONGtoken_0000"
    with pytest.raises(HubError, match="rejected the credentials") as err:
        push(store, f"{USER}/leak", token=bad)
    assert bad not in str(err.value)
    r = push(store, f"{USER}/leak", token=TOKEN, private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="no dataset repo"):  # private: invisible without a token
        pull(f"{USER}/leak", cache_dir=tmp_path / "anon")
    with pytest.raises(HubError, match="rejected the credentials") as err:
        pull(f"{USER}/leak", cache_dir=tmp_path / "bad", token=bad)
    assert bad not in str(err.value)
    got = pull(f"{USER}/leak", cache_dir=tmp_path / "ok", token=TOKEN)
    assert got.count_rows() == store.count_rows() and r["commit"]
    # the token is nowhere: logs, output, errors, repo files, local tables, cache
    out, errs = capfd.readouterr()
    text = caplog.text + out + errs
    assert TOKEN not in text and bad not in text
    for root in (Path(store.uri), tmp_path / "ok", hub.state.root):
        for p in root.rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p
    for repo in hub.state.repos.values():
        for _, tree, _ in repo.commits.values():
            for e in tree.values():
                assert e.content is None or TOKEN.encode() not in e.content


def test_concurrent_pushes_leave_a_consistent_repo(hub, make_store, tmp_path):
    repo = f"{USER}/concurrent"
    a = make_store("conc-a", layers=(0, 1), instructions=("a",))
    b = make_store("conc-b", layers=(0, 1, 2), instructions=("b",))
    push(a, repo)  # creates the repo
    a.write(feature_keys(8, (5,), ("a",)), embeddings_for(feature_keys(8, (5,), ("a",)), 16))
    results, errors = {}, []

    def run(name, store, path):
        try:
            results[name] = push(store, repo, path_in_repo=path)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=("a", a, "features.lance")),
        threading.Thread(target=run, args=("b", b, "other/features.lance")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(results) == {"a", "b"}
    # both tables are complete and listed in the index: neither commit overwrote the other
    got_a = pull(repo, table="features.lance", cache_dir=tmp_path / "c")
    got_b = pull(repo, table="other/features.lance", cache_dir=tmp_path / "c")
    assert got_a.count_rows() == a.count_rows() and got_b.count_rows() == b.count_rows()
    assert got_a.verify()["problems"] == [] and got_b.verify()["ok"]


def test_datasets_load_dataset_reads_the_published_table(hub, make_store, tmp_path):
    datasets = pytest.importorskip("datasets")
    repo = f"{USER}/hfds"
    store = make_store("hfds", layers=(0, 1), dim=8)
    push(store, repo)
    ds = datasets.load_dataset(repo, split="train", cache_dir=str(tmp_path / "dcache"))
    assert ds.num_rows == store.count_rows()
    got = {r["key"]: np.asarray(r["embedding"], dtype=np.float32) for r in ds}
    keys, X = store.read(columns=["key"])
    assert sorted(got) == sorted(keys.column("key").to_pylist())
    for k, x in zip(keys.column("key").to_pylist(), X, strict=True):
        np.testing.assert_array_equal(got[k], x)


def test_pulled_store_is_float16_safe_for_duckdb(hub, make_store, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    repo = f"{USER}/half"
    store = make_store("half", layers=(0, 1, 2), dtype="float16")
    push(store, repo)
    got = pull(repo, layer=[1, 2], cache_dir=tmp_path / "c")
    assert isinstance(got, FeatureStore) and got.storage_dtype == "float16"
    con = duckdb.connect()
    try:
        con.register("features", got.scannable())
        rows = con.sql("SELECT layer, count(*) AS n FROM features GROUP BY layer ORDER BY layer").fetchall()
    finally:
        con.close()
    assert rows == [(1, 8), (2, 8)]


def test_push_retries_when_another_commit_lands_first(hub, make_store, tmp_path, monkeypatch):
    from huggingface_hub import CommitOperationAdd, HfApi

    repo = f"{USER}/race"
    store = make_store("race", layers=(0,))
    push(store, repo)
    more = feature_keys(8, (1,))
    store.write(more, embeddings_for(more, 16))
    original = HfApi.create_commit
    raced = []

    def create_commit(self, repo_id, operations, **kw):
        if not raced:  # someone else commits between our read of the head and our commit
            raced.append(
                original(
                    self,
                    repo_id,
                    [CommitOperationAdd("NOTES.md", b"hello\n")],
                    commit_message="a concurrent commit",
                    repo_type="dataset",
                )
            )
        return original(self, repo_id, operations, **kw)

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    conflicts = hub.state.stats["conflicts"]
    result = push(store, repo)
    assert hub.state.stats["conflicts"] == conflicts + 1  # the first attempt was refused (HTTP 412)
    files = {f.path for f in HfApi().list_repo_tree(repo, repo_type="dataset", recursive=True)}
    assert "NOTES.md" in files and set(result["uploaded"]) <= files  # neither commit was lost
    assert pull(repo, cache_dir=tmp_path / "c").count_rows() == 16


def test_server_speaks_the_client_api(hub, tmp_path):
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi()
    repo = f"{USER}/api"
    api.create_repo(repo, repo_type="dataset")
    blob = bytes(range(256)) * 8
    api.create_commit(
        repo,
        [CommitOperationAdd("d/x.bin", blob), CommitOperationAdd("a.txt", b"hi\n")],
        commit_message="one",
        repo_type="dataset",
    )
    api.create_branch(repo, branch="dev", repo_type="dataset")
    api.create_tag(repo, tag="t1", repo_type="dataset")
    refs = api.list_repo_refs(repo, repo_type="dataset")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["t1"]
    info = {i.path: i for i in api.get_paths_info(repo, ["d/x.bin", "a.txt", "d"], repo_type="dataset")}
    assert info["d/x.bin"].lfs.sha256 == __import__("hashlib").sha256(blob).hexdigest()
    assert info["a.txt"].lfs is None and info["a.txt"].size == 3
    url = f"{hub.endpoint}/datasets/{repo}/resolve/t1/d/x.bin"
    head = httpx2.head(url)
    assert head.headers["X-Repo-Commit"] == refs.tags[0].target_commit
    assert head.headers["ETag"].strip('"') == info["d/x.bin"].lfs.sha256
    part = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == blob[10:20]
    assert (
        Path(
            hf_hub_download(repo, "d/x.bin", repo_type="dataset", revision="dev", cache_dir=tmp_path / "c")
        ).read_bytes()
        == blob
    )
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "a.txt", repo_type="dataset", revision="nope", cache_dir=tmp_path / "c")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt", repo_type="dataset", cache_dir=tmp_path / "c")
    assert (
        httpx2.get(
            f"{hub.endpoint}/api/datasets/{repo}", headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )


def test_push_refuses_files_over_the_cap(hub, make_store):
    store = make_store("cap", layers=(0,))
    with pytest.raises(HubError, match=r"exceed max_bytes_per_file=100 .*compact\(max_bytes_per_file"):
        push(store, f"{USER}/cap", max_bytes_per_file=100)
