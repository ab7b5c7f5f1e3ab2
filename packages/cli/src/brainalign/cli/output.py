"""Printing results: rich tables for people, JSON/CSV/Parquet for programs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table as RichTable

console = Console()
err_console = Console(stderr=True, log_path=False)

FORMATS = ("table", "csv", "json", "parquet")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def rich_table(table: pa.Table, *, title: str | None = None, max_rows: int = 50) -> RichTable:
    t = RichTable(title=title, show_lines=False, header_style="bold")
    for name in table.column_names:
        t.add_column(
            name,
            justify="right"
            if pa.types.is_integer(table.schema.field(name).type)
            or pa.types.is_floating(table.schema.field(name).type)
            else "left",
        )
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*(_cell(row[c]) for c in table.column_names))
    if len(table) > max_rows:
        t.caption = (
            f"{max_rows} of {len(table):,} rows shown; use --format csv/json/parquet with --output for all"
        )
    return t


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def emit(
    table: pa.Table, fmt: str = "table", output: str | Path | None = None, *, title: str | None = None
) -> None:
    """Write ``table`` as ``fmt`` to ``output`` (a file) or stdout."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        if output is None:
            raise ValueError("output: --format parquet needs --output FILE")
        pq.write_table(table, output)
        return
    if fmt == "table":
        if output is not None:
            with open(output, "w") as fh:
                Console(file=fh, width=200).print(rich_table(table, title=title, max_rows=len(table)))
        else:
            console.print(rich_table(table, title=title))
        return
    rows = table.to_pylist()
    if fmt == "json":
        text = json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], default=str)
        if output is None:
            print(text)
        else:
            Path(output).write_text(text + "\n")
        return
    fh = open(output, "w", newline="") if output else None
    try:
        import sys

        w = csv.writer(fh or sys.stdout)
        w.writerow(table.column_names)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in table.column_names])
    finally:
        if fh:
            fh.close()
