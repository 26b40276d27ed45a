"""`ado gc`: give back the disk that finished runs and unused clone-cache mirrors hold.

Two kinds of things under the work root are removed:

- a run's directory (`runs/<run_id>`: checkouts, agent homes, logs) once the run is not
  `running` and was created more than `older_than_s` ago. Runs this store does not know
  (another store's, sharing the work root) are left alone and counted;
- a mirror in the clone cache (`cache/*.git`) unused for `mirrors_unused_s` (its lock file is
  touched on every use) and borrowed by no checkout that stays (`git clone --shared`
  checkouts read the mirror's objects). It is removed under its lock, so a run that starts
  meanwhile waits or, if it holds the lock, the mirror is kept.

The store's rows (runs, tasks, sessions, usage, stored commits) are kept: reports and
`ado publish` of an old run still work, from the stored commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ado_ray.engine.workspace import remove_tree
from ado_ray.errors import UnknownRunError, UsageError
from ado_ray.limits.base import UNIT_SECONDS
from ado_ray.models import RunStatus
from ado_ray.store import Store

DURATION_FORM = "a number and a unit: 30d, 12h, 90m, 2w"


@dataclass(frozen=True)
class Removal:
    kind: str  # "run" | "mirror"
    path: Path
    size_bytes: int
    why: str

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "bytes": self.size_bytes,
            "why": self.why,
        }


@dataclass(frozen=True)
class Plan:
    removals: list[Removal]
    kept_runs: int  # known runs too young or still running
    unknown_runs: int  # directories of runs this store does not know

    @property
    def size_bytes(self) -> int:
        return sum(removal.size_bytes for removal in self.removals)


def parse_duration(text: str, option: str) -> float:
    """`30d` -> seconds; a clear error naming the option otherwise."""
    text = text.strip()
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in UNIT_SECONDS or value < 0:
        raise UsageError(f"{option} {text!r}: expected {DURATION_FORM}")
    return value * UNIT_SECONDS[unit]


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _borrowed_mirrors(run_dirs: Iterable[Path]) -> set[Path]:
    """Mirrors that the checkouts under these run directories read objects from."""
    used = set()
    for run_dir in run_dirs:
        for alternates in run_dir.glob("*/repo/.git/objects/info/alternates"):
            for line in alternates.read_text(errors="replace").splitlines():
                if line.strip():
                    used.add(Path(line.strip()).resolve().parent)  # <mirror>/objects
    return used


def plan(
    store: Store | None, work_root: Path, older_than_s: float, mirrors_unused_s: float
) -> Plan:
    now = time.time()
    removals: list[Removal] = []
    staying: list[Path] = []
    kept = unknown = 0
    runs_root = work_root / "runs"
    for run_dir in sorted(runs_root.iterdir()) if runs_root.is_dir() else []:
        if not run_dir.is_dir():
            continue
        try:
            if store is None:
                raise UnknownRunError(run_dir.name)
            run = store.get_run(run_dir.name)
        except UnknownRunError:
            unknown += 1
            staying.append(run_dir)
            continue
        age_s = now - run.created_at.timestamp()
        if run.status is RunStatus.RUNNING or age_s < older_than_s:
            kept += 1
            staying.append(run_dir)
            continue
        why = f"run {run.name} ({run.status.value}), created {run.created_at:%Y-%m-%d %H:%M}"
        removals.append(Removal("run", run_dir, tree_size(run_dir), why))
    borrowed = _borrowed_mirrors(staying)
    cache = work_root / "cache"
    for mirror in sorted(cache.glob("*.git")) if cache.is_dir() else []:
        lock = mirror.with_suffix(".lock")
        used_at = (lock if lock.exists() else mirror).stat().st_mtime
        if mirror.resolve() in borrowed or now - used_at < mirrors_unused_s:
            continue
        days = (now - used_at) / 86_400
        why = f"mirror unused for {days:.1f} days"
        removals.append(Removal("mirror", mirror, tree_size(mirror), why))
    return Plan(removals, kept, unknown)


def apply(gc_plan: Plan) -> list[Removal]:
    """Remove what the plan lists; return what was removed (a mirror in use is skipped)."""
    done = []
    for removal in gc_plan.removals:
        if removal.kind == "mirror":
            lock = removal.path.with_suffix(".lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run is fetching into it right now
                remove_tree(removal.path)
            finally:
                os.close(fd)  # the lock file stays: a run may have it open already
        else:
            remove_tree(removal.path)
        done.append(removal)
    return done
