"""Figures and brain maps from the scores and partitions tables, and a summary page.

* :func:`layer_profile` / :func:`plot_layer_profiles`: mean score per layer, one panel per ROI;
* :func:`instruction_profile` / :func:`plot_instructions`: instructions compared per ROI, each at
  its best layer (the layer with the highest ROI mean, as the seed papers report);
* :func:`partition_profile` / :func:`plot_partition_bars`: mean unique and shared R² per ROI;
* :func:`model_comparison` / :func:`plot_model_comparison`: base vs instruction-tuned model per ROI;
* :func:`write_brain_map`: voxel scores written back to the input's format (NIfTI volume, GIFTI
  per hemisphere, CIFTI-2 dscalar) plus a PNG rendering;
* :func:`build_report`: all of the above for one fit and an HTML or Markdown page linking them.

"Score" is the ceiling-normalised ``r_norm`` where the fit has a ceiling, else Pearson ``r``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from brainalign.features import open_table

from .progress import tick
from .query import run_query

LAYER_PROFILE_SQL = """
SELECT coalesce(v.roi, 'unlabelled') AS roi, s.model, s.instruction_id, s.layer, avg(s.r) AS mean_r,
       avg(s.r_norm) AS mean_r_norm, avg({metric}) AS score, count(*) AS n_voxels
FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
WHERE s.fit = {fit}
GROUP BY ALL ORDER BY roi, s.model, s.instruction_id, s.layer
"""


def _q(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _metric(root, fit: str, tables) -> str:
    n = run_query(f"SELECT count(r_norm) AS n FROM scores WHERE fit = {_q(fit)}", root, tables=tables)
    return "s.r_norm" if n.column("n")[0].as_py() else "s.r"


def layer_profile(
    root: str | Path, fit: str, *, tables: Mapping | None = None, metric: str | None = None
) -> pa.Table:
    """Mean score per (ROI, model, instruction, layer) for one fit (columns roi, model,
    instruction_id, layer, mean_r, mean_r_norm, score, n_voxels); voxels without an ROI label
    form the ROI ``unlabelled``."""
    metric = metric or _metric(root, fit, tables)
    return run_query(LAYER_PROFILE_SQL.format(metric=metric, fit=_q(fit)), root, tables=tables)


def _label(row: dict, models: list) -> str:
    return (
        row["instruction_id"]
        if len(models) <= 1
        else f"{row['model'].split('/')[-1]}: {row['instruction_id']}"
    )


def plot_layer_profiles(
    profile: pa.Table,
    path: str | Path,
    *,
    title: str = "",
    value: str = "mean_r",
    ylabel: str = "mean held-out r",
) -> Path:
    """One panel per ROI: mean score across layers, one line per (model,) instruction. Writes a PNG."""
    rows = profile.to_pylist()
    rois = list(dict.fromkeys(r["roi"] for r in rows))
    models = list(dict.fromkeys(r.get("model") for r in rows))
    series = list(dict.fromkeys(_label(r, models) for r in rows))
    fig, axes = plt.subplots(
        1, max(len(rois), 1), figsize=(3.2 * max(len(rois), 1), 3.0), sharey=True, squeeze=False
    )
    for ax, roi in zip(axes[0], rois, strict=False):
        for lab in series:
            pts = sorted((r["layer"], r[value]) for r in rows if r["roi"] == roi and _label(r, models) == lab)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
        ax.set_title(str(roi))
        ax.set_xlabel("layer")
        ax.axhline(0, color="0.7", lw=0.8)
    axes[0][0].set_ylabel(ylabel)
    if series:
        axes[0][-1].legend(title="instruction", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


INSTRUCTION_SQL = """
WITH prof AS ({profile})
SELECT roi, model, instruction_id, arg_max(layer, score) AS best_layer, max(score) AS score
FROM prof GROUP BY ALL ORDER BY roi, model, instruction_id
"""


def instruction_profile(root, fit: str, *, tables=None, metric: str | None = None) -> pa.Table:
    """Per (ROI, model, instruction): the best layer and its mean score."""
    metric = metric or _metric(root, fit, tables)
    prof = LAYER_PROFILE_SQL.format(metric=metric, fit=_q(fit)).replace(
        "ORDER BY roi, s.model, s.instruction_id, s.layer", ""
    )
    return run_query(INSTRUCTION_SQL.format(profile=prof), root, tables=tables)


def _grouped_bars(ax, groups: list, series: list, value_of, *, width_total: float = 0.8):
    w = width_total / max(len(series), 1)
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        vals = [value_of(g, s) for g in groups]
        ax.bar(
            x + (k - (len(series) - 1) / 2) * w, [np.nan if v is None else v for v in vals], w, label=str(s)
        )
    ax.set_xticks(x, [str(g) for g in groups], rotation=30, ha="right")
    ax.axhline(0, color="0.6", lw=0.8)


def plot_instructions(
    table: pa.Table, path: str | Path, *, title: str = "", ylabel: str = "score at best layer"
) -> Path:
    rows = table.to_pylist()
    rois = list(dict.fromkeys(r["roi"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    series = list(dict.fromkeys(_label(r, models) for r in rows))
    lookup = {(r["roi"], _label(r, models)): r["score"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rois) + 0.3 * len(series)), 3.4))
    _grouped_bars(ax, rois, series, lambda g, s: lookup.get((g, s)))
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize=7, title="instruction")
    ax.set_title(title or "instructions per ROI (best layer each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


PARTITION_SQL = """
SELECT coalesce(v.roi, 'unlabelled') AS roi, p.region, avg(p.r2) AS mean_r2, count(*) AS n_voxels
FROM partitions p JOIN voxels v ON v.voxel = p.voxel AND v.subject = p.subject
WHERE p.fit = {fit}
GROUP BY ALL ORDER BY roi, p.region
"""


def partition_profile(root, fit: str, *, tables=None) -> pa.Table:
    """Mean R² per (ROI, region) of one partition fit."""
    return run_query(PARTITION_SQL.format(fit=_q(fit)), root, tables=tables)


def plot_partition_bars(table: pa.Table, path: str | Path, *, title: str = "") -> Path:
    """Grouped bars per ROI: unique and shared R² regions (``total`` drawn as a marker)."""
    rows = table.to_pylist()
    rois = list(dict.fromkeys(r["roi"] for r in rows))
    regions = [g for g in dict.fromkeys(r["region"] for r in rows) if g != "total"]
    regions.sort(key=lambda g: (g.count("&"), g))
    lookup = {(r["roi"], r["region"]): r["mean_r2"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rois) + 0.3 * len(regions)), 3.4))
    _grouped_bars(ax, rois, regions, lambda g, s: lookup.get((g, s)))
    tot = [lookup.get((g, "total")) for g in rois]
    if any(t is not None for t in tot):
        ax.plot(
            np.arange(len(rois)), [np.nan if t is None else t for t in tot], "k_", ms=18, mew=2, label="total"
        )
    ax.set_ylabel("mean held-out R²")
    if regions:
        ax.legend(fontsize=7, title="region")
    ax.set_title(title or "variance partition per ROI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def model_comparison(instructions: pa.Table, base: str, tuned: str) -> pa.Table:
    """Per (ROI, instruction): base and tuned best-layer scores and the relative change (%)."""
    rows = instructions.to_pylist()
    by = {(r["roi"], r["instruction_id"], r["model"]): r["score"] for r in rows}
    models = {r["model"] for r in rows}
    missing = [m for m in (base, tuned) if m not in models]
    if missing:
        raise ValueError(f"compare: model(s) {missing} are not in the fit; it has {sorted(models)}")
    out = []
    keys = list(dict.fromkeys((r["roi"], r["instruction_id"]) for r in rows))
    for roi, ins in keys:
        b, t = by.get((roi, ins, base)), by.get((roi, ins, tuned))
        if b is None or t is None:
            continue
        out.append(
            {
                "roi": roi,
                "instruction_id": ins,
                "base": b,
                "tuned": t,
                "change_pct": (t - b) / abs(b) * 100 if b else None,
            }
        )
    return pa.Table.from_pylist(
        out,
        schema=pa.schema(
            [
                ("roi", pa.string()),
                ("instruction_id", pa.string()),
                ("base", pa.float64()),
                ("tuned", pa.float64()),
                ("change_pct", pa.float64()),
            ]
        ),
    )


def plot_model_comparison(table: pa.Table, path: str | Path, *, base: str, tuned: str) -> Path:
    rows = table.to_pylist()
    groups = list(dict.fromkeys(f"{r['roi']}\n{r['instruction_id']}" for r in rows))
    look = {(f"{r['roi']}\n{r['instruction_id']}", s): r[s] for r in rows for s in ("base", "tuned")}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(groups) + 1), 3.4))
    _grouped_bars(ax, groups, ["base", "tuned"], lambda g, s: look.get((g, s)))
    ax.legend([base.split("/")[-1], tuned.split("/")[-1]], fontsize=7)
    ax.set_ylabel("score at best layer")
    ax.set_title("base vs instruction-tuned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---- brain maps ------------------------------------------------------------------------------
def _voxels(root, subject: str, tables) -> tuple[pa.Table, dict]:
    from .query import table_paths

    paths = table_paths(root, tables)
    if "voxels" not in paths:
        raise ValueError(f"voxels: no voxels table under {root}; brain maps need one")
    vt = open_table(paths["voxels"])
    vox = vt.to_table(filter=f"subject = {_q(subject)}").sort_by("voxel")
    return vox, vt.provenance.get("reference") or {}


def write_brain_map(
    values: np.ndarray, voxels: pa.Table, reference: Mapping, out_stem: str | Path, *, title: str = ""
) -> list[Path]:
    """Write per-voxel ``values (n_voxels,)`` back to the format the data came in, plus a PNG.

    ``reference`` is the voxels table's provenance ``reference`` written at ingest
    (NIfTI: shape and affine; GIFTI: vertices per hemisphere; CIFTI-2: brain-model structures).
    Returns the files written.
    """
    import nibabel as nib

    out_stem = Path(out_stem)
    fmt = reference.get("format")
    values = np.asarray(values, np.float32)
    v = voxels.to_pydict()
    written: list[Path] = []
    png = Path(f"{out_stem}.png")  # not with_suffix: stems may hold dots (text.describe)
    if fmt == "nifti":
        vol = np.full(tuple(reference["shape"]), np.nan, np.float32)
        vol[np.array(v["i"]), np.array(v["j"]), np.array(v["k"])] = values
        img = nib.Nifti1Image(vol, np.asarray(reference["affine"]))
        p = Path(f"{out_stem}.nii.gz")
        nib.save(img, p)
        written.append(p)
        _plot_volume(vol, png, title)
    elif fmt == "gifti":
        hemis = np.array(v["hemi"], dtype=object)
        for h, nv in reference["nvertices"].items():
            data = np.full(int(nv), np.nan, np.float32)
            m = hemis == h
            data[np.array(v["vertex"])[m]] = values[m]
            img = nib.GiftiImage(
                darrays=[
                    nib.gifti.GiftiDataArray(data, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32")
                ]
            )
            p = Path(f"{out_stem}.hemi-{h}.func.gii")
            nib.save(img, p)
            written.append(p)
        _plot_surface(values, hemis, png, title)
    elif fmt == "cifti":
        bm = None
        vert = np.array([-1 if x is None else x for x in v["vertex"]])
        ijk = np.stack([[-1 if x is None else x for x in v[c]] for c in "ijk"], 1)
        hemis = np.array(v["hemi"], dtype=object)
        for name, start, count in reference["structures"]:
            sl = slice(start, start + count)
            # voxels table rows are in grayordinate order; rebuild one brain model per structure
            if name in reference["nvertices"]:
                part = nib.cifti2.BrainModelAxis.from_surface(
                    vert[sl], reference["nvertices"][name], name=name
                )
            else:
                part = nib.cifti2.BrainModelAxis(
                    name=[name] * count,
                    voxel=ijk[sl],
                    affine=np.asarray(reference["affine"]),
                    volume_shape=tuple(reference["volume_shape"]),
                )
            bm = part if bm is None else bm + part
        if bm is None or len(bm) != len(values):
            raise ValueError(
                "voxels: cannot rebuild the CIFTI-2 brain models (were voxels dropped at ingest?)"
            )
        scalar = nib.cifti2.ScalarAxis([title or "score"])
        img = nib.Cifti2Image(values[None, :], header=(scalar, bm))
        p = Path(f"{out_stem}.dscalar.nii")
        nib.save(img, p)
        written.append(p)
        _plot_surface(values, hemis, png, title)
    else:
        p = Path(f"{out_stem}.npy")
        np.save(p, values)
        written.append(p)
        _plot_surface(values, np.array(["all"] * len(values), dtype=object), png, title)
    written.append(png)
    return written


def _plot_volume(vol: np.ndarray, path: Path, title: str) -> None:
    """Axial slices (up to 12, evenly spaced through the slices that hold data)."""
    has = np.flatnonzero(np.isfinite(vol).any((0, 1)))
    ks = has[np.linspace(0, len(has) - 1, min(12, len(has))).astype(int)] if len(has) else [vol.shape[2] // 2]
    ncol = min(6, len(ks))
    nrow = -(-len(ks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.0 * ncol, 2.0 * nrow + 0.4), squeeze=False)
    finite = vol[np.isfinite(vol)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    im = None
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), ks, strict=False):
        im = ax.imshow(np.rot90(vol[:, :, k]), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"k={k}", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_surface(values: np.ndarray, hemis: np.ndarray, path: Path, title: str) -> None:
    """Without surface geometry, vertices are drawn in index order as a square heat map per
    hemisphere (or structure group)."""
    groups = [h for h in dict.fromkeys(hemis.tolist())]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.0 * len(groups), 3.2), squeeze=False)
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    im = None
    for ax, h in zip(axes[0], groups, strict=True):
        vals = values[hemis == h]
        side = int(np.ceil(np.sqrt(vals.size)))
        grid = np.full(side * side, np.nan, np.float32)
        grid[: vals.size] = vals
        im = ax.imshow(grid.reshape(side, side), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{h if h is not None else 'volume'} (vertex order)", fontsize=8)
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the report --------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    page: Path
    figures: dict[str, str] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)
    tables: dict[str, list] = field(default_factory=dict)


def _md_table(rows: list[dict], digits: int = 3) -> str:
    if not rows:
        return "_(no rows)_\n"
    cols = list(rows[0])
    fmt = lambda x: f"{x:.{digits}f}" if isinstance(x, float) else ("" if x is None else str(x))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict], digits: int = 3) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    cols = list(rows[0])
    fmt = lambda x: f"{x:.{digits}f}" if isinstance(x, float) else ("" if x is None else str(x))  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(
    root: str | Path,
    fit: str,
    out: str | Path,
    *,
    tables: Mapping | None = None,
    partition_fit: str | None = None,
    compare: Sequence[str] | None = None,
    page_format: str = "html",
    maps: bool = True,
    max_maps: int = 4,
    progress=None,
) -> Report:
    """Write the figures, brain maps and a summary page (``index.html`` or ``index.md``) for ``fit``.

    Parameters
    ----------
    partition_fit : a fit name in the partitions table to draw partition bars for.
    compare : ``(base_model, tuned_model)`` for the base vs instruction-tuned comparison.
    maps : write brain maps of each (model, instruction) at its best layer (up to ``max_maps``).
    progress : called with a message per figure and map; a
        :class:`brainalign.cli.progress.Progress` also gets their count.
    """
    n_figs = 2 + bool(partition_fit) + bool(compare)
    count = {"done": 0, "total": n_figs + (max_maps if maps else 0)}  # maps: at most; known later

    def say(message: str) -> None:  # a figure or a map begins
        tick(progress, "report", count["done"], count["total"], unit="figure", message=message)
        count["done"] += 1

    if page_format not in ("html", "md"):
        raise ValueError(f"format: expected 'html' or 'md', got {page_format!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = run_query(
        f"SELECT count(*) AS n, any_value(subject) AS subject FROM scores WHERE fit = {_q(fit)}",
        root,
        tables=tables,
    ).to_pylist()[0]
    if not n["n"]:
        fits = (
            run_query("SELECT DISTINCT fit FROM scores ORDER BY fit", root, tables=tables)
            .column("fit")
            .to_pylist()
        )
        raise ValueError(f"fit: no scores for fit {fit!r}; the scores table has {fits}")
    metric = _metric(root, fit, tables)
    ylabel = "mean ceiling-normalised r" if metric == "s.r_norm" else "mean held-out r"
    rep = Report(out=out, page=out / f"index.{page_format}")
    say("layer profiles")
    prof = layer_profile(root, fit, tables=tables, metric=metric)
    rep.figures["layer profile per ROI"] = plot_layer_profiles(
        prof, out / "layer_profiles.png", value="score", ylabel=ylabel, title=f"{fit}: {ylabel} by layer"
    ).name
    say("instructions per ROI")
    ins = instruction_profile(root, fit, tables=tables, metric=metric)
    rep.figures["instructions per ROI (best layer)"] = plot_instructions(
        ins, out / "instructions.png", ylabel=ylabel
    ).name
    rep.tables["best layer per ROI and instruction"] = ins.to_pylist()
    if partition_fit:
        say("partition bars")
        pp = partition_profile(root, partition_fit, tables=tables)
        if len(pp) == 0:
            raise ValueError(f"partition_fit: no partitions for fit {partition_fit!r} joined with voxel ROIs")
        rep.figures["variance partition per ROI"] = plot_partition_bars(
            pp, out / "partitions.png", title=f"{partition_fit}"
        ).name
        rep.tables["variance partition per ROI"] = pp.to_pylist()
    if compare:
        if len(compare) != 2:
            raise ValueError(f"compare: expected BASE and TUNED model ids, got {list(compare)}")
        say("base vs instruction-tuned")
        cmp = model_comparison(ins, compare[0], compare[1])
        rep.figures["base vs instruction-tuned"] = plot_model_comparison(
            cmp, out / "base_vs_tuned.png", base=compare[0], tuned=compare[1]
        ).name
        rep.tables["base vs instruction-tuned"] = cmp.to_pylist()
    if maps:
        vox, ref = _voxels(root, n["subject"], tables)
        best = run_query(
            f"""WITH prof AS (SELECT model, instruction_id, layer, avg({metric.replace("s.", "")}) AS score
                  FROM scores WHERE fit = {_q(fit)} GROUP BY ALL)
                SELECT model, instruction_id, arg_max(layer, score) AS layer FROM prof GROUP BY ALL
                ORDER BY model, instruction_id LIMIT {int(max_maps)}""",
            root,
            tables=tables,
        ).to_pylist()
        count["total"] = n_figs + len(best)
        for b in best:
            say(f"brain map of {b['model']}, {b['instruction_id']}, layer {b['layer']}")
            vals = run_query(
                f"""SELECT voxel, {metric.replace("s.", "")} AS v FROM scores WHERE fit = {_q(fit)}
                    AND subject = {_q(n["subject"])} AND model = {_q(b["model"])}
                    AND instruction_id = {_q(b["instruction_id"])} AND layer = {int(b["layer"])} ORDER BY voxel""",
                root,
                tables=tables,
            )
            arr = np.full(len(vox), np.nan, np.float32)
            idx = np.asarray(vals.column("voxel").to_numpy())
            arr[idx] = np.asarray(vals.column("v").to_numpy(zero_copy_only=False), dtype=np.float32)
            name = f"map_{b['model'].split('/')[-1]}_{b['instruction_id']}_layer{b['layer']}"
            stem = out / re.sub(r"[^\w.-]", "_", name)
            title = f"{b['model']}: {b['instruction_id']}, layer {b['layer']} ({ylabel})"
            files = write_brain_map(arr, vox, ref, stem, title=title)
            rep.maps += [f.name for f in files]
    _write_page(rep, fit, ylabel, page_format)
    tick(progress, "report", count["done"], count["done"], unit="figure")
    return rep


def _write_page(rep: Report, fit: str, ylabel: str, page_format: str) -> None:
    if page_format == "md":
        parts = [f"# brainalign report: fit `{fit}`\n", f"Score: {ylabel}.\n"]
        for name, fig in rep.figures.items():
            parts.append(f"## {name}\n\n![{name}]({fig})\n")
        for name, rows in rep.tables.items():
            parts.append(f"## {name}\n\n{_md_table(rows)}")
        if rep.maps:
            parts.append("## brain maps\n\n" + "\n".join(f"- [{m}]({m})" for m in rep.maps) + "\n")
        rep.page.write_text("\n".join(parts))
        return
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>brainalign report: {html.escape(fit)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}</style></head><body>",
        f"<h1>brainalign report: fit <code>{html.escape(fit)}</code></h1><p>Score: {html.escape(ylabel)}.</p>",
    ]
    for name, fig in rep.figures.items():
        parts.append(
            f"<h2>{html.escape(name)}</h2><a href='{html.escape(fig)}'><img src='{html.escape(fig)}'></a>"
        )
    for name, rows in rep.tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_html_table(rows)}")
    if rep.maps:
        parts.append(
            "<h2>brain maps</h2><ul>"
            + "".join(f"<li><a href='{html.escape(m)}'>{html.escape(m)}</a></li>" for m in rep.maps)
            + "</ul>"
        )
    parts.append(f"<!-- {html.escape(json.dumps({'fit': fit}))} --></body></html>")
    rep.page.write_text("\n".join(parts))
