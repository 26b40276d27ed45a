"""Ray's token authentication, from a client's side: does a dashboard want a token, and which.

The token is looked up the way Ray itself does (`RAY_AUTH_TOKEN`, then the file named by
`RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`) and is only ever put in a request header:
never printed, logged or written.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ado_ray.errors import ServiceUnavailableError, UsageError

DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
PROBE_TIMEOUT_S = 5.0


def auth_mode(url: str) -> str | None:
    """The dashboard's authentication mode (`disabled`, `token`, ...); None if it has none."""
    try:
        with urllib.request.urlopen(
            f"{url}/api/authentication_mode", timeout=PROBE_TIMEOUT_S
        ) as response:
            data = json.loads(response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # a Ray without token authentication
        raise ServiceUnavailableError(
            f"the Ray dashboard at {url} answered HTTP {exc.code}; nothing was submitted"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailableError(
            f"the Ray dashboard at {url} did not answer ({one_line(reason)}); nothing was "
            "submitted (is `kubectl port-forward` running?)"
        ) from None
    mode = data.get("authentication_mode") if isinstance(data, dict) else None
    return str(mode) if mode else None


def auth_headers(url: str, env: Mapping[str, str]) -> dict[str, str]:
    """`{"Authorization": "Bearer …"}` if the dashboard wants a token, else nothing."""
    if auth_mode(url) in (None, "disabled"):
        return {}
    token = load_token(env)
    if token is None:
        raise UsageError(
            f"the Ray dashboard at {url} wants a token and none was found; expected "
            "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token "
            "(`ray get-auth-token` prints it on the head node)"
        )
    return {"Authorization": f"Bearer {token}"}


def load_token(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """The Ray token, looked up as Ray does; None if there is none. Never print it."""
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    named = env.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(
                f"RAY_AUTH_TOKEN_PATH={named}: cannot read the token ({exc.strerror})"
            ) from None
        if not token:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={named}: the file is empty")
        return token
    default = (home / ".ray" / "auth_token") if home else DEFAULT_TOKEN_PATH.expanduser()
    try:
        return default.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def token_source(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """Where `load_token` finds the token, to name in a hint (the token itself never is):
    `RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH` names, or ~/.ray/auth_token."""
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return f"{env['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    default = (home / ".ray" / "auth_token") if home else DEFAULT_TOKEN_PATH.expanduser()
    try:
        found = bool(default.read_text(encoding="utf-8").strip())
    except OSError:
        return None
    return (str(default) if home else str(DEFAULT_TOKEN_PATH)) if found else None


def token_refused(url: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"the Ray dashboard at {url} refused the token ({first}); nothing was submitted. "
        "Expected the cluster's token in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, "
        "or ~/.ray/auth_token"
    )


def one_line(exc: object, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
