"""What the three forge stand-ins share: the HTTP server, routing, faults and pagination.

A `ForgeStandIn` is one `ThreadingHTTPServer` on a free port of 127.0.0.1. A request whose
path names a bare repository (`/owner/name.git/...`) is real git (see `git_http.py`); one
under `api_prefix` goes to the subclass's routes; anything else is 404. Before either,
`add_fault` may claim the request and answer it with a canned reply instead (rate limits,
server errors). Every request is logged in `requests` as (method, path, status, monotonic
time), with token-bearing query parameters redacted.

A subclass declares `ROUTES`: (method, path template as the forge's API description spells
it, handler method name). `{name}` matches one path segment; a name in `GREEDY` matches the
rest of the path (branch names have slashes). A handler takes a `Request` and returns a
`Reply` or raises `ApiError`. Each reply is checked against the forge's response schema for
(method, template, status); violations land in `schema_errors`.

Repositories, pull requests, reviews and check results live in `store.RepoStore` (real
bare repositories on disk; PR metadata in memory).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.stubs.forge.git_http import (
    GIT_PATH,
    GitBackend,
    has_body,
    iter_body,
    token_from,
    wants_push,
)
from tests.stubs.forge.schema import ResponseSchemas
from tests.stubs.forge.store import PullRecord, RepoStore
from tests.stubs.forge.wire import ApiError, Fault, Page, Reply, Request, link_header, paginate

REDACT = re.compile(r"(?i)((?:private_|access_)?token=)[^&]*")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    body_read = False  # set once the request body has been consumed
    reply_started = False  # set once a status line has gone out
    arrived = 0.0  # time.monotonic() when the request line was read

    def send_response(self, code: int, message: str | None = None) -> None:
        if not self.reply_started:  # logged before the client can see the reply
            self.reply_started = True
            self.server.standin._record(self, code)
        super().send_response(code, message)

    def _dispatch(self) -> None:
        self.body_read = self.reply_started = False  # one handler serves a keep-alive connection
        self.arrived = time.monotonic()
        self.server.standin._handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    standin: ForgeStandIn


class ForgeStandIn:
    """Base of `GitHubStandIn`, `GitLabStandIn`, `GiteaStandIn`: see the module docstring."""

    kind: ClassVar[str] = ""
    api_prefix: ClassVar[str] = ""
    ROUTES: ClassVar[list[tuple[str, str, str]]] = []
    GREEDY: ClassVar[frozenset[str]] = frozenset({"ref", "branch", "head"})

    def __init__(self, workdir: Path, token: str = "tok-standin", user: str = "ado-bot") -> None:
        self.workdir = Path(workdir) / f"{self.kind}-standin"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        # (method, path, status, time.monotonic() at arrival), in the order of the replies
        self.requests: list[tuple[str, str, int, float]] = []
        self.schema_errors: list[str] = []
        # The server's own cap on a page (Gitea's `[api] MAX_RESPONSE_ITEMS`, GitLab's and
        # GitHub's 100): set it low to make a listing span pages without creating hundreds
        # of repositories. None: the forge's documented maximum.
        self.max_per_page: int | None = None
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.schemas = self.load_schemas()
        self.store = RepoStore(self.workdir / "repos")
        self.store.users.add(user)
        self._git = GitBackend(self.store.root, self.workdir / "git-http-backend.log")
        self._routes = [
            (method, template, self._compile(template), getattr(self, handler))
            for method, template, handler in self.ROUTES
        ]

    # ---- what a subclass provides -------------------------------------------------------
    def load_schemas(self) -> ResponseSchemas:
        raise NotImplementedError

    def authorized(self, headers: Message, query: dict[str, str]) -> bool:
        raise NotImplementedError

    def unauthorized(self) -> Reply:
        raise NotImplementedError

    def not_found(self) -> Reply:
        return Reply(404, {"message": "Not Found"})

    def default_headers(self, path: str) -> dict[str, str]:
        return {}

    def render_pull(self, pr: PullRecord) -> dict[str, Any]:
        raise NotImplementedError

    def rate_limit(
        self, path_regex: str, retry_after: int = 1, times: int | None = 1, after: int = 0
    ) -> None:
        raise NotImplementedError

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> ForgeStandIn:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.standin = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ForgeStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}{self.api_prefix}"

    # ---- the test writer's handles -------------------------------------------------------
    def add_repo(self, path: str, files: dict[str, str] | None = None, **options: Any) -> str:
        """A bare repository with one commit on the default branch; returns its clone URL."""
        self.store.add_repo(path, files, **options)
        return f"{self.base_url}/{path}.git"

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        """The headers this forge's clients send the token in."""
        raise NotImplementedError

    def clone_url(self, path: str, token: str | None = None) -> str:
        """The clone URL with the token as Basic password, as CI systems write it."""
        return f"http://x-access-token:{token or self.token}@{self.host}/{path}.git"

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Message, Any]:
        """One API request (path under `api_url`): (status, headers, parsed JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.auth_headers(token), "Content-Type": "application/json"}
        req = urllib.request.Request(self.api_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, reply_headers, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, raw = exc.code, exc.headers, exc.read()
        try:
            return status, reply_headers, json.loads(raw) if raw else None
        except ValueError:
            return status, reply_headers, raw.decode()

    def add_user(self, login: str) -> None:
        self.store.users.add(login)

    def bare_path(self, path: str) -> Path:
        return self.store.bare_path(path)

    def branch_sha(self, path: str, branch: str) -> str | None:
        return self.store.branch_sha(path, branch)

    def pulls(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [self.render_pull(pr) for pr in self.store.pulls.get(path, [])]

    def set_checks(self, path: str, sha: str, state: str) -> None:
        if state not in ("success", "failure", "pending"):
            raise ValueError(f"checks state {state!r}; expected success, failure or pending")
        with self._lock:
            self.store.checks[(path, sha)] = state

    def add_review(
        self, path: str, number: int, user: str = "alice", state: str = "APPROVED"
    ) -> None:
        if state not in ("APPROVED", "CHANGES_REQUESTED", "COMMENTED"):
            raise ValueError(f"review state {state!r}; expected APPROVED or CHANGES_REQUESTED")
        with self._lock:
            self.store.add_review(path, number, user, state)

    def add_fault(
        self,
        method: str,
        path_regex: str,
        status: int,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int | None = 1,
        after: int = 0,
    ) -> None:
        """Answer the next `times` requests matching (method or "*", regex searched in the
        path), after letting `after` of them through, with this reply instead."""
        fault = Fault(
            method.upper(),
            re.compile(path_regex),
            Reply(status, body, dict(headers or {})),
            times,
            after,
        )
        with self._lock:
            self._faults.append(fault)

    # ---- request handling ----------------------------------------------------------------
    def _compile(self, template: str) -> re.Pattern[str]:
        def param(match: re.Match[str]) -> str:
            name = match.group(1)
            return f"(?P<{name}>.+)" if name in self.GREEDY else f"(?P<{name}>[^/]+)"

        return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", param, re.escape(template)) + "$")

    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, parts.query
        try:
            with self._lock:
                fault = next((f for f in self._faults if f.claim(h.command, path)), None)
            if fault is not None:
                reply = Reply(fault.reply.status, fault.reply.body, dict(fault.reply.headers))
                if path.startswith(self.api_prefix):
                    reply.headers = {**self.default_headers(path), **reply.headers}
                self._send(h, reply)
            elif match := GIT_PATH.match(path):
                self._serve_git(h, unquote(match["repo"]), match["rest"], query)
            elif path == self.api_prefix or path.startswith(self.api_prefix + "/"):
                self._serve_api(h, path, query)
            else:
                self._send(h, Reply(404, "Not Found\n"))
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client went away mid-reply
        except Exception as exc:  # a stand-in bug: record it where the fixtures look, loudly
            with self._lock:
                self.schema_errors.append(f"{h.command} {path}: stand-in crashed: {exc!r}")
            h.close_connection = True
            if not h.reply_started:
                self._send(h, Reply(500, {"message": f"stand-in error: {exc}"}))
            raise
        finally:
            if not h.reply_started:  # no reply went out: the client went away
                self._record(h, 499)

    def _record(self, h: _Handler, status: int) -> None:
        parts = urlsplit(h.path)
        path = parts.path + "?" + REDACT.sub(r"\1***", parts.query) if parts.query else parts.path
        with self._lock:
            self.requests.append((h.command, path, status, h.arrived))

    def _serve_git(self, h: _Handler, repo: str, rest: str, query: str) -> int:
        record = self.store.get(repo)
        if record is None:
            return self._send(h, Reply(404, "Repository not found.\n"))
        if token_from(h.headers) != self.token:
            realm = {"github": "GitHub", "gitlab": "GitLab", "gitea": "Gitea"}[self.kind]
            challenge = {"WWW-Authenticate": f'Basic realm="{realm}"'}
            return self._send(h, Reply(401, "Authentication required\n", challenge))
        if wants_push(rest, query) and not record.can_push:
            denied = f"Permission to {repo}.git denied to {self.user}.\n"
            return self._send(h, Reply(403, denied))
        h.body_read = True
        return self._git.serve(h, repo, rest, query, self.user)

    def _serve_api(self, h: _Handler, path: str, query_string: str) -> int:
        sub = path[len(self.api_prefix) :] or "/"
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        found = next(
            (
                (t, m, fn)
                for meth, t, rx, fn in self._routes
                if meth == h.command and (m := rx.match(sub))
            ),
            None,
        )
        template = found[0] if found else None
        if not self.authorized(h.headers, query):
            reply = self.unauthorized()
        elif found is None:
            reply = self.not_found()
        else:
            template, match, handler = found
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            request = Request(
                h.command, path, template, params, query, h.headers, self._read_json(h)
            )
            try:
                with self._lock:
                    reply = handler(request)
            except ApiError as exc:
                reply = exc.reply
        reply.headers = {**self.default_headers(path), **reply.headers}
        if template is not None and reply.validate:
            errors = self.schemas.check(h.command, template, reply.status, reply.body)
            if errors:
                with self._lock:
                    self.schema_errors.extend(errors)
        return self._send(h, reply)

    @staticmethod
    def _read_json(h: _Handler) -> Any:
        if not has_body(h):
            return None
        h.body_read = True
        raw = b"".join(iter_body(h))
        if not raw.strip():
            return None
        if "application/x-www-form-urlencoded" in (h.headers.get("Content-Type") or ""):
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, {"message": f"Problems parsing JSON: {exc}"}) from exc

    @staticmethod
    def _send(h: _Handler, reply: Reply) -> int:
        body = reply.body
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json; charset=utf-8"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, bytes):
            data, ctype = body, "application/octet-stream"
        else:
            data, ctype = b"", ""
        h.send_response(reply.status)
        headers = {k.lower(): v for k, v in reply.headers.items()}
        if ctype and "content-type" not in headers:
            h.send_header("Content-Type", ctype)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        if reply.status not in (204, 304):
            h.send_header("Content-Length", str(len(data)))
        if has_body(h) and not h.body_read:  # an unread body would garble the next request
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if h.command != "HEAD" and reply.status not in (204, 304):
            h.wfile.write(data)
        return reply.status

    # ---- helpers for subclasses ----------------------------------------------------------
    def page_reply(
        self,
        request: Request,
        items: list[Any],
        render: Callable[[Any], Any],
        size_key: str = "per_page",
        default: int = 30,
        maximum: int = 100,
        wrap: Callable[[list[Any], Page], Any] | None = None,
        status: int = 200,
    ) -> tuple[Reply, Page]:
        if self.max_per_page is not None:
            maximum = min(maximum, self.max_per_page)
            default = min(default, maximum)
        page = paginate(items, request.query, size_key, default, maximum)
        rendered = [render(item) for item in page.items]
        reply = Reply(status, wrap(rendered, page) if wrap else rendered)
        link = link_header(f"{self.base_url}{request.path}", request.query, page)
        if link:
            reply.headers["Link"] = link
        return reply, page

    def repo_or_404(self, path: str) -> Any:
        record = self.store.get(path)
        if record is None:
            raise ApiError(self.not_found().status, self.not_found().body)
        return record

    def pull_or_404(self, path: str, number: str | int) -> PullRecord:
        try:
            pr = self.store.pull(path, int(number))
        except ValueError:
            pr = None
        if pr is None:
            raise ApiError(self.not_found().status, self.not_found().body)
        return pr
