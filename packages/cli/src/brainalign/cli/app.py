"""The ``brainalign`` command. Each command parses its options, calls one library function
(that a Python user can call too) and prints the result."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

os.environ.setdefault("LANCE_LOG", "error")  # keep Lance's Rust logger quiet on the terminal

import typer

from .output import FORMATS, console, emit, err_console
from .progress import Bars, bars_enabled

app = typer.Typer(
    name="brainalign",
    help="Instruction-conditioned model features vs fMRI: join by keys, fit encoders, query scores.",
    epilog="Progress bars go to stderr when it is a terminal; BRAINALIGN_PROGRESS=1 forces them, "
    "BRAINALIGN_PROGRESS=0 turns them off. --json output is never mixed with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(
    help="Inspect and manage Lance tables (features, responses, scores, ...).", no_args_is_help=True
)
app.add_typer(store_app, name="store")
responses_app = typer.Typer(help="Bring fMRI in: responses and voxels tables.", no_args_is_help=True)
app.add_typer(responses_app, name="responses")

_state: dict = {"debug": False, "project": None}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project", help="Project file (default: $BRAINALIGN_PROJECT or the nearest brainalign.toml)."
        ),
    ] = None,
) -> None:
    _state["debug"] = debug
    _state["project"] = project


def _user_errors(fn):
    """User errors (bad inputs, mismatched keys, ...) become one message and exit status 1;
    ``--debug`` lets the traceback through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            from rich.text import Text

            # typer's own (usage) errors carry their exit code; main() shows them
            if isinstance(exc, typer.TyperException) or _state["debug"]:
                raise
            err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _open(uri: Path):
    from brainalign.features import open_table

    if not Path(uri).exists() and "://" not in str(uri):
        raise ValueError(f"uri: no table at {uri}")
    return open_table(uri)


def _project(root: Path | None = None):
    from .project import load_project

    return load_project(_state["project"], root=root)


def _say(as_json: bool, status):
    """The ``progress`` argument for a library call: the bars of ``status``, or None with --json."""
    return None if as_json else status


class _Quiet:
    """A stand-in for :class:`Bars` when printing JSON: stderr stays silent too."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, _m):
        pass

    def update(self, _m):
        pass


def _status(as_json: bool, msg: str):
    """Progress on stderr while a long step runs: a status line with the latest message and bars
    with count, rate and ETA where the step has a count (:mod:`brainalign.cli.progress`)."""
    return _Quiet() if as_json else Bars(msg)


def _show_bars(as_json: bool) -> bool:
    return not as_json and bars_enabled()


@contextlib.contextmanager
def _library_bars(show: bool, *, transformers: bool = False):
    """``huggingface_hub`` (files, bytes) and ``transformers`` (weights) draw their own tqdm bars
    with rate and ETA on stderr; unless ``show``, they are switched off (with --json, where stderr
    is not a terminal, or under brainalign's own bars) and restored afterwards."""
    if show:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    restore = []
    if not are_progress_bars_disabled():
        disable_progress_bars()
        restore.append(enable_progress_bars)
    if transformers:
        from transformers.utils import logging as tf_logging

        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            if restore:  # enabling transformers' bars enables huggingface_hub's: only if they were on
                restore.append(tf_logging.enable_progress_bar)
    try:
        yield
    finally:
        for fn in reversed(restore):
            fn()


@app.command()
@_user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's tables and figure.")] = Path(
        "brainalign-demo"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Run the whole pipeline on the bundled demo study (SIMULATED fMRI), offline.

    Writes features, responses, voxels and scores tables under OUT, prints the best layer per
    ROI next to the simulation's ground truth, and saves a layer-profile PNG.

    Example: brainalign demo --out /tmp/demo
    """
    from .demo import SIGNAL_INSTRUCTION, run_demo

    if as_json:
        res = run_demo(out)
    else:
        with _status(as_json, "demo") as bars:
            res = run_demo(out, say=bars)
    truth = {k: v for k, v in res.truth.items()}
    if as_json:
        print(
            json.dumps(
                {
                    "out": str(res.out),
                    "truth": truth,
                    "signal_instruction": SIGNAL_INSTRUCTION,
                    "best_layers": res.best_layers.to_pylist(),
                    "by_instruction": res.by_instruction.to_pylist(),
                    "figure": str(res.figure),
                    "device": res.fit.device,
                    "seconds": res.seconds,
                }
            )
        )
        return
    console.print(
        f"[bold]fit[/bold] {res.fit.n_spaces} spaces x {res.fit.n_voxels} voxels, train runs "
        f"{res.fit.train_runs}, test run {res.fit.test_runs} on {res.fit.device} "
        f"({res.fit.seconds['fit']:.1f} s)"
    )
    emit(res.best_layers, title="best layer per ROI (query over scores x voxels)")
    console.print(
        "simulated truth: "
        + ", ".join(
            f"{roi} <- layer {layer}" if layer is not None else f"{roi} <- no signal"
            for roi, layer in truth.items()
        )
        + f" (under instruction {SIGNAL_INSTRUCTION!r})"
    )
    emit(res.by_instruction, title="mean held-out r per instruction (signal ROIs)")
    console.print(f"figure: {res.figure}")
    console.print(
        f"tables: {res.out}/{{features,responses,voxels,scores}}.lance  ({res.seconds['total']:.1f} s in all)"
    )
    console.print(
        "next, try:\n  brainalign query --root "
        + str(res.out)
        + ' "SELECT v.roi, s.layer, avg(s.r) AS mean_r '
        'FROM scores s JOIN voxels v USING (voxel) GROUP BY ALL ORDER BY mean_r DESC LIMIT 5"'
    )


@app.command()
@_user_errors
def query(
    sql: Annotated[
        str,
        typer.Argument(
            help="One SQL query over the views features, generations, responses, voxels, "
            "scores, partitions, instructions."
        ),
    ],
    root: Annotated[
        Path | None, typer.Option(help="Directory holding the *.lance tables (default: project root).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Allow statements other than queries.")] = False,
) -> None:
    """Answer SQL over the project's tables with DuckDB (read-only by default).

    Views: features, generations, responses, voxels, scores, partitions (the Lance tables) and
    instructions (the instruction registry and the ids in the features table).

    Example, mean held-out r per ROI and layer:

      brainalign query --root study "SELECT v.roi, s.layer, avg(s.r) AS mean_r FROM scores s \\
      JOIN voxels v USING (subject, voxel) GROUP BY ALL ORDER BY v.roi, s.layer" --format csv
    """
    from .query import run_query

    proj = _project(root)
    table = run_query(sql, proj.root, read_only=not write, tables=proj.tables)
    emit(table, "json" if as_json else fmt, output)


def _preset_overrides(delays, trim_start, trim_end, pca, lanczos_window, zscore):
    return {
        "delays": None if delays is None else [int(d) for d in delays.split(",") if d.strip()],
        "trim_start": trim_start,
        "trim_end": trim_end,
        "pca": pca,
        "lanczos_window": lanczos_window,
        "zscore": zscore,
    }


_PRESET_HELP = (
    "Alignment preset: fir4, huth (Lanczos 3, delays 1-4, trim 10/5), wehbe (PCA 10, trim 20/15), "
    "algonauts (shift 3, window 5, trim 5/5), shift3, oota-movie10, none."
)


@app.command()
@_user_errors
def fit(
    test_run: Annotated[
        list[str] | None, typer.Option(help="Run(s) held out for scoring; repeat for several.")
    ] = None,
    features: Annotated[
        Path | None, typer.Option(help="Features table (default: <root>/features.lance).")
    ] = None,
    responses: Annotated[
        Path | None, typer.Option(help="Responses table (default: <root>/responses.lance).")
    ] = None,
    scores: Annotated[
        Path | None, typer.Option(help="Scores table to write (default: <root>/scores.lance).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory of the tables (default: project root).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Name of this fit in the scores table.")] = "fit",
    subject: Annotated[str | None, typer.Option(help="Subject to fit (required if several).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model(s) to select.")] = None,
    instruction: Annotated[list[str] | None, typer.Option(help="Instruction id(s) to select.")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="Layer(s) to select.")] = None,
    where: Annotated[
        str | None, typer.Option(help='SQL filter on feature rows, e.g. "layer BETWEEN 10 AND 20".')
    ] = None,
    preset: Annotated[str | None, typer.Option(help=_PRESET_HELP)] = None,
    delays: Annotated[
        str | None, typer.Option(help="Override the FIR delays in TRs, e.g. 1,2,3,4 (one value: HRF shift).")
    ] = None,
    trim_start: Annotated[
        int | None, typer.Option(help="Override TRs trimmed at the start of each run.")
    ] = None,
    trim_end: Annotated[int | None, typer.Option(help="Override TRs trimmed at the end of each run.")] = None,
    pca: Annotated[
        int | None, typer.Option(help="PCA components per space, fitted on training runs only (0: off).")
    ] = None,
    lanczos_window: Annotated[
        int | None, typer.Option(help="Lanczos-resample word-level features onto TRs with this window.")
    ] = None,
    zscore: Annotated[
        bool | None, typer.Option("--zscore/--no-zscore", help="Override z-scoring per run.")
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="CV folds over training data: runs (leave one run out) or blocks:K.")
    ] = None,
    ceiling: Annotated[
        Path | None, typer.Option(help="Per-voxel noise ceiling (.npy, r units) for r_norm.")
    ] = None,
    min_ceiling: Annotated[
        float, typer.Option(help="Voxels with a ceiling below this (or <= 0) get no r_norm.")
    ] = 0.0,
    allow_trim: Annotated[
        bool, typer.Option(help="Fit on the common TRs when keys do not all match.")
    ] = False,
    weights: Annotated[
        Path | None, typer.Option(help="Also save the fitted weights to this .npz file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Join features with responses by (stimulus_set, run, tr), fit batched ridge and write scores.

    Every selected (model, instruction, layer) space is fitted in one batched call on the JAX
    device present (printed). CV is by training runs; scores (r, R², alpha, r/ceiling) are for
    the held-out test runs.

    Example, 29 layers x 2 instructions with run 4 held out:

      brainalign fit --root study --name qwen --model Qwen/Qwen2.5-VL-7B-Instruct \\
      --instruction captioning --instruction vqa --where "layer <= 28" --test-run 4 --preset fir4
    """
    from .align import get_preset
    from .fitting import fit_scores

    proj = _project(root)
    test_runs = proj.default("fit", "test_runs", test_run)
    if not test_runs:
        raise ValueError("test_run: give at least one --test-run (or [fit] test_runs in brainalign.toml)")
    pre = get_preset(
        proj.default("fit", "preset", preset, "fir4"),
        **_preset_overrides(delays, trim_start, trim_end, pca, lanczos_window, zscore),
    )
    with _status(as_json, "fit") as status:
        summary = fit_scores(
            proj.table("features", features),
            proj.table("responses", responses),
            proj.table("scores", scores),
            fit_name=name,
            test_runs=[str(t) for t in test_runs],
            subject=subject,
            model=model or None,
            instruction=instruction or None,
            layer=layer or None,
            where=where,
            preset=pre,
            folds=proj.default("fit", "folds", folds, "runs"),
            ceiling=ceiling,
            min_ceiling=min_ceiling,
            allow_trim=allow_trim,
            weights=weights,
            progress=_say(as_json, status),
        )
    if as_json:
        print(json.dumps(asdict(summary)))
        return
    for line in summary.dropped:
        err_console.print(f"[yellow]dropped[/yellow] {line}", markup=True, highlight=False)
    console.print(
        f"fit {summary.fit!r}: {summary.n_spaces} spaces x {summary.n_features} features x {summary.n_voxels:,} voxels, "
        f"{summary.n_train} train / {summary.n_test} test TRs, CV {summary.folds}, on {summary.device}; "
        f"scores -> {summary.scores_uri} (version {summary.scores_version})",
        markup=False,
        highlight=False,
    )
    console.print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.seconds.items()), markup=False)


@app.command()
@_user_errors
def partition(
    space: Annotated[list[str], typer.Option(help="NAME=SQL filter picking one feature space; give 2 or 3.")],
    test_run: Annotated[
        list[str] | None, typer.Option(help="Run(s) held out for scoring; repeat for several.")
    ] = None,
    features: Annotated[
        Path | None, typer.Option(help="Features table (default: <root>/features.lance).")
    ] = None,
    responses: Annotated[
        Path | None, typer.Option(help="Responses table (default: <root>/responses.lance).")
    ] = None,
    partitions: Annotated[
        Path | None, typer.Option(help="Partitions table (default: <root>/partitions.lance).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory of the tables (default: project root).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Name of this partition fit.")] = "partition",
    subject: Annotated[str | None, typer.Option(help="Subject (required if several).")] = None,
    preset: Annotated[str | None, typer.Option(help=_PRESET_HELP)] = None,
    folds: Annotated[str | None, typer.Option(help="CV folds: runs or blocks:K.")] = None,
    correction: Annotated[str, typer.Option(help="none, clip or finite_sample.")] = "none",
    joint: Annotated[str, typer.Option(help="Joint models: auto, ridge or banded.")] = "auto",
    allow_trim: Annotated[
        bool, typer.Option(help="Fit on the common TRs when keys do not all match.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Variance partitioning of 2-3 feature selections (unique and shared held-out R² per voxel).

    Example, VQA vs captioning at layer 12:

      brainalign partition --root study --name vqa-vs-cap --test-run 4 \\
      --space "vqa=instruction_id = 'vqa' AND layer = 12" \\
      --space "cap=instruction_id = 'captioning' AND layer = 12"
    """
    from .align import get_preset
    from .partition import parse_selection, partition_variance

    proj = _project(root)
    test_runs = proj.default("fit", "test_runs", test_run)
    if not test_runs:
        raise ValueError("test_run: give at least one --test-run (or [fit] test_runs in brainalign.toml)")
    sel = dict(parse_selection(s) for s in space)
    if len(sel) != len(space):
        raise ValueError("space: selection names must be distinct")
    with _status(as_json, "partition") as status:
        summary = partition_variance(
            proj.table("features", features),
            proj.table("responses", responses),
            proj.table("partitions", partitions),
            selections=sel,
            fit_name=name,
            test_runs=[str(t) for t in test_runs],
            subject=subject,
            preset=get_preset(proj.default("fit", "preset", preset, "fir4")),
            folds=proj.default("fit", "folds", folds, "runs"),
            correction=correction,
            joint=joint,
            allow_trim=allow_trim,
            progress=_say(as_json, status),
        )
    if as_json:
        print(json.dumps(asdict(summary)))
        return
    import pyarrow as pa

    emit(
        pa.table({"region": list(summary.mean_r2), "mean_r2": list(summary.mean_r2.values())}),
        title=f"partition {summary.fit!r}: mean held-out R² over {summary.n_voxels:,} voxels",
    )
    console.print(
        f"on {summary.device}; partitions -> {summary.partitions_uri} (version {summary.partitions_version})",
        markup=False,
        highlight=False,
    )


@app.command()
@_user_errors
def report(
    fit_name: Annotated[str, typer.Option("--fit", help="Fit name in the scores table.")],
    out: Annotated[
        Path | None, typer.Option(help="Directory for figures, maps and the page (default: <root>/report).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory of the tables (default: project root).")
    ] = None,
    partition_fit: Annotated[str | None, typer.Option(help="Partition fit to draw as bars per ROI.")] = None,
    compare: Annotated[
        list[str] | None, typer.Option(help="BASE then TUNED model id (give the option twice).")
    ] = None,
    page: Annotated[str, typer.Option("--page", help="Summary page format: html or md.")] = "html",
    maps: Annotated[
        bool, typer.Option("--maps/--no-maps", help="Write brain maps (NIfTI/CIFTI/GIFTI + PNG).")
    ] = True,
    max_maps: Annotated[int, typer.Option(help="At most this many (model, instruction) maps.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Figures, brain maps and an HTML/Markdown summary page for one fit.

    Layer profile per ROI, instructions per ROI, partition bars, base vs instruction-tuned,
    brain maps written back in the input's format (NIfTI/CIFTI/GIFTI) plus PNGs.

    Example:

      brainalign report --root study --fit qwen --partition-fit vqa-vs-cap \\
      --compare meta-llama/Llama-2-7b --compare lmsys/vicuna-7b-v1.3 --out study/report
    """
    from .report import build_report

    proj = _project(root)
    with _status(as_json, "report") as status:
        rep = build_report(
            proj.root,
            fit_name,
            out if out is not None else proj.root / "report",
            tables=proj.tables,
            partition_fit=partition_fit,
            compare=compare or None,
            page_format=page,
            maps=maps,
            max_maps=max_maps,
            progress=_say(as_json, status),
        )
    if as_json:
        print(json.dumps({"page": str(rep.page), "figures": rep.figures, "maps": rep.maps}, default=str))
        return
    console.print(f"report: {rep.page}", markup=False)
    for k, v in rep.figures.items():
        console.print(f"  {k}: {rep.out / v}", markup=False, highlight=False)
    for m in rep.maps:
        console.print(f"  map: {rep.out / m}", markup=False, highlight=False)


@responses_app.command("ingest")
@_user_errors
def responses_ingest(
    bold: Annotated[
        list[Path] | None,
        typer.Argument(
            help="BOLD files: 4D NIfTI, .dtseries.nii, .func.gii (both hemispheres), .npy, or .h5 (FILE.h5:/NAME picks a dataset)."
        ),
    ] = None,
    bids: Annotated[
        Path | None, typer.Option(help="Discover sub-*/func/*_task-*_run-*_bold.* runs under this BIDS tree.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset name stored in every row.")] = "dataset",
    subject: Annotated[
        str | None, typer.Option(help="Subject id (BIDS inputs: only this subject; else: its label).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="BIDS task to ingest.")] = None,
    run: Annotated[
        list[str] | None, typer.Option(help="Run label per BOLD file (default: run- entity, else 1, 2, ...).")
    ] = None,
    stimulus_set: Annotated[
        str | None, typer.Option(help="Stimulus set the runs were recorded with (default: the task).")
    ] = None,
    tr: Annotated[float | None, typer.Option(help="Repetition time in seconds (overrides headers).")] = None,
    space: Annotated[
        str | None, typer.Option(help="Space name, e.g. MNI152NLin2009cAsym, fsLR, fsaverage6.")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Brain or ROI mask (NIfTI, same grid as the BOLD).")
    ] = None,
    atlas: Annotated[Path | None, typer.Option(help="Integer ROI atlas (NIfTI, same grid).")] = None,
    atlas_labels: Annotated[
        Path | None, typer.Option(help="TSV 'index<TAB>name' naming the atlas labels.")
    ] = None,
    labels: Annotated[
        list[Path] | None, typer.Option(help="CIFTI .dlabel.nii, or GIFTI .label.gii per hemisphere.")
    ] = None,
    tr_table: Annotated[
        Path | None, typer.Option(help="For .npy or .h5: CSV/TSV with a run (and tr) per row.")
    ] = None,
    detrend: Annotated[
        int | None, typer.Option(help="Remove a polynomial of this order per run (0: mean).")
    ] = None,
    zscore: Annotated[
        bool, typer.Option("--zscore/--no-zscore", help="Z-score each voxel within each run.")
    ] = False,
    trim_start: Annotated[int, typer.Option(help="Drop this many TRs at the start of each run.")] = 0,
    trim_end: Annotated[int, typer.Option(help="Drop this many TRs at the end of each run.")] = 0,
    confounds: Annotated[
        str | None, typer.Option(help="Comma-separated confound columns to regress out (BIDS confounds TSV).")
    ] = None,
    drop_bad_voxels: Annotated[
        bool, typer.Option(help="Leave out voxels with NaN/inf instead of failing.")
    ] = False,
    root: Annotated[
        Path | None, typer.Option(help="Directory of the tables (default: project root).")
    ] = None,
    responses: Annotated[
        Path | None, typer.Option(help="Responses table (default: <root>/responses.lance).")
    ] = None,
    voxels: Annotated[Path | None, typer.Option(help="Voxels table (default: <root>/voxels.lance).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Read fMRI runs into a responses table and a voxels table.

    Responses hold BOLD per TR; voxels hold space, coordinates or vertices and ROI labels.
    Everything is checked before anything is written.

    Examples:

      brainalign responses ingest --bids ds004323 --task game --space MNI152NLin2009cAsym \\
      --mask mask.nii.gz --atlas glasser.nii.gz --atlas-labels glasser.tsv --zscore --root study

      brainalign responses ingest bold.npy --tr-table trs.csv --tr 2 --subject sub-01 \\
      --stimulus-set wehbe --root study
    """
    from .ingest import discover_bids, explicit_runs, ingest_responses

    if bids is not None and bold:
        raise ValueError("bold: give BOLD files or --bids, not both")
    inputs = (
        discover_bids(bids, subject=subject, task=task, space=space)
        if bids is not None
        else explicit_runs(bold or [], run)
    )
    proj = _project(root)
    with _status(as_json, "ingest") as status:
        summary = ingest_responses(
            inputs,
            responses=proj.table("responses", responses),
            voxels=proj.table("voxels", voxels),
            dataset=dataset,
            subject=subject if bids is None else None,
            stimulus_set=stimulus_set,
            tr=tr,
            space=space,
            mask=mask,
            atlas=atlas,
            atlas_labels=atlas_labels,
            labels=labels or (),
            tr_table=tr_table,
            detrend_order=detrend,
            zscore_runs=zscore,
            trim_start=trim_start,
            trim_end=trim_end,
            confounds=[c for c in (confounds or "").split(",") if c],
            drop_bad_voxels=drop_bad_voxels,
            progress=_say(as_json, status),
        )
    if as_json:
        print(json.dumps(asdict(summary)))
        return
    import pyarrow as pa

    emit(
        pa.table({"run": list(summary.runs), "trs": list(summary.runs.values())}),
        title=f"{summary.fmt} -> {summary.n_voxels:,} voxels in space {summary.space}, TR {summary.tr_s:g} s",
    )
    if summary.dropped_voxels:
        err_console.print(f"left out {summary.dropped_voxels:,} voxels with NaN/inf", markup=False)
    console.print(
        f"responses -> {summary.responses_uri} (version {summary.responses_version}); "
        f"voxels -> {summary.voxels_uri} (version {summary.voxels_version})",
        markup=False,
        highlight=False,
    )


@app.command()
@_user_errors
def push(
    table: Annotated[Path, typer.Argument(help="A .lance table to publish.")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face dataset repo, owner/name.")],
    tag: Annotated[
        str | None, typer.Option(help="Tag the current version (in Lance and on the Hub).")
    ] = None,
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    path_in_repo: Annotated[
        str | None, typer.Option(help="Where the table goes in the repo (default <kind>.lance).")
    ] = None,
    license: Annotated[str, typer.Option(help="Dataset card license.")] = "cc-by-4.0",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Publish a table to the Hugging Face Hub in one commit (only files the repo lacks are uploaded).

    Uses HF_TOKEN / HF_ENDPOINT like huggingface_hub. Example:

      brainalign push study/features.lance me/movie10-qwen25vl --tag v1
    """
    from huggingface_hub import get_token

    from brainalign.features import push as hub_push

    store = _open(table)
    if not get_token():
        raise ValueError(
            f"token: pushing to {repo_id} needs a Hugging Face token with write access; "
            "set HF_TOKEN or run `hf auth login`"
        )
    if _show_bars(as_json):  # huggingface_hub's bars follow
        err_console.log(f"pushing {table} to {repo_id}", markup=False, highlight=False)
    with _library_bars(_show_bars(as_json)):
        res = hub_push(store, repo_id, tag=tag, private=private, path_in_repo=path_in_repo, license=license)
    if as_json:
        print(json.dumps(res, default=str))
        return
    console.print(
        f"pushed version {res.get('version')} of {table} to {repo_id} (commit {res.get('commit')}, "
        f"{len(res.get('uploaded', []))} file(s) uploaded, {res.get('bytes_uploaded', 0):,} bytes)",
        markup=False,
        highlight=False,
    )


@app.command()
@_user_errors
def pull(
    repo_id: Annotated[str, typer.Argument(help="Hugging Face dataset repo, owner/name.")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default main).")] = None,
    table: Annotated[
        str, typer.Option(help="Which table of the repo: features, responses, scores, ...")
    ] = "features",
    model: Annotated[list[str] | None, typer.Option(help="Only these model(s).")] = None,
    instruction: Annotated[list[str] | None, typer.Option(help="Only these instruction id(s).")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="Only these layer(s).")] = None,
    stimulus_set: Annotated[list[str] | None, typer.Option(help="Only these stimulus set(s).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="huggingface_hub cache directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Fetch a published table, or only the files of the selected groups, into the local cache.

    Prints where the local table is; pass it to --features of fit. Example:

      brainalign pull me/movie10-qwen25vl --revision v1 --instruction video.captioning --layer 12
    """
    from brainalign.features import pull as hub_pull

    if _show_bars(as_json):  # huggingface_hub's bars follow
        err_console.log(f"pulling {repo_id} at {revision or 'main'}", markup=False, highlight=False)
    with _library_bars(_show_bars(as_json)):
        t = hub_pull(
            repo_id,
            revision=revision,
            table=table,
            model=model or None,
            instruction=instruction or None,
            layer=layer or None,
            stimulus_set=stimulus_set or None,
            cache_dir=cache_dir,
        )
    info = {"uri": str(t.uri), "kind": t.table_kind, "rows": t.count_rows(), "version": t.version}
    if as_json:
        print(json.dumps(info))
        return
    console.print(
        f"{info['kind']} table with {info['rows']:,} rows at {info['uri']} (version {info['version']})",
        markup=False,
        highlight=False,
    )


@app.command()
@_user_errors
def embed(
    manifest: Annotated[
        Path, typer.Argument(help="Stimulus manifest JSON (brainalign.features.stimuli.Manifest.save).")
    ],
    model: Annotated[str, typer.Option(help="Checkpoint: Hub id or local directory.")],
    store: Annotated[
        Path | None, typer.Option(help="Features table to write (default: <root>/features.lance).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Directory of the tables (default: project root).")
    ] = None,
    instruction: Annotated[
        list[str] | None, typer.Option(help="Registry ids, family:<name>, or none.")
    ] = None,
    layers: Annotated[str, typer.Option(help="all, or comma-separated indices / relative depths.")] = "all",
    pooling: Annotated[
        list[str] | None, typer.Option(help="Pooling span(s), e.g. stimulus, response.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Stimuli per forward pass.")] = 8,
    shard: Annotated[str | None, typer.Option(help="i/n: embed only this round-robin shard.")] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model id to store (default: the checkpoint's).")
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            help="Branch, tag or commit of a Hub checkpoint (default main); the commit is recorded."
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            help="Run the Python code shipped with the checkpoint (its own model classes). "
            "Off by default: enable only for checkpoints whose code you trust."
        ),
    ] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Model dtype: float32, bfloat16 or float16 (default bfloat16 on CUDA, else float32)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="torch device (default cuda when available, else cpu).")
    ] = None,
    device_map: Annotated[
        str | None,
        typer.Option(help="accelerate device map, e.g. auto (spreads the model; overrides --device)."),
    ] = None,
    component: Annotated[
        list[str] | None,
        typer.Option(help="Component(s) to embed: lm (default), vision, projector, qformer, audio, ..."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy generation length for --pooling response.")
    ] = 32,
    seed: Annotated[int, typer.Option(help="torch seed set before each generation.")] = 0,
    storage_dtype: Annotated[
        str, typer.Option(help="Embedding dtype on disk: float32 or float16 (half the size).")
    ] = "float32",
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Skip stimuli whose rows are stored already.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option(help="Print the plan (prompts, row counts) without running the model.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Embed stimuli under instructions and write layer embeddings to a features table.

    Needs the feature store's compute extra (torch, transformers).

    Example:

      brainalign embed stimuli.json --model Qwen/Qwen2.5-VL-7B-Instruct --instruction family:video \\
      --layers all --pooling stimulus --root study
    """
    try:
        from brainalign.features.extract import embed as run_embed
        from brainalign.features.stimuli import Manifest
    except ImportError as exc:
        raise ValueError(
            f"embed: needs the compute extra (pip install 'brainalign-feature-store[compute]'): {exc}"
        ) from None

    if not manifest.exists():
        raise ValueError(f"manifest: no such file {manifest}")
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage-dtype: expected float32 or float16, got {storage_dtype!r}")
    if dtype is None or device is None:
        import torch

        cuda = torch.cuda.is_available()
        dtype = dtype or ("bfloat16" if cuda else "float32")
        device = device or ("cuda" if cuda else "cpu")
    sel: object = "all"
    if layers.strip() != "all":
        try:
            sel = [float(x) if "." in x else int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            sel = []
        if not sel:
            raise typer.BadParameter(
                "expected all, or comma-separated layer indices (negative from the end, e.g. 0,-1) "
                f"or relative depths in [0, 1] (e.g. 0.25,0.5); got {layers!r}",
                param_hint="--layers",
            )
    proj = _project(root)
    with _library_bars(_show_bars(as_json), transformers=True):
        res = run_embed(
            Manifest.load(manifest),
            model,
            instruction or ["none"],
            store=str(proj.table("features", store)),
            layers=sel,
            components=component or None,
            pooling=tuple(pooling or ["stimulus"]),
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            seed=seed,
            shard=shard,
            resume=resume,
            storage_dtype=storage_dtype,
            model_name=model_name,
            dry_run=dry_run,
            progress=_show_bars(as_json),  # tqdm: stimuli, rate and ETA on stderr
            # where the `generations` view of `brainalign query` looks for them
            generations=str(proj.table("generations")),
            revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device=device,
            device_map=device_map,
        )
    out = asdict(res) if hasattr(res, "__dataclass_fields__") else {"result": str(res)}
    if as_json:
        print(json.dumps(out, default=str))
        return
    if dry_run:
        console.print_json(json.dumps(out, default=str))
        return
    console.print(
        f"wrote {res.rows_written:,} rows ({res.units_written} units, {res.units_skipped} skipped) in "
        f"{res.seconds:.1f} s -> {proj.table('features', store)}",
        markup=False,
        highlight=False,
    )


@app.command("run")
@_user_errors
def run_study(
    recipe: Annotated[Path, typer.Argument(help="A study recipe (studies/*.toml).")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your copy of the dataset (replaces [data] root; for several datasets, their parent)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: runs/<study name>).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe value: KEY=VALUE, e.g. models.NAME.checkpoint=/dir."),
    ] = None,
    stage: Annotated[
        list[str] | None,
        typer.Option(help="Run only these stages (embed, ingest, fit, partition, report); repeat."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Run only these models of the recipe (names); repeat.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the recipe and data, print the plan, run nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Run a study recipe end to end: embed (or pull) -> ingest -> fit -> partition -> report.

    The recipe and the data are checked first (missing files, unknown model or instruction ids,
    inconsistent TR grids); every problem is listed before any heavy work starts. Reruns resume:
    stored embeddings are skipped and refits replace their rows.

    Example, the NSD study on your copy of NSD, with another model swapped in:

      brainalign run studies/nsd.toml --data /data/nsd --dry-run

      brainalign run studies/nsd.toml --data /data/nsd --out runs/nsd \\
      --set models.llava-1.5-7b.checkpoint=llava-hf/llava-1.5-13b-hf
    """
    from .studies.recipe import load_recipe
    from .studies.runner import open_datasets, plan_recipe, run_recipe

    rec = load_recipe(recipe, overrides=set_ or [], data_root=data, models=model)
    if dry_run:
        with _status(as_json, "checking the recipe and data"):
            plan = plan_recipe(rec, open_datasets(rec))
        if as_json:
            print(json.dumps(plan.to_dict(), default=str))
        else:
            console.print(plan.text(), markup=False, highlight=False, soft_wrap=True)
        return
    out = out or Path("runs") / rec.name
    # brainalign's bars show the stages; huggingface_hub's would cut through them
    with _status(as_json, f"running {rec.name}") as status, _library_bars(False):
        res = run_recipe(rec, out, stages=stage, progress=_say(as_json, status))
    if as_json:
        print(
            json.dumps(
                {
                    "out": str(res.out),
                    "page": str(res.page) if res.page else None,
                    "seconds": res.seconds,
                    "tables": res.tables,
                },
                default=str,
            )
        )
        return
    import pyarrow as pa

    for name in ("model comparison", "group comparison"):
        rows = res.tables.get(name)
        if rows:
            emit(pa.Table.from_pylist(rows), title=name)
    console.print(f"report -> {res.page}", markup=False, highlight=False)


@store_app.command("info")
@_user_errors
def store_info(
    uri: Annotated[Path, typer.Argument(help="A .lance table.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a table's kind, rows, version, tags and provenance.

    Example: brainalign store info brainalign-demo/features.lance
    """
    from brainalign.features import FeatureStore

    t = _open(uri)
    info = {
        "uri": str(uri),
        "kind": t.table_kind,
        "rows": t.count_rows(),
        "version": t.version,
        "versions": [{**v, "timestamp": str(v["timestamp"])} for v in t.versions()],
        "provenance": t.provenance,
    }
    if isinstance(t, FeatureStore):
        info |= {"dim": t.dim, "dtype": t.storage_dtype, "available": t.available()}
    if as_json:
        print(json.dumps(info, default=str))
        return
    console.print_json(json.dumps(info, default=str))


@store_app.command("verify")
@_user_errors
def store_verify(uri: Annotated[Path, typer.Argument(help="A .lance table.")]) -> None:
    """Check a table: duplicate keys, NaN/inf, dimensions, rows per group, provenance.

    Exits with status 1 when a problem is found. Example: brainalign store verify f.lance
    """

    report = _open(uri).verify()
    console.print_json(json.dumps(report, default=str))
    if not report["ok"]:
        raise typer.Exit(1)


@store_app.command("tag")
@_user_errors
def store_tag(
    uri: Annotated[Path, typer.Argument(help="A .lance table.")],
    name: Annotated[str, typer.Argument(help="Tag name, e.g. v1.")],
    version: Annotated[int | None, typer.Option(help="Version to tag (default: latest).")] = None,
) -> None:
    """Name a version of a table. Example: brainalign store tag f.lance v1"""

    t = _open(uri)
    t.tag(name, version)
    console.print(f"tagged version {version or t.version} of {uri} as {name!r}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 1 (2: usage)."""
    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)  # the code of a typer.Exit is returned here
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors (exit 2) and other command-line errors
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err_console.print(f"error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        from rich.text import Text

        err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
