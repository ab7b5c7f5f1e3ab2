"""The ``brainalign`` command. Each command parses its options, calls one library function
(that a Python user can call too) and prints the result."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("LANCE_LOG", "error")  # keep Lance's Rust logger quiet on the terminal

import typer

from .output import FORMATS, console, emit, err_console

app = typer.Typer(
    name="brainalign",
    help="Instruction-conditioned model features vs fMRI: join by keys, fit encoders, query scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Inspect and manage Lance tables (features, responses, scores, ...).", no_args_is_help=True)
app.add_typer(store_app, name="store")

_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's tables and figure.")] = Path("brainalign-demo"),
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Run the whole pipeline on the bundled demo study (SIMULATED fMRI), offline.

    Writes features, responses, voxels and scores tables under OUT, prints the best layer per
    ROI next to the simulation's ground truth, and saves a layer-profile PNG.

    Example: brainalign demo --out /tmp/demo
    """
    from .demo import run_demo

    if as_json:
        res = run_demo(out)
    else:
        with console.status("running the demo") as status:
            res = run_demo(out, say=lambda m: (console.log(m), status.update(m)))
    truth = {k: v for k, v in res.truth.items()}
    if as_json:
        print(json.dumps({
            "out": str(res.out), "truth": truth, "best_layers": res.best_layers.to_pylist(),
            "by_instruction": res.by_instruction.to_pylist(), "figure": str(res.figure),
            "device": res.fit.device, "seconds": res.seconds,
        }))
        return
    console.print(f"[bold]fit[/bold] {res.fit.n_spaces} spaces x {res.fit.n_voxels} voxels, train runs "
                  f"{res.fit.train_runs}, test run {res.fit.test_runs} on {res.fit.device} "
                  f"({res.fit.seconds['fit']:.1f} s)")
    emit(res.best_layers, title="best layer per ROI (query over scores x voxels)")
    console.print("simulated truth: " + ", ".join(
        f"{roi} <- layer {layer}" if layer is not None else f"{roi} <- no signal" for roi, layer in truth.items()
    ) + " (under instruction 'describe')")
    emit(res.by_instruction, title="mean held-out r per instruction (signal ROIs)")
    console.print(f"figure: {res.figure}")
    console.print(f"tables: {res.out}/{{features,responses,voxels,scores}}.lance  ({res.seconds['total']:.1f} s in all)")
    console.print("next, try:\n  brainalign query --root " + str(res.out) + ' "SELECT v.roi, s.layer, avg(s.r) AS mean_r '
                  'FROM scores s JOIN voxels v USING (voxel) GROUP BY ALL ORDER BY mean_r DESC LIMIT 5"')


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SQL query over the views features, responses, voxels, scores, ...")],
    root: Annotated[Path, typer.Option(help="Directory holding the *.lance tables.")] = Path("."),
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Allow statements other than queries.")] = False,
) -> None:
    """Answer SQL over the tables under ROOT with DuckDB (read-only by default).

    Example: brainalign query --root brainalign-demo "SELECT layer, avg(r) FROM scores GROUP BY layer"
    """
    from .query import run_query

    table = run_query(sql, root, read_only=not write)
    emit(table, "json" if as_json else fmt, output)


@app.command()
def fit(
    features: Annotated[Path, typer.Option(help="Features table (.lance).")],
    responses: Annotated[Path, typer.Option(help="Responses table (.lance).")],
    scores: Annotated[Path, typer.Option(help="Scores table to write (.lance); created if missing.")],
    test_run: Annotated[list[str], typer.Option(help="Run(s) held out for scoring; repeat the option for several.")],
    name: Annotated[str, typer.Option("--name", help="Name of this fit in the scores table.")] = "fit",
    subject: Annotated[str | None, typer.Option(help="Subject to fit (required if several).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model(s) to select.")] = None,
    instruction: Annotated[list[str] | None, typer.Option(help="Instruction id(s) to select.")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="Layer(s) to select.")] = None,
    where: Annotated[str | None, typer.Option(help="Extra SQL filter on feature rows.")] = None,
    preset: Annotated[str, typer.Option(help="Alignment preset: fir4, huth, oota-movie10, none.")] = "fir4",
    allow_trim: Annotated[bool, typer.Option(help="Fit on the common TRs when keys do not all match.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Join features with responses by (stimulus_set, run, tr), fit batched ridge and write scores.

    Example: brainalign fit --features f.lance --responses r.lance --scores s.lance --test-run 4 --layer 3
    """
    from dataclasses import asdict

    from .fitting import fit_scores

    with console.status("fitting") as status:
        summary = fit_scores(
            features, responses, scores, fit_name=name, test_runs=test_run, subject=subject,
            model=model or None, instruction=instruction or None, layer=layer or None, where=where,
            preset=preset, allow_trim=allow_trim, progress=None if as_json else status.update,
        )
    if as_json:
        print(json.dumps(asdict(summary)))
        return
    for line in summary.dropped:
        err_console.print(f"[yellow]dropped[/yellow] {line}")
    console.print(
        f"fit {summary.fit!r}: {summary.n_spaces} spaces x {summary.n_voxels:,} voxels, {summary.n_train} train / "
        f"{summary.n_test} test TRs on {summary.device}; scores -> {summary.scores_uri} (version {summary.scores_version})"
    )


@store_app.command("info")
def store_info(
    uri: Annotated[Path, typer.Argument(help="A .lance table.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a table's kind, rows, version, tags and provenance.

    Example: brainalign store info brainalign-demo/features.lance
    """
    from brainalign.features import FeatureStore, open_table

    t = open_table(uri)
    info = {"uri": str(uri), "kind": t.table_kind, "rows": t.count_rows(), "version": t.version,
            "versions": [{**v, "timestamp": str(v["timestamp"])} for v in t.versions()], "provenance": t.provenance}
    if isinstance(t, FeatureStore):
        info |= {"dim": t.dim, "dtype": t.storage_dtype, "available": t.available()}
    if as_json:
        print(json.dumps(info, default=str))
        return
    console.print_json(json.dumps(info, default=str))


@store_app.command("verify")
def store_verify(uri: Annotated[Path, typer.Argument(help="A .lance table.")]) -> None:
    """Check a table: duplicate keys, NaN/inf, dimensions, rows per group, provenance.

    Exits with status 1 when a problem is found. Example: brainalign store verify f.lance
    """
    from brainalign.features import open_table

    report = open_table(uri).verify()
    console.print_json(json.dumps(report, default=str))
    if not report["ok"]:
        raise typer.Exit(1)


@store_app.command("tag")
def store_tag(
    uri: Annotated[Path, typer.Argument(help="A .lance table.")],
    name: Annotated[str, typer.Argument(help="Tag name, e.g. v1.")],
    version: Annotated[int | None, typer.Option(help="Version to tag (default: latest).")] = None,
) -> None:
    """Name a version of a table. Example: brainalign store tag f.lance v1"""
    from brainalign.features import open_table

    t = open_table(uri)
    t.tag(name, version)
    console.print(f"tagged version {version or t.version} of {uri} as {name!r}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 1 (2: usage)."""
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:
        import click

        if isinstance(exc, click.UsageError):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
