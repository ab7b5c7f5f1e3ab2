"""SQL over brainalign tables with DuckDB.

:func:`connect` registers one view per table of a project — ``features``, ``generations``,
``responses``, ``voxels``, ``scores``, ``partitions`` — each backed by the Lance dataset itself,
so DuckDB pushes projections and filters down into the scan, plus ``instructions``
(instruction id and text, from the features tables' provenance).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from brainalign.features import open_table

VIEWS = ("features", "generations", "responses", "voxels", "scores", "partitions")


def table_paths(root: str | Path, tables: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """The tables present: ``tables[name]`` where given, else ``<root>/<name>.lance`` (for
    generations also ``<root>/features.generations.lance``, where ``embed`` wrote them before it
    followed the project layout)."""
    root = Path(root)
    out = {}
    for name in VIEWS:
        p = Path(tables[name]) if tables and name in tables else root / f"{name}.lance"
        if name == "generations" and not p.exists() and not (tables and name in tables):
            p = root / "features.generations.lance"
        if p.exists():
            out[name] = p
    return out


def _scannable(table):
    """An object DuckDB can scan. DuckDB cannot read Arrow float16 columns at all, so a table
    holding one is exposed without those columns (the keys stay queryable)."""
    ds = table.dataset
    half = [
        f.name for f in ds.schema if pa.types.is_fixed_size_list(f.type) and f.type.value_type == pa.float16()
    ]
    if not half:
        return ds
    keep = [f.name for f in ds.schema if f.name not in half]
    return ds.to_table(columns=keep)


def instructions_table(features=None) -> pa.Table:
    """One row per instruction: the feature store's instruction registry (when installed),
    plus the instruction ids of a features table with the text its provenance records
    (``instructions``: id -> text, or id -> a record with ``text`` and ``prompt_sha256``, as
    ``embed`` writes). ``in_features`` marks the ids present in the table; ``prompt_sha256`` is
    the hash of the rendered prompt the first model embedded with it (prompts differ between
    models: each one's are in the provenance's ``writers``)."""
    rows: dict[str, dict] = {}
    try:
        from brainalign.features.instructions import load_registry
    except ImportError:  # an older feature store without a registry
        load_registry = None
    if load_registry is not None:
        reg = load_registry()
        for ins in reg.instructions:
            rows[ins.id] = {
                "instruction_id": ins.id,
                "text": ins.text,
                "family": ins.family,
                "source": ins.source,
                "registry_version": reg.version,
                "in_features": False,
                "prompt_sha256": None,
            }
    if features is not None:
        prov = features.provenance.get("instructions") or {}
        if isinstance(prov, list):  # a list of {"id"/"instruction_id", "text"} records
            prov = {d.get("instruction_id", d.get("id")): d.get("text") for d in prov if isinstance(d, dict)}
        ids = (
            features.dataset.to_table(columns=["instruction_id"])
            .column("instruction_id")
            .unique()
            .to_pylist()
        )
        for i in ids:
            row = rows.setdefault(
                i,
                {
                    "instruction_id": i,
                    "text": None,
                    "family": None,
                    "source": "features table",
                    "registry_version": None,
                    "in_features": True,
                    "prompt_sha256": None,
                },
            )
            row["in_features"] = True
            rec = prov.get(i)
            if isinstance(rec, dict):
                row["text"] = rec.get("text", row["text"])
                row["prompt_sha256"] = rec.get("prompt_sha256")
            elif rec is not None:
                row["text"] = str(rec)
    schema = pa.schema(
        [
            ("instruction_id", pa.string()),
            ("text", pa.string()),
            ("family", pa.string()),
            ("source", pa.string()),
            ("registry_version", pa.string()),
            ("in_features", pa.bool_()),
            ("prompt_sha256", pa.string()),
        ]
    )
    return pa.Table.from_pylist(list(rows.values()), schema=schema)


def connect(root: str | Path, tables: Mapping[str, str | Path] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table (see :func:`table_paths`)."""
    paths = table_paths(root, tables)
    if not paths:
        raise ValueError(f"root: no brainalign tables (*.lance) under {Path(root).resolve()}")
    con = duckdb.connect()
    features = None
    for name, path in paths.items():
        t = open_table(path)
        con.register(name, _scannable(t))
        if name == "features":
            features = t
    con.register("instructions", instructions_table(features))
    return con


def run_query(
    sql: str, root: str | Path, *, read_only: bool = True, tables: Mapping[str, str | Path] | None = None
) -> pa.Table:
    """Run one SQL statement over the tables under ``root`` and return an Arrow table.

    With ``read_only`` (the default) only queries (SELECT, WITH, …) are accepted.
    """
    con = connect(root, tables)
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ValueError(f"sql: {exc}") from None
    if len(statements) != 1:
        raise ValueError(f"sql: expected exactly one statement, got {len(statements)}")
    if read_only and statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError(
            f"sql: only queries are allowed in read-only mode, got a {statements[0].type.name} statement"
        )
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ValueError(f"sql: {exc}") from None
