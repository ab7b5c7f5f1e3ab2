"""A Hugging Face Hub-compatible HTTP server for tests (a test double, loopback only).

It implements the endpoints that ``huggingface_hub``'s ``HfApi``, ``hf_hub_download`` and
``snapshot_download`` call, with git-like semantics kept in memory:

- ``POST /api/repos/create``; ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo info)
- ``POST /api/{type}s/{repo}/preupload/{rev}``; the LFS batch API
  ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` with ``PUT /lfs/{oid}`` uploads and
  ``POST /lfs/verify`` (the client must take the plain LFS path: set ``HF_HUB_DISABLE_XET``)
- ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON; ``parentCommit`` checked, 412 if stale)
- ``GET /api/{type}s/{repo}/refs``; ``POST|DELETE .../tag/...``; ``POST .../branch/...``
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``; ``POST .../paths-info/{rev}``
- ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``, ``X-Linked-Size`` and ``Range``
- ``POST /api/validate-yaml``; ``GET /api/whoami-v2``

Auth: ``Authorization: Bearer <token>``; a token not in ``tokens`` gets 401 on every route;
writes need a known token; private repos need one to be read. ``stats`` counts the bytes
served by ``resolve`` so tests can check how much a pull moved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# like the Hub's default .gitattributes: binary files, data file types and large files go to LFS
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".lance", ".manifest", ".txn", ".arrow", ".bin", ".parquet", ".idx")
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Entry:
    size: int
    sha1: str  # git blob id (of the content, or of the LFS pointer)
    sha256: str | None  # set for LFS files
    content: bytes | None  # set for regular files


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, tuple[str | None, dict[str, Entry], str]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev in self.commits:
            return rev
        return None


class HubState:
    """Repositories, LFS objects and counters shared by the request handlers."""

    def __init__(self, root: Path, tokens: dict[str, str]):
        self.root = Path(root)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.stats = {
            "resolve_bytes": 0,
            "resolve_requests": 0,
            "lfs_uploads": 0,
            "lfs_upload_bytes": 0,
            "commits": 0,
            "conflicts": 0,
        }
        self.served: list[str] = []  # paths served by GET resolve, in order

    def reset_stats(self) -> None:
        with self.lock:
            for k in self.stats:
                self.stats[k] = 0
            self.served.clear()

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid

    def new_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], message: str) -> str:
        sha = hashlib.sha1(f"{parent}{time.time_ns()}{message}{len(tree)}".encode()).hexdigest()
        repo.commits[sha] = (parent, tree, message)
        return sha


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _entry_json(path: str, e: Entry) -> dict:
    out = {"type": "file", "oid": e.sha1, "size": e.size, "path": path}
    if e.sha256 is not None:
        out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
    return out


def _listing(tree: dict[str, Entry], base: str, recursive: bool) -> list[dict]:
    base = base.strip("/")
    prefix = base + "/" if base else ""
    out, dirs = [], set()
    for path in sorted(tree):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if "/" in rest:
            parts = rest.split("/")
            upto = len(parts) - 1 if recursive else 1
            for i in range(1, upto + 1):
                dirs.add(prefix + "/".join(parts[:i]))
            if not recursive:
                continue
        out.append(_entry_json(path, tree[path]))
    out += [
        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
        for d in sorted(dirs)
    ]
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made by :func:`serve`

    def log_message(self, format, *args):  # quiet: tests read state, not logs
        pass

    # ---- plumbing ------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            raise _Error(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        user = self._user()
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            raise _Error(404, "Repository not found", "RepoNotFound")
        if write and user is None:
            raise _Error(401, "You must be authenticated to write", None)
        return repo

    def _rev(self, repo: Repo, rev: str) -> str:
        sha = repo.resolve(urllib.parse.unquote(rev))
        if sha is None:
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha

    def _dispatch(self, method: str):
        try:
            url = urllib.parse.urlsplit(self.path)
            self._query = urllib.parse.parse_qs(url.query)
            path = url.path
            for pattern, name in _ROUTES:
                m = pattern.fullmatch(path)
                if m and name.startswith(method + " "):
                    with self.state.lock if method != "GET" or "resolve" not in name else _nolock:
                        return getattr(self, "r_" + name.split(" ", 1)[1])(**m.groupdict())
            raise _Error(404, f"no route for {method} {path}")
        except _Error as exc:
            headers = {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            if method == "HEAD":
                return self._send(exc.status, b"", headers, head=True)
            self._json(exc.status, {"error": exc.message}, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ---- routes --------------------------------------------------------------------------
    def r_whoami(self):
        user = self._user()
        if user is None:
            raise _Error(401, "You must be authenticated")
        self._json(200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}})

    def r_validate_yaml(self):
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def r_create(self):
        payload = json.loads(self._body() or b"{}")
        user = self._user()
        if user is None:
            raise _Error(401, "You must be authenticated to create a repo")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_type, repo_id, private)
        attrs = "".join(f"*{x} filter=lfs diff=lfs merge=lfs -text\n" for x in LFS_SUFFIXES).encode()
        tree = {".gitattributes": Entry(len(attrs), git_blob_sha1(attrs), None, attrs)}
        repo.branches["main"] = self.state.new_commit(repo, None, tree, "initial commit")
        self.state.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id})

    def r_info(self, type, repo, rev=None):
        r = self._repo(type, repo)
        sha = self._rev(r, rev or "main")
        tree = r.commits[sha][1]
        self._json(
            200,
            {
                "id": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "private": r.private,
                "siblings": [{"rfilename": p} for p in sorted(tree)],
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
        )

    def r_preupload(self, type, repo, rev):
        r = self._repo(type, repo, write=True)
        sha = self._rev(r, rev)
        tree = r.commits[sha][1]
        files = json.loads(self._body())["files"]
        out = []
        for f in files:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] >= LFS_THRESHOLD or b"\0" in sample or f["path"].endswith(LFS_SUFFIXES)
            existing = tree.get(f["path"])
            oid = None if existing is None else (existing.sha256 if existing.sha256 else existing.sha1)
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json(200, {"files": out, "commitOid": sha})

    def r_lfs_batch(self, prefix, repo):
        type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        self._repo(type, repo, write=True)
        payload = json.loads(self._body())
        host = f"http://{self.headers['Host']}"
        objects = []
        for obj in payload["objects"]:
            o = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            path = self.state.lfs_path(obj["oid"])
            if not path.exists():
                o["actions"] = {
                    "upload": {"href": f"{host}/lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{host}/lfs/verify", "header": {}},
                }
            objects.append(o)
        self._json(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def r_lfs_put(self, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise _Error(400, "sha256 of the uploaded content does not match the oid")
        with self.state.lock:
            self.state.lfs_path(oid).write_bytes(data)
            self.state.stats["lfs_uploads"] += 1
            self.state.stats["lfs_upload_bytes"] += len(data)
        self._send(200)

    def r_lfs_verify(self):
        obj = json.loads(self._body())
        path = self.state.lfs_path(obj["oid"])
        if not path.exists() or path.stat().st_size != obj["size"]:
            raise _Error(404, "object not uploaded")
        self._json(200, {})

    def r_commit(self, type, repo, rev):
        r = self._repo(type, repo, write=True)
        rev = urllib.parse.unquote(rev)
        if rev not in r.branches:
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        head = r.branches[rev]
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != head:
            self.state.stats["conflicts"] += 1
            raise _Error(412, f"A commit has happened since {parent}; the branch head is now {head}")
        tree = dict(r.commits[head][1])
        for item in lines[1:]:
            key, v = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(v["content"])
                tree[v["path"]] = Entry(len(data), git_blob_sha1(data), None, data)
            elif key == "lfsFile":
                path = self.state.lfs_path(v["oid"])
                if not path.exists():
                    raise _Error(400, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                size = path.stat().st_size
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{v['oid']}\nsize {size}\n".encode()
                tree[v["path"]] = Entry(size, git_blob_sha1(pointer), v["oid"], None)
            elif key == "deletedFile":
                if tree.pop(v["path"], None) is None:
                    raise _Error(404, f"{v['path']} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                for p in [p for p in tree if p.startswith(prefix)]:
                    del tree[p]
            else:
                raise _Error(400, f"unknown commit operation {key}")
        sha = self.state.new_commit(r, head, tree, header.get("summary", ""))
        r.branches[rev] = sha
        self.state.stats["commits"] += 1
        host = f"http://{self.headers['Host']}"
        self._json(
            200,
            {
                "commitUrl": f"{host}/{_PREFIX[type]}{repo}/commit/{sha}",
                "commitOid": sha,
                "success": True,
                "pullRequestUrl": None,
            },
        )

    def r_refs(self, type, repo):
        r = self._repo(type, repo)
        self._json(
            200,
            {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in sorted(r.branches.items())
                ],
                "tags": [
                    {"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(r.tags.items())
                ],
                "converts": [],
            },
        )

    def r_tag_create(self, type, repo, rev):
        r = self._repo(type, repo, write=True)
        sha = self._rev(r, rev)
        tag = json.loads(self._body())["tag"]
        if tag in r.tags:
            raise _Error(409, f"Tag {tag} already exists")
        r.tags[tag] = sha
        self._json(200, {})

    def r_tag_delete(self, type, repo, rev):
        r = self._repo(type, repo, write=True)
        if r.tags.pop(urllib.parse.unquote(rev), None) is None:
            raise _Error(404, "Tag not found", "RevisionNotFound")
        self._json(200, {})

    def r_branch_create(self, type, repo, rev):
        r = self._repo(type, repo, write=True)
        body = json.loads(self._body() or b"{}")
        name = urllib.parse.unquote(rev)
        if name in r.branches:
            raise _Error(409, f"Branch {name} already exists")
        r.branches[name] = self._rev(r, body.get("startingPoint") or "main")
        self._json(200, {})

    def r_tree(self, type, repo, rev, path=""):
        r = self._repo(type, repo)
        tree = r.commits[self._rev(r, rev)][1]
        recursive = self._query.get("recursive", ["False"])[0].lower() == "true"
        path = urllib.parse.unquote(path or "")
        if path and path not in tree and not any(p.startswith(path.rstrip("/") + "/") for p in tree):
            raise _Error(404, f"{path} does not exist", "EntryNotFound")
        self._json(200, _listing(tree, path, recursive))

    def r_paths_info(self, type, repo, rev):
        r = self._repo(type, repo)
        tree = r.commits[self._rev(r, rev)][1]
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body)["paths"]
        else:
            paths = urllib.parse.parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            if p in tree:
                out.append(_entry_json(p, tree[p]))
            elif any(q.startswith(p.rstrip("/") + "/") for q in tree):
                out.append(
                    {"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p}
                )
        self._json(200, out)

    def r_resolve_head(self, prefix, repo, rev, path):
        self._resolve(prefix, repo, rev, path, head=True)

    def r_resolve_get(self, prefix, repo, rev, path):
        self._resolve(prefix, repo, rev, path, head=False)

    def _resolve(self, prefix, repo, rev, path, head):
        type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix or ""]
        with self.state.lock:
            r = self._repo(type, repo)
            sha = self._rev(r, rev)
            path = urllib.parse.unquote(path)
            entry = r.commits[sha][1].get(path)
        if entry is None:
            raise _Error(404, f"{path} not found at {rev}", "EntryNotFound")
        data = entry.content if entry.content is not None else self.state.lfs_path(entry.sha256).read_bytes()
        etag = entry.sha256 or entry.sha1
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.sha256:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        status, body = 200, data
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        if not head:
            with self.state.lock:
                self.state.stats["resolve_bytes"] += len(body)
                self.state.stats["resolve_requests"] += 1
                self.state.served.append(path)
        self._send(status, body, headers, head=head)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_nolock = _NoLock()
_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_TYPE = r"(?P<type>model|dataset|space)s"
_ROUTES = [
    (re.compile(p), n)
    for p, n in [
        (r"/api/whoami-v2", "GET whoami"),
        (r"/api/validate-yaml", "POST validate_yaml"),
        (r"/api/repos/create", "POST create"),
        (rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", "POST preupload"),
        (rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", "POST commit"),
        (rf"/api/{_TYPE}/{_REPO}/refs", "GET refs"),
        (rf"/api/{_TYPE}/{_REPO}/tag/(?P<rev>[^/]+)", "POST tag_create"),
        (rf"/api/{_TYPE}/{_REPO}/tag/(?P<rev>[^/]+)", "DELETE tag_delete"),
        (rf"/api/{_TYPE}/{_REPO}/branch/(?P<rev>[^/]+)", "POST branch_create"),
        (rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "GET tree"),
        (rf"/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)", "POST paths_info"),
        (rf"/api/{_TYPE}/{_REPO}/revision/(?P<rev>[^/]+)", "GET info"),
        (rf"/api/{_TYPE}/{_REPO}", "GET info"),
        (
            r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch",
            "POST lfs_batch",
        ),
        (r"/lfs/verify", "POST lfs_verify"),
        (r"/lfs/(?P<oid>[0-9a-f]{64})", "PUT lfs_put"),
        (
            r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
            "HEAD resolve_head",
        ),
        (
            r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
            "GET resolve_get",
        ),
    ]
]


class HubServer:
    """A running server: ``endpoint`` (``http://127.0.0.1:PORT``), ``state``, ``close()``."""

    def __init__(self, root: Path, tokens: dict[str, str]):
        self.state = HubState(root, tokens)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(root: Path, tokens: dict[str, str]) -> HubServer:
    """Start a server on 127.0.0.1 on a free port."""
    return HubServer(root, tokens)
