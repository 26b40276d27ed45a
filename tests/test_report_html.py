"""The reports of a real run (one changed, one no-change, one failed repository): the HTML
page's sections, escaping and links, the page in headless Chromium, and the times, logs and
diffstats that the JSON, Markdown, JUnit and `ado status` outputs now carry."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner

from ado_ray import api, report_svg, reports
from ado_ray.cli import main
from ado_ray.report_timeline import PHASES, fmt_duration
from tests.conftest import create_repo

pytestmark = pytest.mark.integration

AGENT = """
import pathlib, sys, time
name = sys.argv[1]
time.sleep(0.4)
if name.startswith("ev"):
    pathlib.Path("CHANGED.txt").write_text("one\\ntwo\\n")
    print("edited", name)
elif name == "broken":
    sys.exit("cannot fix <script>alert('pwned')</script> & more")
"""
EVIL_DIR = "ev<script>x&y"  # a legal directory name, and so a repository URL


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run through the API (in-process), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("report")
    repos = [create_repo(root / "repos" / name) for name in (EVIL_DIR, "quiet", "broken")]
    agent = root / "agent.py"
    agent.write_text(AGENT)
    (root / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    settings = {
        "state": str(root / "state.db"),
        "work_root": str(root / "work"),
        "parallel": 2,
        "no_ray": True,
        "name": "report-run",
        "agent": {"cmd": f"{sys.executable} {agent} {{repo_name}}", "env": {"SECRET": "s3"}},
    }
    result = api.start(root / "repos.txt", api.ConfigSources(overrides=settings), io.StringIO())
    assert result.counts == {"changed": 1, "no_change": 1, "failed": 1}
    return {"summary": result.summary, "root": root, "state": settings["state"]}


def by_state(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["state"]: task for task in summary["tasks"]}


# --- the JSON shape -----------------------------------------------------------------------


def test_tasks_carry_times_phases_logs_and_diffstats(run: dict[str, Any]) -> None:
    summary = run["summary"]
    tasks = by_state(summary)
    changed, quiet, failed = tasks["changed"], tasks["no_change"], tasks["failed"]
    for task in (changed, quiet, failed):
        assert task["attempts"] == 1 and task["runner"] == "ado-runner-local"
        assert task["started_at"] < task["finished_at"] <= summary["finished_at"]
        # duration_s is from the store's write times, each late by up to a sink batch
        assert 0.4 <= task["agent_s"] <= task["duration_s"] + 0.25
        assert [s["attempt"] for s in task["sessions"]] == [1]
        assert task["log_path"] == task["sessions"][0]["log"]
        assert Path(task["sessions"][0]["log"]).is_file()
        assert Path(task["sessions"][0]["stderr_log"]).is_file()
        names = [phase["phase"] for phase in task["phases"]]
        # In time order; a phase shorter than one sink batch (a quick local prepare) shares
        # its times with the next change and is dropped (see report_timeline).
        assert "agent" in names and names == sorted(names, key=PHASES.index)
    assert {p["phase"] for p in changed["phases"]} >= {"agent"}
    assert {p["phase"] for p in changed["phases"]} <= {"prepare", "agent", "commit", "publish"}
    assert [p["phase"] for p in failed["phases"]] in (["prepare", "agent"], ["agent"])
    assert changed["diffstat"] == "1 file, +2 -0"
    assert (changed["files_changed"], changed["insertions"], changed["deletions"]) == (1, 2, 0)
    assert quiet["diffstat"] is None and quiet["files_changed"] is None
    assert failed["error"] == "exit code 1: cannot fix <script>alert('pwned')</script> & more"
    assert summary["duration_s"] > 0.8  # two tasks one after the other on one of 2 slots
    assert summary["config"]["agent"]["env"] == {"SECRET": "***"}
    assert "s3" not in reports.to_json(summary)


def test_settings_are_masked_a_second_time() -> None:
    stored = {
        "agent": {"env": {"API": "v"}, "cmd": "tool"},
        "forges": {"h": {"token_env": "GITHUB_TOKEN", "token": "ghp_literal"}},
        "limiter": {"url": "redis://:pw@cache:6379/0"},
        "remote": "https://ghp_inurl@github.com/o/n",
        "api_key": "sk-1",
        "git": {"author_name": "ado-ray"},
        "prompt": None,
    }
    assert reports.masked_settings(stored) == {
        "agent": {"env": {"API": "***"}, "cmd": "tool"},
        "forges": {"h": {"token_env": "GITHUB_TOKEN", "token": "***"}},
        "limiter": {"url": "redis://***@cache:6379/0"},
        "remote": "https://***@github.com/o/n",
        "api_key": "***",
        "git": {"author_name": "ado-ray"},
        "prompt": None,
    }


# --- HTML ---------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    return tags


SECTIONS = ["summary", "usage", "timeline", "durations", "failures", "repositories", "settings"]


def test_the_page_has_every_section_and_escapes_what_the_run_wrote(run: dict[str, Any]) -> None:
    summary = run["summary"]
    page = reports.FORMATS["html"](summary)
    tags = parse(page)
    ids = [attrs.get("id") for tag, attrs in tags.tags if tag == "section"]
    assert ids == SECTIONS
    # Nothing but our own script, no handler attribute, nothing loaded from anywhere.
    assert [tag for tag, _ in tags.tags if tag == "script"] == ["script"]
    assert not [a for _, attrs in tags.tags for a in attrs if a.startswith("on")]
    assert not [t for t, attrs in tags.tags if "src" in attrs or t in {"link", "img", "iframe"}]
    assert (
        "<script>alert" not in page and "cannot fix &lt;script&gt;alert(&#x27;pwned&#x27;)" in page
    )
    assert "ev&lt;script&gt;x&amp;y" in page and EVIL_DIR not in page
    text = "".join(tags.text)
    assert "cannot fix <script>alert('pwned')</script> & more" in text  # shown as written
    # The charts are inline SVG: one bar group per task on the timeline, and a histogram.
    svgs = [attrs["class"] for tag, attrs in tags.tags if tag == "svg"]
    assert svgs == ["chart timeline", "chart histogram"]
    assert page.count("<g><title>") == 3
    assert '<rect class="ph-agent"' in page and '<rect class="oc-failed"' in page
    # Every task has a row, each row links its attempt logs, and the bars link the rows.
    rows = [attrs["id"] for tag, attrs in tags.tags if tag == "tr" and attrs.get("id")]
    assert rows == [f"t-{task['task_id']}" for task in summary["tasks"]]
    bar_links = {attrs["href"] for tag, attrs in tags.tags if tag == "a" and "href" in attrs}
    assert {f"#{row}" for row in rows} <= bar_links
    logs = sorted(href for href in bar_links if href.startswith("file://"))
    assert len(logs) == 2 * 3  # stdout and stderr of one attempt each
    assert all(Path(unquote(urlsplit(href).path)).is_file() for href in logs)
    assert not [href for href in bar_links if not href.startswith(("#", "file:///"))]
    assert "s3" not in page and "&quot;SECRET&quot;: &quot;***&quot;" in page
    assert "1 file" in page and 'class="add">+2<' in page


def test_only_web_urls_become_links(run: dict[str, Any]) -> None:
    summary = copy.deepcopy(run["summary"])
    changed = by_state(summary)["changed"]
    changed.update(pr_url="javascript:alert(1)", pr_number=7, where="PR #7 javascript:alert(1)")
    quiet = by_state(summary)["no_change"]
    quiet["agent_summary"] = '<img src=x onerror="alert(1)"> did nothing'
    page = reports.FORMATS["html"](summary)
    tags = parse(page)
    hrefs = [attrs["href"] or "" for tag, attrs in tags.tags if tag == "a" and "href" in attrs]
    assert not [h for h in hrefs if not h.startswith(("#", "file:///"))]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; did nothing" in page
    changed["pr_url"] = "https://forge.example/o/n/pull/7?a=1&b=2"
    page = reports.FORMATS["html"](summary)
    assert '<a href="https://forge.example/o/n/pull/7?a=1&amp;b=2">PR #7</a>' in page


# --- in a browser ---------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make browser` (.ci/browser.sh) installs it")
        pytest.skip("chromium is not installed (`make browser` installs it)")
    return found


def open_page(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless, offline (every host name fails to resolve), logging the console."""
    command = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_chromium_draws_the_page_without_a_console_message(
    run: dict[str, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.html"  # the check itself: a page whose script throws
    broken.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('boom')</script>")
    assert any("boom" in m for m in console_messages(open_page(broken, tmp_path / "p0").stderr))

    page = tmp_path / "run.html"
    page.write_text(reports.FORMATS["html"](run["summary"]), encoding="utf-8")
    dom = open_page(page, tmp_path / "p1", "--dump-dom")
    assert console_messages(dom.stderr) == []
    assert '<html lang="en" class="js">' in dom.stdout  # the script ran to its end
    assert dom.stdout.count('<svg class="chart') == 2 and 'class="ph-agent"' in dom.stdout
    shot = tmp_path / "run.png"
    drawn = open_page(page, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1400,2000")
    assert console_messages(drawn.stderr) == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1400, 2000)
    assert len(png) > 40_000  # a drawn page, not a blank one
    if keep := os.environ.get("ADO_REPORT_SCREENSHOT"):  # to look at it: a path to copy it to
        shutil.copy(shot, keep)


# --- scale --------------------------------------------------------------------------------


def fleet(summary: dict[str, Any], n: int, slots: int) -> dict[str, Any]:
    """`summary` grown to `n` tasks on `slots` slots (25 per runner), each a copy of one of
    its real tasks with new times: one after the other on the first slot to be free."""
    free = [datetime.fromisoformat(summary["created_at"])] * slots
    tasks = []
    for i in range(n):
        task = copy.deepcopy(summary["tasks"][i % len(summary["tasks"])])
        names = [phase["phase"] for phase in task["phases"]]
        if i % 3 == 0:
            names.insert(1, "limit_wait")
        length = {"prepare": 3 + i % 4, "limit_wait": 2.5, "agent": 20 + (i * 37) % 90}
        slot = min(range(slots), key=free.__getitem__)
        start = moment = free[slot] + timedelta(seconds=1)
        task["phases"] = []
        for name in names:
            end = moment + timedelta(seconds=length.get(name, 1.5))
            runner = f"ado-runner-0123456789ab-{slot // 25}"
            task["phases"].append({"phase": name, "attempt": 1, "start": moment.isoformat(),
                                   "end": end.isoformat(), "runner": runner})  # fmt: skip
            moment = end
        free[slot] = moment
        task.update(
            task_id=f"0123456789ab-{i:05d}",
            name=f"service-{i:04d}",
            repo=f"git@github.com:acme/service-{i:04d}.git",
            line=i + 1,
            started_at=start.isoformat(),
            finished_at=moment.isoformat(),
            duration_s=(moment - start).total_seconds(),
        )
        for session in task["sessions"]:
            session["duration_s"] = length["agent"]
        tasks.append(task)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task["state"]] = counts.get(task["state"], 0) + 1
    last = max(task["finished_at"] for task in tasks)
    return dict(summary, tasks=tasks, counts=counts, finished_at=last)


def test_two_thousand_tasks_make_a_page_under_5_mb_in_seconds(run: dict[str, Any]) -> None:
    summary = fleet(run["summary"], 2000, 50)
    started = time.perf_counter()
    page = reports.FORMATS["html"](summary)
    took = time.perf_counter() - started
    size = len(page.encode())
    print(f"2,000 tasks: {size / 1e6:.2f} MB in {took:.2f} s")
    assert size < 5_000_000 and took < 10
    timeline = page[page.index('<svg class="chart timeline"') :]
    timeline = timeline[: timeline.index("</svg>")]
    assert timeline.count('class="lane"') == 50  # one row per slot: packed, not one per task
    assert timeline.count("<g><title>") == 2000  # every task's stay in detail


def test_above_the_detail_limit_the_timeline_draws_one_plain_bar_per_stay(
    run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_svg, "DETAIL_MAX", 100)
    page = reports.FORMATS["html"](fleet(run["summary"], 150, 10))
    timeline = page[page.index('<svg class="chart timeline"') :]
    timeline = timeline[: timeline.index("</svg>")]
    assert "<title>" not in timeline and 'class="ph-' not in timeline
    assert len(re.findall(r'<rect class="st-(changed|no_change|failed)"', timeline)) == 150
    assert "Over 100 tasks" in page


# --- the other formats and `ado status` -----------------------------------------------------


def test_junit_has_a_time_for_each_case_and_the_suite(run: dict[str, Any]) -> None:
    summary = run["summary"]
    suite = ET.fromstring(reports.to_junit(summary).split("?>", 1)[1]).find("testsuite")
    assert suite is not None
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    expected = {task["name"]: task["duration_s"] for task in summary["tasks"]}
    assert {name: float(case.get("time", "")) for name, case in cases.items()} == pytest.approx(
        expected, abs=1e-3
    )
    assert float(suite.get("time", "")) == pytest.approx(summary["duration_s"], abs=1e-3)
    assert suite.get("timestamp") == summary["created_at"][:19]
    changed = by_state(summary)["changed"]
    out = cases[changed["name"]].findtext("system-out") or ""
    assert "diffstat: 1 file, +2 -0" in out and f"log: {changed['log_path']}" in out


def test_markdown_has_duration_finish_attempts_diffstat_and_log(run: dict[str, Any]) -> None:
    summary = run["summary"]
    md = reports.to_markdown(summary)
    day = summary["created_at"][:10]
    assert (
        f"| repository | state | mode | attempts | duration | finished ({day}, UTC) | diffstat "
        "| commit | cost | where / error | log |" in md
    )
    changed = by_state(summary)["changed"]
    row = next(line for line in md.splitlines() if line.startswith(f"| {changed['name']} |"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    assert cells[:3] == [changed["name"], "changed", "command (default)"]
    assert cells[3] == "1" and cells[4].endswith("s") and re.fullmatch(r"\d\d:\d\d:\d\d", cells[5])
    assert cells[6] == "1 file, +2 -0" and cells[10] == f"`{changed['log_path']}`"
    assert f"- finished: {summary['finished_at']}" in md


def test_status_shows_duration_finish_diffstat_and_log(run: dict[str, Any]) -> None:
    summary = run["summary"]
    args = ["status", summary["run_id"], "--state", run["state"]]
    table = CliRunner().invoke(main, args, catch_exceptions=False)
    assert table.exit_code == 0, table.output
    assert "duration" in table.output and "finished" in table.output
    assert "diffstat" in table.output
    assert "1 file, +2 -0" in table.output and "log:" in table.output
    changed = by_state(summary)["changed"]
    assert fmt_duration(changed["duration_s"]) in table.output
    as_json = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert json.loads(as_json.output)["tasks"] == summary["tasks"]
