"""Versioned Lance tables: :class:`FeatureStore` for embeddings and :class:`Table` for the rest.

A handle has few verbs — ``write``, ``read``, ``versions``, ``tag``, ``checkout``, ``verify`` —
and returns Arrow tables or ``(keys, array)`` pairs. Every write is one Lance commit: readers
see the previous version or the new one, never half of a write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schemas

_SCHEMAS = {
    "generations": lambda **_: schemas.generations_schema(),
    "voxels": lambda **_: schemas.voxels_schema(),
    "scores": lambda **_: schemas.scores_schema(),
    "partitions": lambda **_: schemas.partitions_schema(),
}


def _exists(uri: str | Path) -> bool:
    try:
        lance.dataset(str(uri))
    except (ValueError, FileNotFoundError, OSError):
        return False
    return True


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

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, uri: str | Path, schema: pa.Schema, *, provenance: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Table:
        """Create an empty table with ``schema`` and ``provenance`` (JSON-able) in its metadata."""
        uri = str(uri)
        if _exists(uri):
            if not exist_ok:
                raise ValueError(f"uri: a table already exists at {uri}; open it or pass exist_ok=True")
            return cls.open(uri)
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
        return cls(ds, uri)

    @classmethod
    def open_or_create(cls, uri: str | Path, schema: pa.Schema, **kw) -> Table:
        return cls.create(uri, schema, exist_ok=True, **kw)

    # ---- metadata ------------------------------------------------------------------------
    @property
    def dataset(self) -> lance.LanceDataset:
        """The underlying ``lance.LanceDataset`` (DuckDB scans it directly)."""
        return self._ds

    @property
    def schema(self) -> pa.Schema:
        return self._ds.schema

    @property
    def provenance(self) -> dict[str, Any]:
        raw = (self._ds.schema.metadata or {}).get(schemas.PROVENANCE_KEY, b"{}")
        return json.loads(raw)

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
        return type(self).open(self.uri, version=version)

    def refresh(self) -> Table:
        """Re-open at the latest committed version."""
        self._ds = lance.dataset(self.uri)
        return self

    # ---- writing -------------------------------------------------------------------------
    def _kind(self) -> str:
        return self.table_kind

    def _conform(self, data: pa.Table) -> pa.Table:
        """Add the ``key`` column, cast to the stored schema, refuse unknown columns."""
        schema = self._ds.schema
        extra = set(data.column_names) - set(schema.names)
        if extra:
            raise ValueError(f"data: columns {sorted(extra)} are not in the {self._kind()} schema {schema.names}")
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
                    raise ValueError(f"data: column {field.name!r} has {col.null_count} null(s); it is required")
            elif field.nullable:
                col = pa.nulls(len(data), field.type)
            else:
                raise ValueError(f"data: required column {field.name!r} is missing")
            cols.append(col)
        if cols[schema.get_field_index("key")] is None:
            partial = pa.Table.from_arrays(
                [c for c in cols if c is not None], names=[f.name for f, c in zip(schema, cols) if c is not None]
            )
            cols[schema.get_field_index("key")] = schemas.row_keys(partial, self._kind())
        out = pa.Table.from_arrays(cols, schema=schema)
        if len(pc.unique(out.column("key"))) != len(out):
            raise ValueError("data: the rows to write contain duplicate keys")
        return out

    def write(self, data: pa.Table) -> int:
        """Insert rows, replacing any row with the same key (idempotent). Returns the new version."""
        data = self._conform(data)
        if len(data) == 0:
            return self._ds.version
        if self._ds.count_rows() == 0:
            self._ds = lance.write_dataset(data, self.uri, schema=self._ds.schema, mode="append")
        else:
            (
                self._ds.merge_insert("key")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )
            self._ds = lance.dataset(self.uri)
        return self._ds.version

    def delete(self, predicate: str) -> int:
        """Delete rows matching a SQL predicate; returns the new version."""
        self._ds.delete(predicate)
        self._ds = lance.dataset(self.uri)
        return self._ds.version

    def compact(self) -> int:
        """Merge small fragments into larger files (a new version with the same rows)."""
        self._ds.optimize.compact_files()
        self._ds = lance.dataset(self.uri)
        return self._ds.version

    # ---- reading -------------------------------------------------------------------------
    def to_table(self, columns: Sequence[str] | None = None, filter: str | None = None) -> pa.Table:
        return self._ds.to_table(columns=list(columns) if columns else None, filter=filter)

    def verify(self) -> dict[str, Any]:
        """Integrity report: row count, duplicate keys, nulls in required columns, provenance.

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
        return {"rows": n, "version": self.version, "problems": problems, "ok": not problems}


def _quote(v: Any) -> str:
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


class FeatureStore(Table):
    """A features table: keys per (stimulus, model, instruction, component, layer, pooling) and
    an ``embedding`` fixed-size list (float32 or float16 on disk; reads return float32)."""

    kind = "features"

    @classmethod
    def create(
        cls, uri: str | Path, *, dim: int, dtype: str = "float32",
        provenance: Mapping[str, Any] | None = None, exist_ok: bool = False,
    ) -> FeatureStore:
        """Create an empty features table of embedding size ``dim`` stored as ``dtype``."""
        store = super().create(uri, schemas.features_schema(dim, dtype), provenance=provenance, exist_ok=exist_ok)
        if store.dim != dim:
            raise ValueError(f"dim: the existing table at {uri} has dim {store.dim}, not {dim}")
        return store  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        return self._ds.schema.field("embedding").type.list_size

    @property
    def storage_dtype(self) -> str:
        t = self._ds.schema.field("embedding").type.value_type
        return "float16" if t == pa.float16() else "float32"

    def write(self, keys: pa.Table | Mapping[str, Any], embeddings: np.ndarray | None = None) -> int:
        """Write rows: ``keys`` (an Arrow table or column mapping) plus ``embeddings (n, dim)``.

        Rows whose keys already exist are replaced, so rewriting is idempotent.
        """
        table = keys if isinstance(keys, pa.Table) else pa.table(dict(keys))
        if embeddings is not None:
            emb = np.asarray(embeddings)
            if emb.ndim != 2 or emb.shape != (len(table), self.dim):
                raise ValueError(f"embeddings: expected shape ({len(table)}, {self.dim}), got {emb.shape}")
            if not np.isfinite(emb).all():
                raise ValueError("embeddings: contains NaN or infinite values")
            value_type = self._ds.schema.field("embedding").type.value_type
            flat = pa.array(emb.astype(np.float16 if value_type == pa.float16() else np.float32).ravel())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, self.dim))
        elif "embedding" not in table.column_names:
            raise ValueError("embeddings: pass an (n, dim) array or an 'embedding' column")
        return super().write(table)

    def read(
        self, *, model=None, instruction=None, layer=None, component=None, stimulus_set=None,
        runs=None, pooling=None, columns: Sequence[str] | None = None, where: str | None = None,
    ) -> tuple[pa.Table, np.ndarray]:
        """Select rows and return ``(keys, embeddings)`` in key order.

        Each selector takes one value or a list. ``embeddings`` is a contiguous float32
        ``(n_rows, dim)`` array; ``keys`` holds the key columns (or ``columns``) in the same order:
        sorted by stimulus_set, model, instruction_id, component, pooling, layer, run, tr,
        stimulus_id.
        """
        preds = [
            _in("model", model), _in("instruction_id", instruction), _in("layer", layer),
            _in("component", component), _in("stimulus_set", stimulus_set), _in("run", runs),
            _in("pooling", pooling), f"({where})" if where else None,
        ]
        filt = " AND ".join(p for p in preds if p) or None
        key_cols = [c for c in self._ds.schema.names if c not in ("embedding", "key")]
        want = list(dict.fromkeys([*(columns or key_cols)]))
        sort_cols = ["stimulus_set", "model", "instruction_id", "component", "pooling", "layer", "run", "tr", "stimulus_id"]
        tbl = self._ds.to_table(columns=list(dict.fromkeys([*want, *sort_cols, "embedding"])), filter=filt)
        if len(tbl) == 0:
            available = self.available()
            raise ValueError(f"selection: no rows match ({filt}); the table holds {available}")
        tbl = tbl.sort_by([(c, "ascending") for c in sort_cols])
        emb = tbl.column("embedding").combine_chunks()
        values = emb.flatten().to_numpy(zero_copy_only=False)
        arr = np.ascontiguousarray(values.reshape(len(tbl), self.dim), dtype=np.float32)
        return tbl.select(want), arr

    def available(self) -> dict[str, list]:
        """Distinct models, instructions, components, layers and stimulus sets in the table."""
        cols = ["model", "instruction_id", "component", "layer", "stimulus_set", "pooling"]
        t = self._ds.to_table(columns=cols)
        return {c: sorted(pc.unique(t.column(c)).to_pylist()) for c in cols}

    def verify(self) -> dict[str, Any]:
        """:meth:`Table.verify` plus NaN/inf, dimension, and rows per key group."""
        report = super().verify()
        problems = report["problems"]
        t = self._ds.to_table(columns=["model", "instruction_id", "component", "layer", "pooling", "embedding"])
        if len(t):
            values = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            bad = int(values.size - np.isfinite(values).sum())
            if bad:
                problems.append(f"{bad} NaN/inf value(s) in embeddings")
            if values.size != len(t) * self.dim:
                problems.append("embedding sizes differ from the schema dimension")
            groups = t.group_by(["model", "instruction_id", "component", "layer", "pooling"]).aggregate([("layer", "count")])
            counts = groups.column("layer_count").to_pylist()
            report["rows_per_group"] = {"groups": len(counts), "min": min(counts), "max": max(counts)}
            if min(counts) != max(counts):
                problems.append(f"row counts differ between (model, instruction, layer) groups: {min(counts)}..{max(counts)}")
        report["ok"] = not problems
        return report


def open_table(uri: str | Path, version: int | str | None = None) -> Table:
    """Open any brainalign table; a features table opens as a :class:`FeatureStore`."""
    t = Table.open(uri, version)
    return FeatureStore(t.dataset, t.uri) if t.table_kind == "features" else t


def create_table(uri: str | Path, kind: str, *, provenance=None, exist_ok: bool = False, **schema_args) -> Table:
    """Create a table of ``kind`` (generations, voxels, scores, partitions; responses needs
    ``n_voxels``)."""
    if kind == "responses":
        schema = schemas.responses_schema(schema_args["n_voxels"])
    elif kind in _SCHEMAS:
        schema = _SCHEMAS[kind]()
    else:
        raise ValueError(f"kind: expected one of {sorted([*_SCHEMAS, 'responses'])}, got {kind!r}")
    return Table.create(uri, schema, provenance=provenance, exist_ok=exist_ok)
