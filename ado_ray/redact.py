"""Keep secrets out of logs, the database and reports: one way to mask a URL.

`mask_url` is for service URLs (a store, a limiter), whose user name is not secret;
`mask_remote` is for git remotes, where the user slot of an http(s) URL usually holds a
token (`https://ghp_...@github.com/o/n`), so it hides the whole user part.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*", re.IGNORECASE)
# `scheme://userinfo@` anywhere in a text; userinfo runs to the last `@` before a `/`.
_REMOTE_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^/\s?#]*)@")


def mask_url(url: str) -> str:
    """`url` with any password (in the userinfo or a `password=` query) replaced by `***`.

    `postgresql://ado:s3cret@db/ado` → `postgresql://ado:***@db/ado`;
    `redis://:s3cret@cache:6379/0` → `redis://:***@cache:6379/0`.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show nothing after the scheme
        return url.split(":", 1)[0] + ":***"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_remote(text: str) -> str:
    """`text` with the credentials of every git remote URL in it replaced by `***`.

    An ssh user name is not a secret; everything else in a user part is:
    `https://TOKEN@host/o/n` → `https://***@host/o/n`, `ssh://git:pw@host/o/n` →
    `ssh://git:***@host/o/n`; `git@host:o/n` and `ssh://git@host/o/n` stay as they are.
    """

    def userinfo(match: re.Match[str]) -> str:
        scheme, info = match[1], match[2]
        if scheme.lower() == "ssh" and ":" not in info:
            return match[0]
        shown = info.partition(":")[0] + ":***" if scheme.lower() == "ssh" else "***"
        return f"{scheme}://{shown}@"

    return _REMOTE_USERINFO.sub(userinfo, text)
