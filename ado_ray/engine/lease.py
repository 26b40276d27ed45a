"""One driver per run: the run's lease, as its driver holds it and as others see it.

The lease is a row in the store (`Store.acquire_run_lock`). `run_lock` takes it (at once
from a dead driver on this host, else once it expired), renews it every third of its TTL
in a thread, and ends it when the driver is done. Its generation is the run's fencing
token: the driver's sink sends it with every batch, and the store refuses a write whose
generation is no longer the lease's, so a driver that lost the lease changes nothing.

A driver stops starting work as soon as the lease may not be its own any more
(`HeldLease.lost`): a renewal found another holder, the store refused a write, or no
renewal succeeded within a TTL of sending the last one that did. That last deadline is
safe without synchronized clocks: the store timed the lease from when it received that
renewal, which is no earlier than when it was sent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from ado_ray.errors import RunLockedError
from ado_ray.models import RunStatus
from ado_ray.store import Lease, RunRecord, Store

LOCK_TTL_S = 30.0  # the default of `lease_ttl_s`
RETRY_S = 1.0  # after a failed renewal, try again this soon (or a tenth of the TTL)


def _clock() -> float:
    """Monotonic seconds that also count time the machine was suspended: a lease's time in
    the store runs on meanwhile."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def _hms(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%H:%M:%S} UTC"


class HeldLease:
    """This driver's lease on its run: its fence, and whether it still holds it.

    Shared between the renewal thread and the driver's loop; `lost()` is cheap, so the
    loop asks before every task it starts.
    """

    def __init__(self, lease: Lease, ttl_s: float, sent_at: float) -> None:
        self.run_id, self.owner, self.ttl_s = lease.run_id, lease.owner, ttl_s
        self.fence = lease.fence
        self._lock = threading.Lock()
        self._valid_until = sent_at + ttl_s
        self._renewed_at = datetime.now(UTC)
        self._error: str | None = None
        self._lost: str | None = None

    def renewed(self, sent_at: float) -> None:
        with self._lock:
            self._valid_until = max(self._valid_until, sent_at + self.ttl_s)
            self._renewed_at = datetime.now(UTC)
            self._error = None

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self._error = f"{type(exc).__name__}: {exc}"

    def taken(self, holder: Lease) -> None:
        """A renewal found the lease in other hands (or released)."""
        what = f"taken over by {holder.owner}" if holder.owner else "ended by another process"
        self.lose(
            f"the lease of run {self.run_id} was {what} (generation {holder.generation}; "
            f"this driver had {self.fence.generation})"
        )

    def lose(self, reason: str) -> None:
        with self._lock:
            self._lost = self._lost or reason

    def lost(self) -> str | None:
        """Why this driver may no longer hold the lease; None while it surely does."""
        with self._lock:
            if self._lost is None and _clock() >= self._valid_until:
                why = f" ({self._error})" if self._error else ""
                self._lost = (
                    f"could not renew the lease of run {self.run_id} since "
                    f"{_hms(self._renewed_at)}{why}; it ran out, so another driver may take "
                    "the run over"
                )
            return self._lost


@contextlib.contextmanager
def run_lock(store: Store, run_id: str, ttl_s: float = LOCK_TTL_S) -> Iterator[HeldLease]:
    """Hold the run's lease while the driver works, renewing it in the background.

    A lease left by a dead driver on this host (its pid is gone) is taken over at once;
    one from another host once it expired. Renewal stops once the lease is lost.
    """
    host = socket.gethostname()
    owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    sent = _clock()
    lease = store.acquire_run_lock(run_id, owner, ttl_s)
    if lease.owner != owner and dead_local_owner(lease.owner, host):
        store.release_run_lock(run_id, lease.owner)  # only if it is still that driver's
        sent = _clock()
        lease = store.acquire_run_lock(run_id, owner, ttl_s)
    if lease.owner != owner:
        raise RunLockedError(
            f"run {run_id} is being driven by {lease.owner}; wait for it to finish, or stop "
            f"it (its lease runs until {_hms(lease.expires_at)} unless renewed, and ends "
            "at once if its driver was on this host and is gone)"
        )
    held = HeldLease(lease, ttl_s, sent)
    stop = threading.Event()

    def renew() -> None:
        wait = ttl_s / 3
        while not stop.wait(wait) and held.lost() is None:
            sent = _clock()
            try:
                now = store.acquire_run_lock(run_id, owner, ttl_s)
            except Exception as exc:  # an outage: try again soon, until the lease runs out
                held.failed(exc)
                wait = min(ttl_s / 3, max(RETRY_S, ttl_s / 10))
                continue
            if now.owner != owner or now.generation != held.fence.generation:
                held.taken(now)
                return
            held.renewed(sent)
            wait = ttl_s / 3

    thread = threading.Thread(target=renew, name="ado-run-lock", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):  # only ends it if it is still ours
            store.release_run_lock(run_id, owner)


def dead_local_owner(holder: str, host: str) -> bool:
    """Whether `holder` ("host:pid:nonce") is a driver on this host whose process is gone."""
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def driver_gone(run: RunRecord, host: str | None = None) -> datetime | None:
    """For a run that says `running` but has no live driver: when its driver was last seen
    (its last renewal). None if the run is not running, or its driver seems alive.

    Gone means: its lease expired by the store's clock, was ended without the run being
    stopped, or belongs to a dead process on this host (`host`, by default this one). A
    run that never had a lease gets LOCK_TTL_S after its creation for a driver to take it.
    """
    if run.status is not RunStatus.RUNNING:
        return None
    lease = run.lease
    if lease is None:
        waited = datetime.now(UTC) - run.created_at
        return run.created_at if waited > timedelta(seconds=LOCK_TTL_S) else None
    host = socket.gethostname() if host is None else host
    if lease.expired or not lease.owner or dead_local_owner(lease.owner, host):
        return lease.renewed_at or lease.expires_at
    return None


def gone_note(run_id: str, since: datetime) -> str:
    """What `ado runs`, `status` and `watch` add to `running` when the driver is gone."""
    return f"driver gone since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; ado resume {run_id}"
