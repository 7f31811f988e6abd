"""A small local stand-in for the Hugging Face Hub HTTP API, for end-to-end push tests.

It answers the endpoints huggingface_hub's ``create_repo``, ``create_commit`` / ``upload_folder`` and
``hf_hub_download`` call (repo creation, README YAML validation, preupload, commit, file resolve), on
127.0.0.1, and records every request and every committed file, so the real client code runs end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]
    oid: str


@dataclass
class FakeHub:
    """Start with :meth:`start`; ``url`` is the endpoint to use as ``HF_ENDPOINT``.

    Args:
        fail_commit (`bool`): answer every commit with HTTP 500, as a Hub outage would.
    """

    fail_commit: bool = False
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
                body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                path = unquote(urlparse(self.path).path)
                body = self._body()
                hub.requests.append(("POST", path))
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    hub.repos.setdefault(repo_id, {"visibility": data.get("visibility"), "type": data.get("type")})
                    return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    try:
                        if content.startswith("---"):
                            yaml.safe_load(content.split("---", 2)[1])
                    except yaml.YAMLError as error:
                        return self._send(400, {"errors": [{"message": str(error)}]})
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._send(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                if "/commit/" in path:
                    prefix, _, revision = path.partition("/commit/")
                    repo_id = prefix.removeprefix("/api/models/")
                    if hub.fail_commit:
                        return self._send(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
                    if repo_id not in hub.repos:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(item["value"] for item in lines if item["key"] == "header")
                    files = {
                        item["value"]["path"]: base64.b64decode(item["value"]["content"])
                        for item in lines
                        if item["key"] == "file"
                    }
                    oid = hashlib.sha1(body).hexdigest()
                    hub.commits.append(Commit(repo_id, revision, header["summary"], header.get("description", ""), files, oid))
                    hub.files.setdefault(repo_id, {}).update(files)
                    return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})
                return self._send(404, {"error": f"no fake for POST {path}"})

            def _resolve(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                if "/resolve/" not in path:
                    return self._send(404, {"error": f"no fake for {self.command} {path}"})
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                filename = rest.partition("/")[2]
                if repo_id not in hub.repos:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                content = hub.files.get(repo_id, {}).get(filename)
                if content is None:
                    return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                commit = next((c.oid for c in reversed(hub.commits) if c.repo_id == repo_id), "0" * 40)
                etag = hashlib.sha1(content).hexdigest()
                self._send(200, raw=content, headers={"X-Repo-Commit": commit, "ETag": f'"{etag}"'})

            do_GET = _resolve  # noqa: N815
            do_HEAD = _resolve  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
