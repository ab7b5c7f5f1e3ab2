"""SQL over brainalign tables with DuckDB.

:func:`connect` registers one view per table found in a project directory — ``features``,
``generations``, ``responses``, ``voxels``, ``scores``, ``partitions`` — each backed by the
Lance dataset itself, so DuckDB pushes projections and filters down into the scan.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from brainalign.features import open_table

VIEWS = ("features", "generations", "responses", "voxels", "scores", "partitions")


def table_paths(root: str | Path) -> dict[str, Path]:
    """The ``<name>.lance`` tables present under ``root``."""
    root = Path(root)
    return {name: root / f"{name}.lance" for name in VIEWS if (root / f"{name}.lance").exists()}


def _scannable(table):
    """An object DuckDB can scan. DuckDB cannot read Arrow float16 columns at all, so a table
    holding one is exposed without those columns (the keys stay queryable)."""
    ds = table.dataset
    half = [f.name for f in ds.schema if pa.types.is_fixed_size_list(f.type) and f.type.value_type == pa.float16()]
    if not half:
        return ds
    keep = [f.name for f in ds.schema if f.name not in half]
    return ds.to_table(columns=keep)


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table under ``root``."""
    paths = table_paths(root)
    if not paths:
        raise ValueError(f"root: no brainalign tables (*.lance) under {Path(root).resolve()}")
    con = duckdb.connect()
    for name, path in paths.items():
        con.register(name, _scannable(open_table(path)))
    return con


def run_query(sql: str, root: str | Path, *, read_only: bool = True) -> pa.Table:
    """Run one SQL statement over the tables under ``root`` and return an Arrow table.

    With ``read_only`` (the default) only queries (SELECT, WITH, …) are accepted.
    """
    con = connect(root)
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ValueError(f"sql: {exc}") from None
    if len(statements) != 1:
        raise ValueError(f"sql: expected exactly one statement, got {len(statements)}")
    if read_only and statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError(f"sql: only queries are allowed in read-only mode, got a {statements[0].type.name} statement")
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ValueError(f"sql: {exc}") from None
