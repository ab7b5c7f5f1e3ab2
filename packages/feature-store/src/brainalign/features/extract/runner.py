"""The extraction runner: manifest × instructions × components × layers × poolings → store.

One forward pass per batch gives every hidden state of every requested component; the runner
selects layers, pools each span with masks (padding never enters a mean), and writes rows into
feature stores keyed like :mod:`brainalign.features.schemas`. It resumes (units — one stimulus
under one instruction — whose rows are all stored are skipped), shards (``shard=(i, n)``), and
records provenance in the table metadata.

A sliding long-context text window (:func:`~brainalign.features.stimuli.text_sliding_windows`)
is one forward pass that yields one ``tr_words`` row per TR it scores (its ``segments``); its
units are those TRs, and a window is recomputed while any of them is missing, writing only those.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..instructions import Instruction, load_registry, resolve_instructions
from ..stimuli import Manifest, Stimulus
from ..store import FeatureStore, Table, create_table, provenance_runs
from .adapters import Adapter, States, load_adapter
from .pooling import POOLINGS, last_index, pool_layers, pool_rows, span_weights
from .prompts import FocusParts, part_spans, sha256

MAIN_COMPONENTS = ("lm", "encoder", "decoder")


@dataclass
class EmbedPlan:
    """What a run will do: rendered prompts, layers, spans and row counts."""

    model: str
    stimulus_set: str
    n_items: int
    instructions: list[str]
    components: dict[str, list[int]]
    poolings: dict[str, list[str]]
    prompts: dict[str, dict[str, str]]
    rows: int
    rows_per_unit: dict[str, int]
    units_total: int
    units_done: int = 0
    rows_to_write: int = 0
    stores: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class EmbedResult:
    plan: EmbedPlan
    rows_written: int
    units_written: int
    units_skipped: int
    seconds: float
    fragments: dict[str, list[dict]] | None = None
    generations: str | None = None


def select_layers(layers: Any, n_states: int, component: str | None = None) -> list[int]:
    """Layer indices from ``"all"``, ints (negative counts from the end) or relative depths
    (floats in [0, 1]: ``round(f * (n_states - 1))``). Layer 0 is the embedding output.
    ``component`` names the component in error messages."""
    of = f" of component {component!r}" if component else ""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n_states))
    if isinstance(layers, (int, float, str)):
        layers = [layers]
    out = []
    for v in layers:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"layers{of}: expected 'all', layer indices (ints, negative from the end) or relative "
                f"depths (floats in [0, 1]), got {v!r}"
            )
        if isinstance(v, (float, np.floating)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"layers{of}: relative depth {v} is outside [0, 1]")
            idx = round(float(v) * (n_states - 1))
        else:
            idx = int(v) + (n_states if int(v) < 0 else 0)
        if not 0 <= idx < n_states:
            raise ValueError(f"layers{of}: {v} is outside 0..{n_states - 1} ({n_states} hidden states)")
        out.append(idx)
    return sorted(set(out))


def stack_layers(hidden: Sequence[Any], layers: Sequence[int]) -> torch.Tensor:
    """Hidden states ``hidden[l]`` of ``layers`` as one ``(layers, batch, seq, dim)`` tensor on
    the device of the first: a model split with ``device_map`` leaves its layers' states on
    several devices."""
    states = [torch.as_tensor(hidden[lay]) for lay in layers]
    device = states[0].device
    return torch.stack([t.to(device) for t in states])


def code_version() -> str:
    try:
        v = metadata.version("brainalign-feature-store")
    except metadata.PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def _component_uris(store: Any, components: Sequence[str]) -> dict[str, str]:
    """Main components (lm, encoder, decoder) share ``store``; optional components (vision,
    projector, qformer, audio), whose sizes differ, go to ``<store>.<component>.lance``."""
    if isinstance(store, Mapping):
        missing = [c for c in components if c not in store]
        if missing:
            raise ValueError(f"store: no store given for components {missing}")
        return {c: (store[c].uri if isinstance(store[c], Table) else str(store[c])) for c in components}
    base = store.uri if isinstance(store, Table) else str(store)
    stem = base[: -len(".lance")] if base.endswith(".lance") else base
    return {c: base if c in MAIN_COMPONENTS else f"{stem}.{c}.lance" for c in components}


def _open(uri: str) -> FeatureStore | None:
    try:
        return FeatureStore.open(uri)  # type: ignore[return-value]
    except ValueError:
        return None


def _sql_str(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _stored_rows(
    uri: str, model: str, stimulus_set: str, expected: dict[str, set[tuple[str, int, str]]]
) -> dict[tuple, set[tuple[str, int, str]]]:
    """The rows this run asks for that the store holds already: ``{unit: {(component, layer,
    pooling), ...}}`` per unit ``(instruction_id, stimulus_id, run, tr)``, only the triples of
    ``expected[instruction_id]``; rows of other components, layers or poolings (another run's)
    do not count."""
    st = _open(uri)
    if st is None or st.count_rows() == 0:
        return {}
    unit = ["instruction_id", "stimulus_id", "run", "tr"]
    t = st.to_table(
        columns=[*unit, "component", "layer", "pooling"],
        filter=f"model = {_sql_str(model)} AND stimulus_set = {_sql_str(stimulus_set)}",
    )
    if len(t) == 0:
        return {}
    want = [(ins, c, int(lay), p) for ins, rows in expected.items() for c, lay, p in rows]
    if not want:
        return {}
    wanted = pa.table(
        {
            "instruction_id": pa.array([w[0] for w in want], pa.string()),
            "component": pa.array([w[1] for w in want], pa.string()),
            "layer": pa.array([w[2] for w in want], t.schema.field("layer").type),
            "pooling": pa.array([w[3] for w in want], pa.string()),
        }
    )
    keys = ["instruction_id", "component", "layer", "pooling"]
    t = t.select([*unit, "component", "layer", "pooling"]).group_by([*unit, "component", "layer", "pooling"])
    t = t.aggregate([]).join(wanted, keys=keys, join_type="inner")
    out: dict[tuple, set[tuple[str, int, str]]] = {}
    cols = [t.column(c).to_pylist() for c in (*unit, "component", "layer", "pooling")]
    for ins, sid, run, tr, c, lay, p in zip(*cols, strict=True):
        out.setdefault((ins, sid, run, tr), set()).add((c, int(lay), p))
    return out


def _check_same_decoding(st: FeatureStore, uri: str, model: str, old: dict, now: dict, decoding) -> None:
    """Refuse decoder rows fed another ``decoder_input`` (encoder-decoders), and response rows
    generated with other decoding settings (``max_new_tokens``, ``seed``) when this run embeds
    responses too."""
    m = f"model = {_sql_str(model)}"
    old_in, now_in = old.get("decoder_input"), now.get("decoder_input")
    if old_in is not None and now_in is not None and old_in != now_in:
        if st.count_rows(f"{m} AND component = 'decoder'"):
            raise ValueError(
                f"decoder_input: the table at {uri} holds decoder rows of {model} fed {old_in!r}; this "
                f"run feeds {now_in!r}; resuming would mix the two: use another --model-name "
                "(model_name) or store"
            )
    before = old.get("decoding")
    if decoding is None or not isinstance(before, dict) or not st.count_rows(f"{m} AND pooling = 'response'"):
        return
    diff = [k for k in ("max_new_tokens", "seed") if k in before and before[k] != decoding.get(k)]
    if diff:
        was = ", ".join(f"{k} {before[k]}" for k in diff)
        is_ = ", ".join(f"{k} {decoding.get(k)}" for k in diff)
        raise ValueError(
            f"decoding: the table at {uri} holds response rows of {model} generated with {was}; this "
            f"run uses {is_}; resuming would mix the two: use another --model-name (model_name) or store"
        )


def _recorded_decoding(uris, model: str) -> dict | None:
    """The decoding settings recorded for ``model`` in any of the stores, if any."""
    for uri in dict.fromkeys(uris):
        st = _open(uri)
        prev = provenance_runs(st.provenance).get(model, {}).get("decoding") if st is not None else None
        if isinstance(prev, dict):
            return prev
    return None


def _check_same_run(
    uris: Sequence[str], model: str, adapter: Adapter, prompts: dict[str, dict], decoding: dict | None = None
) -> None:
    """Refuse to add rows of ``model`` to a store that holds rows of it from a run with another
    checkpoint revision, dtype or rendered prompt: resume would skip that run's units (their keys
    do not name the revision) and the table would mix the two runs under one model name. Also
    another decoder input, or other decoding settings for response rows
    (:func:`_check_same_decoding`)."""
    now: dict[str, Any] | None = None
    for uri in dict.fromkeys(uris):
        st = _open(uri)
        if st is None or not st.count_rows(f"model = {_sql_str(model)}"):
            continue
        old = provenance_runs(st.provenance).get(model)
        if not old:
            continue
        now = adapter.identity() if now is None else now  # no weights loaded (a dry run stays cheap)
        fields = [k for k in ("revision", "dtype") if old.get(k) is not None and old.get(k) != now.get(k)]
        old_ins = old.get("instructions") if isinstance(old.get("instructions"), dict) else {}
        changed = sorted(
            i
            for i, p in prompts.items()
            if isinstance(old_ins.get(i), dict)
            and old_ins[i].get("prompt_sha256") not in (None, p["prompt_sha256"])
        )
        if not fields and not changed:
            _check_same_decoding(st, uri, model, old, now, decoding)
            continue

        def desc(rev, dtype, shas):
            ps = ", ".join(f"{i} {str(s)[:12]}" for i, s in shas.items())
            return f"revision {rev} (dtype {dtype}" + (f", prompt sha256 {ps}" if ps else "") + ")"

        raise ValueError(
            f"model: the table at {uri} holds rows of {model} from "
            + desc(old.get("revision"), old.get("dtype"), {i: old_ins[i]["prompt_sha256"] for i in changed})
            + "; this run is "
            + desc(now.get("revision"), now.get("dtype"), {i: prompts[i]["prompt_sha256"] for i in changed})
            + "; resuming would mix the two: use another --model-name (model_name) or store"
        )


class _Writer:
    """Buffers pooled rows per store and writes them (committed, or as fragments)."""

    def __init__(self, uris: dict[str, str], provenance: dict, storage_dtype: str, defer: bool):
        self.uris = uris
        self.provenance = provenance
        self.storage_dtype = storage_dtype
        self.defer = defer
        self.buffers: dict[str, list[tuple[dict, np.ndarray]]] = {}
        self.stores: dict[str, FeatureStore] = {}
        self.fragments: dict[str, list[dict]] = {}
        self.rows = 0

    def add(self, component: str, keys: dict[str, list], emb: np.ndarray) -> None:
        self.buffers.setdefault(self.uris[component], []).append((keys, emb))

    def pending(self) -> int:
        return sum(len(e) for b in self.buffers.values() for _, e in b)

    def flush(self) -> None:
        for uri, parts in self.buffers.items():
            if not parts:
                continue
            dim = parts[0][1].shape[1]
            if uri not in self.stores:
                self.stores[uri] = FeatureStore.create(
                    uri, dim=dim, dtype=self.storage_dtype, provenance=self.provenance, exist_ok=True
                )
            st = self.stores[uri]
            keys = {k: [v for p, _ in parts for v in p[k]] for k in parts[0][0]}
            emb = np.concatenate([e for _, e in parts])
            if self.defer:
                self.fragments.setdefault(uri, []).extend(st.write_fragments(keys, emb))
            else:
                st.write(keys, emb)
            self.rows += len(emb)
        self.buffers = {}


# ---- sliding long-context windows ------------------------------------------------------------
def _unit(ins_id: str, u: Stimulus) -> tuple:
    return (ins_id, u.stimulus_id, u.run, u.tr)


def _window_input(item: Stimulus) -> Stimulus:
    """The window as the adapter reads it: its focus carries one span per scored TR."""
    return dataclasses.replace(item, focus=FocusParts([s.focus for s in item.segments]))


def _segment_weights(
    st: States, wanted: Sequence[Sequence[int]], what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch item ``(n_rows,)`` and averaging weights ``(n_rows, seq)`` of segments ``wanted[b]``
    of each window ``b``. An empty segment (a TR without words) takes the last stimulus token
    before it, else the token before the stimulus, else the adapter's ``tr_words`` fallback."""
    stim = st.spans.get("stimulus")
    fb_all = st.fallback["tr_words"] if isinstance(st.fallback, dict) else st.fallback
    rows, weights = [], []
    for b, ks in enumerate(wanted):
        for k in ks:
            name, before = part_spans(k)
            if name not in st.spans:
                raise ValueError(
                    f"{what} gives no per-TR spans of sliding windows (it does not read the window's "
                    "text with its character offsets); embed the windows with another component"
                )
            mask = st.spans[name][b : b + 1]
            if before in st.spans and st.spans[before][b].any():
                fb = last_index(st.spans[before][b : b + 1])
            elif stim is not None and stim[b].any():
                fb = (torch.nonzero(stim[b])[:1, 0] - 1).clamp_min(0)
            else:
                fb = fb_all[b : b + 1]
            rows.append(b)
            weights.append(span_weights(mask, fb.to(torch.long)))
    return torch.as_tensor(rows, dtype=torch.long), torch.cat(weights)


def embed(
    manifest: Manifest,
    model: str | Path | Adapter,
    instructions: Any = ("none",),
    *,
    store: Any = None,
    layers: Any = "all",
    components: Sequence[str] | None = None,
    pooling: Sequence[str] = ("stimulus",),
    batch_size: int = 8,
    max_new_tokens: int = 32,
    seed: int = 0,
    shard: tuple[int, int] | str | None = None,
    resume: bool = True,
    defer_commit: bool = False,
    fragments_path: str | Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
    generations: str | Path | None = None,
    storage_dtype: str = "float32",
    registry_version: str | None = None,
    model_name: str | None = None,
    flush_rows: int = 50_000,
    **adapter_kwargs,
) -> EmbedPlan | EmbedResult:
    """Embed every stimulus of ``manifest`` under every instruction and write the pooled layer
    embeddings into feature stores.

    Parameters
    ----------
    manifest : the stimuli (:mod:`brainalign.features.stimuli`). Sliding long-context text
        windows (:func:`~brainalign.features.stimuli.text_sliding_windows`) take one forward per
        window and write one ``tr_words`` row per TR (the only pooling they allow); ``shard``
        splits windows, and ``resume`` recomputes a window while any of its TRs is missing but
        writes only the missing TRs.
    model : a checkpoint (Hub id or local directory) or an :class:`Adapter`.
    instructions : registry ids, ``"family:<name>"``, :class:`Instruction` objects, or a mapping
        ``{id: text}``.
    store : the features table URI (or :class:`FeatureStore`, or ``{component: uri}``); optional
        components go to ``<store>.<component>.lance``.
    layers : ``"all"``, indices (negative from the end) or relative depths in [0, 1], for every
        component; or ``{component: selection}``.
    components : default the model's main ones (``lm``; ``encoder``/``decoder`` for T5); add
        ``vision``, ``projector``, ``qformer`` for MLLMs, ``audio`` for audio LLMs.
    pooling : spans of :data:`~brainalign.features.extract.pooling.POOLINGS`. ``response``
        generates greedily (``max_new_tokens``, ``seed``) and writes a generations table
        (``generations``, default ``<store>.generations.lance``).
    shard : ``(i, n)`` or ``"i/n"``: the round-robin shard of the manifest this worker embeds.
    resume : skip units (stimulus × instruction) whose rows are all stored already. A store that
        holds rows of this model name from another revision, dtype or prompt is refused.
    defer_commit : write data files without committing them; the fragments are returned (and
        saved to ``fragments_path`` as JSON) for :func:`commit_shards` to commit atomically.
    dry_run : return the :class:`EmbedPlan` (rendered prompts, row counts) without a forward.
    adapter_kwargs : ``revision``, ``device``, ``dtype``, ``trust_remote_code``,
        ``attn_implementation``, ``device_map``, ``layout``, ``use_chat_template``, ...

    Returns
    -------
    :class:`EmbedPlan` on ``dry_run``, else :class:`EmbedResult`.
    """
    t0 = time.perf_counter()
    unknown = [p for p in pooling if p not in POOLINGS]
    if unknown:
        raise ValueError(f"pooling: unknown spans {unknown}; expected some of {POOLINGS}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if store is None and not dry_run:
        raise ValueError("store: pass the features table URI to write into")
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(
                f"shard: expected 'i/n' (shard i of n, 0 <= i < n, e.g. '0/4'), got {shard!r}"
            ) from None
        shard = (i, n)
    full_manifest = manifest
    if shard is not None:
        manifest = manifest.shard(*shard)
    ins_list: list[Instruction] = resolve_instructions(instructions, registry_version)
    adapter = load_adapter(model, **adapter_kwargs)
    model_key = model_name or adapter.model_id
    respond = "response" in pooling
    if respond and not adapter.can_generate():
        raise ValueError(
            f"pooling: 'response' needs a model that generates and {adapter.model_id} "
            f"({type(adapter).__name__}) does not: expected some of "
            f"{[p for p in POOLINGS if p != 'response']}, got {list(pooling)}"
        )

    comps = (
        list(components) if components is not None else list(getattr(adapter, "default_components", ("lm",)))
    )
    available = (
        adapter.components() if all(c in adapter.components() for c in comps) else adapter.all_components()
    )
    missing = [c for c in comps if c not in available]
    if missing:
        raise ValueError(
            f"components: {missing} not available for {adapter.model_id}; it has {sorted(available)}"
        )
    layer_sel = {
        c: select_layers(layers.get(c, "all") if isinstance(layers, Mapping) else layers, available[c][0], c)
        for c in comps
    }
    has_focus = any(it.focus is not None for it in manifest.items[:1])
    spans_by: dict[tuple[str, str], list[str]] = {}
    for ins in ins_list:
        for c in comps:
            ok = adapter.spans_for(c, respond)
            ps = [
                p
                for p in pooling
                if p in ok
                and not (p == "instruction" and not ins.text)
                and not (p == "tr_words" and not has_focus)
            ]
            if c not in MAIN_COMPONENTS:
                ps = ["all"]
            spans_by[(ins.id, c)] = ps
    per_unit = {
        ins.id: sum(len(layer_sel[c]) * len(spans_by[(ins.id, c)]) for c in comps) for ins in ins_list
    }
    windowed = any(it.segments for it in full_manifest.items)
    if windowed:
        if not all(it.segments and it.text is not None for it in full_manifest.items):
            raise ValueError(
                "manifest: mixes sliding-window text items (with segments) and other items; embed them apart"
            )
        other = sorted({p for ps in spans_by.values() for p in ps} - {"tr_words"})
        if other:
            raise ValueError(
                f"pooling: sliding-window manifests are pooled per TR, with 'tr_words' only (on main "
                f"components); got {other}"
            )
    n_units = len(manifest.units())
    uris = _component_uris(store, comps) if store is not None else {}
    first = manifest.items[0] if manifest.items else (full_manifest.items[0] if full_manifest.items else None)
    prompts = {}
    for ins in ins_list:
        skeleton = adapter.prompt_skeleton(ins, first) if first is not None else ""
        prompts[ins.id] = {"text": ins.text, "prompt": skeleton, "prompt_sha256": sha256(skeleton)}
    plan = EmbedPlan(
        model=model_key,
        stimulus_set=manifest.stimulus_set,
        n_items=len(manifest),
        instructions=[i.id for i in ins_list],
        components=layer_sel,
        poolings={f"{k[0]}/{k[1]}": v for k, v in spans_by.items()},
        prompts=prompts,
        rows=n_units * sum(per_unit.values()),
        rows_per_unit=per_unit,
        units_total=n_units * len(ins_list),
        stores=uris,
    )
    # resume: a unit is done when every component's store holds all of its rows (of this run:
    # rows of the same model name from another revision, dtype or prompt are refused)
    decoding = (
        {"strategy": "greedy", "do_sample": False, "max_new_tokens": max_new_tokens, "seed": seed}
        if respond
        else None
    )
    if uris:
        _check_same_run(list(uris.values()), model_key, adapter, prompts, decoding)
    stored: dict[tuple, set[tuple[str, int, str]]] = {}
    wanted_rows: dict[str, set[tuple[str, int, str]]] = {ins.id: set() for ins in ins_list}
    if resume and uris:
        by_uri: dict[str, dict[str, set[tuple[str, int, str]]]] = {}
        for c in comps:
            exp = by_uri.setdefault(uris[c], {})
            for ins in ins_list:
                exp.setdefault(ins.id, set()).update(
                    (c, lay, p) for lay in layer_sel[c] for p in spans_by[(ins.id, c)]
                )
        for uri, exp in by_uri.items():
            for k, v in exp.items():
                wanted_rows[k] |= v
            for u, rows in _stored_rows(uri, model_key, manifest.stimulus_set, exp).items():
                stored.setdefault(u, set()).update(rows)
    # a unit is done when all its rows are stored; a unit with some of them stored is recomputed
    # and only its missing rows are written
    done = {u for u, rows in stored.items() if rows >= wanted_rows.get(u[0], set())}
    todo = {
        ins.id: [it for it in manifest.items if (ins.id, it.stimulus_id, it.run, it.tr) not in done]
        for ins in ins_list
    }
    plan.units_done = plan.units_total - sum(len(v) for v in todo.values())
    plan.rows_to_write = sum(
        per_unit[k] - len(stored.get(_unit(k, it), ())) for k, v in todo.items() for it in v
    )
    if windowed:  # units are a window's TRs: it is to do while any of them is missing
        todo = {
            ins.id: [it for it in manifest.items if any(_unit(ins.id, s) not in done for s in it.segments)]
            for ins in ins_list
        }
        left = {ins.id: [u for u in manifest.units() if _unit(ins.id, u) not in done] for ins in ins_list}
        plan.units_done = plan.units_total - sum(len(v) for v in left.values())
        plan.rows_to_write = sum(
            per_unit[k] - len(stored.get(_unit(k, u), ())) for k, v in left.items() for u in v
        )
    if dry_run:
        return plan

    # a run without responses keeps the decoding settings recorded for this model's response
    # rows, so that a later run that generates is still checked against them
    recorded = decoding if decoding is not None else _recorded_decoding(uris.values(), model_key)
    registry = load_registry(registry_version)
    provenance = {
        **adapter.provenance(),
        "model_key": model_key,
        "instructions": {i.id: {**i.to_dict(), **prompts[i.id]} for i in ins_list},
        "prompt_template_sha256": sha256(
            json.dumps({k: v["prompt"] for k, v in prompts.items()}, sort_keys=True)
        ),
        "instruction_registry": {"version": registry.version, "sha256": registry.sha256},
        "decoding": recorded,
        "stimulus_set": full_manifest.stimulus_set,
        "stimulus_spec": full_manifest.spec,
        "components": {c: {"layers": layer_sel[c], "n_states": available[c][0]} for c in comps},
        "poolings": list(pooling),
        "pooling_spans": "see brainalign.features.extract.pooling",
        "batch_size": batch_size,
        "code_version": code_version(),
        "storage_dtype": storage_dtype,
    }
    writer = _Writer(uris, provenance, storage_dtype, defer_commit)
    gen_table: Table | None = None
    gen_uri = None
    if respond:
        base = uris[comps[0]]
        gen_uri = (
            str(generations)
            if generations
            else (base[:-6] if base.endswith(".lance") else base) + ".generations.lance"
        )
        gen_table = create_table(gen_uri, "generations", provenance=provenance, exist_ok=True)

    n_units = sum(len(v) for v in todo.values())
    bar = _progress(n_units, progress, f"embed {Path(str(model_key)).name}")
    units_written = 0
    for ins in ins_list:
        items = todo[ins.id]
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            responses = None
            if respond:
                torch.manual_seed(seed)
                responses = adapter.generate(batch, ins, max_new_tokens)
                gen_table.write(
                    pa.table(
                        {
                            "stimulus_set": [manifest.stimulus_set] * len(batch),
                            "stimulus_id": [it.stimulus_id for it in batch],
                            "run": pa.array([it.run for it in batch], pa.string()),
                            "tr": pa.array([it.tr for it in batch], pa.int32()),
                            "model": [model_key] * len(batch),
                            "instruction_id": [ins.id] * len(batch),
                            "text": [adapter.decode(r) for r in responses],
                            "token_ids": pa.array([list(r) for r in responses], pa.list_(pa.int32())),
                            "decoding": [json.dumps(decoding, sort_keys=True)] * len(batch),
                        }
                    )
                )
            units = batch  # what rows are keyed by: the items, or the missing TRs of windows
            if windowed:
                wanted = [
                    [k for k, s in enumerate(it.segments) if _unit(ins.id, s) not in done] for it in batch
                ]
                units = [it.segments[k] for it, ks in zip(batch, wanted, strict=True) for k in ks]
                batch = [_window_input(it) for it in batch]
            states = adapter.forward(batch, ins, comps, responses)
            for c in comps:
                st = states[c]
                hidden = stack_layers(st.hidden, layer_sel[c])
                for p in spans_by[(ins.id, c)]:
                    if windowed:
                        rows, w = _segment_weights(st, wanted, f"{adapter.model_id}: component {c}")
                        pooled = pool_rows(hidden, w.to(hidden.device), rows.to(hidden.device))
                        pooled = pooled.cpu().numpy()  # (layers, TRs, dim)
                    else:
                        mask = st.spans.get(p)
                        if mask is None:
                            raise ValueError(f"{adapter.model_id}: component {c} produced no {p!r} span")
                        fb = st.fallback[p] if isinstance(st.fallback, dict) else st.fallback
                        w = span_weights(mask.to(hidden.device), fb.to(hidden.device))
                        pooled = pool_layers(hidden, w).cpu().numpy()  # (layers, batch, dim)
                    L, B, _ = pooled.shape
                    keys = {
                        "stimulus_set": [manifest.stimulus_set] * (L * B),
                        "stimulus_id": [it.stimulus_id for it in units] * L,
                        "run": [it.run for it in units] * L,
                        "tr": [it.tr for it in units] * L,
                        "onset_s": [it.onset_s for it in units] * L,
                        "window_start_s": [it.window_start_s for it in units] * L,
                        "window_end_s": [it.window_end_s for it in units] * L,
                        "model": [model_key] * (L * B),
                        "instruction_id": [ins.id] * (L * B),
                        "component": [c] * (L * B),
                        "layer": [lay for lay in layer_sel[c] for _ in range(B)],
                        "pooling": [p] * (L * B),
                    }
                    emb = pooled.reshape(L * B, -1)
                    have = [stored.get(_unit(ins.id, it), ()) for it in units]
                    if any(have):  # rows of a partly stored unit: write only the missing ones
                        keep = [(c, lay, p) not in have[i % B] for i, lay in enumerate(keys["layer"])]
                        keys = {k: [x for x, ok in zip(v, keep, strict=True) if ok] for k, v in keys.items()}
                        emb = emb[np.asarray(keep, dtype=bool)]
                    if len(emb):
                        writer.add(c, keys, emb)
            if writer.pending() >= flush_rows:
                writer.flush()
            units_written += len(units)
            bar.update(len(batch))
        writer.flush()
    writer.flush()
    bar.close()
    fragments = None
    if defer_commit:
        fragments = writer.fragments
        if fragments_path is not None:
            Path(fragments_path).write_text(json.dumps(fragments))
    return EmbedResult(
        plan=plan,
        rows_written=writer.rows,
        units_written=units_written,
        units_skipped=plan.units_done,
        seconds=time.perf_counter() - t0,
        fragments=fragments,
        generations=gen_uri,
    )


def commit_shards(fragments: Sequence[dict[str, list[dict]] | str | Path]) -> dict[str, int]:
    """Commit the fragments of several shard workers (dicts ``{store_uri: [fragment, ...]}`` or
    JSON files of them) in one commit per store. Returns the new version of each store."""
    merged: dict[str, list[dict]] = {}
    for f in fragments:
        d = json.loads(Path(f).read_text()) if isinstance(f, (str, Path)) else f
        for uri, frags in d.items():
            merged.setdefault(uri, []).extend(frags)
    return {uri: FeatureStore.open(uri).commit_fragments(frags) for uri, frags in merged.items()}


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="stim", file=sys.stderr, dynamic_ncols=True)


def existing_units(store: str | FeatureStore, model: str, stimulus_set: str) -> pa.Table:
    """Distinct ``(instruction_id, stimulus_id, run, tr)`` with rows in ``store`` for ``model``."""
    st = store if isinstance(store, FeatureStore) else _open(str(store))
    if st is None:
        return pa.table({"instruction_id": [], "stimulus_id": [], "run": [], "tr": []})
    t = st.to_table(
        columns=["instruction_id", "stimulus_id", "run", "tr"],
        filter=f"model = {_sql_str(model)} AND stimulus_set = {_sql_str(stimulus_set)}",
    )
    return (
        t.group_by(["instruction_id", "stimulus_id", "run", "tr"])
        .aggregate([])
        .sort_by([("instruction_id", "ascending"), ("run", "ascending"), ("tr", "ascending")])
        if len(t)
        else t
    )
