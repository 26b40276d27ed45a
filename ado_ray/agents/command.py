"""The `command` agent: any program, given as an argv template.

`--cmd "python fix.py {repo_name} --ticket {ticket}"` is split like a shell would split it
(`shlex`), then each word is formatted with the placeholders below; it is never run
through a shell, so a placeholder in an argv word is one argument whatever its value.

A word that a program parses again as shell code, `sh -c '... {ticket} ...'`, is another
matter: there `{ticket!q}` is the safe form, the value quoted with `shlex.quote`, so
`a;touch pwned` arrives as the one word `'a;touch pwned'`. (`{name!s}` is `{name}`;
other conversions are refused.)

Placeholders: `{repo_path}` (the task's checkout, also the working directory),
`{repo_name}`, `{prompt_file}`, `{run_id}`, and every `key=value` variable of the
repository's line. `{{` and `}}` are literal braces. The same values reach the process as
`ADO_REPO_PATH`, `ADO_REPO_NAME`, `ADO_PROMPT_FILE`, `ADO_RUN_ID` and `ADO_VAR_<KEY>`.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import last_line
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec

BUILTIN_PLACEHOLDERS = frozenset({"repo_path", "repo_name", "prompt_file", "run_id"})
CONVERSIONS = {None: lambda value: value, "s": lambda value: value, "q": shlex.quote}
_FORMATTER = string.Formatter()


def _placeholders(word: str) -> Iterator[tuple[str, str | None, str]]:
    """Every `(name, conversion, spec)` in `word`, those nested in a format spec included."""
    for _, field, spec, conversion in _FORMATTER.parse(word):
        if field is not None:
            yield field, conversion, spec or ""
            yield from _placeholders(spec or "")


def _fields(words: Iterable[str]) -> set[str]:
    return {field for word in words for field, _, _ in _placeholders(word)}


def expand(word: str, values: Mapping[str, str]) -> str:
    """`word` with each `{name[!q][:spec]}` replaced by its value (`!q`: shell-quoted)."""
    out: list[str] = []
    for literal, field, spec, conversion in _FORMATTER.parse(word):
        out.append(literal)
        if field is not None:
            value = format(values[field], expand(spec or "", values))
            out.append(CONVERSIONS[conversion](value))
    return "".join(out)


def split_template(cmd: str) -> list[str]:
    try:
        words = shlex.split(cmd)
    except ValueError as exc:
        raise UsageError(
            f"--cmd {cmd!r}: {exc}; expected a command line as a shell would split it"
        ) from exc
    if not words:
        raise UsageError("--cmd is empty; expected a program and its arguments")
    try:
        placeholders = [pair for word in words for pair in _placeholders(word)]
    except ValueError as exc:
        raise UsageError(
            f"--cmd {cmd!r}: {exc}; write literal braces as '{{{{' and '}}}}'"
        ) from exc
    for field, conversion, spec in placeholders:
        if conversion not in CONVERSIONS:
            raise UsageError(
                f"--cmd: '{{{field}!{conversion}}}' has an unknown conversion !{conversion}; "
                f"expected {{{field}}} or {{{field}!q}} (quoted for a shell, as in sh -c '...')"
            )
        try:
            if "{" not in spec:
                format("", spec)
        except ValueError as exc:
            raise UsageError(
                f"--cmd: '{{{field}:{spec}}}': {exc}; expected a format spec for text, e.g. :.8"
            ) from exc
    return words


class CommandAgent:
    name = "command"
    signals_limits = False  # a plain command never reports a provider's rate limit

    def __init__(self, settings: AgentSettings) -> None:
        if not settings.cmd:
            raise UsageError(
                "the command agent needs --cmd; expected e.g. --cmd 'python fix.py {repo_path}'"
            )
        self.words = split_template(settings.cmd)

    @property
    def limit_key(self) -> str:
        return self.name

    def check_repos(self, repos: Iterable[RepoSpec], source: str) -> None:
        """Fail before anything starts if a placeholder has no value for some repository."""
        needed = _fields(self.words) - BUILTIN_PLACEHOLDERS
        for field in sorted(needed):
            if not field.isidentifier():
                raise UsageError(f"--cmd: '{{{field}}}' is not a placeholder; expected a name")
        problems = [
            f"{source}:{repo.line}: {repo.url} has no {', '.join(sorted(missing))}; "
            "expected key=value on its line for every placeholder in --cmd"
            for repo in repos
            if (missing := needed - repo.vars.keys())
        ]
        if problems:
            raise UsageError("\n".join(problems))

    def invocation(self, ctx: AgentContext) -> Invocation:
        values = {
            **ctx.repo.vars,
            "repo_path": str(ctx.repo_path),
            "repo_name": ctx.repo.name,
            "prompt_file": str(ctx.prompt_file or ""),
            "run_id": ctx.run_id,
        }
        argv = [expand(word, values) for word in self.words]
        env = {
            "ADO_RUN_ID": ctx.run_id,
            "ADO_REPO_NAME": ctx.repo.name,
            "ADO_REPO_PATH": str(ctx.repo_path),
            "ADO_PROMPT_FILE": str(ctx.prompt_file or ""),
            **{f"ADO_VAR_{key.upper()}": value for key, value in ctx.repo.vars.items()},
        }
        return Invocation(argv=argv, env=env)

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult:
        if exit.returncode == 0:
            return AgentResult(ok=True, exit_code=0)
        tail = last_line(Path(exit.stderr_path)) or last_line(Path(exit.stdout_path))
        return AgentResult(
            ok=False,
            exit_code=exit.returncode,
            failure_class=FailureClass.AGENT,
            message=f"exit code {exit.returncode}" + (f": {tail}" if tail else ""),
        )
