"""Versioned Lance tables: :class:`FeatureStore` for embeddings and :class:`Table` for the rest.

A handle has few verbs — ``write``, ``read``, ``versions``, ``tag``, ``checkout``, ``verify`` —
and returns Arrow tables or ``(keys, array)`` pairs. Every write is one Lance commit: readers
see the previous version or the new one, never half of a write.

Layout. A features table holds one row per (stimulus keys, model, instruction, component,
layer, pooling). Every write sorts its rows into key order and writes each
(model, instruction, component, pooling, layer, stimulus set) group into its own data files
(fragments), so that reading or pulling one layer of one instruction touches only that group's
files. ``benchmarks/bench_store.py`` compares this with one column per layer.

Parallel writers. :meth:`Table.write_fragments` writes data files that no reader sees;
:meth:`Table.commit_fragments` makes them visible in one commit that also replaces any rows
already stored under the same keys. Workers of a sharded extraction each write (and commit)
their shard; a worker killed before its commit leaves only unreferenced files behind, and
rerunning the shard commits it once.

Provenance. Every writer that creates or reopens a table with a provenance records it: the first
writer's stays at the top level of the metadata, and every writer's is kept under ``writers``,
keyed by its run identity (:func:`run_id`: an extraction's ``model_key``, else a hash).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance import LanceOperation
from lance.fragment import FragmentMetadata

from . import schemas

#: Largest data file a write produces (bytes). The Hub stores files of any size, but files of
#: about a gigabyte keep uploads resumable and let a pull fetch only the groups it needs.
MAX_BYTES_PER_FILE = 1 << 30

#: Columns whose values define one group of a features table (one group → its own fragments).
FEATURE_GROUP = ("model", "instruction_id", "component", "pooling", "layer", "stimulus_set")
#: Key order of :meth:`FeatureStore.read`.
FEATURE_ORDER = (
    "stimulus_set",
    "model",
    "instruction_id",
    "component",
    "pooling",
    "layer",
    "run",
    "tr",
    "stimulus_id",
)

#: Key columns per table kind that narrow the search for stored rows a write replaces
#: (:meth:`Table._write_filter`): required, and with few distinct values in one write.
NARROW_BY = {
    "features": ("model", "instruction_id", "layer"),
    "generations": ("stimulus_set", "model", "instruction_id"),
    "responses": ("dataset", "subject"),
    "voxels": ("dataset", "subject"),
    "scores": ("fit", "subject", "model", "instruction_id"),
    "partitions": ("fit", "subject"),
}
#: A narrowing column with more distinct values in one write is left out of the filter.
MAX_NARROW_VALUES = 1000

_SCHEMAS = {
    "generations": lambda **_: schemas.generations_schema(),
    "voxels": lambda **_: schemas.voxels_schema(),
    "scores": lambda **_: schemas.scores_schema(),
    "partitions": lambda **_: schemas.partitions_schema(),
}


#: Metadata key of every writer's provenance, by :func:`run_id` (not "runs": those are fMRI runs).
WRITERS = "writers"


def run_id(provenance: Mapping[str, Any]) -> str:
    """The identity of one writer's provenance: its ``model_key`` (extraction), else a hash."""
    key = provenance.get("model_key")
    if key:
        return str(key)
    body = {k: v for k, v in provenance.items() if k != WRITERS}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def provenance_runs(provenance: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every writer's provenance by :func:`run_id` (a table written once: its one provenance)."""
    runs = provenance.get(WRITERS)
    if isinstance(runs, Mapping):
        return {k: dict(v) for k, v in runs.items()}
    if not provenance:
        return {}
    return {run_id(provenance): {k: v for k, v in provenance.items() if k != WRITERS}}


def merge_provenance(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with one more writer's provenance ``new`` recorded.

    The top-level keys stay the first writer's; ``new`` goes under ``writers[run_id(new)]``
    (updating an earlier entry of the same run, its ``instructions`` merged); the top-level
    ``instructions`` mapping becomes the union of both (the first record of an id wins).
    """
    new = json.loads(json.dumps(dict(new), sort_keys=True))  # the JSON form, as stored
    if not old:
        return new
    out = dict(old)
    runs = provenance_runs(old)
    rid = run_id(new)
    entry = {k: v for k, v in new.items() if k != WRITERS}
    prev = runs.get(rid, {})
    if isinstance(prev.get("instructions"), dict) and isinstance(entry.get("instructions"), dict):
        entry["instructions"] = {**prev["instructions"], **entry["instructions"]}
    runs[rid] = {**prev, **entry}
    out[WRITERS] = runs
    if isinstance(old.get("instructions"), dict) and isinstance(new.get("instructions"), dict):
        out["instructions"] = {**new["instructions"], **old["instructions"]}
    return out


def _exists(uri: str | Path) -> bool:
    try:
        lance.dataset(str(uri))
    except (ValueError, FileNotFoundError, OSError):
        return False
    return True


def _is_half_list(t: pa.DataType) -> bool:
    return (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)) and t.value_type == pa.float16()


def _float32_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every float16 list column widened to float32."""
    fields = []
    for f in schema:
        if _is_half_list(f.type):
            t = (
                pa.list_(pa.float32(), f.type.list_size)
                if pa.types.is_fixed_size_list(f.type)
                else pa.list_(pa.float32())
            )
            f = f.with_type(t)
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def _widen(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """A reader that casts float16 list columns to float32 batch by batch."""
    target = _float32_schema(reader.schema)
    if target.equals(reader.schema):
        return reader
    return pa.RecordBatchReader.from_batches(target, (b.cast(target) for b in reader))


class _Float32Scanner:
    """Wraps a Lance scanner so that ``to_reader``/``to_table`` widen float16 to float32."""

    def __init__(self, scanner):
        self._scanner = scanner

    @property
    def projected_schema(self) -> pa.Schema:
        return _float32_schema(self._scanner.projected_schema)

    def to_reader(self) -> pa.RecordBatchReader:
        return _widen(self._scanner.to_reader())

    def to_batches(self):
        return iter(self.to_reader())

    def to_table(self) -> pa.Table:
        return self.to_reader().read_all()

    def __getattr__(self, name):
        return getattr(self._scanner, name)


class Float32View(lance.LanceDataset):
    """A Lance dataset whose float16 list columns read as float32.

    DuckDB 2.0 cannot scan Arrow float16, not even in a column it does not select. Registered
    in DuckDB (``con.register("features", view)``) this view keeps projection and filter
    pushdown — DuckDB calls :meth:`scanner` with the columns and filter of each query — and
    converts only the batches it returns.
    """

    def __init__(self, base: lance.LanceDataset):
        self.__dict__.update(base.__dict__)

    @property
    def schema(self) -> pa.Schema:
        return _float32_schema(super().schema)

    def scanner(self, *args, **kwargs):
        return _Float32Scanner(super().scanner(*args, **kwargs))

    def to_table(self, *args, **kwargs) -> pa.Table:
        return self.scanner(*args, **kwargs).to_table()

    def to_batches(self, *args, **kwargs):
        return self.scanner(*args, **kwargs).to_batches()


class Table:
    """A handle over one Lance dataset of a brainalign table kind (see :mod:`.schemas`)."""

    kind = "table"

    def __init__(self, dataset: lance.LanceDataset, uri: str):
        self._ds = dataset
        self.uri = uri
        kind = (dataset.schema.metadata or {}).get(schemas.KIND_KEY, b"").decode()
        if self.kind != "table" and kind != self.kind:
            raise ValueError(f"uri: {uri} holds a {kind or 'non-brainalign'} table, not {self.kind}")
        self.table_kind = kind
        self._pinned = False  # True for a checkout of an older version: refuses writes

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        uri: str | Path,
        schema: pa.Schema,
        *,
        provenance: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Table:
        """Create an empty table with ``schema`` and ``provenance`` (JSON-able) in its metadata.

        With ``exist_ok`` an existing table is opened instead, and ``provenance`` is recorded in
        it (:meth:`record_provenance`).
        """
        uri = str(uri)
        if _exists(uri):
            if not exist_ok:
                raise ValueError(f"uri: a table already exists at {uri}; open it or pass exist_ok=True")
            t = cls.open(uri)
            t._check_schema(schema)
            if provenance:
                t.record_provenance(provenance)
            return t
        meta = dict(schema.metadata or {})
        meta[schemas.PROVENANCE_KEY] = json.dumps(dict(provenance or {}), sort_keys=True).encode()
        schema = schema.with_metadata(meta)
        ds = lance.write_dataset(schema.empty_table(), uri, schema=schema, mode="create")
        return cls(ds, uri)

    @classmethod
    def open(cls, uri: str | Path, version: int | str | None = None) -> Table:
        """Open an existing table, optionally at a version number or tag."""
        uri = str(uri)
        try:
            ds = lance.dataset(uri, version=version)
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise ValueError(f"uri: no brainalign table at {uri} (version={version}): {exc}") from None
        t = cls(ds, uri)
        t._pinned = version is not None and ds.version != ds.latest_version
        return t

    @classmethod
    def open_or_create(cls, uri: str | Path, schema: pa.Schema, **kw) -> Table:
        return cls.create(uri, schema, exist_ok=True, **kw)

    # ---- metadata ------------------------------------------------------------------------
    @property
    def dataset(self) -> lance.LanceDataset:
        """The underlying ``lance.LanceDataset`` (see :meth:`scannable` for DuckDB)."""
        return self._ds

    @property
    def schema(self) -> pa.Schema:
        return self._ds.schema

    @property
    def provenance(self) -> dict[str, Any]:
        raw = (self._ds.schema.metadata or {}).get(schemas.PROVENANCE_KEY, b"{}")
        return json.loads(raw)

    def record_provenance(self, provenance: Mapping[str, Any]) -> int:
        """Record one more writer's ``provenance`` (JSON-able) in the table metadata, keeping what
        is there (:func:`merge_provenance`). One commit, or none when nothing changes (a rerun).
        Returns the table's version."""
        if self._pinned:
            raise ValueError(f"this handle is read-only (a checkout of version {self.version})")
        ds = lance.dataset(self.uri)
        raw = (ds.schema.metadata or {}).get(schemas.PROVENANCE_KEY, b"{}")
        old = json.loads(raw)
        new = merge_provenance(old, provenance)
        if new != {**old, WRITERS: provenance_runs(old)} and new != old:
            ds.update_schema_metadata({schemas.PROVENANCE_KEY.decode(): json.dumps(new, sort_keys=True)})
        self._ds = lance.dataset(self.uri)
        return self._ds.version

    def _check_schema(self, schema: pa.Schema) -> None:
        """Refuse to reuse this table for rows of ``schema`` (see :meth:`create`)."""

    @property
    def version(self) -> int:
        return self._ds.version

    def count_rows(self, filter: str | None = None) -> int:
        return self._ds.count_rows(filter=filter)

    def versions(self) -> list[dict[str, Any]]:
        """Committed versions, oldest first: ``{"version", "timestamp", "tags"}``."""
        tags: dict[int, list[str]] = {}
        for name, info in self._ds.tags.list().items():
            tags.setdefault(int(info["version"]), []).append(name)
        return [
            {"version": v["version"], "timestamp": v["timestamp"], "tags": sorted(tags.get(v["version"], []))}
            for v in self._ds.versions()
        ]

    def tags(self) -> dict[str, int]:
        """Tag name → version."""
        return {name: int(info["version"]) for name, info in self._ds.tags.list().items()}

    def tag(self, name: str, version: int | None = None) -> None:
        """Name a version (default: the current one); the same name is used on the Hub."""
        version = self._ds.version if version is None else int(version)
        existing = self._ds.tags.list()
        if name in existing:
            if int(existing[name]["version"]) == version:
                return
            raise ValueError(f"name: tag {name!r} already points at version {existing[name]['version']}")
        self._ds.tags.create(name, version)

    def checkout(self, version: int | str) -> Table:
        """A read-only view of this table at a version number or tag."""
        try:
            t = type(self).open(self.uri, version=version)
        except ValueError:
            raise ValueError(
                f"version: {version!r} is neither a version nor a tag of {self.uri}; "
                f"versions {[v['version'] for v in self.versions()]}, tags {sorted(self.tags())}"
            ) from None
        return t

    def refresh(self) -> Table:
        """Re-open at the latest committed version."""
        self._ds = lance.dataset(self.uri)
        self._pinned = False
        return self

    # ---- DuckDB and other scanners -------------------------------------------------------
    def scannable(self) -> lance.LanceDataset:
        """A dataset that DuckDB (and Polars, pyarrow) can scan with pushdown.

        The Lance dataset itself when no column is float16; otherwise a :class:`Float32View`
        that reads float16 lists as float32. Use as ``con.register("features", t.scannable())``.
        """
        if any(_is_half_list(f.type) for f in self._ds.schema):
            return Float32View(self._ds)
        return self._ds

    def to_reader(
        self,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        *,
        batch_size: int | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the selected rows and columns, float16 widened to float32."""
        kw = {"batch_size": batch_size} if batch_size else {}
        return _widen(
            self._ds.scanner(columns=list(columns) if columns else None, filter=filter, **kw).to_reader()
        )

    # ---- writing -------------------------------------------------------------------------
    def _kind(self) -> str:
        return self.table_kind

    def _conform(self, data: pa.Table) -> pa.Table:
        """Add the ``key`` column, cast to the stored schema, refuse unknown columns."""
        schema = self._ds.schema
        extra = set(data.column_names) - set(schema.names)
        if extra:
            raise ValueError(
                f"data: columns {sorted(extra)} are not in the {self._kind()} schema {schema.names}"
            )
        cols = []
        for field in schema:
            if field.name == "key" and "key" not in data.column_names:
                col = None  # derived below from the conformed key columns
            elif field.name in data.column_names:
                col = data.column(field.name)
                if not col.type.equals(field.type):
                    try:
                        col = col.cast(field.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise ValueError(
                            f"data: column {field.name!r} is {col.type}, expected {field.type}: {exc}"
                        ) from None
                if not field.nullable and col.null_count:
                    raise ValueError(
                        f"data: column {field.name!r} has {col.null_count} null(s); it is required"
                    )
            elif field.nullable:
                col = pa.nulls(len(data), field.type)
            else:
                raise ValueError(f"data: required column {field.name!r} is missing")
            cols.append(col)
        if cols[schema.get_field_index("key")] is None:
            partial = pa.Table.from_arrays(
                [c for c in cols if c is not None],
                names=[f.name for f, c in zip(schema, cols, strict=True) if c is not None],
            )
            cols[schema.get_field_index("key")] = schemas.row_keys(partial, self._kind())
        out = pa.Table.from_arrays(cols, schema=schema)
        if len(pc.unique(out.column("key"))) != len(out):
            raise ValueError("data: the rows to write contain duplicate keys")
        return out

    def _groups(self, data: pa.Table) -> list[pa.Table]:
        """Split conformed rows into the groups that get their own files (features: one per
        (model, instruction, component, pooling, layer, stimulus set)), each in key order."""
        if self._kind() != "features":
            return [data]
        data = data.sort_by([(c, "ascending") for c in FEATURE_ORDER])
        if len(data) < 2:
            return [data]
        change = None
        for c in FEATURE_GROUP:  # group columns are required, so never null
            col = data.column(c)
            ne = pc.not_equal(col.slice(1), col.slice(0, len(col) - 1))
            change = ne if change is None else pc.or_(change, ne)
        starts = pc.indices_nonzero(change).to_numpy() + 1
        bounds = [0, *starts.tolist(), len(data)]
        return [data.slice(a, b - a) for a, b in itertools.pairwise(bounds)]

    def write_fragments(self, data: pa.Table, *, max_bytes_per_file: int | None = None) -> list[dict]:
        """Write ``data`` as new data files without committing them; returns their metadata.

        Nothing is visible to readers until :meth:`commit_fragments` is called with the
        returned list (JSON-able, so a worker process can hand it to a coordinator).
        """
        data = self._conform(data)
        frags: list[dict] = []
        for group in self._groups(data) if len(data) else []:
            frags += [
                f.to_json() for f in _write_capped(group, self.uri, self._ds.schema, max_bytes_per_file)
            ]
        return frags

    def _fragment_keys(self, frags: Sequence[FragmentMetadata]) -> pa.Array:
        from lance.file import LanceFileReader

        keys = []
        for f in frags:
            for df in f.files:
                if 0 not in df.fields:  # field 0 is ``key``
                    continue
                path = f"{self.uri}/data/{df.path}"
                tbl = LanceFileReader(path, columns=["key"]).read_all().to_table()
                keys.append(tbl.column("key").combine_chunks())
        return pa.concat_arrays(keys) if keys else pa.array([], pa.string())

    def commit_fragments(
        self, fragments: Iterable[dict | FragmentMetadata], *, filter: str | None = None
    ) -> int:
        """Make written fragments visible in one commit; rows already stored under the same keys
        are replaced in that same commit (so a rerun never duplicates). Returns the new version.

        ``filter`` (a SQL predicate) may narrow the search for stored rows with those keys.
        """
        frags = [
            f if isinstance(f, FragmentMetadata) else FragmentMetadata.from_json(json.dumps(f))
            for f in fragments
        ]
        if not frags:
            return self.refresh().version
        new_keys = self._fragment_keys(frags)
        if len(pc.unique(new_keys)) != len(new_keys):
            raise ValueError(
                "fragments: the fragments to commit hold duplicate keys (a shard committed twice?)"
            )
        ds = lance.dataset(self.uri)
        removed, updated = [], []
        if ds.count_rows():
            old = ds.to_table(columns=["key"], filter=filter, with_row_address=True)
            hit = old.filter(pc.is_in(old.column("key"), value_set=new_keys))
            addr = hit.column("_rowaddr").to_numpy().astype(np.uint64)
            for fid in np.unique(addr >> np.uint64(32)):
                offsets = (addr[(addr >> np.uint64(32)) == fid] & np.uint64(0xFFFFFFFF)).tolist()
                md = ds.get_fragment(int(fid)).delete_rows(offsets)
                (removed.append(int(fid)) if md is None else updated.append(md))
        if removed or updated:
            op = LanceOperation.Update(
                removed_fragment_ids=removed, updated_fragments=updated, new_fragments=frags
            )
        else:
            op = LanceOperation.Append(frags)
        self._ds = lance.LanceDataset.commit(self.uri, op, read_version=ds.version)
        self._pinned = False
        return self._ds.version

    def _write_filter(self, data: pa.Table) -> str | None:
        """A SQL predicate that every stored row sharing a key with ``data`` satisfies, so that
        :meth:`commit_fragments` reads only those rows' keys; None (read every key) if unsure.

        ``data`` is conformed, its keys derived from its key columns. A key joins the key
        columns with ``|``: when no written key value contains ``|``, a stored row with the same
        key has the same value in every key column, so the distinct written values of the
        required, few-valued key columns in :data:`NARROW_BY` select every row a write replaces.
        """
        schema = self._ds.schema
        cols = [
            c for c in NARROW_BY.get(self._kind(), ()) if c in schema.names and not schema.field(c).nullable
        ]
        if not cols or not len(data):
            return None
        n_keys = len(schemas.KEYS_BY_KIND[self._kind()])
        key = data.column("key")
        seps = pc.count_substring(key, "|")
        if pc.min(seps).as_py() != n_keys - 1 or pc.max(seps).as_py() != n_keys - 1:
            return None  # a key value holds "|": another split of the key could match
        preds = []
        for c in cols:
            values = pc.unique(data.column(c)).to_pylist()
            if len(values) <= MAX_NARROW_VALUES:
                preds.append(_in(c, values))
        return " AND ".join(preds) or None

    def write(self, data: pa.Table, *, max_bytes_per_file: int | None = None) -> int:
        """Insert rows, replacing any row with the same key (idempotent). Returns the new version.

        One commit: readers see all of the rows or none of them.
        """
        if self._pinned:
            raise ValueError(
                f"this handle is read-only (a checkout of version {self.version}, or a table pulled into "
                "the download cache); write through Table.open(uri) at the latest version"
            )
        derived = "key" not in data.column_names  # rows passed with their own keys: no narrowing
        data = self._conform(data)
        if len(data) == 0:
            return self._ds.version
        frags = self.write_fragments(data, max_bytes_per_file=max_bytes_per_file)
        return self.commit_fragments(frags, filter=self._write_filter(data) if derived else None)

    def delete(self, predicate: str) -> int:
        """Delete rows matching a SQL predicate; returns the new version."""
        self._ds.delete(predicate)
        self._ds = lance.dataset(self.uri)
        return self._ds.version

    def compact(self, *, max_bytes_per_file: int | None = None) -> int:
        """Rewrite the table into few, large files (a new version with the same rows).

        A features table is rewritten group by group, so every file still holds one
        (model, instruction, component, pooling, layer, stimulus set) group in key order;
        other tables use Lance's own compaction.
        """
        if self._kind() != "features":
            self._ds.optimize.compact_files(max_bytes_per_file=max_bytes_per_file or MAX_BYTES_PER_FILE)
            self._ds = lance.dataset(self.uri)
            return self._ds.version
        ds = lance.dataset(self.uri)
        groups = ds.to_table(columns=list(FEATURE_GROUP)).group_by(list(FEATURE_GROUP)).aggregate([])
        frags: list[FragmentMetadata] = []
        for g in groups.to_pylist():
            filt = " AND ".join(f"{c} = {_quote(v)}" for c, v in g.items())
            part = ds.to_table(filter=filt).sort_by([(c, "ascending") for c in FEATURE_ORDER])
            frags += _write_capped(part, self.uri, ds.schema, max_bytes_per_file)
        op = LanceOperation.Overwrite(ds.schema, frags)
        self._ds = lance.LanceDataset.commit(self.uri, op, read_version=ds.version)
        return self._ds.version

    # ---- reading -------------------------------------------------------------------------
    def to_table(self, columns: Sequence[str] | None = None, filter: str | None = None) -> pa.Table:
        return self._ds.to_table(columns=list(columns) if columns else None, filter=filter)

    def key_groups(self) -> tuple[list[str], list[str]]:
        """``(group, within)``: every distinct ``group`` combination should hold the same number
        of rows as the others that share its ``within`` values (e.g. every (model, instruction,
        layer) of a stimulus set has one row per stimulus of that set)."""
        return {
            "features": (list(FEATURE_GROUP), ["stimulus_set"]),
            "generations": (["stimulus_set", "model", "instruction_id"], ["stimulus_set"]),
            "scores": (
                ["fit", "subject", "model", "instruction_id", "component", "layer", "pooling", "split"],
                ["fit", "subject"],
            ),
            "partitions": (["fit", "subject", "region"], ["fit", "subject"]),
        }.get(self._kind(), ([], []))

    def verify(self) -> dict[str, Any]:
        """Integrity report: row count, duplicate keys, nulls in required columns, provenance,
        rows per key group, NaN/inf and vector sizes of list columns.

        ``report["ok"]`` is False when any problem was found; ``report["problems"]`` lists them.
        """
        problems: list[str] = []
        keys = self._ds.to_table(columns=["key"]).column("key")
        n = len(keys)
        n_unique = len(pc.unique(keys))
        if n_unique != n:
            problems.append(f"{n - n_unique} duplicate key(s)")
        if not self.provenance:
            problems.append("provenance metadata is missing")
        report: dict[str, Any] = {"rows": n, "version": self.version}
        for field in self._ds.schema:
            if not field.nullable and field.name != "key" and not pa.types.is_nested(field.type):
                nulls = self._ds.count_rows(filter=f"{field.name} IS NULL") if n else 0
                if nulls:
                    problems.append(f"{nulls} null(s) in required column {field.name!r}")
        group, within = self.key_groups()
        if n and group:
            t = self._ds.to_table(columns=group)
            counts = t.group_by(group).aggregate([([], "count_all")])
            per = (
                counts.group_by(within).aggregate([("count_all", "min"), ("count_all", "max")])
                if within
                else (
                    pa.table(
                        {
                            "count_all_min": [pc.min(counts["count_all"]).as_py()],
                            "count_all_max": [pc.max(counts["count_all"]).as_py()],
                        }
                    )
                )
            )
            lo, hi = per.column("count_all_min").to_pylist(), per.column("count_all_max").to_pylist()
            report["rows_per_group"] = {"groups": len(counts), "min": min(lo), "max": max(hi)}
            uneven = [r for r in per.to_pylist() if r["count_all_min"] != r["count_all_max"]]
            for r in uneven:
                where = ", ".join(f"{c}={r[c]!r}" for c in within) or "the table"
                problems.append(
                    f"row counts differ between ({', '.join(group)}) groups of {where}: "
                    f"{r['count_all_min']}..{r['count_all_max']}"
                )
        for field in self._ds.schema:
            if pa.types.is_fixed_size_list(field.type) and pa.types.is_floating(field.type.value_type) and n:
                bad = 0
                for batch in self._ds.to_batches(columns=[field.name]):
                    values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    if values.size != batch.num_rows * field.type.list_size:
                        problems.append(f"{field.name}: vector sizes differ from {field.type.list_size}")
                if bad:
                    problems.append(f"{bad} NaN/inf value(s) in {field.name!r}")
        report["problems"] = problems
        report["ok"] = not problems
        return report


def _write_capped(
    data: pa.Table, uri: str, schema: pa.Schema, max_bytes: int | None
) -> list[FragmentMetadata]:
    """``lance.fragment.write_fragments`` with every file at most ``max_bytes`` long.

    Lance counts a file's bytes as its pages are flushed, after each input batch, so a file can
    outgrow its limit by a batch plus the pages still buffered (~0.2 MB measured): batches are
    cut to 1/16 of the cap and Lance is asked to close files at 3/4 of it.
    """
    cap = int(max_bytes or MAX_BYTES_PER_FILE)
    row_bytes = max(1, data.nbytes // max(1, len(data)))
    rows = int(max(1, min(65536, cap // 16 // row_bytes)))
    reader = pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=rows))
    return lance.fragment.write_fragments(reader, uri, schema=schema, max_bytes_per_file=int(cap * 0.75))


def _quote(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(int(v)) if isinstance(v, (int, np.integer)) else repr(float(v))


def _in(col: str, values) -> str | None:
    if values is None:
        return None
    vals = [values] if isinstance(values, (str, int, np.integer)) else list(values)
    if not vals:
        raise ValueError(f"{col}: expected at least one value, got an empty selection")
    return f"{col} IN ({', '.join(_quote(v) for v in vals)})"


def selection_filter(
    *,
    model=None,
    instruction=None,
    layer=None,
    component=None,
    stimulus_set=None,
    runs=None,
    pooling=None,
    where: str | None = None,
) -> str | None:
    """The SQL predicate of a :meth:`FeatureStore.read` selection (None selects everything)."""
    preds = [
        _in("model", model),
        _in("instruction_id", instruction),
        _in("layer", layer),
        _in("component", component),
        _in("stimulus_set", stimulus_set),
        _in("run", runs),
        _in("pooling", pooling),
        f"({where})" if where else None,
    ]
    return " AND ".join(p for p in preds if p) or None


class FeatureStore(Table):
    """A features table: keys per (stimulus, model, instruction, component, layer, pooling) and
    an ``embedding`` fixed-size list (float32 or float16 on disk; reads return float32)."""

    kind = "features"

    @classmethod
    def create(
        cls,
        uri: str | Path,
        *,
        dim: int,
        dtype: str = "float32",
        provenance: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> FeatureStore:
        """Create an empty features table of embedding size ``dim`` stored as ``dtype``."""
        return super().create(  # type: ignore[return-value]
            uri, schemas.features_schema(dim, dtype), provenance=provenance, exist_ok=exist_ok
        )

    def _check_schema(self, schema: pa.Schema) -> None:
        dim = schema.field("embedding").type.list_size
        if self.dim != dim:
            raise ValueError(f"dim: the existing table at {self.uri} has dim {self.dim}, not {dim}")

    @property
    def dim(self) -> int:
        return self._ds.schema.field("embedding").type.list_size

    @property
    def storage_dtype(self) -> str:
        t = self._ds.schema.field("embedding").type.value_type
        return "float16" if t == pa.float16() else "float32"

    def _with_embeddings(self, keys: pa.Table | Mapping[str, Any], embeddings: np.ndarray | None) -> pa.Table:
        table = keys if isinstance(keys, pa.Table) else pa.table(dict(keys))
        if embeddings is not None:
            emb = np.asarray(embeddings)
            if emb.ndim != 2 or emb.shape != (len(table), self.dim):
                raise ValueError(f"embeddings: expected shape ({len(table)}, {self.dim}), got {emb.shape}")
            if not np.isfinite(emb).all():
                raise ValueError("embeddings: contains NaN or infinite values")
            value_type = self._ds.schema.field("embedding").type.value_type
            flat = pa.array(
                emb.astype(np.float16 if value_type == pa.float16() else np.float32, copy=False).ravel()
            )
            if value_type == pa.float16() and not np.isfinite(flat.to_numpy()).all():
                raise ValueError("embeddings: values overflow float16 storage (|x| > 65504)")
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, self.dim))
        elif "embedding" not in table.column_names:
            raise ValueError("embeddings: pass an (n, dim) array or an 'embedding' column")
        return table

    def write(  # type: ignore[override]
        self,
        keys: pa.Table | Mapping[str, Any],
        embeddings: np.ndarray | None = None,
        *,
        max_bytes_per_file: int | None = None,
    ) -> int:
        """Write rows: ``keys`` (an Arrow table or column mapping) plus ``embeddings (n, dim)``.

        Rows whose keys already exist are replaced, so rewriting is idempotent. One commit.
        """
        return super().write(self._with_embeddings(keys, embeddings), max_bytes_per_file=max_bytes_per_file)

    def write_fragments(  # type: ignore[override]
        self,
        keys: pa.Table | Mapping[str, Any],
        embeddings: np.ndarray | None = None,
        *,
        max_bytes_per_file: int | None = None,
    ) -> list[dict]:
        """Write a shard's rows as uncommitted data files; see :meth:`Table.commit_fragments`."""
        return super().write_fragments(
            self._with_embeddings(keys, embeddings), max_bytes_per_file=max_bytes_per_file
        )

    def read(
        self,
        *,
        model=None,
        instruction=None,
        layer=None,
        component=None,
        stimulus_set=None,
        runs=None,
        pooling=None,
        columns: Sequence[str] | None = None,
        where: str | None = None,
    ) -> tuple[pa.Table, np.ndarray]:
        """Select rows and return ``(keys, embeddings)`` in key order.

        Each selector takes one value or a list. ``embeddings`` is a contiguous float32
        ``(n_rows, dim)`` array; ``keys`` holds the key columns (or ``columns``) in the same order:
        sorted by stimulus_set, model, instruction_id, component, pooling, layer, run, tr,
        stimulus_id.
        """
        filt = selection_filter(
            model=model,
            instruction=instruction,
            layer=layer,
            component=component,
            stimulus_set=stimulus_set,
            runs=runs,
            pooling=pooling,
            where=where,
        )
        key_cols = [c for c in self._ds.schema.names if c not in ("embedding", "key")]
        want = list(dict.fromkeys([*(columns or key_cols)]))
        tbl = self._ds.to_table(
            columns=list(dict.fromkeys([*want, *FEATURE_ORDER, "embedding"])), filter=filt
        )
        if len(tbl) == 0:
            raise ValueError(f"selection: no rows match ({filt}); the table holds {self.available()}")
        order = pc.sort_indices(tbl.select(list(FEATURE_ORDER)), [(c, "ascending") for c in FEATURE_ORDER])
        emb = tbl.column("embedding").combine_chunks()
        values = emb.values.to_numpy(zero_copy_only=False)[
            emb.offset * self.dim : (emb.offset + len(emb)) * self.dim
        ]
        arr = values.reshape(len(tbl), self.dim)
        idx = order.to_numpy()
        if not np.array_equal(idx, np.arange(len(idx))):
            arr = arr[idx]
            tbl = tbl.select(want).take(order)
        else:
            tbl = tbl.select(want)
        return tbl, np.ascontiguousarray(arr, dtype=np.float32)

    def available(self) -> dict[str, list]:
        """Distinct models, instructions, components, layers, stimulus sets and poolings."""
        cols = ["model", "instruction_id", "component", "layer", "stimulus_set", "pooling"]
        t = self._ds.to_table(columns=cols)
        return {c: sorted(pc.unique(t.column(c)).to_pylist()) for c in cols}


def open_table(uri: str | Path, version: int | str | None = None) -> Table:
    """Open any brainalign table; a features table opens as a :class:`FeatureStore`."""
    t = Table.open(uri, version)
    if t.table_kind == "features":
        fs = FeatureStore(t.dataset, t.uri)
        fs._pinned = t._pinned
        return fs
    return t


def create_table(
    uri: str | Path, kind: str, *, provenance=None, exist_ok: bool = False, **schema_args
) -> Table:
    """Create a table of ``kind`` (generations, voxels, scores, partitions; responses needs
    ``n_voxels``)."""
    if kind == "responses":
        schema = schemas.responses_schema(schema_args["n_voxels"])
    elif kind in _SCHEMAS:
        schema = _SCHEMAS[kind]()
    else:
        raise ValueError(f"kind: expected one of {sorted([*_SCHEMAS, 'responses'])}, got {kind!r}")
    return Table.create(uri, schema, provenance=provenance, exist_ok=exist_ok)
