"""A test double of the Hugging Face Hub: a small HTTP server on loopback that the real `huggingface_hub` client (and
through it diffusers, transformers and datasets) talks to, via `HF_ENDPOINT` or `endpoint=`.

It stands in for the Hub only, never for sculpt's own code. It implements just the requests the installed clients
make (read from huggingface_hub 2.4's hf_api.py, _commit_api.py, lfs.py, file_download.py, _snapshot_download.py):

    GET  /api/whoami-v2                                       whoami, token checks
    POST /api/repos/create                                    create_repo (409 if it exists, 403 outside your namespace)
    POST /api/validate-yaml                                   README.md metadata check before a commit
    GET  /api/{models|datasets}/{repo}[/revision/{rev}]       model_info / dataset_info / repo_info (sha, siblings)
    GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}]    list_repo_tree (snapshot_download, HfFileSystem)
    POST /api/{models|datasets}/{repo}/paths-info/{rev}       get_paths_info (HfFileSystem)
    POST /api/{models|datasets}/{repo}/preupload/{rev}        upload mode per file: "lfs" for .gitattributes patterns
    POST /{[datasets/]repo}.git/info/lfs/objects/batch        LFS batch API, "basic" transfer
    PUT  /lfs-upload/{sha256}, POST /lfs-verify/{sha256}      the LFS upload and verify actions it hands out
    POST /api/{models|datasets}/{repo}/commit/{rev}           the ndjson commit (file, lfsFile, deletedFile/Folder)
    HEAD/GET /{[datasets/]repo}/resolve/{rev}/{path}          hf_hub_download (X-Repo-Commit, ETag, Range)

Uploads take the plain LFS path: hf_xet negotiates no server support here, so clients must run with
`HF_HUB_DISABLE_XET=1` (the variable huggingface_hub reads in `is_xet_available`). Errors carry the `X-Error-Code`
header the client maps to its exception types (RepoNotFound, EntryNotFound, RevisionNotFound). Repos, commits and
LFS objects live in memory; `add_repo` seeds a repo directly, `files` reads one back, `requests` logs every request,
`refuse_commits` makes it refuse commits with a given status.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

# What the Hub writes into a new repo: its LFS patterns decide the upload mode of each file (a subset of the real list).
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.parquet", "*.arrow", "*.png", "*.jpg",
                    "*.zip", "*.tar.*", "*.h5", "*.onnx", "*.msgpack")
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores any file this large in LFS


def _now() -> str:  # the Hub's timestamp format, which the client parses strictly
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Blob:
    content: bytes
    lfs: bool

    @property
    def oid(self) -> str:  # what the tree lists as "oid": the git blob (of the pointer file, for LFS)
        if not self.lfs:
            return git_blob_oid(self.content)
        return git_blob_oid(self.pointer)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n"
                .encode())

    @property
    def etag(self) -> str:  # the Hub's ETag: the sha256 for LFS files, the git oid otherwise
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, Blob]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def revision(self, rev: str) -> Commit | None:
        if rev in ("main", "HEAD"):
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == rev), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """The Hub double. `tokens` maps a token to (user, token role: "write" or "read"); `orgs` maps an organization to
    {member: role}. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, tokens: dict[str, tuple[str, str]], orgs: dict[str, dict[str, str]] | None = None):
        self.tokens, self.orgs = tokens, orgs or {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self._commit_count = 0
        # When set, every commit is answered with this HTTP status, as the Hub does when it refuses one (a storage
        # quota, an outage between the token check and the upload).
        self.refuse_commits: int | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- seeding and inspection (test side) -----------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False) -> str:
        """A repo owned by `repo_id`'s namespace holding `files` (path → bytes), as if pushed; returns its commit."""
        with self.lock:
            repo = self._create(repo_type, repo_id, private)
            blobs = {path: Blob(content, self._is_lfs(repo, path, len(content))) for path, content in files.items()}
            return self._commit(repo, "Seed", blobs).oid

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[(repo_type, repo_id)]
        return {path: blob.content for path, blob in repo.revision(revision).files.items()}

    def lfs_files(self, repo_id: str, repo_type: str = "model") -> set[str]:
        return {path for path, blob in self.repos[(repo_type, repo_id)].commits[-1].files.items() if blob.lfs}

    # ---- state changes (under the lock) ---------------------------------------------------------------------------
    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        self.repos[(repo_type, repo_id)] = repo
        self._commit(repo, "initial commit", {".gitattributes": Blob(GITATTRIBUTES.encode(), False)}, base={})
        return repo

    def _commit(self, repo: Repo, title: str, changes: dict[str, Blob | None], base: dict | None = None) -> Commit:
        files = dict(repo.commits[-1].files if base is None else base)
        for path, blob in changes.items():
            if blob is None:
                files.pop(path, None)
            else:
                files[path] = blob
        self._commit_count += 1
        oid = hashlib.sha1(f"{repo.repo_id}:{self._commit_count}:{title}".encode()).hexdigest()
        repo.commits.append(Commit(oid, title, files))
        return repo.commits[-1]

    @staticmethod
    def _is_lfs(repo: Repo, path: str, size: int) -> bool:
        attributes = repo.commits[-1].files.get(".gitattributes") if repo.commits else None
        text = attributes.content.decode() if attributes else GITATTRIBUTES
        patterns = [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

    # ---- permissions ----------------------------------------------------------------------------------------------
    def user_of(self, authorization: str | None) -> tuple[str, str] | None:
        """(user, token role) of a `Bearer` token; None without one; 401 for a token the Hub does not know."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header", headers={
                "X-Error-Message": "Invalid credentials in Authorization header"})
        return self.tokens[token]

    def writable_namespaces(self, user: str) -> set[str]:
        return {user} | {org for org, members in self.orgs.items() if members.get(user) in ("admin", "write")}

    def check_write(self, who: tuple[str, str] | None, namespace: str) -> None:
        if who is None:
            raise HubError(401, "You must be authenticated to write to the Hub.")
        user, role = who
        if role != "write":
            raise HubError(403, f"Your token for {user!r} is read-only.")
        if namespace not in self.writable_namespaces(user):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r}.")

    def readable(self, repo: Repo, who: tuple[str, str] | None) -> bool:
        return not repo.private or (who is not None and repo.namespace in self.writable_namespaces(who[0]) | {who[0]})

    def repo(self, repo_type: str, repo_id: str, who) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or not self.readable(repo, who):
            raise HubError(404, f"Repository Not Found for {repo_type} {repo_id!r}.", "RepoNotFound")
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.revision(urllib.parse.unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ---- JSON views -----------------------------------------------------------------------------------------------
    @staticmethod
    def file_entry(path: str, blob: Blob, commit: Commit) -> dict:
        entry = {"type": "file", "oid": blob.oid, "size": len(blob.content), "path": path,
                 "lastCommit": {"id": commit.oid, "title": commit.title, "date": commit.date}}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": len(blob.pointer)}
        return entry

    @staticmethod
    def folder_entry(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}

    def info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.commits[0].date,
            "lastModified": commit.date,
            "siblings": [
                {"rfilename": path, "size": len(blob.content), "blobId": blob.oid,
                 **({"lfs": {"sha256": blob.sha256, "size": len(blob.content), "pointerSize": len(blob.pointer)}}
                    if blob.lfs else {})}
                for path, blob in sorted(commit.files.items())
            ],
        }

    def tree(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        if prefix and prefix not in commit.files and not any(p.startswith(prefix + "/") for p in commit.files):
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        base = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path, blob in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base):].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    folders.add(base + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                entries.append(self.file_entry(path, blob, commit))
        return [self.folder_entry(f) for f in sorted(folders)] + entries


# Request paths: the API under /api/{type}s/{namespace}/{name}/..., files under /[datasets/]{namespace}/{name}/resolve/.
_API = re.compile(
    r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/(revision|tree|paths-info|preupload|commit)/([^/]+)(/.*)?)?$"
)
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every response carries Content-Length
    server_hub: HubServer

    def log_message(self, *args) -> None:  # quiet: tests read `HubServer.requests`
        pass

    # ---- plumbing -------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None, content_type="application/json"):
        self._send(status, json.dumps(data).encode(), headers, content_type)

    def _dispatch(self) -> None:
        hub = self.server_hub
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        hub.requests.append((self.command, url.path))
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            with hub.lock:
                who = hub.user_of(self.headers.get("Authorization"))
                self._route(hub, url.path, query, body, who)
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers.setdefault("X-Error-Message", error.message)
            self._json({"error": error.message}, error.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ---- routes ---------------------------------------------------------------------------------------------------
    def _route(self, hub: HubServer, path: str, query: dict, body: bytes, who) -> None:
        if path == "/api/whoami-v2" and self.command == "GET":
            return self._whoami(hub, who)
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo(hub, json.loads(body), who)
        if path == "/api/validate-yaml" and self.command == "POST":
            return self._validate_yaml(json.loads(body))
        if path.startswith("/lfs-upload/") and self.command == "PUT":
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"The uploaded content does not hash to {oid}.")
            hub.lfs_objects[oid] = body
            return self._send(200)
        if path.startswith("/lfs-verify/") and self.command == "POST":
            oid = json.loads(body)["oid"]
            if oid not in hub.lfs_objects:
                raise HubError(404, f"LFS object {oid} was not uploaded.")
            return self._json({"message": "ok"})
        if match := _LFS_BATCH.match(path):
            return self._lfs_batch(hub, "dataset" if match[1] else "model", match[2], json.loads(body), who)
        if match := _RESOLVE.match(path):
            if self.command not in ("GET", "HEAD"):
                raise HubError(405, "Method not allowed")
            repo = hub.repo("dataset" if match[1] else "model", match[2], who)
            return self._resolve(hub, repo, match[3], urllib.parse.unquote(match[4]))
        if match := _API.match(path):
            repo_type = match[1][:-1]
            repo = hub.repo(repo_type, match[2], who)
            action, revision, rest = match[3], match[4] or "main", urllib.parse.unquote(match[5] or "")
            if action in (None, "revision") and self.command == "GET":
                return self._json(hub.info(repo, hub.commit_of(repo, revision)))
            if action == "tree" and self.command == "GET":
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                return self._json(hub.tree(hub.commit_of(repo, revision), rest, recursive))
            if action == "paths-info" and self.command == "POST":
                return self._paths_info(hub, repo, revision, body)
            if action == "preupload" and self.command == "POST":
                hub.check_write(who, repo.namespace)
                return self._preupload(hub, repo, revision, json.loads(body))
            if action == "commit" and self.command == "POST":
                hub.check_write(who, repo.namespace)
                return self._commit(hub, repo, revision, body)
        raise HubError(404, f"The Hub double does not implement {self.command} {path}.")

    def _whoami(self, hub: HubServer, who) -> None:
        if who is None:
            raise HubError(401, "Invalid credentials in Authorization header",
                           headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        user, role = who
        orgs = [{"type": "org", "name": org, "roleInOrg": members[user]}
                for org, members in hub.orgs.items() if user in members]
        self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                    "fullname": user, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}})

    def _create_repo(self, hub: HubServer, payload: dict, who) -> None:
        if who is None:
            raise HubError(401, "You must be authenticated to create a repo.")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or who[0]}/{payload['name']}"
        hub.check_write(who, repo_id.split("/")[0])
        if (repo_type, repo_id) in hub.repos:
            raise HubError(409, "You already created this model repo", headers={"X-Error-Message": "Repo exists"})
        hub._create(repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
        prefix = "datasets/" if repo_type == "dataset" else ""
        self._json({"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                metadata = yaml.safe_load(content.split("---", 2)[1])
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "The metadata must be a mapping."})
            except yaml.YAMLError as error:
                errors.append({"message": f"Invalid YAML: {error}"})
        if errors:
            raise HubError(400, "Invalid metadata", headers={"X-Error-Message": errors[0]["message"]}) from None
        self._json({"errors": [], "warnings": []})

    def _resolve(self, hub: HubServer, repo: Repo, revision: str, path: str) -> None:
        commit = hub.commit_of(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.content))})
        content, status = blob.content, 200
        if (ranged := re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))) and self.command == "GET":
            start = int(ranged[1])
            end = int(ranged[2]) if ranged[2] else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{min(end, len(content) - 1)}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers, content_type="application/octet-stream")

    def _paths_info(self, hub: HubServer, repo: Repo, revision: str, body: bytes) -> None:
        commit = hub.commit_of(repo, revision)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = urllib.parse.parse_qs(body.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(hub.file_entry(path, commit.files[path], commit))
            elif any(p.startswith(path + "/") for p in commit.files) or path == "":
                out.append(hub.folder_entry(path))
        self._json(out)

    def _preupload(self, hub: HubServer, repo: Repo, revision: str, payload: dict) -> None:
        files = hub.commit_of(repo, revision).files
        out = []
        for item in payload["files"]:
            lfs = hub._is_lfs(repo, item["path"], item["size"])
            existing = files.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        self._json({"files": out, "commitOid": hub.commit_of(repo, revision).oid})

    def _lfs_batch(self, hub: HubServer, repo_type: str, repo_id: str, payload: dict, who) -> None:
        repo = hub.repo(repo_type, repo_id, who)
        hub.check_write(who, repo.namespace)
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                                    "verify": {"href": f"{hub.url}/lfs-verify/{obj['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _commit(self, hub: HubServer, repo: Repo, revision: str, body: bytes) -> None:
        if hub.refuse_commits is not None:
            raise HubError(hub.refuse_commits, "The Hub refused this commit (test double: refuse_commits is set).")
        base = hub.commit_of(repo, revision)
        if urllib.parse.unquote(revision) not in ("main", base.oid) or base is not repo.commits[-1]:
            raise HubError(400, "The Hub double commits to the head of main only.")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        changes: dict[str, Blob | None] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                changes[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in hub.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded.")
                changes[value["path"]] = Blob(hub.lfs_objects[value["oid"]], True)
            elif key == "deletedFile":
                changes[value["path"]] = None
            elif key == "deletedFolder":
                changes.update({p: None for p in base.files if p.startswith(value["path"].rstrip("/") + "/")})
        commit = hub._commit(repo, header["summary"], changes)
        prefix = "datasets/" if repo.repo_type == "dataset" else ""
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": f"{hub.url}/{prefix}{repo.repo_id}/commit/"
                    f"{commit.oid}", "pullRequestUrl": None})
