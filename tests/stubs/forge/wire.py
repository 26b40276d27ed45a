"""What the stand-ins' API handlers deal in: requests, replies, faults and pages.

`Request` is one parsed API request, `Reply` what a handler answers (or `ApiError` raises);
`Fault` is one `add_fault` rule; `paginate` / `link_header` cut a listing into the page a
request asks for and describe the others in an RFC 8288 `Link` header, as the forges do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import urlencode


@dataclass
class Request:
    method: str
    path: str  # the full request path, without the query
    template: str  # the matched route's template
    params: dict[str, str]  # path parameters, percent-decoded
    query: dict[str, str]
    headers: Message
    body: Any  # parsed JSON (or form) body, None when there is none

    def arg(self, name: str, default: Any = None) -> Any:
        """A parameter from the JSON/form body, else from the query string."""
        if isinstance(self.body, dict) and name in self.body:
            return self.body[name]
        return self.query.get(name, default)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; str → text/plain; bytes → octet-stream
    headers: dict[str, str] = field(default_factory=dict)
    validate: bool = True


class ApiError(Exception):
    """Raised by a handler to answer with an error reply."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {body}")
        self.reply = Reply(status, body, dict(headers or {}))


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    reply: Reply
    times: int | None  # None: every match
    after: int
    seen: int = 0

    def claim(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not self.pattern.search(path):
            return False
        if self.times is not None and self.times <= 0:
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass(frozen=True)
class Page:
    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def last(self) -> int:
        return max(1, -(-self.total // self.per_page))


def paginate(
    items: list[Any], query: dict[str, str], size_key: str, default: int, maximum: int
) -> Page:
    """Cut `items` to the page that `query` asks for (`page`, and `size_key` per page)."""
    try:
        page = max(1, int(query.get("page") or 1))
        per_page = min(maximum, max(1, int(query.get(size_key) or default)))
    except ValueError as exc:
        raise ApiError(400, {"message": f"invalid pagination parameter: {exc}"}) from exc
    start = (page - 1) * per_page
    return Page(items[start : start + per_page], page, per_page, len(items))


def link_header(base_url: str, query: dict[str, str], page: Page) -> str:
    """RFC 8288 Link header with next/last/first/prev, as GitHub, GitLab and Gitea send."""

    def url(number: int) -> str:
        return f"{base_url}?{urlencode({**query, 'page': str(number)})}"

    links = []
    if page.page < page.last:
        links += [f'<{url(page.page + 1)}>; rel="next"', f'<{url(page.last)}>; rel="last"']
    if page.page > 1:
        links += [f'<{url(1)}>; rel="first"', f'<{url(page.page - 1)}>; rel="prev"']
    return ", ".join(links)


def as_list(value: Any) -> list[Any]:
    """A list from a JSON list, a comma-separated string, or nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable):
        return list(value)
    return [value]
