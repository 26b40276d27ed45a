"""The sink: the one writer of the state store during a run (see `Sink` for its guarantees)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ado_ray import metrics
from ado_ray.errors import LeaseLostError, StoreError
from ado_ray.models import Event
from ado_ray.store import Fence, Store, describe_store, open_store

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.05


class Sink:
    """Buffers the runners' events and writes them in batches, each batch one `Store.apply`
    call and so one transaction.

    A plain class: the engine makes it a Ray actor with `ray.remote(Sink)`, and the serial
    debug path uses it in-process. It opens its own store from `store_url` on first write,
    so an actor never shares a connection. It belongs to the event loop of its first
    `submit`.

    Guarantees:

    - Order: events are written in the order `submit` received them, across submitters.
      (Ray does not run concurrent calls to an async actor in the order they were made:
      a caller that needs its events in order puts them in one `submit` or awaits each.)
    - Nothing is dropped: a batch that fails stays the next one to write and is retried as
      it was (same events, same order) with exponential backoff up to `retry_max_s`, until
      it succeeds; new events queue behind it. The store is reopened before each retry.
      A retry of a batch that did commit is harmless: every event is an upsert.
    - Batching: a write starts when `batch_size` events are pending, `max_delay_s` after the
      oldest pending event arrived, or at once when someone waits for it (durable submit,
      `flush`); it takes everything pending.
    - Durability: `submit(..., durable=True)` and `flush()` return once their events are
      committed. After `give_up_after_s` of continuous failure they raise `StoreError`
      instead, as do new ones until a write succeeds again; the events stay queued and are
      written if the store comes back, so the error means "not confirmed", not "lost".
      Events still pending when the process dies are lost: submit the ones that matter
      (checkpoints) durably.
    - The event loop never blocks: the store is opened and called in one worker thread.
    - There is no back-pressure: during an outage the buffer grows in memory.
    - Fencing: with `fence` (the run's lease generation its driver holds), every batch is
      written only if the run's lease still has that generation, checked by the store in
      the batch's own transaction. A refused batch (`LeaseLostError`: another driver took
      the run over) is not retried: it, everything pending and everything submitted later
      is dropped and counted as `refused`, and every durable submit, `flush` and `close`
      raises `LeaseLostError` from then on. Nothing of it reaches the store.
    """

    def __init__(
        self,
        store_url: str,
        batch_size: int = 500,
        max_delay_s: float = 0.05,
        retry_max_s: float = 5.0,
        give_up_after_s: float = 300.0,
        fence: Fence | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.store_url = store_url
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.retry_max_s = retry_max_s
        self.give_up_after_s = give_up_after_s
        self.fence = fence
        self._store: Store | None = None  # used only in the worker thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ado-sink")
        self._pending: list[Event] = []  # received, not yet in a batch
        self._pending_since = 0.0  # loop time when the oldest pending event arrived
        self._received = 0  # events ever submitted; the n-th event's number is n
        self._written = 0  # events committed; always a prefix of the received ones
        self._batches = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (event number, future)
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._gave_up = False
        self._fenced: str | None = None  # the store's refusal, once it refused a batch
        self._refused = 0  # events dropped because of it
        self._closed = False

    async def submit(self, events: Sequence[Event], durable: bool = False) -> None:
        """Queue `events`; with `durable`, return only once they are committed."""
        if self._closed:
            raise RuntimeError("the sink is closed")
        if self._fenced is not None:
            self._received += len(events)
            self._refused += len(events)
            if durable:
                raise LeaseLostError(self._fenced)
            return
        if events:
            loop = asyncio.get_running_loop()
            if not self._pending:
                self._pending_since = loop.time()
                self._wake.set()
            self._pending.extend(events)
            self._received += len(events)
            if len(self._pending) >= self.batch_size:
                self._wake.set()
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush_forever(), name="ado-sink-flusher")
        if durable:
            await self._committed(self._received)

    async def flush(self) -> None:
        """Return once everything submitted so far is committed."""
        await self._committed(self._received)

    async def close(self) -> None:
        """Flush, then close the store. If the flush raises, the sink stays open, unless
        it raises because the sink was fenced off: nothing can be written any more, so the
        sink closes, then raises."""
        if self._closed:
            return
        try:
            await self.flush()
        except LeaseLostError:
            await self._shut()
            raise
        await self._shut()

    async def _shut(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait({self._flusher})
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_store)
        self._executor.shutdown(wait=False)

    def status(self) -> dict[str, Any]:
        return {
            "pending": self._received - self._written - self._refused,
            "written": self._written,
            "refused": self._refused,  # events dropped after a fenced refusal
            "fenced": self._fenced,  # the store's refusal
            "batches": self._batches,
            "failing_since": self._failing_since,  # epoch seconds, None when healthy
            "last_error": self._last_error,  # kept after recovery, for the record
            "gave_up": self._gave_up,
        }

    # waiting for commits

    async def _committed(self, number: int) -> None:
        if self._written >= number:
            return
        if self._fenced is not None:
            raise LeaseLostError(self._fenced)
        if self._gave_up:
            raise self._give_up_error()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((number, future))
        self._wake.set()  # someone waits: write now rather than after max_delay_s
        await future

    def _give_up_error(self) -> StoreError:
        return StoreError(
            f"the sink has not been able to write to {describe_store(self.store_url)} since "
            f"{time.ctime(self._failing_since)}: {self._last_error}; "
            f"{self._received - self._written} events are waiting"
        )

    # the flusher task

    async def _flush_forever(self) -> None:
        while True:
            await self._until_due()
            batch, self._pending = self._pending, []
            await self._write(batch)

    async def _until_due(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if self._pending:
                if self._waiters or len(self._pending) >= self.batch_size:
                    return
                timeout = self._pending_since + self.max_delay_s - loop.time()
                if timeout <= 0:
                    return
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _write(self, batch: list[Event]) -> None:
        loop = asyncio.get_running_loop()
        delay = min(FIRST_RETRY_S, self.retry_max_s)
        while True:
            try:
                await loop.run_in_executor(self._executor, self._apply, batch)
                break
            except LeaseLostError as exc:  # never retried: the run is another driver's now
                self._refuse(exc, batch)
                return
            except Exception as exc:  # whatever failed, the batch is kept and retried
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        if self._failing_since is not None:
            log.warning("state store %s works again", describe_store(self.store_url))
        self._written += len(batch)
        self._batches += 1
        self._failing_since = None
        self._gave_up = False
        while self._waiters and self._waiters[0][0] <= self._written:
            _, future = self._waiters.pop(0)
            if not future.done():
                future.set_result(None)

    def _refuse(self, exc: LeaseLostError, batch: list[Event]) -> None:
        dropped = len(batch) + len(self._pending)
        self._pending = []
        self._refused += dropped
        self._fenced = f"{exc} ({dropped} events not written)"
        self._failing_since = None
        log.error("%s", self._fenced)
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(LeaseLostError(self._fenced))
        self._waiters.clear()

    def _failed(self, exc: Exception) -> None:
        now = time.time()
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._failing_since is None:
            self._failing_since = now
            log.warning("cannot write to the state store (will retry): %s", self._last_error)
        if not self._gave_up and now - self._failing_since >= self.give_up_after_s:
            self._gave_up = True
            log.error("%s", self._give_up_error())
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(self._give_up_error())
            self._waiters.clear()

    # in the worker thread

    def _apply(self, batch: list[Event]) -> None:
        if self._store is None:
            self._store = open_store(self.store_url)
        started = time.monotonic()
        try:
            self._store.apply(batch, fence=self.fence)
        except LeaseLostError:
            raise  # the store answered: the connection is fine
        except Exception:
            # Retry on a fresh connection; closing a broken one may fail too.
            with contextlib.suppress(Exception):
                self._close_store()
            raise
        metrics.sink_wrote(self._store, batch, time.monotonic() - started, self.fence)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
