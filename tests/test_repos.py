"""The repository list parser: every target form, refs, variables and every error."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ado_ray.errors import RepoListError
from ado_ray.models import RepoSpec
from ado_ray.repos import format_repo_line, parse_repo_list, parse_repo_text

FORMS = "expected a local git repository path, https://host/owner/name,"
VAR_RULE = (
    "expected a name matching [A-Za-z_][A-Za-z0-9_]* other than "
    "prompt_file, repo_name, repo_path, run_id"
)
REF_RULES = "expected a branch, tag or commit after '@' that git check-ref-format accepts"
NO_CREDENTIALS = (
    "expected no credentials in the URL; put the token in the forge's token_env or a git "
    "credential helper, not in the URL"
)
DASH = "expected ssh://host/owner/name (a leading '-' reads as an option to git or ssh)"
NOT_A_REPO = (
    "is not a git repository (no HEAD, objects/ and refs/ in it or in its .git); "
    "expected a directory made by git init or git clone"
)


def git_init(path: Path, *, bare: bool = False) -> Path:
    args = ["git", "init", "-q", *(["--bare"] if bare else []), str(path)]
    subprocess.run(args, check=True, capture_output=True)
    return path.resolve()


def parse(text: str, base: Path) -> list[RepoSpec]:
    return parse_repo_text(text, "repos.txt", base)


def error(text: str, base: Path) -> str:
    with pytest.raises(RepoListError) as info:
        parse(text, base)
    return str(info.value)


def error_from_file(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(RepoListError) as info:
        parse_repo_list(path)
    return str(info.value)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_init(tmp_path / "work" / "repo")


# --- local repositories ---------------------------------------------------------------------


def test_local_paths_resolve_against_base_dir(tmp_path: Path, repo: Path) -> None:
    bare = git_init(tmp_path / "work" / "Bare Thing.git", bare=True)
    text = f"{repo}\nrepo2/../'Bare Thing.git'@v1\n"
    git_init(tmp_path / "work" / "repo2")
    first, second = parse(text, tmp_path / "work")
    assert first == RepoSpec(url=str(repo), key=str(repo), name="repo", line=1)
    assert second == RepoSpec(url=str(bare), key=str(bare), name="Bare-Thing", ref="v1", line=2)


def test_home_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = git_init(tmp_path / "home" / "src" / "proj")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    [spec] = parse("~/src/proj@main", tmp_path)
    assert (spec.url, spec.ref, spec.name) == (str(repo), "main", "proj")


def test_file_url_keeps_url_and_uses_path_as_key(repo: Path) -> None:
    [spec] = parse(f"file://{repo}@abc123", Path("/"))
    assert spec == RepoSpec(url=f"file://{repo}", key=str(repo), name="repo", ref="abc123", line=1)


def test_symlink_is_the_repository_it_points_to(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "link").symlink_to(repo)
    [spec] = parse("link", tmp_path)
    assert spec.key == spec.url == str(repo)
    message = error(f"link\n{repo}\n", tmp_path)
    assert message == f"repos.txt:2: '{repo}' repeats line 1; expected each repository once"


def test_at_sign_in_a_local_path(tmp_path: Path) -> None:
    """An `@` is a ref unless only the whole path names a repository (Jenkins' `ws@2`)."""
    repo = git_init(tmp_path / "workspace@2" / "repo")
    ws = git_init(tmp_path / "ws")
    git_init(tmp_path / "ws@main")  # the ref reading wins while the path before `@` exists
    first, second = parse("workspace@2/repo\nws@main x=1\n", tmp_path)
    assert (first.url, first.ref, second.url, second.ref) == (str(repo), None, str(ws), "main")
    [with_ref] = parse("workspace@2/repo@v1", tmp_path)
    assert (with_ref.url, with_ref.ref) == (str(repo), "v1")
    assert parse("\n".join(map(format_repo_line, [first, second])), Path("/")) == [first, second]
    got = error("workspace@3/repo", tmp_path)
    assert got.startswith(f"repos.txt:1: 'workspace@3/repo' ({tmp_path.resolve()}/workspace) does")


# --- remote repositories --------------------------------------------------------------------

REMOTES = [
    # line, url, key, name, ref
    ("https://github.com/owner/name", "https://github.com/owner/name", "github.com/owner/name"),
    ("https://GitHub.COM/Owner/name.git/", "https://GitHub.COM/Owner/name.git/",
     "github.com/Owner/name"),
    ("HTTPS://h/o/n", "HTTPS://h/o/n", "h/o/n"),
    ("https://h/o/n@v1.2", "https://h/o/n", "h/o/n", "n", "v1.2"),
    ("https://h:443/o/n", "https://h:443/o/n", "h/o/n"),
    ("http://h:8080/group/sub/n.git", "http://h:8080/group/sub/n.git", "h:8080/group/sub/n"),
    ("http://h:80/o/n", "http://h:80/o/n", "h/o/n"),
    ("https://[::1]:8443/o/n", "https://[::1]:8443/o/n", "[::1]:8443/o/n"),
    ("ssh://git@host:2222/x/y.git", "ssh://git@host:2222/x/y.git", "host:2222/x/y"),
    ("ssh://host/~me/proj@feature/x-1", "ssh://host/~me/proj", "host/~me/proj", "proj",
     "feature/x-1"),
    ("git://h/p@0123456789abcdef0123456789abcdef01234567", "git://h/p", "h/p", "p",
     "0123456789abcdef0123456789abcdef01234567"),
    ("git@github.com:owner/name.git", "git@github.com:owner/name.git", "github.com/owner/name"),
    ("git@h:o/n@main", "git@h:o/n", "h/o/n", "n", "main"),
    ("h:/srv/git/tool.git", "h:/srv/git/tool.git", "h/srv/git/tool", "tool"),
    ("git@h:o/we+ird%20name", "git@h:o/we+ird%20name", "h/o/we+ird%20name", "we-ird-20name"),
    ("git@h:o/..", "git@h:o/..", "h/o/..", "repo"),
    ("ssh://me@h/o/--force", "ssh://me@h/o/--force", "h/o/--force", "force"),
    ("h:o/-", "h:o/-", "h/o/-", "repo"),
]  # fmt: skip


@pytest.mark.parametrize("case", REMOTES, ids=[case[0] for case in REMOTES])
def test_remote_forms(case: tuple[str, ...], tmp_path: Path) -> None:
    line, url, key, *rest = case
    name = rest[0] if rest else key.rpartition("/")[2]
    ref = rest[1] if len(rest) > 1 else None
    [spec] = parse(line, tmp_path)
    assert spec == RepoSpec(url=url, key=key, name=name, ref=ref, line=1)


# --- variables, quoting, comments -----------------------------------------------------------


def test_vars_quoting_comments_and_line_numbers(tmp_path: Path) -> None:
    text = (
        "# the fleet\n"
        "\n"
        "https://h/a/one   team=core 'title=fix it' empty= eq=a=b  # trailing comment\r\n"
        '   git@h:a/two@main hash="#1" quote="it\'s"\n'
        "\t# indented comment\n"
        "https://h/a/three#fragment-is-a-comment\n"
    )
    one, two, three = parse(text, tmp_path)
    assert (one.line, two.line, three.line) == (3, 4, 6)
    assert one.vars == {"team": "core", "title": "fix it", "empty": "", "eq": "a=b"}
    assert (two.ref, two.vars) == ("main", {"hash": "#1", "quote": "it's"})
    assert three.url == "https://h/a/three"


def test_format_repo_line_round_trips(tmp_path: Path, repo: Path) -> None:
    spaced = git_init(tmp_path / "my repo")
    weird = {"a": "two words", "b": "#hash", "c": 'it\'s "q"', "d": "", "e": "x=y\\z\t"}
    specs = [
        RepoSpec(url="https://h/o/n", key="h/o/n", name="n", ref="v1", vars=weird, line=1),
        RepoSpec(url=str(repo), key=str(repo), name="repo", vars={"x": "1"}, line=2),
        RepoSpec(url=str(spaced), key=str(spaced), name="my-repo", line=3),
    ]
    lines = [format_repo_line(spec) for spec in specs]
    assert lines[1:] == [f"{repo} x=1", f"'{spaced}'"]
    assert parse("\n".join(lines), tmp_path) == specs


# --- errors ---------------------------------------------------------------------------------

ERRORS = [
    # line, message after "repos.txt:2: " (a prefix when it ends with ",")
    ("git@host:", "'git@host:' has no repository path; expected host:owner/name"),
    ("git@host:/", "'git@host:/' has no repository path; expected host:owner/name"),
    ("ftp://x/y", f"'ftp://x/y' uses the unsupported scheme ftp://; {FORMS}"),
    ("https://host", "'https://host' has no repository path; expected https://host/owner/name"),
    ("https://h/@main", "'https://h/@main' has no repository path; expected https://host/owner/name"),
    ("https:///o/n", "'https:///o/n' has no valid host; expected https://host/owner/name"),
    ("https://h:x/o/n", "'https://h:x/o/n' has an invalid port 'x'; expected https://host/owner/name"),
    ("ssh://h:/o/n", "'ssh://h:/o/n' has an invalid port ''; expected ssh://host/owner/name"),
    ("git@h$t:o/n", "'git@h$t:o/n' has no valid host; expected host:owner/name"),
    ("'a b@h:o/n'", "'a b@h:o/n' has an invalid user name 'a b'; expected host:owner/name"),
    ("'https://h/o n'", "'https://h/o n' has whitespace in its path; expected https://host/owner/name"),
    ("https:/h/o/n", f"'https:/h/o/n' looks like a URL without '//'; {FORMS}"),
    ("file://host/srv/r", "'file://host/srv/r' names a host; expected file:///absolute/path"),
    ("'https://h/o/n\tx'", "'https://h/o/n\\tx' contains a control character; expected a local"),
    ("''", f"'' has no path; {FORMS}"),
    ("@main", f"'@main' has no path; {FORMS}"),
    ("'x", "\"'x\" cannot be split into words (No closing quotation); expected quotes closed"),
    ("x\\", "'x\\\\' cannot be split into words (No escaped character); expected quotes closed"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message"), ERRORS, ids=[case[0] for case in ERRORS])
def test_target_errors(line: str, message: str, tmp_path: Path) -> None:
    got = error(f"https://h/fine/repo\n{line}\n", tmp_path)
    assert got.startswith(f"repos.txt:2: {message}")
    assert "\n" not in got


PASSWORD, USER, QUERY = "contains a password", "has a user or token before '@'", "has a query"
DASHED, HELPER = "has a user, host or path starting with '-'", "is git's transport::address form"
UNSAFE = [
    # line, as the message shows it, what it says was found, what it says was expected
    ("https://u:pw@h/o/n", "https://***@h/o/n", PASSWORD, NO_CREDENTIALS),
    ("https://TOKEN:x-oauth-basic@h/o/n", "https://***@h/o/n", PASSWORD, NO_CREDENTIALS),
    ("ssh://git:pw@h/o/n", "ssh://git:***@h/o/n", PASSWORD, NO_CREDENTIALS),
    ("https://TOKEN@h/o/n", "https://***@h/o/n", USER, NO_CREDENTIALS),
    ("HTTP://u@h/o/n@v1", "HTTP://***@h/o/n@v1", USER, NO_CREDENTIALS),
    ("git://u@h/o/n", "git://***@h/o/n", USER, NO_CREDENTIALS),
    ("https://h/o/n?access_token=T", "https://h/o/n?***", f"{QUERY} string or fragment",
     NO_CREDENTIALS),
    ("https://TOKEN@h/o/n@a..b", "https://***@h/o/n@a..b", "has '..' or '//' in the ref 'a..b'",
     REF_RULES),
    ("ext::sh", "ext::sh", f"{HELPER}, which runs a helper program", FORMS),
    ("fd::3/x", "fd::3/x", f"{HELPER}, which runs a helper program", FORMS),
    ("ssh://-oProxyCommand/x", "ssh://-oProxyCommand/x", DASHED, DASH),
    ("ssh://-oProxyCommand=x@h/o/n", "ssh://-oProxyCommand=x@h/o/n", DASHED, DASH),
    ("-oProxyCommand=x:o/n", "-oProxyCommand=x:o/n", DASHED, DASH.replace("ssh://host/", "host:")),
    ("git@-h:o/n", "git@-h:o/n", DASHED, DASH.replace("ssh://host/", "host:")),
    ("git@h:-o/n", "git@h:-o/n", DASHED, DASH.replace("ssh://host/", "host:")),
    ("https://-h/o/n", "https://-h/o/n", DASHED, DASH.replace("ssh:", "https:")),
    ("https://h//-o/n", "https://h//-o/n", DASHED, DASH.replace("ssh:", "https:")),
]  # fmt: skip


@pytest.mark.parametrize(("line", "shown", "found", "expected"), UNSAFE, ids=[c[0] for c in UNSAFE])
def test_credentials_and_option_lookalikes_are_refused_and_masked(
    line: str, shown: str, found: str, expected: str, tmp_path: Path
) -> None:
    got = error(f"https://h/fine/repo\n{line}\n", tmp_path)
    assert got.startswith(f"repos.txt:2: {shown!r} {found}; {expected}")  # FORMS is a prefix
    assert "TOKEN" not in got and "pw" not in got


def test_messages_mask_credentials_on_lines_that_do_not_split(tmp_path: Path) -> None:
    got = error("'https://TOKEN@h/o/n x", tmp_path)
    assert got.startswith('repos.txt:1: "\'https://***@h/o/n x" cannot be split into words')
    assert "TOKEN" not in got


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("", "an empty ref after '@'"),
        ("a..b", "'..' or '//' in the ref 'a..b'"),
        ("a//b", "'..' or '//' in the ref 'a//b'"),
        ("-x", "the ref '-x' starting with '-' or '/' or ending with '/' or '.'"),
        ("x/", "the ref 'x/' starting with '-' or '/' or ending with '/' or '.'"),
        ("x.", "the ref 'x.' starting with '-' or '/' or ending with '/' or '.'"),
        ("x.lock", "the ref 'x.lock' with a part starting with '.' or ending with '.lock'"),
        ("a.lock/b", "the ref 'a.lock/b' with a part starting with '.' or ending with '.lock'"),
        ("a/.b", "the ref 'a/.b' with a part starting with '.' or ending with '.lock'"),
        ("a~1", "'~' in the ref 'a~1'"),
        ("a^:?", "':?^' in the ref 'a^:?'"),
        ("a*[", "'*[' in the ref 'a*['"),
        ("'a\\b'", "'\\\\' in the ref 'a\\\\b'"),
        ("'a b'", "whitespace or a control character in the ref 'a b'"),
        ("a\u00a0b", "whitespace or a control character in the ref 'a\\xa0b'"),
    ],
)
def test_ref_errors(ref: str, problem: str, tmp_path: Path) -> None:
    line = f"https://h/o/n@{ref}"
    [target] = shlex.split(line)
    assert error(line, tmp_path) == f"repos.txt:1: {target!r} has {problem}; {REF_RULES}"


def test_local_path_errors(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "afile").write_text("x")
    lines = ["missing", "plain@main", "afile", "file:///nonexistent/r", "'bad\x00'", "x\ud800"]
    got = error("\n".join(lines), tmp_path).splitlines()
    assert got[0] == f"repos.txt:1: 'missing' ({tmp_path / 'missing'}) does not exist; {FORMS} " + (
        "ssh://[user@]host[:port]/path, git://host/path, user@host:owner/name or "
        "file:///absolute/path"
    )
    assert got[1] == f"repos.txt:2: 'plain@main' ({tmp_path / 'plain'}) {NOT_A_REPO}"
    assert got[2].startswith(f"repos.txt:3: 'afile' ({tmp_path / 'afile'}) is not a directory;")
    assert got[3].startswith("repos.txt:4: 'file:///nonexistent/r' (/nonexistent/r) does not")
    assert got[4].startswith("repos.txt:5: 'bad\\x00' contains a control character; expected")
    assert got[5].startswith("repos.txt:6: 'x\\ud800' cannot be checked ('utf-8' codec can't")
    assert len(got) == 6


def test_only_what_git_calls_a_repository_is_one(tmp_path: Path) -> None:
    """An empty `.git`, a `.git` file pointing nowhere, a HEAD without objects/: not repos."""
    (tmp_path / "empty-dot-git" / ".git").mkdir(parents=True)
    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / ".git").write_text("gitdir: /nowhere/at/all\n")
    (tmp_path / "head-only" / "objects").mkdir(parents=True)
    (tmp_path / "head-only" / "HEAD").write_text("ref: refs/heads/main\n")
    garbage = git_init(tmp_path / "garbage-head", bare=True)
    (garbage / "HEAD").write_text("not a ref\n")
    names = ["empty-dot-git", "dangling", "head-only", "garbage-head"]
    got = error("\n".join(names), tmp_path).splitlines()
    assert got == [
        f"repos.txt:{n}: {name!r} ({tmp_path / name}) {NOT_A_REPO}"
        for n, name in enumerate(names, start=1)
    ]


def test_worktrees_submodule_style_and_bare_repositories_are_repositories(tmp_path: Path) -> None:
    main = git_init(tmp_path / "main")
    subprocess.run(
        ["git", "-C", str(main), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
         "--allow-empty", "-m", "init"],
        check=True,
    )  # fmt: skip
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", "../linked"], check=True)
    git_init(tmp_path / "modules" / "sub", bare=True)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".git").write_text("gitdir: ../modules/sub\n")
    bare = git_init(tmp_path / "bare.git", bare=True)
    specs = parse("main\nlinked\nsub\nbare.git\n", tmp_path)
    linked, sub = (tmp_path / "linked").resolve(), (tmp_path / "sub").resolve()
    assert [spec.url for spec in specs] == [str(main), str(linked), str(sub), str(bare)]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("foo", "'foo' is not key=value; expected TARGET[@REF] [key=value ...]"),
        ("1a=2", f"'1a=2' has an invalid variable name '1a'; {VAR_RULE}"),
        ("a-b=1", f"'a-b=1' has an invalid variable name 'a-b'; {VAR_RULE}"),
        ("=x", f"'=x' has an invalid variable name ''; {VAR_RULE}"),
        ("a=1 b=2 a=3", "'a=3' sets 'a' again; expected each variable once a line"),
        *[
            (f"{name}=x", f"'{name}=x' sets the reserved name '{name}'; {VAR_RULE}")
            for name in ["repo_path", "repo_name", "prompt_file", "run_id"]
        ],
    ],
)
def test_variable_errors(words: str, message: str, tmp_path: Path) -> None:
    got = error(f"# header\nhttps://h/o/n {words}", tmp_path)
    assert got == f"repos.txt:2: {message}"


SAME_REPOSITORY = [
    ("https://github.com/o/n", "git@github.com:o/n.git"),
    ("https://github.com/o/n", "https://github.com/o/n.git"),
    ("https://github.com/o/n", "https://GITHUB.com/o/n/"),
    ("ssh://me@github.com/o/n", "http://github.com/o/n"),
    ("ssh://git@github.com/o/n.git", "git@github.com:o/n"),
    ("ssh://git@h:22/o/n", "h:o/n"),
    ("git://h/o/n", "https://h:443/o/n"),
    ("https://h/o/n@v1", "https://h/o/n@v2"),
]
DIFFERENT_REPOSITORIES = [
    ("https://h/o/n", "https://h/o/n2"),
    ("https://h/o/n", "https://h:8443/o/n"),
    ("https://h/o/n", "https://h/O/n"),
    ("https://h/o/n", "https://g/o/n"),
]


@pytest.mark.parametrize(("first", "second"), SAME_REPOSITORY)
def test_duplicates_are_errors(first: str, second: str, tmp_path: Path) -> None:
    got = error(f"{first}\n# between\n{second}\n", tmp_path)
    assert got == f"repos.txt:3: '{second}' repeats line 1; expected each repository once"


@pytest.mark.parametrize(("first", "second"), DIFFERENT_REPOSITORIES)
def test_different_repositories_are_not_duplicates(first: str, second: str, tmp_path: Path) -> None:
    assert len(parse(f"{first}\n{second}\n", tmp_path)) == 2


def test_local_path_and_file_url_are_the_same_repository(tmp_path: Path, repo: Path) -> None:
    got = error(f"work/repo\nfile://{repo}@main\n{repo}/\n", tmp_path)
    assert got.splitlines() == [
        f"repos.txt:2: 'file://{repo}@main' repeats line 1; expected each repository once",
        f"repos.txt:3: '{repo}/' repeats line 1; expected each repository once",
    ]


def test_every_bad_line_is_reported_up_to_a_limit(tmp_path: Path) -> None:
    text = "https://h/o/n\n" + "".join(f"https://h/o/n{i} bad{i}\n" for i in range(25))
    got = error(text, tmp_path).splitlines()
    assert len(got) == 21
    assert got[0].startswith("repos.txt:2: 'bad0' is not key=value")
    assert got[19].startswith("repos.txt:21: 'bad19' is not key=value")
    assert got[20] == "... and 5 more"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n\t# another\n"])
def test_empty_list(text: str, tmp_path: Path) -> None:
    assert error(text, tmp_path) == "repos.txt: no repositories; expected one repository per line"


def test_bad_lines_win_over_empty_list(tmp_path: Path) -> None:
    assert error("ftp://x/y\n", tmp_path).startswith("repos.txt:1: 'ftp://x/y' uses")


# --- reading the file -----------------------------------------------------------------------


def test_parse_repo_list_resolves_against_the_files_directory(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = tmp_path / "work" / "repos.txt"
    listing.write_bytes(b"\xef\xbb\xbfrepo@main\n")  # a byte order mark is fine
    monkeypatch.chdir(tmp_path)
    [spec] = parse_repo_list(Path("work/repos.txt"))
    assert (spec.url, spec.ref) == (str(repo), "main")
    assert error_from_file(Path("work/repos.txt"), "nope\n").startswith("work/repos.txt:1: 'nope'")


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(RepoListError, match=r"missing\.txt: cannot be read \(No such file"):
        parse_repo_list(missing)
    with pytest.raises(RepoListError, match=r": cannot be read \(Is a directory\); expected"):
        parse_repo_list(tmp_path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"https://h/o/caf\xe9\n")
    with pytest.raises(RepoListError, match=r"latin\.txt: is not UTF-8 text \(byte 15\)"):
        parse_repo_list(latin)


# --- properties -----------------------------------------------------------------------------

SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
hosts = st.from_regex(
    r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?(\.[a-z]{2,4}){0,2}", fullmatch=True
)
segments = st.text(SAFE + ".", min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))
names = segments.filter(lambda s: not s.endswith(".git"))
owners = segments.filter(lambda s: not s.startswith("-"))
ref_parts = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,8}(\.[A-Za-z0-9_-]{1,5})?", fullmatch=True)
refs = st.one_of(
    st.lists(ref_parts.filter(lambda s: not s.endswith(".lock")), min_size=1, max_size=3).map(
        "/".join
    ),
    st.text("0123456789abcdef", min_size=7, max_size=40),
)
var_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in {"repo_path", "repo_name", "prompt_file", "run_id"}
)
var_values = st.text(st.characters(exclude_characters="\n\r", exclude_categories=["Cs"]))


@st.composite
def remote_specs(draw: st.DrawFn) -> RepoSpec:
    form = draw(st.sampled_from(["https", "http", "ssh", "git", "scp"]))
    host, owner, name = draw(hosts), draw(owners), draw(names)
    user = draw(st.sampled_from(["", "git@", "me.x@"])) if form in ("ssh", "scp") else ""
    ext = draw(st.sampled_from(["", ".git"]))
    port = "" if form == "scp" else draw(st.sampled_from(["", ":2222"]))
    if form == "scp":
        url = f"{user}{host}:{owner}/{name}{ext}"
    else:
        url = f"{form}://{user}{host}{port}/{owner}/{name}{ext}"
    return RepoSpec(
        url=url,
        key=f"{host.lower()}{port}/{owner}/{name}",
        name=name.lstrip("-") or "repo",
        ref=draw(st.none() | refs),
        vars=draw(st.dictionaries(var_names, var_values, max_size=4)),
        line=1,
    )


@settings(max_examples=200, deadline=None)
@given(remote_specs())
def test_remote_specs_round_trip(spec: RepoSpec) -> None:
    line = format_repo_line(spec)
    assert parse_repo_text(line, "rt.txt", Path("/nonexistent")) == [spec]


@settings(max_examples=50, deadline=None)
@given(st.lists(remote_specs(), min_size=1, max_size=8, unique_by=lambda spec: spec.key))
def test_lists_round_trip_with_line_numbers(specs: list[RepoSpec]) -> None:
    text = "\n# comment\n".join(format_repo_line(spec) for spec in specs)
    parsed = parse_repo_text(text, "rt.txt", Path("/nonexistent"))
    assert [(p.url, p.ref, p.vars, p.line) for p in parsed] == [
        (s.url, s.ref, s.vars, 2 * i + 1) for i, s in enumerate(specs)
    ]


LINE_ALPHABET = st.sampled_from([*"ab/.:@#'\"\\ =~-_\t\r\n\x00é\ud800", "https://", "git@h:"])


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), st.lists(LINE_ALPHABET, max_size=40).map("".join)))
def test_any_text_parses_or_raises_repo_list_error(
    text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    try:
        specs = parse_repo_text(text, "fuzz.txt", base)
    except RepoListError as exc:
        assert str(exc).startswith("fuzz.txt:")
    else:
        assert specs
        assert all(spec.name not in ("", ".", "..") for spec in specs)
