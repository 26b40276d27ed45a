"""The HTTP core every forge client shares: auth headers, pacing, rate limits, errors, pages.

Blocking `urllib.request` calls run in a thread pool of their own (not asyncio's default
one, where git's clones and pushes queue), each inside `pacer.call()`, so a call admitted
by the limiter goes out at once. Every response is checked for the forge's rate-limit signal:

- GitHub: 403/429 with `retry-after` (secondary limit), or with `x-ratelimit-remaining: 0`
  (wait until `x-ratelimit-reset`, epoch seconds); a 2xx with `x-ratelimit-remaining: 0`
  cools the host down too but is kept.
- GitLab: 429 with `retry-after` or `ratelimit-reset` (epoch seconds).
- Gitea/Forgejo: 429 (`retry-after` if given, else 60 s).

A limit reports `pacer.cooldown(reset_at)` and the request is sent again, at most
`max_limit_retries` times (then `ForgeRateLimited`). 401 and a 403 that is no limit are a
`ForgeAuthError` naming the token's environment variable (never the token); 404 is
`ForgeNotFound`; 5xx and connection errors are retried with a short backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json as jsonlib
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from pydantic import SecretStr

from ado_ray.forge.base import (
    ForgeAuthError,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    Pacer,
    RepoInfo,
)
from ado_ray.forge.config import ForgeSettings

log = logging.getLogger(__name__)

Params = Mapping[str, str | int | bool | None]
OK = (200, 201, 202, 204)
# One pool per process for every forge call: a call is sent as soon as it is admitted.
_SENDERS = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="ado-forge-http")
DEFAULT_LIMIT_WAIT_S = 60.0
PAGE_SIZE = {"github": ("per_page", 100), "gitlab": ("per_page", 100), "gitea": ("limit", 50)}
_AUTH_HEADERS = ("Authorization", "Private-token")  # as urllib.request.Request stores them
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;[^,]*rel="?next"?')


def seg(text: str) -> str:
    """One URL path segment: `/` and everything else special percent-encoded."""
    return quote(text, safe="")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str] = field(repr=False)  # lower-case names
    data: Any  # the decoded JSON, the text if not JSON, None if empty


def forge_message(data: Any) -> str:
    """The forge's own explanation in an error body: `message` (GitLab: also `error`)."""
    if isinstance(data, dict):
        parts = []
        for name in ("message", "error", "error_description"):
            value = data.get(name)
            if value:
                parts.append(value if isinstance(value, str) else jsonlib.dumps(value))
        for error in data.get("errors") or ():  # GitHub 422 details
            text = error.get("message") or error.get("code") if isinstance(error, dict) else error
            if text:
                parts.append(str(text))
        return "; ".join(parts)
    if isinstance(data, str):
        return " ".join(data.split())[:200]
    return ""


class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never send the token to another host."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            for name in _AUTH_HEADERS:
                new.remove_header(name)
        return new


class ApiClient:
    """One forge host's REST API, reached with one token, paced by `pacer`."""

    def __init__(
        self,
        kind: str,
        host: str,
        base_url: str,
        token: SecretStr | None,
        token_env: str,
        pacer: Pacer,
        *,
        timeout_s: float = 30.0,
        max_limit_retries: int = 30,
        max_cooldown_s: float = 3900.0,
        backoff_s: Sequence[float] = (0.2, 0.5, 1.0),
    ) -> None:
        if kind not in PAGE_SIZE:
            raise ValueError(f"unknown forge type {kind!r}; expected one of {', '.join(PAGE_SIZE)}")
        self.kind = kind
        self.host = host
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.token_env = token_env
        self.pacer = pacer
        self.timeout_s = timeout_s
        self.max_limit_retries = max_limit_retries
        self.max_cooldown_s = max_cooldown_s
        self.backoff_s = tuple(backoff_s)
        self._opener = urllib.request.build_opener(_SameHostAuthRedirect())

    def __repr__(self) -> str:
        return f"ApiClient({self.where}, {self.base_url}, token from ${self.token_env})"

    @property
    def where(self) -> str:
        return f"{self.kind} at {self.host}"

    def _headers(self) -> dict[str, str]:
        if self._token is None or not self._token.get_secret_value():
            raise ForgeAuthError(
                f"{self.where}: ${self.token_env} is not set; expected a {self.kind} token for "
                f"{self.host} in it. Export it, or set forges.{self.host}.token_env to the "
                "variable that holds the token"
            )
        secret = self._token.get_secret_value()
        headers = {"User-Agent": "ado-ray", "Accept": "application/json"}
        if self.kind == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["Authorization"] = f"Bearer {secret}"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
        elif self.kind == "gitlab":
            headers["PRIVATE-TOKEN"] = secret
        else:
            headers["Authorization"] = f"token {secret}"
        return headers

    def _scrub(self, text: str) -> str:
        secret = self._token.get_secret_value() if self._token is not None else ""
        return text.replace(secret, "***") if secret else text

    def _url(self, path: str, params: Params | None) -> str:
        if path.startswith(("http://", "https://")):  # a `Link: <...>; rel="next"` URL
            base = urlsplit(self.base_url)
            if urlsplit(path)[:2] != base[:2]:
                raise ForgeError(
                    f"{self.where}: the API pointed to {path.split('?')[0]}, outside "
                    f"{self.base_url}; expected a link on the same host (not followed, so "
                    "the token stays on its own host)"
                )
            url = path
        else:
            url = self.base_url + (path if path.startswith("/") else "/" + path)
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        return url

    def _shown(self, url: str) -> str:
        """`url` as messages show it: the path below the API base, without the query."""
        path = url.split("?", 1)[0]
        base_path = urlsplit(self.base_url).path
        path = urlsplit(path).path if path.startswith(("http://", "https://")) else path
        return path[len(base_path) :] if base_path and path.startswith(base_path) else path

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.status, _header_dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, _header_dict(exc.headers), exc.read()
            finally:
                exc.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        pr: bool = False,
        ok: Sequence[int] = OK,
    ) -> Response:
        """Send one API call; a status in `ok` is returned, any other raises `ForgeError`."""
        headers = self._headers()
        url = self._url(path, params)
        shown = f"{method} {self._shown(url)}"
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        limited = failures = 0
        while True:
            try:
                async with self.pacer.call(pr=pr):
                    status, found, raw = await asyncio.get_running_loop().run_in_executor(
                        _SENDERS, self._send, method, url, body, headers
                    )
            except OSError as exc:  # URLError, timeouts, refused connections
                problem = f"could not reach {self.base_url} ({_reason(exc)})"
                failures = await self._backoff(failures, shown, problem, None)
                continue
            response = Response(status, found, _decode(raw))
            reset_at = self._limited_until(response)
            if reset_at is not None:
                limited += 1
                wait = reset_at - time.time()
                if limited > self.max_limit_retries or wait > self.max_cooldown_s:
                    raise ForgeRateLimited(
                        f"{self.where} rate-limits {shown} ({status}"
                        f"{_colon(self._scrub(forge_message(response.data)))}) until "
                        f"{_when(reset_at)}, after {limited - 1} waits; try again later or "
                        f"lower the forge:{self.host} limits",
                        reset_at,
                    )
                log.warning("%s: rate limited on %s; waiting %.0fs", self.where, shown, wait)
                await self.pacer.cooldown(reset_at)
                continue
            if status >= 500 and status not in ok:
                problem = f"{status}{_colon(self._scrub(forge_message(response.data)))}"
                failures = await self._backoff(failures, shown, problem, status)
                continue
            exhausted = self._exhausted_until(response)
            if exhausted is not None:
                log.info("%s: no API calls left until %s", self.where, _when(exhausted))
                await self.pacer.cooldown(exhausted)
            if status in ok:
                return response
            raise self._error(shown, path, response)

    async def _backoff(self, failures: int, shown: str, problem: str, status: int | None) -> int:
        if failures >= len(self.backoff_s):
            raise ForgeError(
                f"{self.where} failed {shown}: {problem}, {failures + 1} attempts; the forge may "
                "be down or unreachable, try again later",
                status,
            )
        log.warning("%s: %s: %s; retrying", self.where, shown, problem)
        await asyncio.sleep(self.backoff_s[failures])
        return failures + 1

    def _limited_until(self, response: Response) -> float | None:
        """When to retry if `response` is a rate limit, else None."""
        status, headers = response.status, response.headers
        if status == 429:
            pass
        elif self.kind == "github" and status == 403:
            signals = "retry-after" in headers or headers.get("x-ratelimit-remaining") == "0"
            if not signals and "rate limit" not in forge_message(response.data).lower():
                return None
        else:
            return None
        now = time.time()
        retry_after = _retry_after(headers.get("retry-after"), now)
        if retry_after is not None:
            return retry_after
        remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
        reset = _number(headers.get("x-ratelimit-reset", headers.get("ratelimit-reset")))
        if reset is not None and remaining in (None, "0"):
            return max(reset, now + 1.0)
        return now + DEFAULT_LIMIT_WAIT_S

    def _exhausted_until(self, response: Response) -> float | None:
        """A served call that used the last of the budget: the reset time."""
        headers = response.headers
        if headers.get("x-ratelimit-resource", "core") != "core":
            return None  # GitHub's search budget is its own; its limit says so when hit
        remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
        reset = _number(headers.get("x-ratelimit-reset", headers.get("ratelimit-reset")))
        if remaining != "0" or reset is None:
            return None
        return max(reset, time.time() + 1.0)

    def _error(self, shown: str, path: str, response: Response) -> ForgeError:
        status = response.status
        said = self._scrub(forge_message(response.data))
        subject = _subject(path)
        if status in (401, 403):
            return ForgeAuthError(
                f"{self.where} refused the token in ${self.token_env} ({status}{_space(said)}) "
                f"for {shown}; check that the token is valid and may access {subject}",
                status,
            )
        if status == 404:
            return ForgeNotFound(
                f"{self.where}: {shown} found nothing (404{_space(said)}); check that {subject} "
                f"exists and that the token in ${self.token_env} can see it",
                status,
            )
        return ForgeError(f"{self.where} refused {shown}: {status}{_space(said)}", status)

    async def paginate(
        self, path: str, params: Params | None = None, *, items_key: str | None = None
    ) -> AsyncIterator[Any]:
        """Every item of every page: the payload's list (or its `items_key` list), following
        `Link: <...>; rel="next"` or GitLab's `x-next-page`."""
        name, size = PAGE_SIZE[self.kind]
        base: dict[str, Any] = {name: size, **(params or {})}
        target, query = path, dict(base)
        seen: set[str] = set()
        while True:
            response = await self.request("GET", target, params=query)
            data = response.data
            items = data.get(items_key) if items_key and isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ForgeError(
                    f"{self.where}: GET {self._shown(self._url(target, None))} answered "
                    f"{type(items).__name__}; expected a list"
                    + (f" under {items_key!r}" if items_key else "")
                )
            for item in items:
                yield item
            link = _next_link(response.headers.get("link", ""))
            page = response.headers.get("x-next-page", "").strip()
            if not items:
                return
            if link:
                target, query = link, {}
            elif page:
                target, query = path, {**base, "page": page}
            else:
                return
            marker = self._url(target, query)
            if marker in seen:
                return
            seen.add(marker)


def fork_of_head(pull: dict[str, Any]) -> str | None:
    """A GitHub-style PR (GitHub, Gitea): the head repository's `owner/name` when it is not
    the base repository (the PR of a fork's branch), else None."""
    head = ((pull.get("head") or {}).get("repo") or {}).get("full_name")
    base = ((pull.get("base") or {}).get("repo") or {}).get("full_name")
    if head and base and str(head).lower() != str(base).lower():
        return str(head)
    return None


def _header_dict(message: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in message.keys():  # noqa: SIM118 (an email.message.Message)
        headers[name.lower()] = ", ".join(message.get_all(name) or ())
    return headers


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return jsonlib.loads(text)
    except ValueError:
        return text


def _query_value(value: str | int | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _retry_after(text: str | None, now: float) -> float | None:
    """`Retry-After`: seconds, or an HTTP date."""
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return now + max(seconds, 0.0)
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return now + DEFAULT_LIMIT_WAIT_S


def _next_link(header: str) -> str | None:
    match = _NEXT_LINK.search(header)
    return match[1] if match else None


def _subject(path: str) -> str:
    """What a request is about, for hints: `acme/x` for /repos/acme/x/... or GitLab's
    /projects/acme%2Fx/..., else the path."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) >= 3 and parts[0] == "repos":
        return f"{parts[1]}/{parts[2]}"
    if len(parts) >= 2 and parts[0] == "projects":
        return unquote(parts[1])
    return "/" + "/".join(parts)


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _space(text: str) -> str:
    return f" {text}" if text else ""


def _colon(text: str) -> str:
    return f": {text}" if text else ""


# The Basic-auth user git sends with a token, as each forge documents for tokens (Gitea and
# Forgejo take any user name when the password is a token).
GIT_USERNAMES = {"github": "x-access-token", "gitlab": "oauth2", "gitea": "oauth2"}


class RestForge:
    """What the three forge clients share: one host, its `ApiClient`, and a name for repr."""

    kind = ""
    fork_wait_default_s = 60.0

    def __init__(
        self,
        host: str,
        settings: ForgeSettings,
        token: SecretStr | None,
        pacer: Pacer,
        *,
        fork_wait_s: float | None = None,
    ) -> None:
        self.host = host
        self.api = ApiClient(
            self.kind, host, settings.api_base(host), token, settings.token_env, pacer
        )
        self.fork_wait_s = self.fork_wait_default_s if fork_wait_s is None else fork_wait_s
        self.git_username = GIT_USERNAMES[self.kind]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host})"

    def own_fork(self, found: RepoInfo, upstream: str) -> RepoInfo:
        """`found`, the token user's repository where its fork of `upstream` would be, if it
        is that fork; else a `ForgeError`, since pushing there would put the run's branch
        into an unrelated repository."""
        if found.fork and (found.parent or upstream).lower() == upstream.lower():
            return found
        what = f"a fork of {found.parent}" if found.fork else "not a fork"
        raise ForgeError(
            f"{self.api.where}: {found.path} exists and is {what}; expected the token user's "
            f"fork of {upstream} there. Rename or remove {found.path}, or fork {upstream} "
            "yourself under that name"
        )
