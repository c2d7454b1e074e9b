"""Long jobs as operations: a Personalize that returns at once with an id, then is watched, cancelled
and listed from any connection, and recorded in the concept store so that it outlives the process.

The engine tells an operation every event of its job as it happens (`Job.listener`, on the model
worker's thread), so a watcher on another connection sees each tuning step within milliseconds.
Records reach the store (`serve.operation_store`) on every change of state, synchronously; progress
at most every `persist_every_s` (so other replicas show it within about a second), and a heartbeat
that says "its server is alive" every quarter of the lease.

Crash windows of a Personalize run as an operation, and what a server that starts (or sweeps)
afterwards reports:
1. before StartPersonalize returned: no id was handed out; the record, if written, is 2.
2. QUEUED or RUNNING: FAILED, code UNAVAILABLE, "the server stopped before the operation finished
   (restart)"; a concept half-written by the store is never served (its entry is missing).
3. storing the concept: the record names the concept ids BEFORE they are written
   (`pending_concepts`); if every one made it to the store, SUCCEEDED with them, else 2.
4. after SUCCEEDED was written: nothing to do.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from e4t.errors import NotFound
from e4t.methods import METHODS
from serve import metrics
from serve.engine import Engine, Job
from serve.errors import Cancelled, DeadlineExceeded, FailedPrecondition
from serve.limits import DEFAULT_METHOD_STEPS, DEFAULT_PAGE_SIZE, check_method, check_range
from serve.operation_store import (
    CANCELLED,
    FAILED,
    HOST,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    OperationRecord,
    OperationStore,
    check_operation_id,
    is_orphaned,
)
from serve.store import decode_page_token, encode_page_token

logger = logging.getLogger(__name__)

RESTART = "the server stopped before the operation finished (restart)"
SHUTDOWN = "the server stopped before the operation finished (shutdown)"
ORPHAN_CODE = "UNAVAILABLE"  # retryable: the request was fine, its server went away

_POLL_S = 0.2  # how often a watch of another server's operation reads its record

# ids of this process's Operations not yet closed: their records are alive whatever their pid says
_LIVE_SERVERS: set[str] = set()


@dataclass(frozen=True)
class OperationOptions:
    """How long records live and how often they reach the store."""

    retention_s: float = 7 * 24 * 3600  # done records are deleted this long after they ended
    persist_every_s: float = 0.5  # progress of running operations reaches the store this often (at most)
    lease_s: float = 60.0  # an unfinished record whose heartbeat is older belongs to a server that is gone
    sweep_every_s: float = 30.0  # how often orphans of other servers and expired records are looked for
    cancel_wait_s: float = 5.0  # how long CancelOperation waits for the operation to end

    def __post_init__(self) -> None:
        for name in ("retention_s", "cancel_wait_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` has to be at least 0 but is {getattr(self, name)}.")
        for name in ("persist_every_s", "lease_s", "sweep_every_s"):  # the sweeper's intervals
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` has to be more than 0 but is {getattr(self, name)}.")
        if self.lease_s <= self.persist_every_s:
            raise ValueError(
                f"`lease_s` ({self.lease_s}) has to be longer than `persist_every_s` ({self.persist_every_s}): "
                "heartbeats renew the lease."
            )


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds of "90", "45s", "30m", "12h" or "7d"; `what` names it in the error."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ValueError(f"{what} has to be a number with an optional unit s, m, h or d but is {text!r}.") from None
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{what} has to be at least 0 and finite but is {text!r}.")
    return seconds


@dataclass(eq=False)
class _Live:
    """An operation of this server; `record` changes only under `Operations._lock`."""

    record: OperationRecord
    job: Job | None = None
    version: int = 0
    persisted: int = -1
    written_at: float = 0.0  # time.time() of the last write: heartbeats renew the lease
    watchers: list[queue.SimpleQueue] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # writes of one record in order


def _count(before: str | None, after: str) -> None:
    if before in (QUEUED, RUNNING):
        metrics.OPERATIONS.labels(before.lower()).dec()
    if after in (QUEUED, RUNNING):
        metrics.OPERATIONS.labels(after.lower()).inc()
    else:
        metrics.OPERATIONS_DONE.labels(after.lower()).inc()


def _visible(record: OperationRecord, tenant: str | None) -> bool:
    return tenant is None or record.tenant == tenant


class Operations:
    """The operations of one engine, and the records of every server on its store.

    `status_of(error) -> (code name, message)`: how a failed job is reported (the servicer's mapping).
    Unfinished records left by servers that are gone are resolved before this returns.
    """

    def __init__(
        self,
        engine: Engine,
        options: OperationOptions | None = None,
        status_of: Callable[[BaseException], tuple[str, str]] | None = None,
    ) -> None:
        self.engine = engine
        self.options = options or OperationOptions()
        self.status_of = status_of or (lambda e: ("INTERNAL", "internal error; see the server log."))
        self.store = OperationStore(engine.store)
        self.server_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._stopped = threading.Event()
        _LIVE_SERVERS.add(self.server_id)
        try:
            self.sweep()
        except Exception:  # an unreachable store must not keep the models from serving; the sweeper retries
            logger.exception("operations: the first sweep of the store failed")
        self._sweeper = threading.Thread(target=self._sweep_loop, name="e4t-operations", daemon=True)
        self._sweeper.start()

    # ---- the API

    def start(
        self,
        image: bytes,
        mask: bytes,
        domain: str,
        method: str,
        steps: int | None,
        seed: int | None,
        owner: str,
        tenant: str | None,
        masks: list[bytes] | tuple[bytes, ...] = (),
        mask_domains: list[str] | tuple[str, ...] = (),
    ) -> OperationRecord:
        """Checks and queues a Personalize; returns its record once it is in the store (QUEUED, or later)."""
        method = check_method(method, METHODS)
        t = time.time()
        record = OperationRecord(
            id="op_" + secrets.token_hex(8), state=QUEUED, method=method, domain=domain,
            steps=DEFAULT_METHOD_STEPS[method] if steps is None else steps, seed=0 if seed is None else seed,
            tenant=tenant, created=t, updated=t, server=self.server_id, host=HOST, pid=os.getpid(), heartbeat=t,
        )  # fmt: skip
        live = _Live(record)
        _count(None, QUEUED)
        try:
            # the listener is in place before the job is queued: no event can be missed
            live.job = self.engine.submit_personalize(
                image,
                mask,
                domain,
                method,
                steps,
                seed,
                owner,
                listener=functools.partial(self._on_event, live),
                masks=masks,
                mask_domains=mask_domains,
            )
        except BaseException:  # a bad request makes no operation
            metrics.OPERATIONS.labels("queued").dec()
            raise
        with self._lock:
            self._live[record.id] = live
        try:
            self._persist(live, strict=True)
        except BaseException:  # an id the store does not know is never handed out
            live.job.cancel()
            self._change(live, state=FAILED, error_code=ORPHAN_CODE, error_message="the store could not be written")
            with self._lock:
                self._live.pop(record.id, None)
            raise
        return self._snapshot(live)

    def get(self, operation_id: str, tenant: str | None) -> OperationRecord:
        """The record as it stands; NotFound if there is none or it is another tenant's."""
        check_operation_id(operation_id)
        with self._lock:
            live = self._live.get(operation_id)
            record = copy.copy(live.record) if live is not None else None
        if record is None:
            record = self.store.read(operation_id)
            if record is not None and not record.done:
                record = self._settle(record)
        if record is None or not _visible(record, tenant):
            raise NotFound(f"operation {operation_id} does not exist.")
        return record

    def watch(self, operation_id: str, tenant: str | None, is_active: Callable[[], bool]) -> Iterator[OperationRecord]:
        """The record now, then one per change, until one that is done; stops early once `is_active()` is False."""
        record = self.get(operation_id, tenant)
        changes: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            live = self._live.get(operation_id)
            if live is not None:
                live.watchers.append(changes)
                record = copy.copy(live.record)
        if live is None:  # done before this call, or run by another server: follow the store
            yield from self._poll(record, tenant, is_active)
            return
        try:
            while True:
                yield record
                if record.done:
                    return
                while True:
                    try:
                        record = changes.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if not is_active():
                            return
        finally:
            with self._lock:
                live.watchers.remove(changes)

    def cancel(self, operation_id: str, tenant: str | None) -> OperationRecord:
        """Stops the operation at its next step and waits (a few seconds at most) for it to end."""
        record = self.get(operation_id, tenant)
        if record.done:
            raise FailedPrecondition(
                f"operation {operation_id} is {record.state} already; only a QUEUED or RUNNING one can be cancelled."
            )
        with self._lock:
            live = self._live.get(operation_id)
        if live is None:  # another server runs it: it looks for cancellations at every heartbeat
            self.store.request_cancel(operation_id)
            deadline = time.monotonic() + self.options.cancel_wait_s
            while not record.done and time.monotonic() < deadline:
                time.sleep(self.options.persist_every_s)
                record = self.get(operation_id, tenant)
            record.cancel_requested = True
            return record
        self._cancel_live(live)
        live.finished.wait(self.options.cancel_wait_s)
        return self._snapshot(live)

    def list(self, tenant: str | None, page_size: int = 0, page_token: str = "") -> tuple[list[OperationRecord], str]:
        """One page of the caller's operations, newest first, and the next page's token ("" on the last)."""
        page_size = page_size or DEFAULT_PAGE_SIZE
        check_range("page_size", page_size, 1, self.engine.limits.max_page_size)
        after = decode_page_token(page_token, check_operation_id) if page_token else None
        records = {r.id: r for r in self.store.all()}
        with self._lock:
            records.update({i: copy.copy(live.record) for i, live in self._live.items()})
            mine = set(self._live)
        found = [r if r.done or r.id in mine else self._settle(r) for r in records.values() if _visible(r, tenant)]
        found.sort(key=lambda r: (-r.created, r.id))
        if after is not None:
            # a key, not an offset: records pruned between pages never skip or repeat one
            found = [r for r in found if (-r.created, r.id) > (-after[0], after[1])]
        page = found[:page_size]
        return page, encode_page_token(page[-1].created, page[-1].id) if len(found) > page_size else ""

    def close(self) -> None:
        """Stops the sweeper; operations still unfinished are cancelled and recorded FAILED (shutdown)."""
        self._stopped.set()
        _LIVE_SERVERS.discard(self.server_id)
        with self._lock:
            lives = [live for live in self._live.values() if not live.record.done]
        for live in lives:
            live.job.cancel()
            self._change(live, persist=True, state=FAILED, error_code=ORPHAN_CODE, error_message=SHUTDOWN)

    # ---- events of the engine's jobs (on the model worker's thread)

    def _on_event(self, live: _Live, kind: str, payload: Any) -> None:
        if kind == "progress":
            step, total, loss, stage = payload
            state = QUEUED if stage == "queued" else RUNNING
            # progress is kept in memory; the sweeper persists it every `persist_every_s`
            self._change(live, persist=live.record.state != state, state=state, step=step, total=total, loss=loss,
                         stage=stage)  # fmt: skip
        elif kind == "started":
            self._change(live, persist=True, state=RUNNING, stage="tuning")
        elif kind == "saving":
            # written before the concepts are: a failure here fails the job, with nothing stored
            self._change(live, persist="strict", pending_concepts=list(payload))
        elif kind == "done":
            concepts = list(payload) if isinstance(payload, (list, tuple)) else [payload]
            for concept in concepts:
                metrics.CONCEPTS_TUNED.labels(concept.method, concept.domain).inc()
            self._change(live, persist=True, state=SUCCEEDED, concepts=concepts, pending_concepts=[])
        elif kind == "error":
            if isinstance(payload, Cancelled) and not isinstance(payload, DeadlineExceeded):
                self._change(live, persist=True, state=CANCELLED)
            else:
                code, message = self.status_of(payload)
                self._change(live, persist=True, state=FAILED, error_code=code, error_message=message)

    def _cancel_live(self, live: _Live) -> None:
        self._change(live, cancel_requested=True)
        live.job.cancel()
        # the worker sets `started` before it checks for cancellation: unset now means it never runs the job
        if not live.job.started.is_set():
            self._change(live, persist=True, state=CANCELLED)

    # ---- changes and persistence

    def _snapshot(self, live: _Live) -> OperationRecord:
        with self._lock:
            return copy.copy(live.record)

    def _change(self, live: _Live, persist: bool | str = False, **fields: Any) -> None:
        """Applies `fields` to an unfinished operation, writes it when `persist`, then tells its watchers.

        Written before told: a client that hears of a change can read it from any server on the store.
        """
        with live.write_lock:  # one change at a time per operation: applied, written and told in order
            with self._lock:
                record = live.record
                if record.done:
                    return  # e.g. the worker's "cancelled" for a job cancelled while it waited in the queue
                before = record.state
                for name, value in fields.items():
                    setattr(record, name, value)
                record.updated = time.time()
                live.version += 1
                snapshot = copy.copy(record)  # lists in a record are replaced, never changed in place
            try:
                if persist:
                    self._write(live, snapshot, live.version, strict=persist == "strict")
            finally:
                with self._lock:
                    for changes in live.watchers:
                        changes.put(snapshot)
        if before != snapshot.state:
            _count(before, snapshot.state)
        if snapshot.done:
            live.finished.set()

    def _persist(self, live: _Live, *, strict: bool = False, heartbeat: bool = False) -> None:
        """Writes the operation's latest version if it is not written yet (with `heartbeat`: anyway)."""
        with live.write_lock:
            with self._lock:
                if live.version <= live.persisted and not heartbeat:
                    return
                version, record = live.version, copy.copy(live.record)
            self._write(live, record, version, strict=strict)

    def _write(self, live: _Live, record: OperationRecord, version: int, *, strict: bool) -> None:
        """One write of `record` with a fresh heartbeat; the caller holds `live.write_lock`. Failed: retried later."""
        record = copy.copy(record)
        record.heartbeat = time.time()
        try:
            self.store.write(record)
        except Exception as e:
            if strict:
                raise
            logger.warning("operation %s: its record could not be written (retried): %s", record.id, e)
            return
        live.persisted, live.written_at = version, record.heartbeat

    # ---- other servers' records, retention

    def _settle(self, record: OperationRecord) -> OperationRecord:
        """An unfinished record of another server, resolved if that server is gone."""
        if not is_orphaned(record, _LIVE_SERVERS, self.options.lease_s, time.time()):
            return record
        resolved = copy.copy(record)
        resolved.updated = time.time()
        try:
            concepts = [self.engine.store.get(c) for c in record.pending_concepts]
        except NotFound:
            concepts = []
        if record.pending_concepts and concepts:
            resolved.state, resolved.concepts, resolved.pending_concepts = SUCCEEDED, concepts, []
            logger.warning("operation %s: its server stopped after storing its concepts; SUCCEEDED", record.id)
        else:
            resolved.state, resolved.error_code, resolved.error_message = FAILED, ORPHAN_CODE, RESTART
            logger.warning("operation %s: its server stopped while it was %s; FAILED", record.id, record.state)
        self.store.write(resolved)
        metrics.OPERATIONS_DONE.labels(resolved.state.lower()).inc()
        return resolved

    def sweep(self) -> None:
        """Resolves orphaned records and deletes done ones past the retention period."""
        now = time.time()
        with self._lock:
            mine = set(self._live)
        for record in self.store.all():
            if record.id in mine:
                continue
            if record.done and now - record.updated > self.options.retention_s:
                self.store.delete(record.id)
            elif not record.done:
                self._settle(record)

    def _sweep_loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopped.wait(self.options.persist_every_s):
            try:
                self._heartbeat()
                if time.monotonic() - last_sweep >= self.options.sweep_every_s:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:  # the store may be down for a while; the next round tries again
                logger.exception("operations: a sweep failed")

    def _heartbeat(self) -> None:
        with self._lock:
            lives = list(self._live.values())
        unfinished = [live for live in lives if not live.record.done]
        # one listing for all, not one request per operation: object stores bill per request
        cancels = self.store.cancel_requests() if unfinished else set()
        for live in unfinished:
            if live.record.id in cancels and not live.record.cancel_requested:
                self._cancel_live(live)
            self._persist(live, heartbeat=time.time() - live.written_at > self.options.lease_s / 4)
        for live in lives:
            if live in unfinished:
                continue
            self._persist(live)
            if live.persisted == live.version:  # in the store now: served from there
                with self._lock:
                    self._live.pop(live.record.id, None)
                self.store.clear_cancel(live.record.id)

    def _poll(
        self, record: OperationRecord, tenant: str | None, is_active: Callable[[], bool]
    ) -> Iterator[OperationRecord]:
        """Follows a record another server writes; read every `_POLL_S`, so a change shows within
        `persist_every_s` + `_POLL_S` of its step."""
        yield record
        while not record.done:
            time.sleep(_POLL_S)
            if not is_active():
                return
            latest = self.get(record.id, tenant)
            if latest.updated != record.updated or latest.done:
                yield latest
            record = latest
