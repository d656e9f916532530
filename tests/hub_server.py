"""A small in-memory, Hugging Face Hub-compatible HTTP server on loopback, for tests with the real client.

There is no self-hostable Hub to install here, so this implements the part of the Hub API that `huggingface_hub`
(with `HF_HUB_DISABLE_XET=1`) and `transformers.from_pretrained` call when publishing and loading a model:

    GET  /api/whoami-v2                                 POST /api/repos/create            POST /api/validate-yaml
    GET  /api/models/{repo}[/revision/{rev}]            GET  /api/models/{repo}/refs, /commits/{rev}
    POST /api/models/{repo}/branch/{branch}             GET  /api/models/{repo}/tree/{rev}[/{path}]
    POST /api/models/{repo}/preupload/{rev}             POST /api/models/{repo}/commit/{rev}   (NDJSON)
    POST /{repo}.git/info/lfs/objects/batch             PUT  /__lfs/{oid}, POST /__lfs/verify  (basic LFS transfer)
    HEAD/GET /{repo}/resolve/{rev}/{path}               (X-Repo-Commit, ETag / X-Linked-Etag, 404 EntryNotFound)

It is bounded (request bodies and stored bytes are capped), binds 127.0.0.1 only, and stops itself after
`idle_timeout` seconds without a request. `fail(...)` makes the next requests fail (a status code such as 500 or
429, a dropped connection, or a connection that is accepted and never answered) to test how a client copes with an
outage.

    with HubServer(tokens={"hf_test"}) as hub:   # hub.endpoint == "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_STORED_BYTES = 512 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".model", ".h5", ".msgpack", ".ckpt")
LFS_MIN_BYTES = 1024 * 1024  # larger files go to LFS whatever their name, as on the Hub


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def etag(self) -> str:  # the Hub's ETag: sha256 for LFS files (X-Linked-Etag), git blob sha1 otherwise
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Failure:
    times: int
    status: int = 503
    disconnect: bool = False
    retry_after: int | None = None
    match: str = ""  # only requests whose "METHOD /path" contains this
    hang: bool = False  # read the request, then answer nothing until the server closes


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra or {}


class HubServer:
    """The server and its state. Test helpers: `files`, `branches`, `commits`, `fail`, `recover`, `requests`,
    `wait_for_request`, `tokens_used`."""

    def __init__(self, tokens: set[str] | frozenset[str] = frozenset(), user: str = "tester", idle_timeout=300.0):
        self.tokens, self.user, self.idle_timeout = set(tokens), user, idle_timeout
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.tokens_used: set[str] = set()  # valid tokens clients authenticated with
        self._failures: list[Failure] = []
        self._lock = threading.RLock()
        self._answered = threading.Condition()  # notified each time a request is recorded in `requests`
        self._last_request = time.monotonic()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._watchdog = threading.Thread(target=self._stop_when_idle, daemon=True)
        self._closed = threading.Event()

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._thread.start()
        self._watchdog.start()
        return self

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop_when_idle(self) -> None:
        while not self._closed.wait(1.0):
            if time.monotonic() - self._last_request > self.idle_timeout:
                self.close()

    # ---- test helpers ------------------------------------------------------------------------------------------

    def fail(
        self, times: int, status: int = 503, disconnect=False, retry_after: int | None = None, match="", hang=False
    ):
        """The next `times` requests (containing `match` in "METHOD /path") fail with `status`, a dropped connection
        or (`hang`) no answer at all: recorded with status -1 when the request has been read, then held open."""
        with self._lock:
            self._failures.append(Failure(times, status, disconnect, retry_after, match, hang))

    def recover(self) -> None:
        """Drop the failures still pending: the Hub is back."""
        with self._lock:
            self._failures.clear()

    def wait_for_request(self, match: str, count: int = 1, timeout: float = 60.0) -> bool:
        """Block until `count` answered requests contain `match` in "METHOD /path" (False after `timeout` seconds):
        a test synchronises with a client's background thread on what the Hub has seen, not on a sleep."""

        def seen() -> bool:
            return sum(match in f"{method} {path}" for method, path, _ in self.requests) >= count

        with self._answered:
            return self._answered.wait_for(seen, timeout)

    def _record(self, method: str, path: str, status: int) -> None:
        with self._answered:
            self.requests.append((method, path, status))
            self._answered.notify_all()

    def branches(self, repo_id: str) -> dict[str, str]:
        return dict(self.repos[repo_id].branches)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        return {path: blob.data for path, blob in commit.files.items()}

    def commits(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit messages on `revision`, newest first."""
        repo, messages = self.repos[repo_id], []
        commit = repo.resolve(revision)
        while commit is not None:
            messages.append(commit.message)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return messages

    # ---- state changes -----------------------------------------------------------------------------------------

    def _new_commit(self, repo: Repo, parent: Commit | None, message: str, files: dict[str, Blob]) -> Commit:
        self._counter += 1
        seed = f"{repo.repo_id}:{self._counter}:{message}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent.oid if parent else None, message, files)
        repo.commits[commit.oid] = commit
        return commit

    def _stored_bytes(self) -> int:
        return sum(len(data) for data in self.lfs.values())

    def _next_failure(self, method: str, path: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.times > 0 and failure.match in f"{method} {path}":
                    failure.times -= 1
                    return failure
        return None


def _repo_url_id(segments: list[str]) -> str:
    return f"{segments[0]}/{segments[1]}"


def _handler_for(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        hub = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format, *args):  # quiet: tests read `hub.requests` instead
        pass

    # ---- plumbing ----------------------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while (size := int(self.rfile.readline().strip().split(b";")[0], 16)) > 0:
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        hub._last_request = time.monotonic()
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        segments = [unquote(part) for part in url.path.strip("/").split("/")]
        try:
            self.body = self._body() if method in ("POST", "PUT") else b""
            failure = hub._next_failure(method, url.path)
            if failure is not None and failure.hang:
                hub._record(method, url.path, -1)
                hub._closed.wait()  # until the server closes: the client gives up first, or waits forever
                self.close_connection = True
                return
            if failure is not None and failure.disconnect:
                self.close_connection = True  # no response at all: the client sees a dropped connection
                hub._record(method, url.path, 0)
                return
            if failure is not None:
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                raise HubError(failure.status, "Injected failure", extra={"headers": headers})
            with hub._lock:
                status, headers, payload = self._route(method, segments)
        except HubError as error:
            headers = {"X-Error-Message": str(error), **error.extra.get("headers", {})}
            if error.code:
                headers["X-Error-Code"] = error.code
            if "commit" in error.extra:
                headers["X-Repo-Commit"] = error.extra["commit"]
            status, payload = error.status, {"error": str(error), **error.extra.get("body", {})}
        hub._record(method, url.path, status)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _check_token(self, required: bool) -> None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if token is None and not required:
            return
        if token not in self.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        self.hub.tokens_used.add(token)

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON: {error}") from None

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private:
            self._check_token(required=True)
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ---- routes ------------------------------------------------------------------------------------------------

    def _route(self, method: str, s: list[str]) -> tuple[int, dict, dict | list | bytes]:
        if s[:2] == ["api", "whoami-v2"] and method == "GET":
            self._check_token(required=True)
            return 200, {}, {"type": "user", "name": self.hub.user, "orgs": [], "auth": {"type": "access_token"}}
        if s[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if s[:2] == ["api", "validate-yaml"] and method == "POST":
            return 200, {}, {"errors": [], "warnings": []}
        if s[:2] == ["api", "models"] and len(s) >= 4:
            return self._model_api(method, _repo_url_id(s[2:]), s[4:])
        if s[0] == "__lfs":
            return self._lfs_transfer(method, s[1:])
        if len(s) >= 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{s[0]}/{s[1].removesuffix('.git')}")
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, _repo_url_id(s), s[3], "/".join(s[4:]))
        raise HubError(404, f"No route for {method} /{'/'.join(s)}")

    def _create_repo(self):
        self._check_token(required=True)
        data = self._json()
        repo_id = f"{data.get('organization') or self.hub.user}/{data['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            raise HubError(409, "You already created this model repo", extra={"body": {"url": url}})
        repo = Repo(repo_id, private=data.get("visibility") == "private" or bool(data.get("private")))
        gitattributes = Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
        repo.branches["main"] = self.hub._new_commit(
            repo, None, "initial commit", {".gitattributes": gitattributes}
        ).oid
        self.hub.repos[repo_id] = repo
        return 200, {}, {"url": url, "name": repo_id, "id": repo_id}

    def _model_api(self, method: str, repo_id: str, rest: list[str]):
        repo = self._repo(repo_id)
        if method in ("POST", "PUT"):
            self._check_token(required=True)
        kind = rest[0] if rest else ""
        if method == "GET" and kind in ("", "revision"):
            commit = self._commit(repo, rest[1] if kind else "main")
            siblings = [{"rfilename": path} for path in sorted(commit.files)]
            info = {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private, "tags": []}
            return 200, {}, {**info, "siblings": siblings, "lastModified": "2026-01-01T00:00:00.000Z"}
        if method == "GET" and kind == "refs":
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in repo.branches.items()]
            return 200, {}, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
        if method == "GET" and kind == "commits" and len(rest) == 2:
            commit, history = self._commit(repo, rest[1]), []
            while commit is not None:
                history.append({"id": commit.oid, "title": commit.message, "message": "", "authors": [],
                                "date": "2026-01-01T00:00:00.000Z"})  # fmt: skip
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return 200, {}, history
        if method == "POST" and kind == "branch" and len(rest) == 2:
            if rest[1] in repo.branches:
                raise HubError(409, f"Reference refs/heads/{rest[1]} already exists")
            start = self._json().get("startingPoint") or "main"
            repo.branches[rest[1]] = self._commit(repo, start).oid
            return 200, {}, {}
        if method == "GET" and kind == "tree" and len(rest) >= 2:
            return self._tree(repo, self._commit(repo, rest[1]), "/".join(rest[2:]))
        if method == "POST" and kind == "preupload" and len(rest) == 2:
            return self._preupload(self._commit(repo, rest[1]))
        if method == "POST" and kind == "commit" and len(rest) == 2:
            return self._commit_ndjson(repo, rest[1])
        raise HubError(404, f"No route for {method} {kind}")

    def _tree(self, repo: Repo, commit: Commit, path: str):
        recursive = self.query.get("recursive", "").lower() in ("true", "1")
        prefix = f"{path.strip('/')}/" if path else ""
        if prefix and not any(name.startswith(prefix) for name in commit.files):
            raise HubError(404, f"{path} does not exist on {commit.oid}", "EntryNotFound", {"commit": commit.oid})
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            relative = name[len(prefix) :]
            if "/" in relative and not recursive:
                folders.add(prefix + relative.split("/")[0])
                continue
            entry = {"type": "file", "path": name, "size": len(blob.data), "oid": git_blob_sha1(blob.data)}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.etag, "size": len(blob.data), "pointerSize": 134}
            entries.append(entry)
        if recursive:
            folders = {
                "/".join(n.split("/")[:i])
                for n in commit.files
                if n.startswith(prefix)
                for i in range(1, n.count("/") + 1)
            }
        folder_entries = [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
        return 200, {}, folder_entries + entries

    def _preupload(self, commit: Commit):
        files = []
        for item in self._json().get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES
            entry = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(path)
            if existing is not None:
                entry["oid"] = existing.etag
            files.append(entry)
        return 200, {}, {"files": files, "commitOid": commit.oid}

    def _commit_ndjson(self, repo: Repo, revision: str):
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        files, summary = dict(head.files), "commit"
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
                parent = value.get("parentCommit")
                if parent is not None and parent != head.oid:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.hub.lfs.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {name: blob for name, blob in files.items() if not name.startswith(prefix)}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self.hub._new_commit(repo, head, summary, files)
        repo.branches[revision] = commit.oid
        url = f"{self.hub.endpoint}/{repo.repo_id}/commit/{commit.oid}"
        return 200, {}, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None}

    def _lfs_batch(self, repo_id: str):
        self._repo(repo_id)
        self._check_token(required=True)
        objects = []
        for item in self._json().get("objects", []):
            oid, size = item["oid"], int(item["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs:  # already stored: no actions, the client skips the upload
                if self.hub._stored_bytes() + size > MAX_STORED_BYTES:
                    raise HubError(507, "Loopback Hub storage is full")
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/__lfs/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.endpoint}/__lfs/verify", "header": {}},
                }
            objects.append(entry)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def _lfs_transfer(self, method: str, rest: list[str]):
        if method == "PUT" and len(rest) == 1:
            if hashlib.sha256(self.body).hexdigest() != rest[0]:
                raise HubError(400, "Uploaded content does not match its sha256")
            self.hub.lfs[rest[0]] = self.body
            return 200, {}, {}
        if method == "POST" and rest == ["verify"]:
            data = self._json()
            if len(self.hub.lfs.get(data.get("oid"), b"")) != data.get("size"):
                raise HubError(404, "LFS object missing or of the wrong size")
            return 200, {}, {}
        raise HubError(404, "No such LFS route")

    def _resolve(self, method: str, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"ETag": f'"{git_blob_sha1(blob.data)}"', "X-Linked-Etag": f'"{blob.etag}"'})
            headers["X-Linked-Size"] = str(len(blob.data))
        else:
            headers["ETag"] = f'"{blob.etag}"'
        data, status = blob.data, 200
        byte_range = self.headers.get("Range", "")
        if method == "GET" and byte_range.startswith("bytes="):
            start, _, end = byte_range.removeprefix("bytes=").partition("-")
            stop = int(end) + 1 if end else len(data)
            headers["Content-Range"] = f"bytes {int(start)}-{stop - 1}/{len(data)}"
            data, status = data[int(start) : stop], 206
        headers["Content-Length"] = str(len(data))
        return status, headers, data
