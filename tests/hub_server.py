"""A local stand-in for the Hugging Face Hub's HTTP API, for tests and benchmarks.

It serves model repositories held in memory on 127.0.0.1 (never another interface), on a port
the system picks, and stops by itself after `lifetime` seconds even if nobody stops it. Point
huggingface_hub at it with `HF_ENDPOINT=server.url` (set before huggingface_hub is imported: it
reads the variable then, so tests run the CLI in a subprocess).

Only the endpoints huggingface_hub calls for what headscope does are implemented:

- `GET /api/models/{repo}[/revision/{rev}]`: the repository's info (commit sha, files, sizes),
  at "main" (the last commit) or at any earlier commit named by its hash;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: its files, recursively (one page);
- `HEAD` and `GET /{repo}/resolve/{rev}/{path}`: file metadata (`X-Repo-Commit`, `ETag`,
  `Content-Length`) and content, with one `Range: bytes=a-b` per request (206 answers);
- `POST /api/repos/create`, `POST /api/models/{repo}/preupload/{rev}` (every file "regular",
  so no LFS), `POST /api/validate-yaml` (a model card's metadata: accepted) and
  `POST /api/models/{repo}/commit/{rev}` (NDJSON, base64 contents): `upload_folder`.

Unknown repositories and revisions answer 404 with the `X-Error-Code` huggingface_hub maps to
RepositoryNotFoundError / RevisionNotFoundError. `served` counts the body bytes sent per file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)  # at "main"
    commits: list[str] = field(default_factory=list)  # oldest first; "main" is the last
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> its files

    def commit(self, files: dict[str, bytes], deleted: tuple[str, ...] = ()) -> str:
        self.files.update(files)
        for name in deleted:
            self.files.pop(name, None)
        digest = hashlib.sha1(json.dumps(sorted(
            (k, hashlib.sha256(v).hexdigest()) for k, v in self.files.items())).encode())
        digest.update(str(len(self.commits)).encode())
        self.commits.append(digest.hexdigest())
        self.snapshots[self.commits[-1]] = dict(self.files)
        return self.commits[-1]


class HubServer:
    """`with HubServer() as hub:` -> hub.url; `hub.add_folder("org/name", folder)` publishes."""

    def __init__(self, lifetime: float = 300.0) -> None:
        self.repos: dict[str, Repo] = {}
        self.served: Counter[str] = Counter()  # "org/name/path" -> body bytes sent
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.unknown: list[str] = []  # requests no endpoint answered (a test may assert none)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_folder(self, repo_id: str, folder: Path) -> str:
        """Publish every file under `folder` as one commit of `repo_id`; its sha."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.repos.setdefault(repo_id, Repo()).commit(files)

    def bytes_served(self, repo_id: str) -> int:
        return sum(n for key, n in self.served.items() if key.startswith(repo_id + "/"))

    # ------------------------------------------------------------------ HTTP

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def do_HEAD(self):
                server._route(self, "HEAD")

            def do_GET(self):
                server._route(self, "GET")

            def do_POST(self):
                server._route(self, "POST")

        return Handler

    def _reply(self, h, status: int, body: bytes = b"", headers: dict | None = None,
               head: bool = False) -> None:
        headers = dict(headers or {})
        length = headers.pop("Content-Length", len(body))  # a HEAD answer: the GET's length
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, str(value))
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h, status: int, data, headers: dict | None = None) -> None:
        self._reply(h, status, json.dumps(data).encode(),
                    {"Content-Type": "application/json", **(headers or {})})

    def _missing(self, h, code: str, message: str, head: bool = False) -> None:
        self._reply(h, 404, json.dumps({"error": message}).encode(),
                    {"Content-Type": "application/json", "X-Error-Code": code,
                     "X-Error-Message": message}, head=head)

    def _repo_at(self, h, repo_id: str, rev: str, head: bool = False):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._missing(h, "RepoNotFound", f"Repository {repo_id} not found", head)
            return None, None
        if rev == "main":
            return repo, repo.commits[-1]
        if rev in repo.snapshots:  # an earlier commit, by its hash
            return repo, rev
        self._missing(h, "RevisionNotFound", f"Revision {rev} not found", head)
        return None, None

    def _route(self, h, method: str) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((method, path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and method == "GET":
            repo, sha = self._repo_at(h, m.group(1), m.group(2) or "main")
            if repo is not None:
                self._json(h, 200, {
                    "id": m.group(1), "modelId": m.group(1), "sha": sha, "private": False,
                    "siblings": [{"rfilename": name, "size": len(data),
                                  "blobId": hashlib.sha1(data).hexdigest()}
                                 for name, data in sorted(repo.snapshots[sha].items())],
                })
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and method == "GET":  # list_repo_tree (snapshot_download), every file recursively
            repo, sha = self._repo_at(h, m.group(1), m.group(2))
            if repo is not None:
                under = (m.group(3) or "").strip("/")
                self._json(h, 200, [
                    {"type": "file", "path": name, "size": len(data),
                     "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in sorted(repo.snapshots[sha].items())
                    if not under or name.startswith(under + "/")])
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            self._resolve(h, method, m.group(1), m.group(2), m.group(3))
            return
        if path == "/api/repos/create" and method == "POST":
            data = json.loads(self._body(h) or b"{}")
            repo_id = f"{data.get('organization')}/{data.get('name')}"
            if repo_id in self.repos:
                self._json(h, 409, {"error": "You already created this model repo",
                                    "url": f"{self.url}/{repo_id}"})
                return
            self.repos[repo_id] = Repo()
            self.repos[repo_id].commit({".gitattributes": b""})
            self._json(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
            return
        if path == "/api/validate-yaml" and method == "POST":  # a README.md's metadata block
            self._body(h)
            self._json(h, 200, {"errors": [], "warnings": []})
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if m and method == "POST":
            data = json.loads(self._body(h))
            self._json(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                           "shouldIgnore": False} for f in data["files"]]})
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if m and method == "POST":
            repo, _ = self._repo_at(h, m.group(1), m.group(2))
            if repo is None:
                return
            files, deleted = {}, []
            for line in self._body(h).splitlines():
                item = json.loads(line)
                value = item.get("value", {})
                if item.get("key") == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item.get("key") == "deletedFile":
                    deleted.append(value["path"])
            sha = repo.commit(files, tuple(deleted))
            self._json(h, 200, {"commitUrl": f"{self.url}/{m.group(1)}/commit/{sha}",
                                "commitOid": sha, "pullRequestUrl": None, "success": True})
            return
        self.unknown.append(f"{method} {path}")
        self._reply(h, 404, b'{"error": "not implemented by the test server"}')

    def _body(self, h) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length)

    def _resolve(self, h, method: str, repo_id: str, rev: str, name: str) -> None:
        head = method == "HEAD"
        repo, sha = self._repo_at(h, repo_id, rev, head)
        if repo is None:
            return
        files = repo.snapshots[sha]
        if name not in files:
            self._reply(h, 404, b'{"error": "Entry not found"}',
                        {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, head=head)
            return
        data = files[name]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, body = 200, data
        wanted = h.headers.get("Range")
        if wanted:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not m or int(m.group(1)) >= len(data):
                self._reply(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}, head=head)
                return
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if head:
            self._reply(h, status, b"", {**headers, "Content-Length": len(body)}, head=True)
            return
        self.served[f"{repo_id}/{name}"] += len(body)
        self._reply(h, status, body, headers)
