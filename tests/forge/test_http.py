"""The forge HTTP core against a real local HTTP server answering in each forge's formats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from ado_ray.forge.base import ForgeAuthError, ForgeError, ForgeNotFound, ForgeRateLimited
from ado_ray.forge.http import ApiClient
from tests.forge.scripted_api import Reply, ScriptedApi

TOKEN = "ghp_s3cretTOKENvalue1234567890"


class RecordingPacer:
    """Counts calls and records cooldowns without sleeping."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.cooldowns: list[float] = []
        self.inside = 0

    @contextlib.asynccontextmanager
    async def _hold(self, pr: bool) -> AsyncIterator[None]:
        self.calls.append(pr)
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1

    def call(self, *, pr: bool = False) -> contextlib.AbstractAsyncContextManager[object]:
        return self._hold(pr)

    async def cooldown(self, reset_at: float) -> None:
        assert self.inside == 0, "a cooldown must not be reported while holding the budget"
        self.cooldowns.append(reset_at)


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    server = ScriptedApi().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pacer() -> RecordingPacer:
    return RecordingPacer()


def client(
    api: ScriptedApi, pacer: RecordingPacer, kind: str = "github", **kwargs: Any
) -> ApiClient:
    token = kwargs.pop("token", SecretStr(TOKEN))
    kwargs.setdefault("backoff_s", (0.01, 0.01, 0.01))
    return ApiClient(kind, api.host, api.url + "/api", token, "MY_TOKEN", pacer, **kwargs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


# -- auth headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "github",
            {
                "authorization": f"Bearer {TOKEN}",
                "accept": "application/vnd.github+json",
                "x-github-api-version": "2022-11-28",
            },
        ),
        ("gitlab", {"private-token": TOKEN}),
        ("gitea", {"authorization": f"token {TOKEN}"}),
    ],
)
def test_each_forge_gets_its_auth_headers(
    api: ScriptedApi, pacer: RecordingPacer, kind: str, expected: dict[str, str]
) -> None:
    api.reply(Reply(201, {"number": 1}))
    response = run(client(api, pacer, kind).request("POST", "/x", json={"a": 1}, pr=True))
    assert (response.status, response.data) == (201, {"number": 1})
    seen = api.seen[0]
    assert (seen.method, seen.path, seen.body) == ("POST", "/api/x", {"a": 1})
    assert seen.headers["user-agent"] == "ado-ray"
    for name, value in expected.items():
        assert seen.headers[name] == value
    if kind != "gitlab":
        assert "private-token" not in seen.headers
    assert pacer.calls == [True]


def test_query_parameters_are_encoded(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(200, []))
    params = {"head": "acme:ado/run 1", "draft": True, "skip": None}
    run(client(api, pacer).request("GET", "/repos/acme/x/pulls", params=params))
    assert api.seen[0].path == "/api/repos/acme/x/pulls?head=acme%3Aado%2Frun+1&draft=true"


# -- rate limits ---------------------------------------------------------------------------


def test_github_secondary_limit_waits_retry_after(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(
        Reply(403, {"message": "You have exceeded a secondary rate limit."}, {"retry-after": "7"}),
        Reply(200, {"ok": True}),
    )
    before = time.time()
    response = run(client(api, pacer).request("GET", "/repos/acme/x"))
    assert response.data == {"ok": True}
    assert len(api.seen) == 2 and len(pacer.calls) == 2
    assert len(pacer.cooldowns) == 1
    assert before + 7 <= pacer.cooldowns[0] <= time.time() + 7


@pytest.mark.parametrize("status", [403, 429])
def test_github_primary_limit_waits_until_reset(
    api: ScriptedApi, pacer: RecordingPacer, status: int
) -> None:
    reset = int(time.time()) + 120
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    api.reply(Reply(status, {"message": "API rate limit exceeded"}, headers), Reply(200, {}))
    run(client(api, pacer).request("GET", "/user"))
    assert pacer.cooldowns == [reset]
    assert len(api.seen) == 2


def test_github_403_with_rate_limit_message_only_waits_a_minute(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    headers = {"x-ratelimit-remaining": "4000", "x-ratelimit-reset": str(int(time.time()) + 3000)}
    api.reply(
        Reply(403, {"message": "You have exceeded a secondary rate limit"}, headers), Reply(200, {})
    )
    before = time.time()
    run(client(api, pacer).request("GET", "/user"))
    assert before + 59 <= pacer.cooldowns[0] <= time.time() + 61


def test_github_success_with_no_calls_left_cools_down_and_keeps_the_response(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    reset = int(time.time()) + 300
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    api.reply(Reply(200, {"login": "me"}, headers))
    response = run(client(api, pacer).request("GET", "/user"))
    assert response.data == {"login": "me"}
    assert pacer.cooldowns == [reset]
    assert len(api.seen) == 1


def test_github_success_with_calls_left_does_not_cool_down(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    headers = {"x-ratelimit-remaining": "1", "x-ratelimit-reset": str(int(time.time()) + 300)}
    api.reply(Reply(200, {}, headers))
    run(client(api, pacer).request("GET", "/user"))
    assert pacer.cooldowns == []


@pytest.mark.parametrize("header", ["retry-after", "ratelimit-reset"])
def test_gitlab_429_waits(api: ScriptedApi, pacer: RecordingPacer, header: str) -> None:
    now = time.time()
    value = "30" if header == "retry-after" else str(int(now) + 30)
    headers = {header: value, "ratelimit-remaining": "0"}
    api.reply(Reply(429, {"message": "Retry later"}, headers), Reply(200, []))
    run(client(api, pacer, "gitlab").request("GET", "/projects"))
    assert len(api.seen) == 2
    assert now + 29 <= pacer.cooldowns[0] <= time.time() + 31


def test_gitea_429_without_header_waits_a_minute(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(429, {"message": "rate limited"}), Reply(200, {}))
    before = time.time()
    run(client(api, pacer, "gitea").request("GET", "/user"))
    assert before + 59 <= pacer.cooldowns[0] <= time.time() + 61


def test_gitea_429_with_retry_after(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(429, None, {"retry-after": "5"}), Reply(200, {}))
    before = time.time()
    run(client(api, pacer, "gitea").request("GET", "/user"))
    assert before + 5 <= pacer.cooldowns[0] <= time.time() + 5


def test_a_limit_that_persists_raises_rate_limited(api: ScriptedApi, pacer: RecordingPacer) -> None:
    reset = int(time.time()) + 60
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    api.reply(*[Reply(403, {"message": "API rate limit exceeded"}, headers)] * 3)
    with pytest.raises(ForgeRateLimited) as caught:
        run(client(api, pacer, max_limit_retries=2).request("GET", "/user"))
    assert not isinstance(caught.value, ForgeAuthError)
    assert caught.value.reset_at == reset
    assert len(api.seen) == 3 and len(pacer.cooldowns) == 2
    assert "rate-limits GET /user" in str(caught.value)


def test_a_reset_beyond_the_longest_wait_raises_at_once(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    headers = {"retry-after": "86400"}
    api.reply(Reply(429, {}, headers))
    with pytest.raises(ForgeRateLimited):
        run(client(api, pacer).request("GET", "/user"))
    assert len(api.seen) == 1 and pacer.cooldowns == []


# -- errors --------------------------------------------------------------------------------


def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert TOKEN[4:20] not in text


def test_401_names_forge_host_and_variable_never_the_token(
    api: ScriptedApi, pacer: RecordingPacer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A hostile body that echoes the token must not carry it into the message either.
    api.reply(Reply(401, {"message": f"Bad credentials for {TOKEN}"}))
    forge = client(api, pacer)
    with pytest.raises(ForgeAuthError) as caught:
        run(forge.request("GET", "/repos/acme/x"))
    message = str(caught.value)
    assert message.startswith(f"github at {api.host} refused the token in $MY_TOKEN (401 Bad")
    assert "for GET /repos/acme/x; check that the token is valid and may access acme/x" in message
    assert caught.value.status == 401
    _assert_no_token(message, repr(caught.value), repr(caught.value.args), repr(forge), caplog.text)


def test_403_that_is_not_a_limit_is_an_auth_error(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(403, {"message": "Resource not accessible by personal access token"}))
    with pytest.raises(ForgeAuthError, match="Resource not accessible"):
        run(client(api, pacer).request("GET", "/repos/acme/x/pulls"))
    assert pacer.cooldowns == []


def test_gitlab_auth_error_names_the_project(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(401, {"message": "401 Unauthorized"}))
    with pytest.raises(ForgeAuthError, match=r"may access group/sub/x$"):
        run(client(api, pacer, "gitlab").request("GET", "/projects/group%2Fsub%2Fx"))


def test_missing_token_fails_before_any_request(api: ScriptedApi, pacer: RecordingPacer) -> None:
    with pytest.raises(ForgeAuthError, match=r"\$MY_TOKEN is not set"):
        run(client(api, pacer, token=None).request("GET", "/user"))
    assert api.seen == [] and pacer.calls == []


def test_404_is_not_found(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(404, {"message": "Not Found"}))
    with pytest.raises(ForgeNotFound, match="acme/x exists") as caught:
        run(client(api, pacer).request("GET", "/repos/acme/x"))
    assert caught.value.status == 404


def test_a_status_in_ok_is_returned(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(405, {"message": "Merge method not allowed"}))
    response = run(client(api, pacer).request("PUT", "/m", ok=(200, 405)))
    assert (response.status, response.data["message"]) == (405, "Merge method not allowed")


@pytest.mark.parametrize(
    ("kind", "body", "said"),
    [
        (
            "github",
            {"message": "Validation Failed", "errors": [{"message": "No commits"}]},
            "Validation Failed; No commits",
        ),
        ("gitlab", {"error": "title is missing"}, "title is missing"),
        ("gitlab", {"message": {"base": ["Another open MR exists"]}}, "Another open MR exists"),
        ("gitea", {"message": "pull request already exists"}, "pull request already exists"),
    ],
)
def test_other_4xx_carry_status_and_forge_message(
    api: ScriptedApi, pacer: RecordingPacer, kind: str, body: Any, said: str
) -> None:
    api.reply(Reply(422, body))
    with pytest.raises(ForgeError) as caught:
        run(client(api, pacer, kind).request("POST", "/p", json={}))
    assert type(caught.value) is ForgeError
    assert caught.value.status == 422
    assert "refused POST /p: 422 " in str(caught.value)
    assert said in str(caught.value)


def test_5xx_is_retried_then_succeeds(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(
        Reply(502, b"<html>bad gateway</html>"), Reply(503, {}), Reply(500, {}), Reply(200, 7)
    )
    assert run(client(api, pacer).request("GET", "/x")).data == 7
    assert len(api.seen) == 4


def test_5xx_gives_up_after_three_retries(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(*[Reply(500, {"message": "boom"})] * 5)
    with pytest.raises(ForgeError, match="500: boom, 4 attempts") as caught:
        run(client(api, pacer).request("GET", "/x"))
    assert caught.value.status == 500
    assert len(api.seen) == 4


def test_connection_errors_are_retried_then_reported(pacer: RecordingPacer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    forge = ApiClient(
        "gitea",
        f"127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/api/v1",
        SecretStr(TOKEN),
        "MY_TOKEN",
        pacer,
        backoff_s=(0.01, 0.01, 0.01),
    )
    with pytest.raises(ForgeError, match="could not reach") as caught:
        run(forge.request("GET", "/user"))
    assert len(pacer.calls) == 4
    _assert_no_token(str(caught.value))


def test_a_redirect_to_another_host_drops_the_token(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    other = ScriptedApi().start()
    try:
        other.reply(Reply(200, {"moved": True}))
        target = f"http://localhost:{other.server.server_address[1]}/elsewhere"
        api.reply(Reply(302, b"", {"Location": target}))
        assert run(client(api, pacer).request("GET", "/x")).data == {"moved": True}
        assert "authorization" not in other.seen[0].headers
    finally:
        other.stop()


# -- pagination ----------------------------------------------------------------------------


def test_github_follows_link_next(api: ScriptedApi, pacer: RecordingPacer) -> None:
    page2 = f"{api.url}/api/orgs/acme/repos?type=all&per_page=100&page=2"
    page3 = f"{api.url}/api/orgs/acme/repos?type=all&per_page=100&page=3"
    api.reply(
        Reply(200, [1, 2], {"Link": f'<{page2}>; rel="next", <{page3}>; rel="last"'}),
        Reply(200, [3], {"Link": f'<{page3}>; rel="next", <{page3}>; rel="last"'}),
        Reply(200, [4], {"Link": f'<{page2}>; rel="prev"'}),
    )
    items = run(collect(client(api, pacer).paginate("/orgs/acme/repos", {"type": "all"})))
    assert items == [1, 2, 3, 4]
    assert [s.path for s in api.seen] == [
        "/api/orgs/acme/repos?per_page=100&type=all",
        "/api/orgs/acme/repos?type=all&per_page=100&page=2",
        "/api/orgs/acme/repos?type=all&per_page=100&page=3",
    ]


def test_gitlab_follows_x_next_page(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(
        Reply(200, [{"id": 1}], {"x-next-page": "2", "x-page": "1"}),
        Reply(200, [{"id": 2}], {"x-next-page": "", "x-page": "2"}),
    )
    pages = client(api, pacer, "gitlab").paginate("/groups/g/projects", {"include_subgroups": True})
    assert run(collect(pages)) == [{"id": 1}, {"id": 2}]
    assert [s.path for s in api.seen] == [
        "/api/groups/g/projects?per_page=100&include_subgroups=true",
        "/api/groups/g/projects?per_page=100&include_subgroups=true&page=2",
    ]


def test_gitea_pages_by_50_and_reads_search_data(api: ScriptedApi, pacer: RecordingPacer) -> None:
    page2 = f"{api.url}/api/repos/search?q=x&limit=50&page=2"
    api.reply(
        Reply(200, {"ok": True, "data": [{"id": 1}]}, {"Link": f'<{page2}>; rel="next"'}),
        Reply(200, {"ok": True, "data": [{"id": 2}]}),
    )
    pages = client(api, pacer, "gitea").paginate("/repos/search", {"q": "x"}, items_key="data")
    assert run(collect(pages)) == [{"id": 1}, {"id": 2}]
    assert api.seen[0].path == "/api/repos/search?limit=50&q=x"


def test_a_next_link_to_another_host_is_not_followed(
    api: ScriptedApi, pacer: RecordingPacer
) -> None:
    api.reply(Reply(200, [1], {"Link": '<https://evil.example/steal?page=2>; rel="next"'}))
    with pytest.raises(ForgeError, match="outside"):
        run(collect(client(api, pacer).paginate("/user/repos")))
    assert len(api.seen) == 1


def test_a_page_that_is_not_a_list_is_an_error(api: ScriptedApi, pacer: RecordingPacer) -> None:
    api.reply(Reply(200, {"message": "weird"}))
    with pytest.raises(ForgeError, match="expected a list"):
        run(collect(client(api, pacer).paginate("/user/repos")))
