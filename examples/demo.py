#!/usr/bin/env python3
"""`make demo`: build a few sample repositories, run `ado batch` on them, print the report.

Everything lives under .ado/demo (delete it to start over). Uses the embedded defaults:
a local Ray instance, SQLite state, in-memory limits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".ado" / "demo"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "demo",
    "GIT_AUTHOR_EMAIL": "demo@example.com",
    "GIT_COMMITTER_NAME": "demo",
    "GIT_COMMITTER_EMAIL": "demo@example.com",
    "RAY_USAGE_STATS_ENABLED": "0",
}
SAMPLES = {
    "billing": {
        "app.py": "print('billing')\n",
        "tools/report.py": "#!/usr/bin/env python3\nprint('r')\n",
    },
    "search": {"index.py": "def build():\n    return {}\n"},
    "auth": {"login.py": "# SPDX-License-Identifier: MIT\nUSER = None\n"},  # already compliant
    "frontend": {"README.md": "# frontend\n", "build.py": "import sys\n"},
    "payments": {"pay.py": "AMOUNT = 1\n", "refund.py": "AMOUNT = -1\n"},
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True)


def make_repos() -> Path:
    shutil.rmtree(DEMO, ignore_errors=True)
    lines = ["# sample fleet for `make demo`: one repository per line, key=value reaches the agent"]
    for name, files in SAMPLES.items():
        repo = DEMO / "repos" / name
        for rel, text in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        lines.append(f"{repo} license={'MIT' if name in {'auth', 'frontend'} else 'Apache-2.0'}")
    repo_list = DEMO / "repos.txt"
    repo_list.write_text("\n".join(lines) + "\n")
    return repo_list


def ado(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "ADO_STATE": str(DEMO / "state.db"), "ADO_WORK_ROOT": str(DEMO / "work")}
    return subprocess.run(
        [sys.executable, "-m", "ado_ray", *args], env=env, text=True, capture_output=capture
    )


def main() -> int:
    repo_list = make_repos()
    agent = f"{sys.executable} {ROOT / 'examples' / 'add_spdx_header.py'} {{license}}"
    shown = "'python examples/add_spdx_header.py {license}'"
    print(f"$ ado batch {repo_list.relative_to(ROOT)} --parallel 3 --cmd {shown}")
    batch = ado("batch", str(repo_list), "--parallel", "3", "--name", "spdx-demo", "--cmd", agent)
    if batch.returncode not in (0, 1):
        return batch.returncode
    runs = json.loads(ado("runs", "--json", capture=True).stdout)
    print(f"\n$ ado report {runs[0]['run_id']}\n")
    ado("report", runs[0]["run_id"])
    billing = DEMO / "repos" / "billing"
    print("$ git -C .ado/demo/repos/billing show --stat ado/spdx-demo")
    subprocess.run(
        ["git", "-C", str(billing), "show", "--stat", "--format=%h %s", "ado/spdx-demo"], check=True
    )
    return batch.returncode


if __name__ == "__main__":
    sys.exit(main())
