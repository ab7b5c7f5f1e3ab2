"""Publish brainalign tables to the Hugging Face Hub and pull them back, partially.

A published dataset repo holds, per table, the Lance dataset directory (``features.lance/``:
manifests of every version, data files, deletion files, tags), a dataset card ``README.md`` and
``brainalign.json``, an index of every file (size, SHA-256) and of the data files holding each
(model, instruction, component, pooling, layer, stimulus set) group at the published version.

:func:`push` uploads only what changed, in one commit, and makes the Hub tag the Lance tag.
:func:`pull` downloads the index, then only the manifest and the data files that hold the
selected rows (through ``huggingface_hub``'s cache, so a second pull — or one with
``HF_HUB_OFFLINE=1`` — reads from disk), checks them against their SHA-256 and returns a local
:class:`~brainalign.features.FeatureStore` (or the ``(keys, array)`` pair).

Tokens come from the ``token`` argument, ``HF_TOKEN`` or the user's ``hf auth login``; they
are passed to ``huggingface_hub`` only and never appear in a table, the card, the index, a
log record or an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .card import render_card
from .store import FEATURE_GROUP, MAX_BYTES_PER_FILE, FeatureStore, Table, open_table, selection_filter

logger = logging.getLogger(__name__)

INDEX_FILE = "brainalign.json"
INDEX_FORMAT = 1
_IMMUTABLE_DIRS = ("data", "_deletions")  # Lance never rewrites a file under these names


class HubError(RuntimeError):
    """A push or pull failed for a reason the user can act on (the message says which)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git_sha1(path: Path) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _manifest_name(version: int) -> str:
    # Lance's V2 manifest naming: u64::MAX - version, zero-padded, so the newest sorts first
    return f"{(1 << 64) - 1 - int(version):020d}.manifest"


def _deletion_path(fragment_id: int, deletion: dict) -> str:
    ext = "arrow" if deletion["file_type"] == "array" else "bin"
    return f"_deletions/{fragment_id}-{deletion['read_version']}-{deletion['id']}.{ext}"


def _http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _auth_error(repo_id: str, endpoint: str) -> HubError:
    return HubError(
        f"the Hub at {endpoint} rejected the credentials sent for {repo_id!r} (HTTP 401): check the token "
        "passed as token=, HF_TOKEN or `hf auth login`"
    )


# ---- what a table consists of ------------------------------------------------------------
def table_files(table: Table) -> list[str]:
    """Paths (relative to the table directory) of every file the table's versions need.

    Data files written by a writer that never committed are left out: no version refers to them.
    """
    root = Path(table.uri)
    referenced: set[str] = set()
    for v in table.dataset.versions():
        ds = lance.dataset(table.uri, version=v["version"])
        for frag in ds.get_fragments():
            md = frag.metadata.to_json()
            referenced.update(f"data/{f['path']}" for f in md["files"])
            if md.get("deletion_file"):
                referenced.add(_deletion_path(md["id"], md["deletion_file"]))
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        top = rel.split("/", 1)[0]
        if top in _IMMUTABLE_DIRS and rel not in referenced:
            continue
        out.append(rel)
    return out


def build_index(table: Table, path_in_repo: str) -> dict[str, Any]:
    """The ``brainalign.json`` entry of one table: version, schema, provenance, fragments,
    groups and files (``{path: {"size", "sha256"}}``)."""
    ds = table.dataset
    root = Path(table.uri)
    files = {
        f"{path_in_repo}/{rel}": {"size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)}
        for rel in table_files(table)
    }
    fragments = {}
    for frag in ds.get_fragments():
        md = frag.metadata.to_json()
        fragments[str(md["id"])] = {
            "files": [f"{path_in_repo}/data/{f['path']}" for f in md["files"]],
            "deletion": f"{path_in_repo}/{_deletion_path(md['id'], md['deletion_file'])}"
            if md.get("deletion_file")
            else None,
            "rows": frag.count_rows(),
        }
    entry: dict[str, Any] = {
        "kind": table.table_kind,
        "path": path_in_repo,
        "version": ds.version,
        "manifest": f"{path_in_repo}/_versions/{_manifest_name(ds.version)}",
        "tags": table.tags(),
        "rows": ds.count_rows(),
        "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in ds.schema],
        "provenance": table.provenance,
        "fragments": fragments,
        "files": files,
    }
    if table.table_kind == "features":
        store = table if isinstance(table, FeatureStore) else FeatureStore(ds, table.uri)
        entry.update(
            dim=store.dim,
            dtype=store.storage_dtype,
            available=store.available()
            if entry["rows"]
            else {
                c: [] for c in ("model", "instruction_id", "component", "layer", "stimulus_set", "pooling")
            },
        )
        groups: dict[tuple, dict] = {}
        if entry["rows"]:
            t = ds.to_table(columns=list(FEATURE_GROUP), with_row_address=True)
            frag_ids = (t.column("_rowaddr").to_numpy().astype(np.uint64) >> np.uint64(32)).astype(np.int64)
            t = t.drop_columns(["_rowaddr"]).append_column("_frag", pa.array(frag_ids))
            agg = t.group_by([*FEATURE_GROUP, "_frag"]).aggregate([([], "count_all")])
            for row in agg.to_pylist():
                key = tuple(row[c] for c in FEATURE_GROUP)
                g = groups.setdefault(key, {**{c: row[c] for c in FEATURE_GROUP}, "rows": 0, "fragments": []})
                g["rows"] += row["count_all"]
                g["fragments"].append(str(row["_frag"]))
        entry["groups"] = [
            dict(g, fragments=sorted(g["fragments"], key=int)) for _, g in sorted(groups.items())
        ]
    return entry


# ---- push ---------------------------------------------------------------------------------
def _remote_files(api: HfApi, repo_id: str, revision: str, prefix: str) -> dict[str, Any]:
    try:
        entries = api.list_repo_tree(
            repo_id, path_in_repo=prefix, recursive=True, repo_type="dataset", revision=revision
        )
        return {e.path: e for e in entries if hasattr(e, "blob_id")}
    except EntryNotFoundError:
        return {}


def _remote_index(api: HfApi, repo_id: str, revision: str, remote: dict[str, Any]) -> dict[str, Any] | None:
    if INDEX_FILE not in remote:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = api.hf_hub_download(repo_id, INDEX_FILE, repo_type="dataset", revision=revision, local_dir=tmp)
        return json.loads(Path(path).read_text())


def _unchanged(local: Path, rel: str, info: dict, remote) -> bool:
    if remote is None or remote.size != info["size"]:
        return False
    if rel.split("/", 1)[0] in _IMMUTABLE_DIRS:
        return True  # Lance names these files uniquely and never rewrites them
    if remote.lfs is not None:
        return remote.lfs.sha256 == info["sha256"]
    return remote.blob_id == _git_sha1(local)


def push(
    store: Table,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool = False,
    token: str | None = None,
    path_in_repo: str | None = None,
    license: str = "cc-by-4.0",
    commit_message: str | None = None,
    max_bytes_per_file: int = MAX_BYTES_PER_FILE,
    endpoint: str | None = None,
    retries: int = 5,
) -> dict[str, Any]:
    """Publish a table to the dataset repo ``repo_id`` in one commit; returns what was done.

    Creates the repo if needed (``private`` applies then), tags the table's current version as
    ``tag`` in Lance and on the Hub (the same name), uploads only files the repo lacks, removes
    files of the table that no local version uses any more, and rewrites ``README.md`` and
    ``brainalign.json``. A concurrent push to the same repo is detected (the commit names its
    parent) and retried up to ``retries`` times.

    Returns ``{"repo_id", "commit", "version", "tag", "uploaded", "deleted", "unchanged",
    "bytes_uploaded"}``.
    """
    store.refresh()
    path_in_repo = (path_in_repo or f"{store.table_kind or 'table'}.lance").strip("/")
    root = Path(store.uri)
    too_big = [root / p for p in table_files(store) if (root / p).stat().st_size > max_bytes_per_file]
    if too_big:
        raise HubError(
            f"store: {len(too_big)} data file(s) exceed max_bytes_per_file={max_bytes_per_file} "
            f"(largest {max(p.stat().st_size for p in too_big)} bytes); run store.compact(max_bytes_per_file=...) first"
        )
    if tag is not None:
        store.tag(tag)
    entry = build_index(store, path_in_repo)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint = api.endpoint
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    except HfHubHTTPError as exc:
        if _http_status(exc) == 401:
            raise _auth_error(repo_id, endpoint) from None
        raise HubError(
            f"repo_id: could not create or open dataset repo {repo_id!r} on {endpoint}: "
            f"HTTP {_http_status(exc)}"
        ) from None
    for attempt in range(retries + 1):
        try:
            result = _push_once(api, store, repo_id, entry, path_in_repo, license, commit_message)
            break
        except HfHubHTTPError as exc:
            status = _http_status(exc)
            if status == 412 and attempt < retries:
                logger.info(
                    "push to %s raced another commit; retrying (%d/%d)", repo_id, attempt + 1, retries
                )
                continue
            if status == 401:
                raise _auth_error(repo_id, endpoint) from None
            raise
    if tag is not None:
        _hub_tag(api, repo_id, tag, result["commit"], entry["version"])
    result.update(tag=tag, version=entry["version"], repo_id=repo_id)
    return result


def _push_once(api, store, repo_id, entry, path_in_repo, license, commit_message) -> dict[str, Any]:
    head = api.repo_info(repo_id, repo_type="dataset", revision="main").sha
    remote = _remote_files(api, repo_id, head, "")
    index = _remote_index(api, repo_id, head, remote) or {"format": INDEX_FORMAT, "tables": {}}
    index["format"] = INDEX_FORMAT
    index["tables"][path_in_repo] = entry
    root = Path(store.uri)
    ops: list = []
    uploaded, unchanged, nbytes = [], 0, 0
    for rpath, info in sorted(entry["files"].items()):
        rel = rpath[len(path_in_repo) + 1 :]
        if _unchanged(root / rel, rel, info, remote.get(rpath)):
            unchanged += 1
            continue
        ops.append(CommitOperationAdd(path_in_repo=rpath, path_or_fileobj=str(root / rel)))
        uploaded.append(rpath)
        nbytes += info["size"]
    deleted = sorted(p for p in remote if p.startswith(path_in_repo + "/") and p not in entry["files"])
    ops += [CommitOperationDelete(path_in_repo=p) for p in deleted]
    card = render_card(index, repo_id, license=license).encode()
    index_bytes = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    for name, data in (("README.md", card), (INDEX_FILE, index_bytes)):
        r = remote.get(name)
        if r is None or r.blob_id != hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest():
            ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=data))
            uploaded.append(name)
    if not ops:
        return {"commit": head, "uploaded": [], "deleted": [], "unchanged": unchanged, "bytes_uploaded": 0}
    message = commit_message or f"brainalign: {path_in_repo} at Lance version {entry['version']}"
    info = api.create_commit(repo_id, ops, commit_message=message, repo_type="dataset", parent_commit=head)
    return {
        "commit": info.oid,
        "uploaded": uploaded,
        "deleted": deleted,
        "unchanged": unchanged,
        "bytes_uploaded": nbytes,
    }


def _hub_tag(api: HfApi, repo_id: str, tag: str, commit: str, version: int) -> None:
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    existing = {t.name: t.target_commit for t in refs.tags}
    if tag in existing:
        if existing[tag] == commit:
            return
        # the tag may point at an earlier commit of the same Lance version (a re-push)
        with tempfile.TemporaryDirectory() as tmp:
            p = api.hf_hub_download(
                repo_id, INDEX_FILE, repo_type="dataset", revision=existing[tag], local_dir=tmp
            )
            tagged = json.loads(Path(p).read_text())
        if any(t["version"] == version for t in tagged["tables"].values()):
            return
        raise HubError(
            f"tag: {tag!r} already names commit {existing[tag]} of {repo_id} holding another version"
        )
    api.create_tag(repo_id, tag=tag, revision=commit, repo_type="dataset")


# ---- pull ---------------------------------------------------------------------------------
def _list(values) -> list | None:
    if values is None:
        return None
    return [values] if isinstance(values, (str, int, np.integer)) else list(values)


def _explain_revision(api: HfApi, repo_id: str, revision: str | None) -> str:
    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        return f"branches {sorted(b.name for b in refs.branches)}, tags {sorted(t.name for t in refs.tags)}"
    except Exception:  # the listing only decorates the message
        return "its refs could not be listed"


def _snapshot(repo_id, revision, patterns, cache_dir, token, endpoint) -> Path:
    api = HfApi(endpoint=endpoint, token=token)
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=patterns,
                cache_dir=cache_dir,
                token=token,
                endpoint=endpoint,
            )
        )
    except RevisionNotFoundError:
        raise HubError(
            f"revision: {revision!r} is not a branch, tag or commit of {repo_id!r}; the repo has "
            f"{_explain_revision(api, repo_id, revision)}"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"repo_id: no dataset repo {repo_id!r} on {api.endpoint} (or it is private and no valid "
            "token was sent)"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        raise HubError(
            f"{repo_id!r} at revision {revision or 'main'!r} is not in the local cache and the Hub "
            "cannot be reached (offline mode, HF_HUB_OFFLINE=1, or no connection)"
        ) from None
    except HfHubHTTPError as exc:
        if _http_status(exc) == 401:
            raise _auth_error(repo_id, api.endpoint) from None
        raise


def _pick_table(index: dict, table: str, repo_id: str) -> dict:
    tables = index.get("tables", {})
    for path, entry in tables.items():
        if table in (path, entry["kind"]):
            return entry
    raise HubError(f"table: {repo_id!r} holds no {table!r} table; it holds {sorted(tables)}")


def _select_fragments(entry: dict, repo_id: str, sel: dict[str, list | None]) -> list[str]:
    names = {
        "model": "model",
        "instruction_id": "instruction",
        "component": "component",
        "layer": "layer",
        "stimulus_set": "stimulus_set",
        "pooling": "pooling",
    }
    available = entry.get("available", {})
    for col, arg in names.items():
        wanted = sel.get(col)
        if wanted is None:
            continue
        missing = [v for v in wanted if v not in available.get(col, [])]
        if missing:
            raise HubError(f"{arg}: {repo_id!r} has no {col} {missing}; available: {available.get(col, [])}")
    groups = [g for g in entry["groups"] if all(sel.get(c) is None or g[c] in sel[c] for c in names)]
    if not groups:
        raise HubError(
            f"selection: no (model, instruction, component, pooling, layer, stimulus set) group of "
            f"{repo_id!r} matches {dict((k, v) for k, v in sel.items() if v is not None)}; "
            f"available: {available}"
        )
    return sorted({f for g in groups for f in g["fragments"]}, key=int)


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or hf_constants.HF_HUB_CACHE) / "brainalign-selections"


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    model=None,
    instruction=None,
    layer=None,
    component=None,
    stimulus_set=None,
    pooling=None,
    columns: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    table: str = "features",
    as_arrays: bool = False,
    verify: bool = True,
    endpoint: str | None = None,
):
    """Fetch a published table (or the selected part of it) and return it locally.

    Parameters
    ----------
    repo_id : the dataset repo, ``owner/name``.
    revision : branch, Hub tag (= Lance tag) or commit; default ``main``.
    model, instruction, layer, component, stimulus_set, pooling : one value or a list each;
        only the data files holding those groups are downloaded.
    columns : key columns to return with ``as_arrays``.
    cache_dir : ``huggingface_hub`` cache directory (default ``HF_HUB_CACHE``).
    as_arrays : return ``(keys, X)`` — ``X`` float32 ``(n_rows, dim)`` in key order — instead of
        a :class:`FeatureStore`.
    verify : check every downloaded file against the SHA-256 recorded at push time.

    Returns a :class:`FeatureStore` (a read-only view of the full table, or a local table of the
    selected rows), another :class:`Table` for non-features tables, or ``(keys, X)``.
    Works offline from the cache (``HF_HUB_OFFLINE=1``) for anything pulled before.
    """
    snap = _snapshot(repo_id, revision, [INDEX_FILE], cache_dir, token, endpoint)
    index_path = snap / INDEX_FILE
    if not index_path.exists():
        raise HubError(
            f"repo_id: {repo_id!r} at {revision or 'main'!r} is not a brainalign repo (no {INDEX_FILE})"
        )
    commit = snap.name
    raw = index_path.read_bytes()
    blob = Path(os.path.realpath(index_path)).name  # huggingface_hub names blobs by their ETag (git sha1)
    if verify and len(blob) == 40 and hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() != blob:
        raise HubError(
            f"integrity: {INDEX_FILE} of {repo_id!r}@{commit} in the cache does not match its git hash"
        )
    try:
        index = json.loads(raw)
    except ValueError:
        raise HubError(f"integrity: {INDEX_FILE} of {repo_id!r}@{commit} is not valid JSON") from None
    entry = _pick_table(index, table, repo_id)
    sel = {
        "model": _list(model),
        "instruction_id": _list(instruction),
        "component": _list(component),
        "layer": _list(layer),
        "stimulus_set": _list(stimulus_set),
        "pooling": _list(pooling),
    }
    selecting = any(v is not None for v in sel.values())
    if entry["kind"] != "features" and selecting:
        raise HubError(
            f"selection: selectors apply to features tables; {entry['path']} is a {entry['kind']} table"
        )
    frag_ids = (
        _select_fragments(entry, repo_id, sel) if entry["kind"] == "features" else list(entry["fragments"])
    )
    need = [entry["manifest"]]
    for fid in frag_ids:
        frag = entry["fragments"][fid]
        need += frag["files"] + ([frag["deletion"]] if frag["deletion"] else [])
    if not selecting:  # a full pull also brings tags and older versions
        need = sorted(entry["files"])
    snap = _snapshot(repo_id, commit, need, cache_dir, token, endpoint)
    missing = [p for p in need if not (snap / p).exists()]
    if missing:
        raise HubError(
            f"{len(missing)} file(s) of {repo_id!r}@{commit} are missing after download "
            f"(offline with an incomplete cache?), e.g. {missing[0]}"
        )
    if verify:
        for p in need:
            expected = entry["files"].get(p)
            if expected is not None and _sha256(snap / p) != expected["sha256"]:
                raise HubError(
                    f"integrity: {p} of {repo_id!r}@{commit} does not match its SHA-256 in {INDEX_FILE}"
                )
    uri = snap / entry["path"]
    if not selecting:
        out = open_table(uri, version=entry["version"])
        out._pinned = True  # it lives in the download cache: writes go to a copy, not here
    else:
        out = _selection_store(uri, entry, frag_ids, sel, cache_dir, repo_id, commit)
    if as_arrays:
        if not isinstance(out, FeatureStore):
            raise HubError(f"as_arrays: {entry['path']} is a {entry['kind']} table, not features")
        return out.read(
            model=model,
            instruction=instruction,
            layer=layer,
            component=component,
            stimulus_set=stimulus_set,
            pooling=pooling,
            columns=columns,
        )
    return out


def _selection_store(
    uri: Path, entry: dict, frag_ids: list[str], sel: dict, cache_dir, repo_id: str, commit: str
) -> FeatureStore:
    """A local table of the selected rows, built once per (commit, selection) from the cached files."""
    digest = hashlib.sha1(json.dumps([entry["path"], sel], sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
    dest = (
        _cache_root(cache_dir)
        / repo_id.replace("/", "--")
        / commit
        / f"{Path(entry['path']).stem}-{digest}.lance"
    )
    if not (dest / "_versions").exists():
        ds = lance.dataset(str(uri), version=entry["version"])
        filt = selection_filter(
            model=sel["model"],
            instruction=sel["instruction_id"],
            layer=sel["layer"],
            component=sel["component"],
            stimulus_set=sel["stimulus_set"],
            pooling=sel["pooling"],
        )
        frags = [ds.get_fragment(int(f)) for f in frag_ids]
        reader = ds.scanner(fragments=frags, filter=filt).to_reader()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
        try:
            lance.write_dataset(
                reader, str(tmp / "t.lance"), schema=ds.schema, max_bytes_per_file=MAX_BYTES_PER_FILE
            )
            try:
                os.replace(tmp / "t.lance", dest)
            except OSError:  # another process built the same selection first
                if not (dest / "_versions").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return FeatureStore.open(dest)  # type: ignore[return-value]


__all__ = ["INDEX_FILE", "HubError", "build_index", "pull", "push", "table_files"]
