"""The aider adapter without the CLI: recorded outputs in, AgentResult out; argv and files.

The recorded real outputs of Aider 0.86.2 are in samples/ (copied from
../shared/agent-samples, like the other adapters'). The excerpts below are lines in the
shapes Aider 0.86.2 prints them (`calculate_and_show_tokens_and_cost`, LiteLLM's errors),
for what the samples do not show: prices, cache counts, other failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ado_ray.agents import make_agent
from ado_ray.agents.aider import (
    API_BASE_URL,
    DEFAULT_LIMIT_COOLDOWN_S,
    MAX_TRIES,
    TAGS_CACHE,
    AiderAgent,
    LimitWatch,
    model_name,
    read_output,
)
from ado_ray.agents.base import AgentContext
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import SAMPLES

BANNER = "Aider v0.86.2\nModel: openai/fake-model with whole edit format\nGit repo: .git\n\n"


def shared_sample(name: str) -> str:
    return (SAMPLES / name).read_text()


@pytest.fixture
def agent() -> AiderAgent:
    return AiderAgent(AgentSettings(name="aider"))


def context(
    tmp_path: Path,
    prompt: str | None = "create hello.txt",
    *,
    resume_session: str | None = None,
    model: str | None = "fake-model",
    base_url: str | None = "http://127.0.0.1:9/v1",
) -> AgentContext:
    prompt_file = None
    if prompt is not None:
        prompt_file = tmp_path / "prompt.md"
        prompt_file.write_text(prompt)
    (tmp_path / "repo").mkdir(exist_ok=True)
    return AgentContext(
        run_id="run1",
        task_id="task1",
        repo=RepoSpec(url="/src/repo", key="/src/repo", name="repo"),
        repo_path=tmp_path / "repo",
        task_dir=tmp_path,
        home=tmp_path / "home",
        prompt_file=prompt_file,
        resume_session=resume_session,
        model=model,
        base_url=base_url,
    )


def finished(
    tmp_path: Path,
    stdout: str,
    returncode: int | None = 0,
    stderr: str = "",
    timed_out: bool = False,
) -> ProcessExit:
    (tmp_path / "out.log").write_text(stdout)
    (tmp_path / "err.log").write_text(stderr)
    return ProcessExit(
        returncode, timed_out, False, 1.0, str(tmp_path / "out.log"), str(tmp_path / "err.log")
    )


def chatted(ctx: AgentContext, agent: AiderAgent, reply: str = "hello.txt\n```\nhi\n```") -> str:
    """Run `invocation` and write the chat history Aider would have written; the session."""
    argv = agent.invocation(ctx).argv
    history = Path(argv[argv.index("--chat-history-file") + 1])
    history.write_text(
        f"\n# aider chat started at 2026-01-01 10:00:00\n\n#### create hello.txt\n\n{reply}\n\n"
        "> Tokens: 724 sent, 13 received.\n> Applied edit to hello.txt\n"
    )
    return history.name.removesuffix(".chat.md")


def test_registered(agent: AiderAgent) -> None:
    assert isinstance(make_agent(AgentSettings(name="aider")), AiderAgent)
    assert agent.limit_key == "aider" and getattr(agent, "signals_limits", True)


def test_argv_is_headless_never_commits_and_keeps_its_files_in_the_task_dir(
    tmp_path: Path, agent: AiderAgent
) -> None:
    ctx = context(tmp_path)
    invocation = agent.invocation(ctx)
    argv = invocation.argv
    assert argv[:3] == ["aider", "--message-file", str(ctx.prompt_file)]
    assert argv[argv.index("--model") + 1] == "openai/fake-model"
    assert argv[argv.index("--openai-api-base") + 1] == "http://127.0.0.1:9/v1"
    for flag in (
        "--yes-always",
        "--no-auto-commits",
        "--no-dirty-commits",
        "--no-gitignore",
        "--no-check-update",
        "--analytics-disable",
        "--no-gui",
        "--no-restore-chat-history",
    ):
        assert flag in argv, flag
    for option in ("--chat-history-file", "--input-history-file", "--model-settings-file"):
        path = Path(argv[argv.index(option) + 1])
        assert path.is_relative_to(tmp_path / "aider") and not path.is_relative_to(ctx.repo_path)
    assert invocation.env["BROWSER"] == "true"
    assert invocation.stop_when is not None
    assert list(ctx.repo_path.iterdir()) == []  # nothing written into the checkout
    settings = json.loads(Path(argv[argv.index("--model-settings-file") + 1]).read_text())
    assert settings == [
        {
            "name": "aider/extra_params",
            "extra_params": {"max_retries": 0, "api_base": "http://127.0.0.1:9/v1"},
        }
    ]
    cache = ctx.home / ".aider" / "caches" / "model_prices_and_context_window.json"
    assert json.loads(cache.read_text())  # content: Aider does not download the price list


def test_no_key_in_argv_or_files(tmp_path: Path, agent: AiderAgent) -> None:
    ctx = context(tmp_path)
    invocation = agent.invocation(ctx)
    assert not [word for word in invocation.argv if word.endswith("api-key")]
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "OPENAI_API_KEY" not in written and "OPENAI_API_KEY" not in invocation.env


def test_defaults_to_openai_without_a_base_url(tmp_path: Path, agent: AiderAgent) -> None:
    argv = agent.invocation(context(tmp_path, model=None, base_url=None)).argv
    assert "--model" not in argv
    assert argv[argv.index("--openai-api-base") + 1] == API_BASE_URL
    settings = json.loads(Path(argv[argv.index("--model-settings-file") + 1]).read_text())
    assert settings[0]["extra_params"]["api_base"] == API_BASE_URL


def test_model_names() -> None:
    assert model_name("llama3") == "openai/llama3"
    assert model_name("openai/gpt-4o") == "openai/gpt-4o"
    assert model_name("anthropic/claude-sonnet-4-5") == "anthropic/claude-sonnet-4-5"


def test_another_providers_model_keeps_its_own_endpoint(tmp_path: Path, agent: AiderAgent) -> None:
    argv = agent.invocation(context(tmp_path, model="anthropic/claude-x", base_url=None)).argv
    settings = json.loads(Path(argv[argv.index("--model-settings-file") + 1]).read_text())
    assert settings[0]["extra_params"] == {"max_retries": 0}


@pytest.mark.parametrize("prompt", [None, "  \n"])
def test_a_prompt_is_needed(tmp_path: Path, agent: AiderAgent, prompt: str | None) -> None:
    with pytest.raises(UsageError, match="prompt"):
        agent.invocation(context(tmp_path, prompt))


def test_create_file_sample(tmp_path: Path, agent: AiderAgent) -> None:
    ctx = context(tmp_path)
    session = chatted(ctx, agent)
    (ctx.repo_path / TAGS_CACHE).mkdir()
    (ctx.repo_path / TAGS_CACHE / "cache.db").write_text("x")
    result = agent.parse(
        ctx, finished(tmp_path, shared_sample("aider-0.86.2-create-file.stdout.txt"))
    )
    assert result.ok and result.failure_class is None
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (724, 13, 0)
    assert result.cost_usd is None  # no price known: priced from `prices:` by the engine
    assert not result.tokens_are_session_totals and not result.cost_is_session_total
    assert result.session_id == session
    assert result.result_text == "hello.txt\n```\nhi\n```"
    assert result.model is None  # the route's model, as configured, names the price
    assert result.usage["aider_model"] == "openai/fake-model"
    assert not (ctx.repo_path / TAGS_CACHE).exists()  # never in the runner's commit


def test_resume_restores_the_sessions_history(tmp_path: Path, agent: AiderAgent) -> None:
    session = chatted(context(tmp_path), agent)
    ctx = context(tmp_path, resume_session=session)
    argv = agent.invocation(ctx).argv
    assert "--restore-chat-history" in argv
    assert argv[argv.index("--chat-history-file") + 1] == str(
        tmp_path / "aider" / f"{session}.chat.md"
    )
    result = agent.parse(ctx, finished(tmp_path, shared_sample("aider-0.86.2-resume.stdout.txt")))
    assert result.ok and result.session_id == session
    assert (result.input_tokens, result.output_tokens) == (771, 13)


def test_a_session_whose_history_is_gone_starts_fresh(tmp_path: Path, agent: AiderAgent) -> None:
    argv = agent.invocation(context(tmp_path, resume_session="0123456789abcdef")).argv
    assert "--no-restore-chat-history" in argv
    assert "0123456789abcdef" not in argv[argv.index("--chat-history-file") + 1]


def test_no_session_before_the_first_message(tmp_path: Path, agent: AiderAgent) -> None:
    ctx = context(tmp_path)
    agent.invocation(ctx)  # Aider was killed before it wrote a message to its history
    result = agent.parse(ctx, finished(tmp_path, BANNER, returncode=None, timed_out=True))
    assert result.session_id is None and result.failure_class is FailureClass.TIMEOUT


def test_429_after_retries_sample_is_a_rate_limit(tmp_path: Path, agent: AiderAgent) -> None:
    """The sample was cut by a timeout while Aider slept 32 s: a limit, not a timeout."""
    ctx = context(tmp_path)
    out = shared_sample("aider-0.86.2-429-after-retries.stdout.txt")
    result = agent.parse(ctx, finished(tmp_path, out, returncode=None, timed_out=True))
    assert result.failure_class is FailureClass.RATE_LIMITED, result.message
    said_at = (tmp_path / "out.log").stat().st_mtime
    assert result.limited_until == pytest.approx(said_at + 1)  # "Please try again in 1s."
    assert "Rate limit reached" in (result.message or "")


def test_stopped_by_the_watch_is_a_rate_limit(tmp_path: Path, agent: AiderAgent) -> None:
    out = (
        BANNER
        + (
            "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for "
            "requests. Please try again later.\nThe API provider has rate limited you.\n"
            "Retrying in 0.2 seconds...\n"
        )
        * MAX_TRIES
    )
    before = time.time()
    result = agent.parse(context(tmp_path), finished(tmp_path, out, returncode=None))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert f"({MAX_TRIES} tries; stopped)" in (result.message or "")
    assert result.limited_until is not None
    assert before + DEFAULT_LIMIT_COOLDOWN_S <= result.limited_until
    assert result.limited_until <= time.time() + DEFAULT_LIMIT_COOLDOWN_S


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - "
            "The server is overloaded. Please try again later.",
            FailureClass.RATE_LIMITED,
        ),
        (
            "litellm.InternalServerError: InternalServerError: AnthropicException - Overloaded",
            FailureClass.RATE_LIMITED,
        ),
        (
            "litellm.InternalServerError: InternalServerError: OpenAIException - The server "
            "had an error while processing your request.\nThe API provider's servers are "
            "down or overloaded.",  # Aider's words for any 5xx: not an overload
            FailureClass.INFRA,
        ),
        (
            "litellm.APIConnectionError: APIConnectionError: OpenAIException - Connection error.",
            FailureClass.INFRA,
        ),
        (
            "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect "
            "API key provided.\nThe API provider is not able to authenticate you. Check your "
            "API key.",
            FailureClass.INPUT,
        ),
        (
            "litellm.NotFoundError: NotFoundError: OpenAIException - The model `nope` does "
            "not exist",
            FailureClass.INPUT,
        ),
        (
            'litellm.APIError: APIError: OpenrouterException - {"error":{"message":'
            '"Insufficient credits","code":402}}',
            FailureClass.AGENT,
        ),
        (
            "litellm.BadRequestError: BadRequestError: OpenAIException - Unsupported "
            "parameter: 'temperature'",
            FailureClass.AGENT,
        ),
    ],
)
def test_failures_by_litellms_error(
    tmp_path: Path, agent: AiderAgent, error: str, expected: FailureClass
) -> None:
    """Aider gives up and exits 0 (a non-retried error), or was stopped (a retried one)."""
    result = agent.parse(context(tmp_path), finished(tmp_path, BANNER + error + "\n"))
    assert not result.ok and result.failure_class is expected, result.message
    assert (result.limited_until is not None) is (expected is FailureClass.RATE_LIMITED)


def test_a_retry_that_succeeded_is_no_failure(tmp_path: Path, agent: AiderAgent) -> None:
    out = (
        BANNER + "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit.\n"
        "Retrying in 0.2 seconds...\nhello.txt\n```\nhi\n```\n\nTokens: 1.2k sent, 5 received.\n"
        "Applied edit to hello.txt\n"
    )
    result = agent.parse(context(tmp_path), finished(tmp_path, out))
    assert result.ok and result.failure_class is None
    assert (result.input_tokens, result.output_tokens) == (1200, 5)


def test_usage_reports_with_k_suffixes_cache_and_cost_add_up(
    tmp_path: Path, agent: AiderAgent
) -> None:
    """Two messages (a reply and a reflection); the second report has both cache counts,
    and Aider puts its cost on the next line then. `session` is this process's total."""
    out = BANNER + (
        "Tokens: 2.3k sent, 56 received. Cost: $0.0071 message, $0.0071 session.\n"
        "Applied edit to a.py\n"
        "Tokens: 23k sent, 1.5k cache write, 12k cache hit, 1.2k received.\n"
        "Cost: $0.04 message, $0.05 session.\n"
    )
    result = agent.parse(context(tmp_path), finished(tmp_path, out))
    assert result.ok
    assert result.cache_tokens == 1500 + 12000
    assert result.input_tokens == 2300 + 23000 - 13500
    assert result.output_tokens == 56 + 1200
    assert result.cost_usd == pytest.approx(0.05) and not result.cost_is_session_total
    assert result.num_turns == 2
    run = read_output(out)
    assert len(run.reports) == 2 and run.failure is None


def test_exhausted_context_is_the_agents_failure(tmp_path: Path, agent: AiderAgent) -> None:
    out = BANNER + "\n\nModel openai/fake-model has hit a token limit!\nToken counts below...\n"
    result = agent.parse(context(tmp_path), finished(tmp_path, out))
    assert result.failure_class is FailureClass.AGENT
    assert "has hit a token limit" in (result.message or "")


@pytest.mark.parametrize(("code", "expected"), [(2, FailureClass.INPUT), (1, FailureClass.AGENT)])
def test_a_nonzero_exit_says_what_aider_said(
    tmp_path: Path, agent: AiderAgent, code: int, expected: FailureClass
) -> None:
    stderr = "aider: error: unrecognized arguments: --no-such-flag\n"
    result = agent.parse(context(tmp_path), finished(tmp_path, "", code, stderr))
    assert result.failure_class is expected
    assert "unrecognized arguments" in (result.message or "")


def test_watch_stops_after_max_tries_of_one_call(tmp_path: Path) -> None:
    log, err = tmp_path / "out.log", tmp_path / "err.log"
    error = "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit\n"
    watch = LimitWatch()
    assert not watch(log, err)  # no log yet
    log.write_text(BANNER + error + "Retrying in 0.2 seconds...\n")
    assert not watch(log, err)
    with log.open("a") as f:  # the call succeeds: the count starts over
        f.write("Tokens: 724 sent, 13 received.\n" + error * (MAX_TRIES - 1))
    assert not watch(log, err)
    with log.open("a") as f:  # the last line arrives in two writes
        f.write("litellm.RateLimitError: Rate")
        f.flush()
        assert not watch(log, err)
        f.write("LimitError: OpenAIException\n")
    assert watch(log, err)


def test_watch_starts_over_when_a_capped_log_is_cut(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text(BANNER * 50)
    watch = LimitWatch(max_tries=1)
    assert not watch(log, log)
    log.write_text("litellm.RateLimitError: RateLimitError: x\n")  # shorter than before
    assert watch(log, log)


def test_watch_over_the_429_sample(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text(shared_sample("aider-0.86.2-429-after-retries.stdout.txt"))
    assert LimitWatch()(log, log)
    log.write_text(shared_sample("aider-0.86.2-create-file.stdout.txt"))
    assert not LimitWatch()(log, log)
