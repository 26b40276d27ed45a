"""Real git over HTTP for the forge stand-ins: token auth in front of `git http-backend`.

`git http-backend` is the CGI program that ships with git; it speaks the smart HTTP protocol
(v0 and v2) for the bare repositories under `GIT_PROJECT_ROOT`. `GitBackend.serve` runs it
for one request, streaming the request body into it and its reply back to the client
(chunked), so a push of any size passes through without being held in memory. A gzip body
(`Content-Encoding: gzip`, which git sends for large fetch negotiations) is passed through
untouched: the CGI inflates it itself when `HTTP_CONTENT_ENCODING` says so.

Auth is a forge's: HTTP Basic with the token as password (any username), or
`Authorization: Bearer <token>` / `token <token>`. A missing or wrong token gets 401 with
`WWW-Authenticate: Basic`, which makes git retry with credentials and then fail with
"Authentication failed"; pushing to a repository the token may not push to gets 403.

`git()` runs a git command with a fixed identity and no system or user configuration; the
repository store in `base.py` uses it to make and change the bare repositories.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Forge Stand-in",
    "GIT_AUTHOR_EMAIL": "standin@example.com",
    "GIT_COMMITTER_NAME": "Forge Stand-in",
    "GIT_COMMITTER_EMAIL": "standin@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}

# /owner/name.git/info/refs, /group/sub/name.git/git-receive-pack, ...
GIT_PATH = re.compile(
    r"^/(?P<repo>[^?#]+?)\.git(?P<rest>/(?:info/refs|git-upload-pack|git-receive-pack|HEAD"
    r"|objects/.+))$"
)
CHUNK = 64 * 1024


def git(
    cwd: Path | None,
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git ARGS` in `cwd` (a bare repository is fine) with the stand-in's identity."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc


def token_from(headers: Mapping[str, str] | Message) -> str | None:
    """The token a request carries: Basic password, or a Bearer / token Authorization."""
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
        return password or username or None
    if scheme in ("bearer", "token"):
        return value.strip() or None
    return None


def wants_push(rest: str, query: str) -> bool:
    """True for the two requests of a push: the receive-pack advertisement and the pack."""
    return rest == "/git-receive-pack" or (
        rest == "/info/refs" and "service=git-receive-pack" in query
    )


def iter_body(handler: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """The request body in pieces, whether sent with Content-Length or chunked."""
    rfile = handler.rfile
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining:
                data = rfile.read(min(remaining, CHUNK))
                if not data:
                    return
                remaining -= len(data)
                yield data
            rfile.readline()  # the CRLF after each chunk
    remaining = int(handler.headers.get("Content-Length") or 0)
    while remaining > 0:
        data = rfile.read(min(remaining, CHUNK))
        if not data:
            return
        remaining -= len(data)
        yield data


def has_body(handler: BaseHTTPRequestHandler) -> bool:
    chunked = "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower()
    return chunked or int(handler.headers.get("Content-Length") or 0) > 0


def _backend_command() -> list[str]:
    exec_path = git(None, "--exec-path").stdout.strip()
    program = Path(exec_path) / "git-http-backend"
    return [str(program)] if program.exists() else ["git", "http-backend"]


class GitBackend:
    """Runs `git http-backend` for the bare repositories under `root`."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        self._command = _backend_command()
        self._log_lock = threading.Lock()

    def serve(
        self, handler: BaseHTTPRequestHandler, repo: str, rest: str, query: str, user: str
    ) -> int:
        """Answer one git request through the CGI; returns the HTTP status sent."""
        headers = handler.headers
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": handler.command,
            "PATH_INFO": f"/{repo}.git{rest}",
            "QUERY_STRING": query,
            "REMOTE_USER": user,
            "REMOTE_ADDR": handler.client_address[0],
            "CONTENT_TYPE": headers.get("Content-Type") or "",
        }
        if headers.get("Content-Length") and "chunked" not in (
            headers.get("Transfer-Encoding") or ""
        ):
            env["CONTENT_LENGTH"] = headers["Content-Length"]
        for name, var in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            if headers.get(name):
                env[var] = headers[name]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )
            assert proc.stdin is not None and proc.stdout is not None
            pump = threading.Thread(target=self._pump, args=(handler, proc.stdin), daemon=True)
            pump.start()
            try:
                return self._relay(handler, proc.stdout)
            finally:
                pump.join()
                proc.stdout.close()
                proc.wait()

    @staticmethod
    def _pump(handler: BaseHTTPRequestHandler, stdin: IO[bytes]) -> None:
        try:
            for data in iter_body(handler):
                stdin.write(data)
        except (BrokenPipeError, ConnectionError, OSError):
            pass  # the CGI stopped reading (it failed, or the client went away)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    @staticmethod
    def _relay(handler: BaseHTTPRequestHandler, stdout: IO[bytes]) -> int:
        status, reason, cgi_headers = 200, "OK", []
        while True:
            line = stdout.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
            if name.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            else:
                cgi_headers.append((name.strip(), value.strip()))
        handler.send_response(status, reason or None)
        for name, value in cgi_headers:
            handler.send_header(name, value)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        out = handler.wfile
        while data := stdout.read1(CHUNK):  # type: ignore[attr-defined]
            out.write(b"%x\r\n%s\r\n" % (len(data), data))
        out.write(b"0\r\n\r\n")
        out.flush()
        return status
