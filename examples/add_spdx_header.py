#!/usr/bin/env python3
"""An example agent: give every Python file an SPDX license header.

    ado batch repos.txt --cmd "python examples/add_spdx_header.py {license}"

with `license=MIT` on each line of repos.txt (or a fixed id instead of `{license}`).
It runs in the repository's checkout (the working directory) and only edits files;
ado-ray commits, pushes and reports. A repository whose files all have a header gets
`no_change`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LICENSE_ID = re.compile(r"[A-Za-z0-9.+-]+")


def add_header(path: Path, license_id: str) -> bool:
    text = path.read_text(encoding="utf-8")
    if any("SPDX-License-Identifier:" in line for line in text.splitlines()[:3]):
        return False
    lines = text.splitlines(keepends=True)
    keep = 1 if lines and lines[0].startswith("#!") else 0  # a shebang stays first
    header = f"# SPDX-License-Identifier: {license_id}\n"
    path.write_text("".join([*lines[:keep], header, *lines[keep:]]), encoding="utf-8")
    return True


def main() -> int:
    license_id = sys.argv[1] if len(sys.argv) > 1 else "Apache-2.0"
    if not LICENSE_ID.fullmatch(license_id):
        print(f"not an SPDX license id: {license_id!r}", file=sys.stderr)
        return 2
    changed = [
        p
        for p in sorted(Path(".").rglob("*.py"))
        if ".git" not in p.parts and add_header(p, license_id)
    ]
    for path in changed:
        print(f"added header: {path}")
    print(f"{len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
