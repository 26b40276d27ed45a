"""Keep secrets out of logs, the database and reports: one way to mask a URL."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*", re.IGNORECASE)


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
