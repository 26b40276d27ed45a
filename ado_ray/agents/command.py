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

import os
import shlex
import shutil
import string
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import last_line
from ado_ray.config import AgentSettings
from ado_ray.config_errors import closest
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec

BUILTIN_ORDER = ("repo_path", "repo_name", "prompt_file", "run_id")
BUILTIN_PLACEHOLDERS = frozenset(BUILTIN_ORDER)
MAX_REPORTED = 20  # lines named in one error
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


def resolve_program(word: str, cwd: Path, search_path: str, check: bool, relative: bool) -> str:
    """The program word of a template, as the agents will run it. The program runs inside
    each checkout (its working directory), so a path with a `/` in it (`./fix.sh`,
    `tools/fix`) is taken from `cwd`, the directory ado was started in, and made absolute
    here; a bare name (`python`) is looked up on `search_path`, the agents' PATH, when it
    runs. With `check` (the agents run on this machine) either must be there now; without
    `relative` (they run elsewhere, as a Ray job) a relative path is refused. A program
    with a placeholder in it (`{repo_path}/gradlew`) is left for each task."""
    if next(_placeholders(word), None) is not None:
        return word
    program = os.path.expanduser(expand(word, {}))
    inside = "{repo_path}/" + program.removeprefix("./")
    if "/" not in program:
        if check and shutil.which(program, path=search_path) is None:
            here = (cwd / program).is_file()
            raise UsageError(
                f"--cmd: the program {program!r} is not on the agents' PATH ({search_path}); "
                "expected a program on PATH"
                + (
                    f", an absolute path, or ./{program} for the file here"
                    if here
                    else " or a path"
                )
                + " (the command runs inside each checkout, without a shell)"
            )
        return word
    path = Path(os.path.normpath(cwd / program))
    if not Path(program).is_absolute() and not relative:
        raise UsageError(
            f"--cmd: the program {program!r} is a relative path, and the agents run on the "
            f"cluster, inside each checkout; expected an absolute path the cluster's nodes "
            f"see (e.g. {path}), or {inside} for a program inside each repository"
        )
    if check and (problem := _not_runnable(path)):
        if Path(program).is_absolute():
            raise UsageError(f"--cmd: the program {path}: {problem}; expected an executable file")
        raise UsageError(
            f"--cmd: the program {program!r} is {path}, and {problem}: the command runs inside "
            "each checkout, so a relative path is taken from the directory ado was started "
            f"in, {cwd}; expected an executable file there, or {inside} for a program inside "
            "each repository"
        )
    return str(path).replace("{", "{{").replace("}", "}}")


def _not_runnable(path: Path) -> str | None:
    if not path.exists():
        return "it does not exist"
    if path.is_dir():
        return "it is a directory"
    if not os.access(path, os.X_OK):
        return f"it is not executable (chmod +x it, or run it with its interpreter: bash {path})"
    return None


def unknown_placeholder(field: str, defined: list[str], repos: list[RepoSpec], source: str) -> str:
    """`{field}` is neither built in nor set on any line: said once, with the nearest
    valid names and all of them."""
    near = closest(field, [*BUILTIN_ORDER, *defined])
    hint = "; did you mean " + " or ".join(f"{{{key}}}" for key in near) + "?" if near else ""
    own = ", ".join(f"{{{key}}}" for key in defined) or "none set"
    example = f", e.g. {source}:{repos[0].line}: {repos[0].url}" if repos else ""
    return (
        f"--cmd: unknown placeholder {{{field}}}{hint or ';'} expected one of "
        f"{', '.join(f'{{{key}}}' for key in BUILTIN_ORDER)} or a key=value variable of "
        f"{source} ({own}); for a variable of your own, put {field}=VALUE on every line "
        f"(no line of {source} sets it{example})"
    )


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
        """Fail before anything starts if a placeholder has no value for some repository:
        one message for a placeholder no line sets (with the nearest valid names), one per
        line (at most `MAX_REPORTED`) for a variable that only some lines set."""
        repos = list(repos)
        needed = _fields(self.words) - BUILTIN_PLACEHOLDERS
        for field in sorted(needed):
            if not field.isidentifier():
                raise UsageError(f"--cmd: '{{{field}}}' is not a placeholder; expected a name")
        defined = sorted({key for repo in repos for key in repo.vars})
        problems = [
            unknown_placeholder(field, defined, repos, source)
            for field in sorted(needed - set(defined))
        ]
        lacking = [
            (repo, missing)
            for repo in repos
            if (missing := sorted((needed & set(defined)) - repo.vars.keys()))
        ]
        problems += [
            f"{source}:{repo.line}: {repo.url} has no {', '.join(missing)}; expected "
            f"{' '.join(f'{key}=VALUE' for key in missing)} on its line, as --cmd uses "
            + ", ".join(f"{{{key}}}" for key in missing)
            for repo, missing in lacking[:MAX_REPORTED]
        ]
        if len(lacking) > MAX_REPORTED:
            problems.append(f"... and {len(lacking) - MAX_REPORTED} more lines of {source}")
        if problems:
            raise UsageError("\n".join(problems))

    def resolve_program(
        self, cwd: Path, search_path: str, *, check: bool, relative: bool
    ) -> str | None:
        """The template with its program made absolute, where it was written as a relative
        path (None: the template stays as it is); see `resolve_program`."""
        program = resolve_program(self.words[0], cwd, search_path, check, relative)
        if program == self.words[0]:
            return None
        self.words[0] = program
        return shlex.join(self.words)

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

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        return []  # a plain command has no session to resume

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
