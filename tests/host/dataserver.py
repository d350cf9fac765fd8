"""A real HTTP server on 127.0.0.1 for `kit data fetch`'s tests: static files with Range and If-Range, replies cut
short on purpose, servers that ignore Range, and the part of the Hugging Face hub API that huggingface_hub uses to
list a repository and resolve its files (with the redirect to a CDN on another host name, as the real hub does).

Every request is logged (method, path, headers, bytes sent), so a test can assert what the client asked for.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
TREE = re.compile(r"^/api/(datasets|models)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$")


@dataclass
class Request:
    method: str
    path: str
    host: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)  # paths stored in LFS (listed with a sha256, served from the CDN)
    gated: bool = False
    served: dict[str, bytes] = field(default_factory=dict)  # path -> other bytes than listed (a corrupt mirror)


def etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def git_oid(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class DataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.breaks: dict[str, list[int]] = {}  # path -> for each coming GET, the body bytes sent before closing
        self.ignore_range: set[str] = set()
        self.status: dict[str, int] = {}
        self.repos: dict[tuple[str, str], Repo] = {}  # ("datasets" | "models", repo id) -> files
        self.log: list[Request] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DataServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.breaks.clear()
            self.ignore_range.clear()
            self.status.clear()
            self.repos.clear()
            self.log.clear()

    def requests(self, method: str | None = None, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method) and r.path.startswith(prefix)]

    def sent(self, path: str) -> int:
        return sum(r.sent for r in self.requests("GET", path) if r.path == path)

    def add_repo(self, kind: str, repo: str, files: dict[str, bytes], lfs: set[str] | None = None, **kw) -> Repo:
        r = self.repos[(kind, repo)] = Repo(dict(files), set(lfs or ()), **kw)
        return r


class Handler(BaseHTTPRequestHandler):
    server: DataServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the tests read server.log
        pass

    def _record(self) -> Request:
        req = Request(self.command, unquote(urlparse(self.path).path), self.headers.get("Host", ""),
                      {k.title(): v for k, v in self.headers.items()})
        with self.server.lock:
            self.server.log.append(req)
        return req

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        req = self._record()
        path = req.path
        if path in self.server.status:
            return self._plain(req, self.server.status[path], b"refused\n", head)
        if m := TREE.match(path):
            return self._tree(req, m.group(1), m.group(2), head)
        if m := RESOLVE.match(path):
            return self._resolve(req, "datasets" if m.group(1) else "models", m.group(2), m.group(4), head)
        if path.startswith("/cdn/"):
            for repo in self.server.repos.values():
                for p, data in repo.files.items():
                    if hashlib.sha256(data).hexdigest() == path[5:]:
                        return self._file(req, path, repo.served.get(p, data), head)
        if path in self.server.files:
            return self._file(req, path, self.server.files[path], head)
        return self._plain(req, 404, b"not found\n", head)

    def _plain(self, req: Request, code: int, body: bytes, head: bool, headers: dict[str, str] | None = None) -> None:
        req.status = code
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
            req.sent = len(body)

    def _repo(self, req: Request, kind: str, repo_id: str, head: bool) -> Repo | None:
        repo = self.server.repos.get((kind, repo_id))
        if repo is None:
            self._plain(req, 404, b'{"error":"Repository not found"}', head, {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.gated and "Authorization" not in req.headers:
            self._plain(req, 401, b'{"error":"Access to this repository is restricted"}', head,
                        {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to {repo_id} is restricted."})
            return None
        return repo

    def _tree(self, req: Request, kind: str, repo_id: str, head: bool) -> None:
        repo = self._repo(req, kind, repo_id, head)
        if repo is None:
            return
        entries, folders = [], set()
        for p, data in sorted(repo.files.items()):
            parts = p.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            e = {"type": "file", "oid": git_oid(data), "size": len(data), "path": p}
            if p in repo.lfs:
                e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(e)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._plain(req, 200, json.dumps(entries).encode(), head, {"Content-Type": "application/json"})

    def _resolve(self, req: Request, kind: str, repo_id: str, path: str, head: bool) -> None:
        repo = self._repo(req, kind, repo_id, head)
        if repo is None:
            return
        if path not in repo.files:
            return self._plain(req, 404, b"entry not found\n", head, {"X-Error-Code": "EntryNotFound"})
        data = repo.files[path]
        if path in repo.lfs:  # the real hub redirects LFS files to its CDN, on another host
            cdn = f"http://localhost:{self.server.port}/cdn/{hashlib.sha256(data).hexdigest()}"
            return self._plain(req, 302, b"", head, {"Location": cdn})
        self._file(req, req.path, repo.served.get(path, data), head)

    def _file(self, req: Request, path: str, data: bytes, head: bool) -> None:
        tag = etag(data)
        start, code = 0, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and path not in self.server.ignore_range and (if_range is None or if_range == tag):
            m = re.match(r"bytes=(\d+)-$", rng)
            if m:
                start = int(m.group(1))
                if start >= len(data):
                    return self._plain(req, 416, b"", head, {"Content-Range": f"bytes */{len(data)}"})
                code = 206
        body = data[start:]
        req.status = code
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", tag)
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        with self.server.lock:
            queue = self.server.breaks.get(path)
            cut = queue.pop(0) if queue else None
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            req.sent = min(cut, len(body))
            self.close_connection = True
            self.connection.shutdown(2)  # the connection breaks half-way
            return
        self.wfile.write(body)
        req.sent = len(body)
