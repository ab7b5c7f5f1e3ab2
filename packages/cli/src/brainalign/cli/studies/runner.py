"""Run a study recipe end to end: embed (or pull) -> ingest -> fit -> partition -> report.

Every stage writes into one output folder and can be rerun: embedding resumes (units already
stored are skipped), ingest replaces rows with the same keys, fits and partitions replace rows
of the same fit name. Layout::

    OUT/
      plan.json                    the resolved recipe and the plan (what --dry-run prints)
      features/<model>.lance       one features table per model (all datasets' stimulus sets)
      <dataset>/responses.lance    responses, voxels, scores and partitions of one dataset
      <dataset>/voxels.lance
      <dataset>/scores.lance
      <dataset>/partitions.lance
      <dataset>/report/            figures and brain maps of the dataset (brainalign report)
      index.html                   the study page: every table and figure the recipe promises

The study tables (see :func:`study_tables`) compare instructions within a model, models, and
model groups (e.g. instruction-tuned vs non-instruction-tuned vs unimodal), and summarise each
variance partition per ROI.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import RecipeError, ReportPart, StudyDataset, dataset_class, over_ceiling_sql
from .recipe import DataSpec, ModelSpec, PartitionSpec, Recipe, fit_preset

STAGES = ("embed", "ingest", "fit", "partition", "report")
Progress = Callable[[str], None]


@dataclass
class RunContext:
    """One dataset of a running recipe: where its tables are and what was fitted."""

    recipe: Recipe
    data: DataSpec
    dataset: StudyDataset
    dir: Path
    tables: dict[str, Path]
    features: dict[str, Path] = field(default_factory=dict)
    stimulus_sets: dict[str, str] = field(default_factory=dict)
    fit: str = ""
    subjects: list[str] = field(default_factory=list)
    metric: str = "r"
    summaries: list[Any] = field(default_factory=list)
    partition_fits: list[dict] = field(default_factory=list)
    report: ReportPart = field(default_factory=ReportPart)

    @property
    def models(self) -> list[ModelSpec]:
        return self.recipe.models_for(self.data)


@dataclass
class Plan:
    """What a recipe will do (``brainalign run --dry-run``)."""

    study: str
    datasets: list[dict] = field(default_factory=list)
    embeds: list[dict] = field(default_factory=list)
    fits: list[dict] = field(default_factory=list)
    partitions: list[dict] = field(default_factory=list)
    storage_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"study {self.study}"]
        for d in self.datasets:
            lines.append(
                f"  data {d['name']} ({d['dataset']}) at {d['root']}: subjects {d.get('subjects')}, "
                + ", ".join(
                    f"{k} {v}" for k, v in d.items() if k in ("n_samples", "n_voxels", "runs", "test_runs")
                )
            )
        for e in self.embeds:
            if e["source"] == "pull":
                lines.append(
                    f"  pull {e['model']} for {e['data']} from {e['repo']}@{e.get('revision') or 'main'}: "
                    f"{len(e['instructions'])} instruction(s)"
                )
                continue
            if e["source"] == "table":
                lines.append(
                    f"  table {e['model']} for {e['data']}: {e.get('rows', 0):,} stored rows, "
                    f"{e.get('n_layers', '?')} layer(s), {len(e['instructions'])} instruction(s) ({e['table']})"
                )
                continue
            rows = "?" if e.get("rows") is None else f"{e['rows']:,}"
            size = "" if e.get("bytes") is None else f", ~{_human(e['bytes'])}"
            lines.append(
                f"  embed {e['model']} on {e['data']}: {e.get('n_items', '?')} stimuli x "
                f"{len(e['instructions'])} instruction(s) x {e.get('n_layers', '?')} layer(s) -> {rows} rows{size}"
            )
        for f in self.fits:
            lines.append(
                f"  fit {f['model']} on {f['data']}: {len(f['subjects'])} subject(s) x "
                f"{f.get('n_spaces') or '?'} space(s), test runs {f['test_runs']}"
            )
        for p in self.partitions:
            lines.append(f"  partition {p['name']} ({p['model']}): {p['selections']}")
        if self.storage_bytes is not None and any(e["source"] == "embed" for e in self.embeds):
            lines.append(f"  estimated storage of the new embeddings: {_human(self.storage_bytes)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class RunResult:
    out: Path
    page: Path | None
    tables: dict[str, list[dict]]
    contexts: dict[str, RunContext]
    seconds: dict[str, float]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _q(v: Any) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


# ---- checks ---------------------------------------------------------------------------------
def expand_instructions(ids: Sequence[str]) -> list[str]:
    """Registry ids with ``family:<name>`` expanded, in order, without repeats."""
    from brainalign.features.instructions import resolve_instructions

    try:
        return list(dict.fromkeys(i.id for i in resolve_instructions(list(ids))))
    except (KeyError, ValueError) as exc:
        raise RecipeError(f"instructions: {exc}") from exc


def _looks_local(checkpoint: str) -> bool:
    return checkpoint.startswith(("/", "./", "../", "~")) or Path(checkpoint).expanduser().exists()


_SQL_INSTRUCTION = re.compile(r"instruction_id\s*=\s*'([^']*)'")


def open_datasets(recipe: Recipe) -> dict[str, StudyDataset]:
    """Instantiate every dataset loader and run every check; raise one :class:`RecipeError`."""
    problems: list[str] = []
    loaders: dict[str, StudyDataset] = {}
    for d in recipe.data:
        try:
            cls = dataset_class(d.dataset)
        except RecipeError as exc:
            problems += exc.problems
            continue
        opts = {k: v for k, v in d.options.items() if k != "fit"}  # `fit` is the runner's
        if d.subjects:
            opts["subjects"] = d.subjects
        loader = cls(d.root, opts)
        if not d.root.exists():
            problems.append(f"data ({d.name}).root: no such directory {d.root} (point --data at your copy)")
            continue
        problems += [f"data ({d.name}): {p}" for p in loader.check()]
        for m in recipe.models_for(d):
            if cls.kind == "fmri" and m.source == "embed" and m.modality not in cls.modalities:
                problems.append(
                    f"models ({m.name}).modality: {d.dataset} provides {list(cls.modalities)}, got {m.modality!r}"
                )
        loaders[d.name] = loader
    for m in recipe.models:
        try:
            ids = expand_instructions(m.instructions)
        except RecipeError as exc:
            problems.append(f"models ({m.name}).{exc}")
            continue
        if m.source == "embed" and m.checkpoint and _looks_local(m.checkpoint):
            if not (Path(m.checkpoint).expanduser() / "config.json").exists():
                problems.append(f"models ({m.name}).checkpoint: {m.checkpoint} has no config.json")
        if m.source == "table" and not Path(m.table).exists():
            problems.append(f"models ({m.name}).table: no such features table {m.table}")
        elif m.source == "table":
            problems += _matched_dimensionality(recipe, m)
        for p in recipe.partitions:
            if p.model not in ("*", m.name):
                continue
            needed = [p.reference] if p.reference else []
            needed += p.instructions or []
            # instruction ids named inside the selections' SQL (spaces = {a = "instruction_id = '…'"})
            needed += [i for w in (p.spaces or {}).values() for i in _SQL_INSTRUCTION.findall(w)]
            missing = [i for i in needed if i not in ids]
            if missing and p.model == m.name:
                problems.append(
                    f"partitions ({p.name}): instruction(s) {missing} are not among {m.name}'s instructions {ids}"
                )
    if problems:
        raise RecipeError(problems)
    return loaders


def _matched_dimensionality(recipe: Recipe, m: ModelSpec) -> list[str]:
    """A supplied table narrower than the fit's PCA would not be reduced to the same number of
    components as the other models (PCA keeps at most the table's width): say so up front."""
    from brainalign.features import open_table

    try:
        dim = open_table(m.table).schema.field("embedding").type.list_size
    except Exception as exc:  # any unreadable table is one listed problem
        return [f"models ({m.name}).table: cannot read {m.table}: {' '.join(str(exc).split())}"]
    out = []
    for d in recipe.data:
        if m not in recipe.models_for(d):
            continue
        try:
            pca = fit_preset(fit_settings(recipe, d)).pca
        except Exception:  # bad fit settings are reported by their own check
            continue
        if pca and dim < pca:
            out.append(
                f"models ({m.name}).table: embeddings of {dim} dimensions, but [fit] pca = {pca} reduces "
                f"every model of {d.name} to {pca} components; set pca <= {dim} so that the spaces are "
                "compared at matched dimensionality"
            )
    return out


# ---- plan ---------------------------------------------------------------------------------
_HUB_UNREACHABLE = False  # set by the first failed connection: later models skip the Hub


def _hub_config(repo: str, revision: str | None) -> dict | None:
    """A Hub checkpoint's ``config.json`` (a few kB, never the weights): from the local cache,
    else one request to the Hub (no retries, 5 s timeout) unless ``HF_HUB_OFFLINE`` is set or an
    earlier request found the Hub unreachable. None when it cannot be had."""
    global _HUB_UNREACHABLE
    import os

    try:
        from huggingface_hub import constants, get_session, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.utils import build_hf_headers

        hit = try_to_load_from_cache(repo, "config.json", revision=revision)
        if isinstance(hit, str):
            return json.loads(Path(hit).read_text())
    except Exception:  # an unusable cache entry or repo id: the shape stays unknown
        return None
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )
    if offline or _HUB_UNREACHABLE:
        return None
    try:
        r = get_session().get(
            hf_hub_url(repo, "config.json", revision=revision),
            headers=build_hf_headers(),  # the user's token, for gated repos; never shown
            timeout=5,
            follow_redirects=True,
        )
    except Exception:  # no network, DNS, timeout: do not try again for the other models
        _HUB_UNREACHABLE = True
        return None
    if r.status_code != 200:  # unknown or gated repo, revision or file: this model only
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _model_shape(m: ModelSpec) -> tuple[int | None, int | None]:
    """(number of hidden states incl. embeddings, hidden size) from the checkpoint's config (a
    local directory's, else the Hub's ``config.json``: :func:`_hub_config`), else (None, None);
    the plan then says the shape is read at embed time."""
    if not m.checkpoint:
        return None, None
    if _looks_local(m.checkpoint):
        try:
            cfg = json.loads((Path(m.checkpoint).expanduser() / "config.json").read_text())
        except (OSError, ValueError):
            return None, None
    else:
        cfg = _hub_config(m.checkpoint, m.revision)
        if not isinstance(cfg, dict):
            return None, None
    for sub in ("text_config", "thinker_config", "llm_config", None):
        c = cfg.get(sub, {}) if sub else cfg
        if sub == "thinker_config":
            c = c.get("text_config", c)
        n = c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers")
        h = c.get("hidden_size") or c.get("n_embd") or c.get("d_model")
        if n and h:
            return int(n) + 1, int(h)
    return None, None


def _n_layers(sel: Any, n_states: int | None) -> int | None:
    if sel == "all" or sel is None:
        return n_states
    if isinstance(sel, (list, tuple)):
        return len(sel)
    return n_states


def plan_recipe(recipe: Recipe, loaders: dict[str, StudyDataset] | None = None) -> Plan:
    """Check the recipe and its data, and say what running it will do."""
    loaders = loaders or open_datasets(recipe)
    plan = Plan(study=recipe.name)
    total = 0
    known = True
    for d in recipe.data:
        loader = loaders[d.name]
        info = {"name": d.name, "dataset": d.dataset, "root": str(d.root), "subjects": loader.subjects()}
        if loader.kind == "fmri":
            info.update(loader.summary())
            info["test_runs"] = loader.test_runs()
        plan.datasets.append(info)
        if loader.kind != "fmri":
            names = [m.name for m in recipe.models_for(d)]
            plan.notes.append(f"{d.name} ({loader.kind}): analysed at the report stage with {names}")
            continue
        for m in recipe.models_for(d):
            ids = expand_instructions(m.instructions)
            entry: dict[str, Any] = {"model": m.name, "data": d.name, "source": m.source, "instructions": ids}
            if m.source == "embed" and loader.kind == "fmri":
                n_items, stimulus_set = loader.plan_items(
                    m.modality, **recipe.embed["modalities"].get(m.modality, {})
                )
                n_states, dim = _model_shape(m)
                n_layers = _n_layers(m.layers, n_states)
                n_comp = len(m.components) if m.components else 1
                entry.update(n_items=n_items, n_layers=n_layers, stimulus_set=stimulus_set)
                if n_layers is not None and dim is not None:
                    rows = n_items * len(ids) * n_layers * len(m.pooling) * n_comp
                    width = 2 if recipe.embed.get("storage_dtype", "float32") == "float16" else 4
                    entry.update(rows=rows, bytes=rows * dim * width)
                    total += rows * dim * width
                else:
                    known = False
                    entry["rows"] = None
            elif m.source == "table" and loader.kind == "fmri":
                entry.update(table=str(m.table), **_table_counts(Path(m.table), m.name))
            elif m.source == "pull":
                entry.update(repo=m.repo, revision=m.pull_revision)
            plan.embeds.append(entry)
            if loader.kind == "fmri":
                n_spaces = None
                if entry.get("n_spaces"):
                    n_spaces = entry.pop("n_spaces")
                elif entry.get("n_layers"):
                    n_spaces = len(ids) * entry["n_layers"] * len(m.pooling) * (len(m.components or [1]))
                plan.fits.append(
                    {
                        "model": m.name,
                        "data": d.name,
                        "subjects": info["subjects"],
                        "n_spaces": n_spaces,
                        "test_runs": info["test_runs"],
                    }
                )
        for p in recipe.partitions:
            for m in recipe.models_for(d):
                if p.model in ("*", m.name) and loader.kind == "fmri":
                    for sel in _partition_selections(p, m, layer="best"):
                        plan.partitions.append(
                            {"name": p.name, "model": m.name, "data": d.name, "selections": list(sel)}
                        )
    plan.storage_bytes = total
    if not known:
        plan.notes.append(
            "some checkpoints are neither local nor in the Hugging Face cache: their layer counts are "
            "read at embed time and the storage estimate leaves them out"
        )
    return plan


def _table_counts(path: Path, model: str) -> dict[str, int]:
    """Rows, layers and feature spaces of ``model`` in a features table (reads key columns only)."""
    from brainalign.features import open_table

    t = open_table(path).to_table(
        columns=["instruction_id", "component", "layer", "pooling"], filter=f"model = {_q(model)}"
    )
    spaces = t.group_by(t.column_names).aggregate([])
    return {"rows": len(t), "n_layers": len(set(t.column("layer").to_pylist())), "n_spaces": len(spaces)}


# ---- stages -------------------------------------------------------------------------------
def _embed_kwargs(recipe: Recipe, m: ModelSpec) -> dict[str, Any]:
    opts = {k: v for k, v in recipe.embed.items() if k != "modalities"}
    opts.update(m.embed)
    kw: dict[str, Any] = {
        "batch_size": int(opts.pop("batch_size", 8)),
        "max_new_tokens": int(opts.pop("max_new_tokens", 32)),
        "seed": int(opts.pop("seed", 0)),
        "storage_dtype": opts.pop("storage_dtype", "float32"),
    }
    for k in ("dtype", "device", "device_map", "attn_implementation", "use_chat_template"):
        v = opts.pop(k, None)
        if v is not None and v != "auto":
            kw[k] = v
    if m.revision:
        kw["revision"] = m.revision
    if m.trust_remote_code:
        kw["trust_remote_code"] = True
    if m.components:
        kw["components"] = list(m.components)
    return kw


def _features_for(ctx: RunContext, m: ModelSpec, out: Path, say: Progress, *, embed: bool) -> None:
    recipe, loader = ctx.recipe, ctx.dataset
    if m.source == "table":
        ctx.features[m.name] = Path(m.table)
        ctx.stimulus_sets[m.name] = _stimulus_set_of(Path(m.table), m.name, ctx)
        return
    if m.source == "pull":
        from brainalign.features.hub import pull

        say(f"pulling {m.name} from {m.repo} ({m.pull_revision or 'main'})")
        store = pull(m.repo, revision=m.pull_revision, model=m.name)
        ctx.features[m.name] = Path(str(store.uri))
        ctx.stimulus_sets[m.name] = _stimulus_set_of(ctx.features[m.name], m.name, ctx)
        return
    man = loader.manifest(m.modality, **recipe.embed["modalities"].get(m.modality, {}))
    path = out / "features" / f"{_slug(m.name)}.lance"
    ctx.features[m.name] = path
    ctx.stimulus_sets[m.name] = man.stimulus_set
    if path.exists():
        _same_checkpoint(path, m)
    if not embed:
        return
    from brainalign.features.extract import embed as run_embed

    say(f"embedding {len(man.items)} {m.modality} stimuli with {m.name} ({m.checkpoint})")
    path.parent.mkdir(parents=True, exist_ok=True)
    run_embed(
        man,
        m.checkpoint,
        expand_instructions(m.instructions),
        store=str(path),
        layers=m.layers,
        pooling=list(m.pooling),
        model_name=m.name,
        progress=False,
        **_embed_kwargs(recipe, m),
    )


def _same_checkpoint(path: Path, m: ModelSpec) -> None:
    """Refuse to resume into a features table embedded with another checkpoint or revision
    (resuming skips stored units by their keys, which do not name the checkpoint)."""
    from brainalign.features import open_table

    prov = open_table(path).provenance
    old, old_rev = prov.get("model"), prov.get("revision_requested")
    if (old is not None and str(old) != str(m.checkpoint)) or (
        m.revision and old_rev and old_rev != m.revision
    ):
        raise RecipeError(
            f"models ({m.name}): {path} holds embeddings of {old}"
            + (f"@{old_rev}" if old_rev else "")
            + f", the recipe now names {m.checkpoint}"
            + (f"@{m.revision}" if m.revision else "")
            + "; write to a new --out folder or give the model a new name"
        )


def _stimulus_set_of(path: Path, model: str, ctx: RunContext) -> str:
    from brainalign.features import open_table

    t = open_table(path)
    sets = sorted(
        set(t.to_table(columns=["stimulus_set"], filter=f"model = {_q(model)}").column(0).to_pylist())
    )
    if not sets:
        raise RecipeError(f"models ({model}): the features table {path} has no rows with model = {model!r}")
    exact = [s for s in sets if s in (ctx.data.name, ctx.data.dataset)]
    prefix = [s for s in sets if s.startswith(ctx.data.name) or s.startswith(ctx.data.dataset)]
    if not exact and len(prefix) > 1:
        raise RecipeError(
            f"models ({model}): the features table {path} holds the stimulus sets {sets}; "
            f"name the dataset after one of them ([[data]] name) so the right one is joined"
        )
    return (exact or prefix or sets)[0]


def fit_settings(recipe: Recipe, data: DataSpec) -> dict[str, Any]:
    """The recipe's ``[fit]`` with the dataset's own ``fit`` table on top (``[[data]] fit = {...}``:
    datasets of one recipe may need other alignment, e.g. sentence betas vs word-level stories)."""
    return {**recipe.fit, **(data.options.get("fit") or {})}


def _fit(ctx: RunContext, say: Progress) -> None:
    from ..fitting import DEFAULT_ALPHAS, fit_scores
    from ..progress import tick

    recipe, loader = ctx.recipe, ctx.dataset
    fit = fit_settings(recipe, ctx.data)
    preset = fit_preset(fit)
    # one batched fit per (subject, model, instruction): every layer, pooling and component of
    # an instruction together (one compiled program, reused across instructions of the same
    # shape), which bounds memory for 7B models (e.g. 33 layers x 10k images x 4096 dims);
    # [fit] batch = "model" fits all of a model's instructions in one call instead
    per_model = fit.get("batch", "instruction") == "model"
    # and the layers of one call in chunks that fit the memory budget ([fit] max_gb)
    chunks = {m.name: _layer_chunks(ctx, m, preset, float(fit.get("max_gb", 16.0))) for m in ctx.models}
    calls = [
        (subject, m, ids, layers)
        for subject in ctx.subjects
        for m in ctx.models
        for ids in (
            [expand_instructions(m.instructions)]
            if per_model
            else [[i] for i in expand_instructions(m.instructions)]
        )
        for layers in chunks[m.name]
    ]
    ceilings: dict[str, Any] = {}
    for done, (subject, m, ids, layers) in enumerate(calls):
        runs_where, test_runs = _subject_scope(loader, subject)
        if subject not in ceilings:
            ceilings[subject] = loader.ceiling(ctx.tables["responses"], subject)
        what = m.name if per_model else f"{m.name} / {ids[0]}"
        if len(chunks[m.name]) > 1:
            what += f", layers {layers[0]}-{layers[-1]}"
        tick(
            say,
            "fits",
            done,
            len(calls),
            unit="fit",
            message=f"fitting {what} for {subject} ({ctx.data.name})",
        )
        s = fit_scores(
            ctx.features[m.name],
            ctx.tables["responses"],
            ctx.tables["scores"],
            fit_name=ctx.fit,
            test_runs=test_runs,
            subject=subject,
            model=m.name,
            instruction=ids,
            pooling=list(m.pooling),
            layer=layers,
            where=f"stimulus_set = {_q(ctx.stimulus_sets[m.name])}{runs_where}",
            preset=preset,
            alphas=fit.get("alphas", DEFAULT_ALPHAS),
            folds=fit.get("folds", "runs"),
            ceiling=ceilings[subject],
            min_ceiling=float(fit.get("min_ceiling", 0.0)),
            allow_trim=bool(fit.get("allow_trim", False)),
            progress=say,
        )
        ctx.summaries.append(s)
    tick(say, "fits", len(calls), len(calls), unit="fit")


def _layer_chunks(ctx: RunContext, m: ModelSpec, preset, max_gb: float) -> list[list[int] | None]:
    """The layers of ``m`` in groups whose batched fit fits in ``max_gb`` (``[None]``: all at
    once). Per layer, one call holds the design (samples x features x delays, a few copies while
    aligning), the weights (features x delays x voxels) and the test predictions."""
    from brainalign.features import open_table

    t = open_table(ctx.features[m.name])
    dim = t.schema.field("embedding").type.list_size
    keys = t.to_table(
        columns=["layer", "component", "pooling"],
        filter=f"model = {_q(m.name)} AND stimulus_set = {_q(ctx.stimulus_sets[m.name])}",
    )
    layers = sorted(set(keys.column("layer").to_pylist()))
    if not layers:
        return [None]
    info = ctx.dataset.summary()

    # Per-subject datasets (NSD) give these as {subject: count}: the largest subject sizes the chunks.
    def _largest(x) -> int:
        return int(max(x.values(), default=0) if isinstance(x, dict) else (x or 0))

    n, v = _largest(info.get("n_samples", 0)), _largest(info.get("n_voxels", 0))
    spaces_per_layer = max(
        1,
        len(set(zip(keys.column("component").to_pylist(), keys.column("pooling").to_pylist(), strict=True))),
    )
    p = (preset.pca or dim) * len(preset.delays)
    per_layer = spaces_per_layer * 4 * (3 * n * p + p * v + 2 * n * v)
    k = max(1, int(max_gb * 2**30 // max(per_layer, 1)))
    if k >= len(layers):
        return [None]
    return [layers[i : i + k] for i in range(0, len(layers), k)]


def _subject_scope(loader: StudyDataset, subject: str) -> tuple[str, list[str]]:
    """(extra feature filter, held-out runs) of one subject's fits. When every subject has
    their own runs in one stimulus set (:meth:`StudyDataset.subject_runs`, e.g. gameplay), a
    subject's fit joins only its own runs and holds out only its own test runs."""
    runs = loader.subject_runs(subject)
    test_runs = loader.test_runs()
    if runs is None:
        return "", test_runs
    return f" AND run IN ({', '.join(_q(r) for r in runs)})", [r for r in test_runs if r in runs]


def _score_expr(ctx: RunContext) -> str:
    return "median" if ctx.recipe.report.get("aggregate", "mean") == "median" else "avg"


def _score_sql(ctx: RunContext, alias: str = "") -> str:
    """The aggregate score over voxels of one group of scores rows, as SQL.

    ``[report] normalize = "voxel"`` (default): the aggregate of ``r_norm`` (each voxel's r over
    its own ceiling, where the ceiling passes ``min_ceiling``). ``"aggregate"``: the aggregate of
    r divided by the median ceiling of the group's voxels (Brain-Score's order). Without
    ceilings, the aggregate of r.
    """
    agg, a = _score_expr(ctx), alias
    if ctx.metric == "r_norm" and ctx.recipe.report.get("normalize", "voxel") == "aggregate":
        return over_ceiling_sql(agg, a)
    return f"{agg}({a}{ctx.metric})"


def _score_label(ctx: RunContext) -> str:
    agg = ctx.recipe.report.get("aggregate", "mean")
    if ctx.metric != "r_norm":
        return f"{agg} over voxels of held-out Pearson r"
    if ctx.recipe.report.get("normalize", "voxel") == "aggregate":
        return f"{agg} over voxels of held-out Pearson r, divided by the median ceiling"
    return f"{agg} over voxels of ceiling-normalised r"


def _query(ctx: RunContext, sql: str):
    from ..query import run_query

    return run_query(sql, ctx.dir, tables={k: v for k, v in ctx.tables.items() if v.exists()})


def _detect_metric(ctx: RunContext) -> str:
    n = _query(ctx, f"SELECT count(r_norm) AS n FROM scores WHERE fit = {_q(ctx.fit)}").column(0)[0].as_py()
    return "r_norm" if n else "r"


def layer_scores(ctx: RunContext, *, cv: bool = False) -> dict[tuple[str, str, str, str, int], float]:
    """(model, instruction_id, component, pooling, layer) -> aggregate held-out score of the
    fit, averaged over subjects (the score of the study tables). ``cv=True``: the mean over
    voxels of the validation score over the training runs' folds instead, which chooses layers
    without looking at the test runs."""
    expr = "avg(cv_score)" if cv else _score_sql(ctx)
    rows = _query(
        ctx,
        f"""WITH per AS (SELECT subject, model, instruction_id, component, pooling, layer,
                                {expr} AS score
                         FROM scores s SEMI JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
                         WHERE fit = {_q(ctx.fit)} GROUP BY ALL)
            SELECT model, instruction_id, component, pooling, layer, avg(score) AS score FROM per GROUP BY ALL""",
    ).to_pylist()
    return {
        (r["model"], r["instruction_id"], r["component"], r["pooling"], int(r["layer"])): r["score"]
        for r in rows
        if r["score"] is not None
    }


def partition_layer(
    scores: dict, model: str, instructions: Sequence[str], comp: str, pool: str
) -> int | None:
    """The layer of a partition: where the selections' instructions predict best on average
    in ``scores`` (the runner passes training-CV scores; symmetric in the selections, so no
    selection is favoured); ``None`` without scores."""
    by_layer: dict[int, list[float]] = {}
    for (m, ins, c, p, layer), v in scores.items():
        if m == model and c == comp and p == pool and ins in instructions:
            by_layer.setdefault(layer, []).append(v)
    full = {k: np.mean(v) for k, v in by_layer.items() if len(v) == len(set(instructions))}
    return max(full, key=full.get) if full else None


def _partition_selections(p: PartitionSpec, m: ModelSpec, layer: Any):
    """Yield {name: SQL} selections of one partition spec for one model (before keys are added)."""
    if p.spaces:
        yield dict(p.spaces)
        return
    ids = expand_instructions(m.instructions)
    if p.reference not in ids:
        return  # e.g. a baseline without prompts under model = "*"
    others = p.instructions or [i for i in ids if i != p.reference]
    for ins in others:
        if ins == p.reference or ins not in ids:
            continue
        yield {
            _slug(ins).replace(".", "_"): f"instruction_id = {_q(ins)}",
            _slug(p.reference).replace(".", "_"): f"instruction_id = {_q(p.reference)}",
        }


def _space_columns(ctx: RunContext, m: ModelSpec) -> tuple[str, str]:
    """The component and pooling a partition of ``m`` uses: ``lm`` (or the first component) and
    the model's first pooling."""
    from brainalign.features import open_table

    t = open_table(ctx.features[m.name]).to_table(
        columns=["component"],
        filter=f"model = {_q(m.name)} AND stimulus_set = {_q(ctx.stimulus_sets[m.name])}",
    )
    comps = sorted(set(t.column(0).to_pylist()))
    comp = "lm" if "lm" in comps else (comps[0] if comps else "lm")
    return comp, m.pooling[0]


def _partition(ctx: RunContext, say: Progress) -> None:
    from ..fitting import DEFAULT_ALPHAS
    from ..partition import partition_variance

    recipe = ctx.recipe
    # the partition layer is chosen on the training runs' CV scores: the partition is scored
    # on the test runs, so choosing by test scores would bias its totals upwards
    scores = layer_scores(ctx, cv=True)
    fit = fit_settings(recipe, ctx.data)
    preset = fit_preset(fit)
    for p in recipe.partitions:
        for m in ctx.models:
            if p.model not in ("*", m.name):
                continue
            comp, pool = _space_columns(ctx, m)
            for sel in _partition_selections(p, m, p.layer):
                ids = [x.group(1) for w in sel.values() if (x := _SQL_INSTRUCTION.search(w))]
                layer = p.layer
                if layer == "best":
                    # symmetric in the selections: the layer where they predict best on average
                    layer = partition_layer(
                        scores, m.name, ids or expand_instructions(m.instructions), comp, pool
                    )
                    if layer is None:
                        raise RecipeError(
                            f"partitions ({p.name}): no scores of {m.name} for {ids} to choose a layer "
                            "from; run the fit stage first, or give layer = N"
                        )
                first_layer = int(layer)
                full = {
                    name: (
                        f"({where}) AND model = {_q(m.name)} AND component = {_q(comp)} AND pooling = {_q(pool)} "
                        f"AND stimulus_set = {_q(ctx.stimulus_sets[m.name])} AND layer = {first_layer}"
                    )
                    for name, where in sel.items()
                }
                fit_name = f"{ctx.fit}:{p.name}:{m.name}:{'+'.join(sel)}"
                for subject in ctx.subjects:
                    say(f"partitioning {list(sel)} of {m.name} at layer {first_layer} for {subject}")
                    runs_where, test_runs = _subject_scope(ctx.dataset, subject)
                    partition_variance(
                        ctx.features[m.name],
                        ctx.tables["responses"],
                        ctx.tables["partitions"],
                        selections={k: v + runs_where for k, v in full.items()},
                        fit_name=fit_name,
                        test_runs=test_runs,
                        subject=subject,
                        preset=preset,
                        alphas=fit.get("alphas", DEFAULT_ALPHAS),
                        folds=fit.get("folds", "runs"),
                        correction=p.correction,
                        allow_trim=bool(fit.get("allow_trim", False)),
                    )
                ctx.partition_fits.append(
                    {
                        "fit": fit_name,
                        "partition": p.name,
                        "model": m.name,
                        "names": list(sel),
                        "layer": int(first_layer),
                    }
                )


# ---- study tables ---------------------------------------------------------------------------
def study_tables(ctx: RunContext) -> dict[str, list[dict]]:
    """The comparison tables of one dataset (see the module docstring)."""
    score = _score_sql(ctx, "s.")
    groups = {m.name: m.group for m in ctx.models}
    dataset = ctx.data.name
    names = ", ".join(_q(m.name) for m in ctx.models) or "NULL"
    keep = (
        f"s.fit = {_q(ctx.fit)} AND s.model IN ({names})"  # rows of models no longer in the recipe stay out
    )
    per = f"""per AS (SELECT s.subject, coalesce(v.roi, 'unlabelled') AS roi, s.model, s.instruction_id,
                             s.component, s.pooling, s.layer, {score} AS score
                      FROM scores s JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
                      WHERE {keep} GROUP BY ALL)"""
    whole = f"""whole AS (SELECT s.subject, s.model, s.instruction_id, s.component, s.pooling, s.layer,
                                {score} AS score
                         FROM scores s SEMI JOIN voxels v ON v.voxel = s.voxel AND v.subject = s.subject
                         WHERE {keep} GROUP BY ALL)"""
    # per (model, pooling): instructions ranked by the score of their best (component, layer)
    ranking = _query(
        ctx,
        f"""WITH {whole},
                a AS (SELECT model, instruction_id, component, pooling, layer, avg(score) AS score
                      FROM whole GROUP BY ALL),
                b AS (SELECT model, pooling, instruction_id, arg_max(component, score) AS best_component,
                             arg_max(layer, score) AS best_layer, max(score) AS score
                      FROM a GROUP BY ALL)
            SELECT model, pooling, instruction_id, best_component AS component, best_layer, score,
                   rank() OVER (PARTITION BY model, pooling ORDER BY score DESC) AS rank
            FROM b ORDER BY model, pooling, rank""",
    ).to_pylist()
    instruction_ranking = [
        {
            "dataset": dataset,
            "model": r["model"],
            "group": groups.get(r["model"], ""),
            **{k: r[k] for k in r if k != "model"},
        }
        for r in ranking
    ]
    models = []
    for name in dict.fromkeys(r["model"] for r in ranking):
        rows = [r for r in ranking if r["model"] == name]
        top = max(rows, key=lambda r: -np.inf if r["score"] is None else r["score"])
        models.append(
            {
                "dataset": dataset,
                "model": name,
                "group": groups.get(name, ""),
                "best_instruction": top["instruction_id"],
                "best_pooling": top["pooling"],
                "best_component": top["component"],
                "best_layer": top["best_layer"],
                "score": top["score"],
            }
        )
    models.sort(key=lambda r: -(r["score"] if r["score"] is not None else -np.inf))
    roi_rows = _query(
        ctx,
        f"""WITH {per},
                a AS (SELECT roi, model, instruction_id, component, pooling, layer, avg(score) AS score
                      FROM per GROUP BY ALL)
            SELECT roi, model, max(score) AS score FROM a GROUP BY ALL ORDER BY roi, model""",
    ).to_pylist()
    for r in models:
        roi_rows.append({"roi": "all", "model": r["model"], "score": r["score"]})
    group_rows = []
    for roi in dict.fromkeys(r["roi"] for r in roi_rows):
        for g in dict.fromkeys(groups.values()):
            vals = [
                r["score"]
                for r in roi_rows
                if r["roi"] == roi and groups.get(r["model"]) == g and r["score"] is not None
            ]
            if vals:
                group_rows.append(
                    {
                        "dataset": dataset,
                        "roi": roi,
                        "group": g,
                        "score": float(np.mean(vals)),
                        "n_models": len(vals),
                    }
                )
    parts = []
    for pf in ctx.partition_fits:
        rows = _query(
            ctx,
            f"""SELECT coalesce(v.roi, 'unlabelled') AS roi, p.region, avg(p.r2) AS mean_r2
                FROM partitions p JOIN voxels v ON v.voxel = p.voxel AND v.subject = p.subject
                WHERE p.fit = {_q(pf["fit"])} GROUP BY ALL ORDER BY roi, region""",
        ).to_pylist()
        rows += _query(
            ctx,
            f"""SELECT 'all' AS roi, region, avg(r2) AS mean_r2
                FROM partitions p SEMI JOIN voxels v ON v.voxel = p.voxel AND v.subject = p.subject
                WHERE fit = {_q(pf["fit"])} GROUP BY ALL ORDER BY region""",
        ).to_pylist()
        parts += [
            {
                "dataset": dataset,
                "partition": pf["partition"],
                "model": pf["model"],
                "layer": pf["layer"],
                **r,
            }
            for r in rows
        ]
    return {
        "instruction ranking": instruction_ranking,
        "model comparison": models,
        "group comparison": group_rows,
        "partitions": parts,
    }


def _report(ctx: RunContext, say: Progress) -> dict[str, str]:
    """Per-dataset figures (layer profiles, instructions, base vs tuned, partition bars, maps)."""
    from ..report import (
        build_report,
        model_comparison,
        partition_profile,
        plot_model_comparison,
        plot_partition_bars,
    )

    out = ctx.dir / "report"
    tables = {k: v for k, v in ctx.tables.items() if v.exists()}
    rep = build_report(
        ctx.dir,
        ctx.fit,
        out,
        tables=tables,
        page_format=ctx.recipe.report.get("format", "html"),
        maps=bool(ctx.recipe.report.get("maps", True)),
        max_maps=int(ctx.recipe.report.get("max_maps", 4)),
        progress=say,
    )
    sub = _slug(ctx.data.name)
    figures = {f"{ctx.data.name}: {k}": f"{sub}/report/{v}" for k, v in rep.figures.items()}
    from ..report import instruction_profile

    ins = instruction_profile(ctx.dir, ctx.fit, tables=tables, metric=f"s.{ctx.metric}")
    names = {m.name for m in ctx.models}
    for base, tuned in ctx.recipe.report.get("compare", []):
        if base in names and tuned in names:
            cmp = model_comparison(ins, base, tuned)
            f = plot_model_comparison(
                cmp, out / f"compare_{_slug(base)}_{_slug(tuned)}.png", base=base, tuned=tuned
            )
            figures[f"{ctx.data.name}: {base} vs {tuned}"] = f"{sub}/report/{f.name}"
            ctx.report.tables[f"{base} vs {tuned} per ROI"] = cmp.to_pylist()
    for pf in ctx.partition_fits:
        pp = partition_profile(ctx.dir, pf["fit"], tables=tables)
        f = plot_partition_bars(
            pp, out / f"partition_{_slug(pf['fit'])}.png", title=f"{pf['model']}: {' vs '.join(pf['names'])}"
        )
        figures[f"{ctx.data.name}: partition {pf['model']} {' vs '.join(pf['names'])}"] = (
            f"{sub}/report/{f.name}"
        )
    return figures


def _write_page(
    path: Path,
    recipe: Recipe,
    tables: dict[str, list[dict]],
    figures: dict[str, str],
    notes: list[str],
    fmt: str,
) -> None:
    from ..report import _html_table, _md_table

    if fmt == "md":
        parts = [f"# {recipe.title}\n", f"{recipe.reference}\n" if recipe.reference else ""]
        parts += [f"- {n}" for n in notes]
        for name, rows in tables.items():
            parts.append(f"\n## {name}\n\n{_md_table(rows)}")
        for name, fig in figures.items():
            parts.append(f"\n## {name}\n\n![{name}]({fig})\n")
        path.write_text("\n".join(parts))
        return
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(recipe.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(recipe.title)}</h1>",
    ]
    if recipe.reference:
        parts.append(f"<p>{html.escape(recipe.reference)}</p>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for name, rows in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_html_table(rows)}")
    for name, fig in figures.items():
        parts.append(
            f"<h2>{html.escape(name)}</h2><a href='{html.escape(fig)}'><img src='{html.escape(fig)}'></a>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    stages: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``recipe`` into ``out`` (see the module docstring). ``stages`` limits the run to
    some of :data:`STAGES` (the others are assumed done, e.g. ``["fit", "report"]`` after a
    change of the fit settings)."""
    say = progress or (lambda _m: None)
    stages = list(stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise RecipeError(f"stages: expected some of {list(STAGES)}, got {bad}")
    out = Path(out)
    t0 = time.perf_counter()
    loaders = open_datasets(recipe)
    plan = plan_recipe(recipe, loaders)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".plan.json.tmp"
    tmp.write_text(json.dumps({"recipe": recipe.raw, "plan": plan.to_dict()}, indent=1, default=str))
    tmp.replace(out / "plan.json")
    seconds: dict[str, float] = {s: 0.0 for s in STAGES}
    contexts: dict[str, RunContext] = {}
    all_tables: dict[str, list[dict]] = {}
    figures: dict[str, str] = {}
    notes: list[str] = []
    for d in recipe.data:
        loader = loaders[d.name]
        if not recipe.models_for(d):  # e.g. a run restricted to models that read other datasets
            notes.append(f"{d.name}: no model of this run reads it; skipped")
            say(f"{d.name}: no model of this run reads it; skipped")
            continue
        ddir = out / _slug(d.name)
        ddir.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(
            recipe=recipe,
            data=d,
            dataset=loader,
            dir=ddir,
            tables={k: ddir / f"{k}.lance" for k in ("responses", "voxels", "scores", "partitions")},
            fit=recipe.name,
            subjects=loader.subjects(),
        )
        contexts[d.name] = ctx
        if loader.kind != "fmri":
            continue
        t = time.perf_counter()
        for m in ctx.models:
            _features_for(ctx, m, out, say, embed="embed" in stages)
        seconds["embed"] += time.perf_counter() - t
        t = time.perf_counter()
        if "ingest" in stages:
            say(f"ingesting {d.name} from {d.root}")
            loader.ingest(ctx.tables["responses"], ctx.tables["voxels"], progress=say)
        seconds["ingest"] += time.perf_counter() - t
        t = time.perf_counter()
        if "fit" in stages:
            _fit(ctx, say)
        seconds["fit"] += time.perf_counter() - t
        if not ({"partition", "report"} & set(stages)):
            continue
        if not ctx.tables["scores"].exists():
            raise RecipeError(f"fit: no scores table at {ctx.tables['scores']}; run the fit stage first")
        ctx.metric = _detect_metric(ctx)
        t = time.perf_counter()
        if "partition" in stages and recipe.partitions:
            _partition(ctx, say)
        elif recipe.partitions:
            ctx.partition_fits = _known_partition_fits(ctx)
        seconds["partition"] += time.perf_counter() - t
    page = None
    if "report" in stages:
        t = time.perf_counter()
        for ctx in contexts.values():
            if ctx.dataset.kind == "fmri":
                for name, rows in study_tables(ctx).items():
                    all_tables.setdefault(name, []).extend(rows)
                figures.update(_report(ctx, say))
            (ctx.dir / "report").mkdir(parents=True, exist_ok=True)
            part = ctx.dataset.report(ctx, ctx.dir / "report")
            ctx.report.tables.update(part.tables)
            ctx.report.figures.update(part.figures)
            ctx.report.notes += part.notes
            for name, rows in ctx.report.tables.items():
                all_tables[f"{ctx.data.name}: {name}" if len(contexts) > 1 else name] = rows
            for name, fig in ctx.report.figures.items():
                figures[f"{ctx.data.name}: {name}"] = f"{_slug(ctx.data.name)}/report/{fig}"
            notes += [f"{ctx.data.name}: {n}" for n in ctx.report.notes]
            if ctx.dataset.kind == "fmri":
                notes.append(
                    f"{ctx.data.name}: score = {_score_label(ctx)}, averaged over subjects {ctx.subjects}"
                )
        page = out / f"index.{recipe.report.get('format', 'html')}"
        _write_page(page, recipe, all_tables, figures, notes, recipe.report.get("format", "html"))
        seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return RunResult(out=out, page=page, tables=all_tables, contexts=contexts, seconds=seconds)


def _known_partition_fits(ctx: RunContext) -> list[dict]:
    if not ctx.tables["partitions"].exists():
        return []
    rows = _query(
        ctx, f"SELECT DISTINCT fit FROM partitions WHERE starts_with(fit, {_q(ctx.fit + ':')}) ORDER BY fit"
    ).to_pylist()
    out = []
    for r in rows:
        _, part, model, names = r["fit"].split(":", 3)
        out.append(
            {"fit": r["fit"], "partition": part, "model": model, "names": names.split("+"), "layer": None}
        )
    return out
