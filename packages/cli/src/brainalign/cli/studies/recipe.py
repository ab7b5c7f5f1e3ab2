"""Study recipes: one TOML file describes a whole analysis.

A recipe names the dataset(s), the models (a checkpoint to embed, a published table to pull,
or a features table supplied by the user), the instructions, the alignment preset and fit
settings, the variance partitions and the report. :func:`load_recipe` parses and checks it
(every problem at once, before any heavy work); :mod:`brainalign.cli.studies.runner` runs it.

Layout (see ``studies/*.toml`` for the four seed studies)::

    [study]
    name = "nsd-image-mllms"            # the fit name in the scores/partitions tables
    title = "..."
    reference = "Oota et al., ICLR 2025"

    [data]                              # or [[data]] tables, one per dataset
    dataset = "nsd"                     # a registered loader (brainalign.cli.studies.base.DATASETS)
    root = "${NSD_ROOT}"                # environment variables are expanded; --data overrides
    subjects = ["sub-01"]               # optional: default every subject found
    # ... loader options

    [embed]                             # defaults for every model
    batch_size = 8
    max_new_tokens = 32
    [embed.image]                       # options of the loader's manifest for one modality

    [[models]]
    name = "llava-1.5-7b"               # the `model` value in every table
    checkpoint = "llava-hf/llava-1.5-7b-hf"
    revision = "..."                    # pinned commit
    modality = "image"
    group = "instruction-tuned"
    instructions = ["family:image"]
    pooling = ["response"]
    # source = "pull": repo = "owner/name", pull_revision = "v1"
    # source = "table": table = "path/to/features.lance"  (relative: inside the dataset root)

    [fit]
    preset = "none"                     # brainalign.cli.align.PRESETS, fields overridable
    alphas = [0.1, 1, 10, 100, 1000]

    [[partitions]]
    name = "vs-captioning"
    model = "*"                         # every model, or one name
    layer = "best"                      # best in training-run CV, or an index
    reference = "image.captioning"      # each instruction vs this one; or spaces = {a = "SQL", ...}

    [report]
    format = "html"
    compare = [["gpt2", "gpt2-alpaca"]] # base vs instruction-tuned pairs

Values can be overridden from the command line with ``--set key=value`` (``data.root=/x``,
``models.llava-1.5-7b.checkpoint=/local/dir``, ``fit.alphas=[1,10]``): a lab with a new model
swaps one line.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import RecipeError

SOURCES = ("embed", "pull", "table")
MODEL_KEYS = {
    "name",
    "checkpoint",
    "revision",
    "modality",
    "group",
    "instructions",
    "pooling",
    "layers",
    "components",
    "source",
    "repo",
    "pull_revision",
    "table",
    "params_b",
    "base",
    "trust_remote_code",
    "embed",
    "datasets",
}
FIT_KEYS = {
    "preset",
    "delays",
    "zscore",
    "trim_start",
    "trim_end",
    "pca",
    "lanczos_window",
    "standardize",
    "alphas",
    "folds",
    "min_ceiling",
    "allow_trim",
    "batch",
    "max_gb",
}
PARTITION_KEYS = {"name", "model", "layer", "reference", "spaces", "instructions", "correction"}
REPORT_KEYS = {"format", "compare", "maps", "max_maps", "aggregate", "normalize"}
EMBED_KEYS = {
    "use_chat_template",
    "batch_size",
    "max_new_tokens",
    "seed",
    "dtype",
    "device",
    "device_map",
    "storage_dtype",
    "attn_implementation",
}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class ModelSpec:
    """One model of a recipe (see the module docstring for the keys)."""

    name: str
    modality: str
    source: str = "embed"
    checkpoint: str | None = None
    revision: str | None = None
    group: str = "instruction-tuned"
    instructions: list[str] = field(default_factory=lambda: ["none"])
    pooling: list[str] = field(default_factory=lambda: ["stimulus"])
    layers: Any = "all"
    components: list[str] | None = None
    repo: str | None = None
    pull_revision: str | None = None
    table: str | None = None
    params_b: float | None = None
    base: str | None = None
    trust_remote_code: bool = False
    embed: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] | None = None


@dataclass
class DataSpec:
    dataset: str
    root: Path
    subjects: list[str] | None = None
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartitionSpec:
    name: str
    model: str = "*"
    layer: Any = "best"
    reference: str | None = None
    spaces: dict[str, str] | None = None
    instructions: list[str] | None = None
    correction: str = "none"


@dataclass
class Recipe:
    """A parsed, checked recipe. ``raw`` is the resolved TOML content (after overrides)."""

    path: Path | None
    name: str
    title: str
    reference: str
    data: list[DataSpec]
    models: list[ModelSpec]
    embed: dict[str, Any]
    fit: dict[str, Any]
    partitions: list[PartitionSpec]
    report: dict[str, Any]
    raw: dict[str, Any]

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def models_for(self, data: DataSpec) -> list[ModelSpec]:
        return [m for m in self.models if m.datasets is None or data.name in m.datasets]


def _expand(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            hint = " (set it, or pass --data)" if where.startswith("recipe.data") else ""
            problems.append(f"{where}: environment variable ${{{var}}} is not set{hint}")
            return m.group(0)

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", problems) for k, v in value.items()}
    return value


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML/JSON literal when it parses (numbers, lists, booleans), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides. In a list of tables (``models``, ``partitions``,
    ``data``) an entry is addressed by its ``name`` (which may contain dots:
    ``models.qwen2.5-vl.checkpoint``) or its index."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"set: expected KEY=VALUE (e.g. data.root=/data/nsd), got {item!r}")
        parts = key.strip().split(".")
        node: Any = raw
        i = 0
        while i < len(parts) - 1:
            part = parts[i]
            if isinstance(node, list):
                match, used = None, 0
                # the longest dotted run of parts that names an entry (names may hold dots)
                for j in range(len(parts) - 1, i, -1):
                    name = ".".join(parts[i:j])
                    hit = [x for x in node if isinstance(x, dict) and x.get("name") == name]
                    if hit:
                        match, used = hit[0], j - i
                        break
                if match is None and part.isdigit() and int(part) < len(node):
                    match, used = node[int(part)], 1
                if match is None:
                    names = [x.get("name") for x in node if isinstance(x, dict)]
                    raise RecipeError(
                        f"set: {'.'.join(parts[: i + 1])!r} matches no entry; names are {names}"
                    )
                node = match
                i += used
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"set: {'.'.join(parts[: i + 1])!r} is a value, not a table")
            i += 1
        if isinstance(node, list):
            raise RecipeError(f"set: {key!r} addresses a list; name one entry (e.g. models.NAME.key)")
        # ids and paths stay strings even when they look like numbers or dates
        as_text = parts[-1] in ("revision", "pull_revision", "checkpoint", "repo", "table", "root", "name")
        node[parts[-1]] = text.strip() if as_text else _parse_value(text.strip())
    return raw


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _unknown(table: Mapping, allowed: set, where: str, problems: list[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        problems.append(f"{where}: unknown key(s) {extra}; expected some of {sorted(allowed)}")


PRESET_KEYS = ("delays", "zscore", "trim_start", "trim_end", "pca", "lanczos_window", "standardize")


def fit_preset(fit: Mapping[str, Any]):
    """The alignment preset that a ``[fit]`` table (or a dataset's ``fit`` over it) describes:
    ``preset`` (default ``"fir4"``) with the :data:`PRESET_KEYS` it sets; a bad preset or option
    raises ValueError or TypeError."""
    from ..align import get_preset

    return get_preset(fit.get("preset", "fir4"), **{k: fit[k] for k in PRESET_KEYS if k in fit})


def _check_fit(f: Mapping[str, Any], where: str) -> list[str]:
    """Problems of one fit table (the recipe's ``[fit]`` or a dataset's ``fit`` over it)."""
    import numpy as np

    from ..fitting import make_folds

    out = []
    alphas = f.get("alphas")
    if alphas is not None and (
        not isinstance(alphas, list)
        or not alphas
        or any(not isinstance(a, (int, float)) or isinstance(a, bool) or a <= 0 for a in alphas)
    ):
        out.append(f"{where}.alphas: expected a list of positive numbers, got {alphas!r}")
    try:
        fit_preset(f)
    except (ValueError, TypeError) as exc:
        out.append(f"{where}: {exc}")
    try:
        make_folds(str(f.get("folds", "runs")), np.repeat(np.array(["a", "b", "c"]), 400))
    except (ValueError, TypeError) as exc:
        out.append(f"{where}.folds: {exc}")
    if f.get("batch", "instruction") not in ("instruction", "model"):
        out.append(f"{where}.batch: expected 'instruction' or 'model', got {f.get('batch')!r}")
    gb = f.get("max_gb", 16.0)
    if not isinstance(gb, (int, float)) or isinstance(gb, bool) or gb <= 0:
        out.append(f"{where}.max_gb: expected a positive number of GiB for one batched fit, got {gb!r}")
    mc = f.get("min_ceiling", 0.0)
    if not isinstance(mc, (int, float)) or isinstance(mc, bool) or not 0 <= mc < 1:
        out.append(f"{where}.min_ceiling: expected a number in [0, 1), got {mc!r}")
    return out


def parse_recipe(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    data_root: str | Path | None = None,
) -> Recipe:
    """Check the structure of a recipe and build a :class:`Recipe`; raises :class:`RecipeError`
    listing every problem. ``data_root`` replaces ``[data] root`` (one dataset) or is the
    parent of each dataset's ``root`` when that is relative (several datasets)."""
    problems: list[str] = []
    raw = copy.deepcopy(dict(raw))
    data_raw = raw.get("data")
    if data_root is not None and data_raw is not None:
        # --data replaces the roots: their environment variables need not be set
        for b in [data_raw] if isinstance(data_raw, dict) else data_raw:
            if isinstance(b, dict) and isinstance(b.get("root"), str):
                whole = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-([^}]*))?\}", b["root"].strip())
                if whole:  # "${VAR:-folder}": the folder under --data, whatever VAR holds
                    b["root"] = whole.group(1)
                    continue
                ignored: list[str] = []
                root = _expand(b["root"], "", ignored)
                b["root"] = None if ignored else root
    raw = _expand(raw, "recipe", problems)
    _unknown(raw, {"study", "data", "embed", "models", "fit", "partitions", "report"}, "recipe", problems)
    study = raw.get("study", {})
    name = str(study.get("name", "")).strip()
    if not name or not re.fullmatch(r"[\w.-]+", name):
        problems.append(f"study.name: expected a name of letters, digits, '.', '-' or '_', got {name!r}")

    # ---- data ------------------------------------------------------------------------------
    data_raw = raw.get("data")
    blocks = [data_raw] if isinstance(data_raw, dict) else list(data_raw or [])
    if not blocks:
        problems.append("data: expected a [data] table (dataset, root)")
    data: list[DataSpec] = []
    base_dir = path.parent if path else Path.cwd()
    for i, b in enumerate(blocks):
        where = "data" if isinstance(data_raw, dict) else f"data[{i}]"
        if not isinstance(b, dict) or "dataset" not in b:
            problems.append(f"{where}: expected a table with a 'dataset' key")
            continue
        root = b.get("root")
        if data_root is not None:
            # one dataset: --data is its root; several: --data is their parent, and each
            # dataset's folder is its relative root (e.g. "${PEREIRA_ROOT:-Pereira2018}") or its name
            if len(blocks) == 1:
                root = Path(data_root)
            else:
                rel = root is not None and not Path(str(root)).is_absolute()
                root = Path(data_root) / str(root if rel else b.get("name", b["dataset"]))
        if root is None:
            problems.append(
                f"{where}.root: expected the path of your copy of {b['dataset']!r} (or pass --data)"
            )
            continue
        root = Path(str(root)).expanduser()
        if not root.is_absolute():
            root = (base_dir / root) if data_root is None else root
        subjects = b.get("subjects")
        if subjects is not None and not (
            isinstance(subjects, list) and all(isinstance(s, str) for s in subjects)
        ):
            problems.append(f"{where}.subjects: expected a list of subject ids, got {subjects!r}")
            subjects = None
        opts = {k: v for k, v in b.items() if k not in {"dataset", "root", "subjects", "name"}}
        own_fit = opts.get("fit")
        if own_fit is not None and not isinstance(own_fit, dict):
            problems.append(f"{where}.fit: expected a table of [fit] settings, got {own_fit!r}")
        elif own_fit is not None:  # this dataset's own fit settings, on top of [fit]
            _unknown(own_fit, FIT_KEYS, f"{where}.fit", problems)
        data.append(
            DataSpec(
                dataset=str(b["dataset"]),
                root=root,
                subjects=[s if s.startswith("sub-") else f"sub-{s}" for s in subjects] if subjects else None,
                name=str(
                    b.get("name", re.sub(r"[^\w.-]+", "_", str(b["dataset"]).rsplit(":", 1)[-1]).lower())
                ),
                options=opts,
            )
        )
    if len({d.name for d in data}) != len(data):
        problems.append(f"data: dataset names must be unique, got {[d.name for d in data]} (set 'name')")

    # ---- embed defaults --------------------------------------------------------------------
    embed = dict(raw.get("embed", {}))
    modal_opts = {k: v for k, v in embed.items() if isinstance(v, dict)}
    _unknown({k: v for k, v in embed.items() if k not in modal_opts}, EMBED_KEYS, "embed", problems)

    # ---- models ----------------------------------------------------------------------------
    models: list[ModelSpec] = []
    for i, m in enumerate(raw.get("models", [])):
        where = f"models[{i}]" + (f" ({m.get('name')})" if isinstance(m, dict) and m.get("name") else "")
        if not isinstance(m, dict):
            problems.append(f"{where}: expected a table")
            continue
        _unknown(m, MODEL_KEYS, where, problems)
        mname = str(m.get("name", "")).strip()
        if not re.fullmatch(r"[\w.-]+", mname):
            problems.append(
                f"{where}.name: expected the model name used in the tables (letters, digits, '.', '-', '_'), "
                f"got {mname!r}"
            )
        source = m.get("source", "table" if "table" in m else "pull" if "repo" in m else "embed")
        if source not in SOURCES:
            problems.append(f"{where}.source: expected one of {list(SOURCES)}, got {source!r}")
        if source == "embed" and not m.get("checkpoint"):
            problems.append(f"{where}.checkpoint: expected a Hub id or local directory to embed with")
        if source == "pull" and not m.get("repo"):
            problems.append(f"{where}.repo: expected the Hub dataset repo (owner/name) to pull from")
        if source == "table" and not m.get("table"):
            problems.append(f"{where}.table: expected the path of a features table")
        if "modality" not in m and source == "embed":
            problems.append(f"{where}.modality: expected the stimulus modality the model reads")
        unknown_embed = set(m.get("embed", {})) - EMBED_KEYS
        if unknown_embed:
            problems.append(f"{where}.embed: unknown key(s) {sorted(unknown_embed)}")
        table = m.get("table")
        if table is not None and not Path(str(table)).expanduser().is_absolute():
            # a relative features table lives in the dataset folder (e.g. derivatives/...)
            home = [d for d in data if d.name in (m.get("datasets") or [d.name])]
            table = str((home[0].root if home else base_dir) / str(table))
        models.append(
            ModelSpec(
                name=mname,
                modality=str(m.get("modality", "")),
                source=source,
                checkpoint=m.get("checkpoint"),
                revision=m.get("revision"),
                group=str(m.get("group", "instruction-tuned")),
                instructions=[str(x) for x in _as_list(m.get("instructions", ["none"]))],
                pooling=[str(x) for x in _as_list(m.get("pooling", ["stimulus"]))],
                layers=m.get("layers", "all"),
                components=m.get("components"),
                repo=m.get("repo"),
                pull_revision=m.get("pull_revision"),
                table=table,
                params_b=m.get("params_b"),
                base=m.get("base"),
                trust_remote_code=bool(m.get("trust_remote_code", False)),
                embed=dict(m.get("embed", {})),
                datasets=[str(x) for x in _as_list(m["datasets"])] if "datasets" in m else None,
            )
        )
    if not models:
        problems.append("models: expected at least one [[models]] table")
    names = [m.name for m in models]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        problems.append(f"models: names must be unique, {dups} repeat")
    for m in models:
        if m.base is not None and m.base not in names:
            problems.append(f"models ({m.name}).base: {m.base!r} is not a model of this recipe {names}")
        for d in m.datasets or []:
            if d not in {x.name for x in data}:
                problems.append(f"models ({m.name}).datasets: {d!r} is not a dataset of this recipe")

    # ---- fit -------------------------------------------------------------------------------
    fit = dict(raw.get("fit", {}))
    _unknown(fit, FIT_KEYS, "fit", problems)
    fits = [("fit", fit)] + [
        (f"data ({d.name}).fit", {**fit, **d.options["fit"]})
        for d in data
        if isinstance(d.options.get("fit"), dict)
    ]
    for where, f in fits:
        problems += _check_fit(f, where)

    # ---- partitions ------------------------------------------------------------------------
    parts: list[PartitionSpec] = []
    for i, p in enumerate(raw.get("partitions", [])):
        where = f"partitions[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{where}: expected a table")
            continue
        _unknown(p, PARTITION_KEYS, where, problems)
        if not re.fullmatch(r"[\w.-]+", str(p.get("name", ""))):
            problems.append(
                f"{where}.name: expected a name of letters, digits, '.', '-' or '_', got {p.get('name')!r}"
            )
        if ("reference" in p) == ("spaces" in p):
            problems.append(f"{where}: give either 'reference' (each instruction vs it) or 'spaces'")
        spaces = p.get("spaces")
        if spaces is not None and (not isinstance(spaces, dict) or not 2 <= len(spaces) <= 3):
            problems.append(f'{where}.spaces: expected 2 or 3 NAME = "SQL filter" entries, got {spaces!r}')
        model = str(p.get("model", "*"))
        if model != "*" and model not in names:
            problems.append(f"{where}.model: {model!r} is not a model of this recipe {names}")
        layer = p.get("layer", "best")
        if layer != "best" and not isinstance(layer, int):
            problems.append(f"{where}.layer: expected 'best' or a layer index, got {layer!r}")
        parts.append(
            PartitionSpec(
                name=str(p.get("name", "")),
                model=model,
                layer=layer,
                reference=p.get("reference"),
                spaces=dict(spaces) if isinstance(spaces, dict) else None,
                instructions=[str(x) for x in _as_list(p["instructions"])] if "instructions" in p else None,
                correction=str(p.get("correction", "none")),
            )
        )

    # ---- report ----------------------------------------------------------------------------
    report = dict(raw.get("report", {}))
    _unknown(report, REPORT_KEYS, "report", problems)
    if report.get("aggregate", "mean") not in ("mean", "median"):
        problems.append(f"report.aggregate: expected 'mean' or 'median', got {report.get('aggregate')!r}")
    if report.get("normalize", "voxel") not in ("voxel", "aggregate"):
        problems.append(
            f"report.normalize: expected 'voxel' (r / ceiling per voxel, then aggregate) or 'aggregate' "
            f"(aggregate r / median ceiling, as Brain-Score), got {report.get('normalize')!r}"
        )
    if report.get("format", "html") not in ("html", "md"):
        problems.append(f"report.format: expected 'html' or 'md', got {report.get('format')!r}")
    for pair in report.get("compare", []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(x in names for x in pair)):
            problems.append(
                f"report.compare: expected [BASE, TUNED] model names of this recipe, got {pair!r}"
            )

    if problems:
        raise RecipeError(problems)
    embed_out = {k: v for k, v in embed.items() if k not in modal_opts}
    embed_out["modalities"] = modal_opts
    return Recipe(
        path=path,
        name=name,
        title=str(study.get("title", name)),
        reference=str(study.get("reference", "")),
        data=data,
        models=models,
        embed=embed_out,
        fit=fit,
        partitions=parts,
        report=report,
        raw=dict(raw),
    )


def load_recipe(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    data_root: str | Path | None = None,
    models: Sequence[str] | None = None,
) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides, keep only ``models`` (names; default all)
    and check it (see :func:`parse_recipe`)."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe: no such file {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe: {path} is not valid TOML ({exc})") from exc
    raw = apply_overrides(raw, overrides)
    if models:
        raw = select_models(raw, models)
    return parse_recipe(raw, path=path.resolve(), data_root=data_root)


def select_models(raw: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Keep only the named models (and the partitions and comparisons that use only them)."""
    have = [m.get("name") for m in raw.get("models", []) if isinstance(m, dict)]
    missing = [n for n in names if n not in have]
    if missing:
        raise RecipeError(f"model: {missing} are not models of this recipe; it has {have}")
    raw = copy.deepcopy(raw)
    keep = set(names)
    raw["models"] = [m for m in raw.get("models", []) if m.get("name") in keep]
    for m in raw["models"]:
        if m.get("base") not in (None, *keep):
            m.pop("base")  # its base model is not run
    raw["partitions"] = [p for p in raw.get("partitions", []) if p.get("model", "*") in keep | {"*"}]
    if "report" in raw and "compare" in raw["report"]:
        raw["report"]["compare"] = [c for c in raw["report"]["compare"] if set(c) <= keep]
    return raw
