"""FeatureStore and Table: idempotent writes, key order, versions, verify, float16, DuckDB,
the other table kinds, and parallel (sharded) writers including one killed before its commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from brainalign.features import FeatureStore, Float32View, Table, create_table, open_table, schemas
from brainalign.features.hub import table_files


@pytest.fixture(autouse=True)
def _builders(tables):
    global feature_keys, embeddings_for
    feature_keys, embeddings_for = tables.feature_keys, tables.embeddings_for


def test_write_is_idempotent_and_read_is_in_key_order(make_store):
    store = make_store(n_stimuli=5, layers=(0, 1, 2), instructions=("b", "a"), runs=("2", "1"))
    n = store.count_rows()
    assert n == 5 * 3 * 2 * 2
    keys = feature_keys(5, (0, 1, 2), ("b", "a"), runs=("2", "1"))
    # a rewrite of the same keys, shuffled, replaces rows and never duplicates them
    perm = np.random.default_rng(0).permutation(len(keys))
    store.write(keys.take(perm), embeddings_for(keys, 16)[perm] * 2)
    assert store.count_rows() == n and store.verify()["ok"]
    got_keys, X = store.read(instruction="a", layer=[2, 0])
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.shape == (2 * 5 * 2, 16)
    expect = feature_keys(5, (0, 2), ("a",), runs=("1", "2"))  # sorted: layer, run, tr
    assert got_keys.column("layer").to_pylist() == expect.column("layer").to_pylist()
    assert got_keys.column("run").to_pylist() == expect.column("run").to_pylist()
    assert got_keys.column("tr").to_pylist() == expect.column("tr").to_pylist()
    np.testing.assert_array_equal(X, embeddings_for(expect, 16) * 2)


def test_each_group_is_written_to_its_own_files(make_store):
    store = make_store(n_stimuli=4, layers=(0, 1, 2), instructions=("a", "b"))
    frags = store.dataset.get_fragments()
    assert len(frags) == 6
    for f in frags:
        t = f.to_table(columns=["instruction_id", "layer"])
        assert (
            len(set(zip(t.column("instruction_id").to_pylist(), t.column("layer").to_pylist(), strict=True)))
            == 1
        )


def test_versions_tags_checkout_compact(make_store):
    store = make_store(n_stimuli=4, layers=(0,))
    store.tag("v1")
    v1 = store.version
    more = feature_keys(4, (1,))
    store.write(more, embeddings_for(more, 16))
    store.tag("v2")
    assert [v["tags"] for v in store.versions() if v["tags"]] == [["v1"], ["v2"]]
    old = store.checkout("v1")
    assert old.version == v1 and old.count_rows() == 4
    with pytest.raises(ValueError, match="read-only"):
        old.write(more, embeddings_for(more, 16))
    with pytest.raises(ValueError, match=r"neither a version nor a tag.*tags \['v1', 'v2'\]"):
        store.checkout("v9")
    with pytest.raises(ValueError, match="already points"):
        store.tag("v1")
    for run in ("3", "4", "5"):  # many small commits of the same group
        extra = feature_keys(4, (1,), runs=(run,))
        store.write(extra, embeddings_for(extra, 16))
    before = store.to_table().sort_by("key")
    store.compact()
    after = store.to_table().sort_by("key")
    assert after.equals(before)
    assert len(store.dataset.get_fragments()) == 2  # one per (instruction, layer) group again
    assert store.checkout("v1").count_rows() == 4


def test_verify_reports_problems(make_store, tmp_path):
    store = make_store(n_stimuli=4, layers=(0, 1))
    # stimulus sets of different lengths are fine: groups are compared within a stimulus set
    other = feature_keys(7, (0, 1), stimulus_set="story")
    store.write(other, embeddings_for(other, 16))
    assert store.verify() == {**store.verify(), "ok": True, "problems": []}
    # NaN written through the raw column path (the array path refuses it)
    bad = feature_keys(1, (1,), runs=("9",))
    emb = np.full((1, 16), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        store.write(bad, emb)
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 16)
    store.write(bad.append_column("embedding", col))
    report = store.verify()
    assert not report["ok"]
    assert any("NaN/inf" in p for p in report["problems"])
    assert any("row counts differ" in p for p in report["problems"])  # layer 1 has 5 rows, layer 0 has 4
    # duplicate keys can only come from outside the store: append through Lance directly
    dup = store.to_table().slice(0, 2)
    lance.write_dataset(dup, store.uri, mode="append")
    assert any("duplicate" in p for p in store.refresh().verify()["problems"])
    bare = FeatureStore.create(tmp_path / "bare.lance", dim=4)
    k = feature_keys(2, (0,))
    bare.write(k, np.ones((2, 4)))
    assert bare.verify()["problems"] == ["provenance metadata is missing"]
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(2, 4\), got \(2, 5\)"):
        bare.write(k, np.ones((2, 5)))


def test_float16_storage_reads_float32_and_duckdb_can_query_it(make_store):
    duckdb = pytest.importorskip("duckdb")
    store = make_store(n_stimuli=6, layers=(0, 1), dtype="float16")
    assert store.storage_dtype == "float16"
    assert store.dataset.schema.field("embedding").type.value_type == pa.float16()
    _, X = store.read(layer=1)
    expect = embeddings_for(feature_keys(6, (1,)), 16)
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, expect.astype(np.float16).astype(np.float32))
    con = duckdb.connect()
    try:
        with pytest.raises(duckdb.Error):  # the reason for scannable(): DuckDB cannot scan float16
            con.register("raw", store.dataset)
            con.sql("SELECT count(*) FROM raw").fetchall()
        view = store.scannable()
        assert isinstance(view, Float32View)
        con.register("features", view)
        agg = con.sql(
            "SELECT layer, count(*), sum(embedding[1]) FROM features GROUP BY layer ORDER BY layer"
        ).fetchall()
        join = con.sql(
            "SELECT count(*) FROM features a JOIN features b ON a.stimulus_id = b.stimulus_id AND a.run = b.run "
            "WHERE a.layer = 0 AND b.layer = 1"
        ).fetchall()
    finally:
        con.close()
    assert [(r[0], r[1]) for r in agg] == [(0, 6), (1, 6)]
    assert agg[1][2] == pytest.approx(float(X[:, 0].sum()), rel=1e-5)
    assert join == [(6,)]
    # float32 tables are scanned as they are
    assert store.to_reader(columns=["embedding"]).schema.field("embedding").type.value_type == pa.float32()


def test_other_table_kinds_use_the_same_api(tmp_path):
    gen = create_table(tmp_path / "generations.lance", "generations", provenance={"model": "m"})
    rows = pa.table(
        {
            "stimulus_set": ["s", "s"],
            "stimulus_id": ["a", "b"],
            "run": ["1", "1"],
            "tr": [0, 1],
            "model": ["m", "m"],
            "instruction_id": ["describe", "describe"],
            "text": ["a cat", "a dog"],
            "token_ids": [[1, 2], [1, 3]],
            "decoding": ['{"greedy": true}'] * 2,
        }
    )
    gen.write(rows)
    gen.write(rows)
    assert gen.count_rows() == 2 and gen.verify()["ok"]
    again = open_table(tmp_path / "generations.lance")
    assert type(again) is Table and again.table_kind == "generations"
    assert sorted(again.to_table(columns=["text"]).column("text").to_pylist()) == ["a cat", "a dog"]
    resp = create_table(tmp_path / "responses.lance", "responses", provenance={"dataset": "d"}, n_voxels=3)
    resp.write(
        pa.table(
            {
                "dataset": ["d"] * 2,
                "subject": ["s1"] * 2,
                "run": ["1"] * 2,
                "tr": [0, 1],
                "bold": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3),
            }
        )
    )
    assert resp.verify()["ok"] and resp.scannable() is resp.dataset
    scores = create_table(tmp_path / "scores.lance", "scores", provenance={"fit": "f"})
    n = 4
    scores.write(
        pa.table(
            {
                "fit": ["f"] * n,
                "subject": ["s1"] * n,
                "model": ["m"] * n,
                "instruction_id": ["i"] * n,
                "component": ["lm"] * n,
                "layer": [0, 0, 1, 1],
                "pooling": ["mean"] * n,
                "voxel": [0, 1, 0, 1],
                "split": ["test"] * n,
                "r": [0.1, 0.2, 0.3, 0.4],
            }
        )
    )
    report = scores.verify()
    assert report["ok"] and report["rows_per_group"] == {"groups": 2, "min": 2, "max": 2}
    with pytest.raises(ValueError, match="not in the scores schema"):
        scores.write(pa.table({"nope": [1]}))


def shard_rows(shard: int, n_shards: int):
    """Keys and embeddings of one shard of a 12-TR × 3-layer × 2-instruction extraction."""
    keys = feature_keys(12, (0, 1, 2), ("a", "b"))
    mine = keys.filter(pa.array(np.asarray(keys.column("tr").to_pylist()) % n_shards == shard))
    return mine, embeddings_for(mine, 16)


WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import pyarrow as pa
    sys.path.insert(0, {tests!r})
    from features.conftest import feature_keys, embeddings_for
    from brainalign.features.store import FeatureStore
    uri, shard, n_shards, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    keys = feature_keys(12, (0, 1, 2), ("a", "b"))
    mine = keys.filter(pa.array(np.asarray(keys.column("tr").to_pylist()) % n_shards == shard))
    store = FeatureStore.open(uri)
    frags = store.write_fragments(mine, embeddings_for(mine, 16))
    if mode == "hand-over":
        print(json.dumps(frags))
    elif mode == "hang-before-commit":
        open(uri + f".ready{{shard}}", "w").close()
        time.sleep(120)
    else:
        store.commit_fragments(frags)
""")


def _worker(tmp_path: Path, uri: str, shard: int, n: int, mode: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parents[1])))
    env = {**os.environ, "LANCE_LOG": "error"}
    return subprocess.Popen(
        [sys.executable, str(script), uri, str(shard), str(n), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    return out


def test_parallel_shard_writers_commit_once(tmp_path):
    uri = str(tmp_path / "f.lance")
    store = FeatureStore.create(uri, dim=16, provenance={"model": "tiny"})
    uri2 = str(tmp_path / "g.lance")
    FeatureStore.create(uri2, dim=16, provenance={"model": "tiny"})
    # two workers hand their fragments to this process; two others commit their own, concurrently
    procs = [_worker(tmp_path, uri, i, 2, "hand-over") for i in range(2)]
    procs += [_worker(tmp_path, uri2, i, 2, "commit") for i in range(2)]
    outs = [_finish(p) for p in procs]
    assert store.refresh().count_rows() == 0  # written files are invisible before the commit
    version = store.version
    store.commit_fragments([f for out in outs[:2] for f in json.loads(out)])  # one commit, every shard
    assert store.version == version + 1
    for s in (store, FeatureStore.open(uri2)):
        assert s.count_rows() == 72 and s.verify()["ok"]
        got_keys, got = s.read()
        np.testing.assert_array_equal(got, embeddings_for(got_keys, 16))


def test_killed_writer_leaves_last_version_and_rerun_completes(tmp_path):
    uri = str(tmp_path / "f.lance")
    store = FeatureStore.create(uri, dim=16, provenance={"model": "tiny"})
    store.commit_fragments(store.write_fragments(*shard_rows(0, 2)))  # shard 0 completes
    committed, rows = store.version, store.count_rows()
    assert rows == 36
    # shard 1's writer is killed after writing its files, before committing them
    p = _worker(tmp_path, uri, 1, 2, "hang-before-commit")
    deadline = time.monotonic() + 150
    while not Path(uri + ".ready1").exists():
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    store.refresh()
    assert store.version == committed and store.count_rows() == rows and store.verify()["ok"]
    orphans = {f"data/{f.name}" for f in (Path(uri) / "data").iterdir()} - set(table_files(store))
    assert orphans  # the killed writer's files exist but no version uses them (push skips them)
    # rerunning the shard (in a fresh process) completes the table; a second rerun changes nothing
    _finish(_worker(tmp_path, uri, 1, 2, "commit"))
    assert store.refresh().count_rows() == 72 and store.verify()["ok"]
    store.commit_fragments(store.write_fragments(*shard_rows(1, 2)))
    assert store.count_rows() == 72 and store.verify()["ok"]
    keys, X = store.read()
    np.testing.assert_array_equal(X, embeddings_for(keys, 16))


def test_write_caps_file_size(tmp_path):
    store = FeatureStore.create(tmp_path / "f.lance", dim=256, provenance={"m": 1})
    keys = feature_keys(4000, (0,))
    store.write(keys, embeddings_for(keys, 256), max_bytes_per_file=1_500_000)
    sizes = [f.stat().st_size for f in (Path(store.uri) / "data").iterdir()]
    assert len(sizes) >= 3 and max(sizes) <= 1_500_000
    assert store.count_rows() == 4000 and store.verify()["ok"]


def test_schemas_carry_kind_and_keys():
    for kind, keys in schemas.KEYS_BY_KIND.items():
        schema = (
            schemas.responses_schema(3)
            if kind == "responses"
            else getattr(schemas, f"{kind}_schema")(*([4] if kind == "features" else []))
        )
        assert schema.metadata[schemas.KIND_KEY].decode() == kind
        assert set(keys) <= set(schema.names) and schema.names[0] == "key"


def _score_rows(fit: str, subject: str, r: float, n_voxels: int = 3) -> pa.Table:
    n = 2 * n_voxels
    return pa.table(
        {
            "fit": [fit] * n,
            "subject": [subject] * n,
            "model": ["m"] * n,
            "instruction_id": ["i"] * n,
            "component": ["lm"] * n,
            "layer": [0] * n_voxels + [1] * n_voxels,
            "pooling": ["mean"] * n,
            "voxel": list(range(n_voxels)) * 2,
            "split": ["test"] * n,
            "r": [r] * n,
        }
    )


def test_rewriting_a_scores_slice_reads_only_its_keys_and_leaves_other_fits(tmp_path, monkeypatch):
    scores = create_table(tmp_path / "scores.lance", "scores", provenance={"fit": "f"})
    fits, subjects = ("a", "b", "it's"), ("s1", "s2")
    for fit in fits:
        for subject in subjects:
            scores.write(_score_rows(fit, subject, 0.1))
    filters = []
    commit = Table.commit_fragments

    def spy(self, fragments, *, filter=None):
        filters.append(filter)
        return commit(self, fragments, filter=filter)

    monkeypatch.setattr(Table, "commit_fragments", spy)
    scores.write(_score_rows("it's", "s2", 0.5))
    # the stored keys are looked up in this slice only; a quote in a value is escaped
    assert filters == [
        "fit IN ('it''s') AND subject IN ('s2') AND model IN ('m') AND instruction_id IN ('i')"
    ]
    t = scores.to_table(columns=["fit", "subject", "r"])
    assert len(t) == len(fits) * len(subjects) * 6 and scores.verify()["ok"]
    for row in t.to_pylist():
        assert row["r"] == pytest.approx(0.5 if (row["fit"], row["subject"]) == ("it's", "s2") else 0.1)
    # a key value holding the key separator could share its key with other column values:
    # no narrowing then, and the write still replaces the rows with the same keys
    scores.write(_score_rows("a|b", "s1", 0.2))
    scores.write(_score_rows("a|b", "s1", 0.3))
    assert filters[-2:] == [None, None]
    assert scores.count_rows("fit = 'a|b'") == 6 and scores.verify()["ok"]
    # rows passed with their own keys are not narrowed either
    own = scores.to_table(filter="fit = 'b' AND subject = 's1'")
    scores.write(own.set_column(own.schema.get_field_index("r"), "r", pa.array([0.7] * 6, pa.float32())))
    assert filters[-1] is None
    assert scores.count_rows() == (len(fits) * len(subjects) + 1) * 6
    assert scores.count_rows("fit = 'b' AND subject = 's1' AND r > 0.6") == 6


def test_partition_writes_narrow_by_fit_and_subject(tmp_path, monkeypatch):
    parts = create_table(tmp_path / "partitions.lance", "partitions", provenance={"fit": "f"})

    def rows(fit, subject, r2):
        return pa.table(
            {
                "fit": [fit] * 4,
                "subject": [subject] * 4,
                "spaces": ["a+b"] * 4,
                "region": ["a", "a", "shared", "shared"],
                "voxel": [0, 1, 0, 1],
                "r2": [r2] * 4,
            }
        )

    for fit in ("f1", "f2"):
        parts.write(rows(fit, "s1", 0.1))
    filters = []
    commit = Table.commit_fragments
    monkeypatch.setattr(
        Table,
        "commit_fragments",
        lambda self, frags, *, filter=None: (filters.append(filter), commit(self, frags, filter=filter))[1],
    )
    parts.write(rows("f2", "s1", 0.4))
    assert filters == ["fit IN ('f2') AND subject IN ('s1')"]
    t = parts.to_table(columns=["fit", "r2"])
    assert len(t) == 8 and parts.verify()["ok"]
    assert sorted({(r["fit"], round(r["r2"], 3)) for r in t.to_pylist()}) == [("f1", 0.1), ("f2", 0.4)]


def test_narrowing_columns_are_required_key_columns():
    from brainalign.features.store import NARROW_BY

    for kind, cols in NARROW_BY.items():
        schema = (
            schemas.responses_schema(3)
            if kind == "responses"
            else (schemas.features_schema(4) if kind == "features" else getattr(schemas, f"{kind}_schema")())
        )
        assert set(cols) <= set(schemas.KEYS_BY_KIND[kind])
        assert not any(schema.field(c).nullable for c in cols)


def test_reopening_records_each_writers_provenance(tmp_path):
    uri = tmp_path / "f.lance"
    a = {
        "model_key": "m/a",
        "revision": "1" * 40,
        "instructions": {"x": {"text": "X?", "prompt_sha256": "aa"}},
    }
    b = {
        "model_key": "m/b",
        "revision": "2" * 40,
        "instructions": {"y": {"text": "Y?", "prompt_sha256": "bb"}},
    }
    FeatureStore.create(uri, dim=4, provenance=a)
    st = FeatureStore.create(uri, dim=4, provenance=a, exist_ok=True)
    assert st.version == 1 and st.provenance == a  # a rerun of the first writer changes nothing
    st = FeatureStore.create(uri, dim=4, provenance=b, exist_ok=True)
    prov = st.provenance
    assert st.version == 2 and FeatureStore.open(uri).provenance == prov
    assert prov["model_key"] == "m/a" and prov["revision"] == "1" * 40  # the first writer's, as before
    assert prov["writers"] == {"m/a": a, "m/b": b}
    assert prov["instructions"] == {**a["instructions"], **b["instructions"]}
    # the same run again: no new version; a later record of a run updates its entry
    assert FeatureStore.create(uri, dim=4, provenance=b, exist_ok=True).version == 2
    b2 = {**b, "instructions": {"z": {"text": "Z?", "prompt_sha256": "cc"}}}
    prov = FeatureStore.create(uri, dim=4, provenance=b2, exist_ok=True).provenance
    assert set(prov["writers"]["m/b"]["instructions"]) == {"y", "z"} and set(prov["instructions"]) == {
        "x",
        "y",
        "z",
    }
    assert FeatureStore.open(uri).versions()[-1]["version"] == 3
    with pytest.raises(ValueError, match="dim: the existing table"):
        FeatureStore.create(uri, dim=8, provenance={"model_key": "m/c"}, exist_ok=True)
    assert "m/c" not in FeatureStore.open(uri).provenance["writers"]


def test_scores_tables_keep_every_fits_provenance(tmp_path):
    uri = tmp_path / "scores.lance"
    create_table(uri, "scores", provenance={"fit": "main", "test_runs": ["4"]})
    t = create_table(uri, "scores", provenance={"fit": "other", "test_runs": ["3"]}, exist_ok=True)
    prov = t.provenance
    assert prov["fit"] == "main" and prov["test_runs"] == ["4"]
    assert sorted(w["fit"] for w in prov["writers"].values()) == ["main", "other"]
    assert all(k.startswith("sha256:") for k in prov["writers"])
    assert (
        create_table(uri, "scores", provenance={"fit": "other", "test_runs": ["3"]}, exist_ok=True).version
        == 2
    )
