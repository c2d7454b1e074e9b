"""Operation records and where they persist: beside the concepts, in the concept store's backend.

One record per operation, the blob `op_<16 hex>.json` (the `op_` prefix keeps it out of the
concept listings), written whole on every change of state: `Blobs.write` is atomic, so a reader
or a crash sees one version or the next, never a mix. A record carries who runs it (a server id,
its host and pid) and a heartbeat that the running server renews, so that any server on the same
store can tell an operation whose server is gone from one another replica is running
(`is_orphaned`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field

from e4t.errors import InvalidInput
from serve.store import ConceptRecord, ConceptStore

logger = logging.getLogger(__name__)

PREFIX = "op_"
SUFFIX = ".json"
CANCEL_SUFFIX = ".cancel"  # a cancellation asked of whichever server runs the operation
FORMAT = "e4t.operation/1"
OPERATION_ID_RE = re.compile(r"op_[0-9a-f]{16}")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
DONE = frozenset((SUCCEEDED, FAILED, CANCELLED))

HOST = socket.gethostname()


def check_operation_id(operation_id: str) -> str:
    """Returns `operation_id` if it is `op_` + 16 lowercase hex digits (so it is a safe blob name)."""
    if not isinstance(operation_id, str) or not OPERATION_ID_RE.fullmatch(operation_id):
        raise InvalidInput(
            f"An operation id has to be `op_` followed by 16 lowercase hex digits but is {operation_id!r}."
        )
    return operation_id


@dataclass
class OperationRecord:
    """One Personalize run as an operation; what the API reports, plus what recovery needs."""

    id: str
    state: str
    method: str
    domain: str
    steps: int
    seed: int
    tenant: str | None  # None: made on an open server, visible to every caller there
    created: float
    updated: float
    step: int = 0
    total: int = 0
    loss: float = 0.0
    stage: str = "queued"
    error_code: str = ""
    error_message: str = ""
    concepts: list[ConceptRecord] = field(default_factory=list)
    # ids of the concepts being stored, written BEFORE they are: after a crash, the concepts that
    # made it to the store say the operation succeeded although its record never did
    pending_concepts: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    server: str = ""  # id of the server process running it
    host: str = ""
    pid: int = 0
    heartbeat: float = 0.0  # time.time() of its server's last write

    @property
    def done(self) -> bool:
        return self.state in DONE

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "record": dataclasses.asdict(self)}).encode()

    @classmethod
    def from_bytes(cls, operation_id: str, data: bytes) -> OperationRecord:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        fields = dict(doc["record"])
        fields["concepts"] = [ConceptRecord(**c) for c in fields.get("concepts", [])]
        record = cls(**fields)
        if record.id != operation_id:
            raise ValueError(f"record of {operation_id} holds {record.id}")
        return record


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_orphaned(record: OperationRecord, live_servers: set[str], lease_s: float, now: float) -> bool:
    """True if the server running an unfinished `record` is gone.

    Gone: its heartbeat is older than `lease_s`; or it ran on this host and its process has exited,
    or it had this very pid but is no live server of this process (a restarted container's pid 1).
    Another replica, on another host and within its lease, is left alone.
    """
    if record.done or record.server in live_servers:
        return False
    if now - record.heartbeat > lease_s:
        return True
    if record.host == HOST:
        return record.pid == os.getpid() or not pid_alive(record.pid)
    return False


class OperationStore:
    """Operation records in a concept store's backend; done records (which never change) cached."""

    def __init__(self, concepts: ConceptStore) -> None:
        self.concepts = concepts
        self._done: dict[str, OperationRecord] = {}
        self._lock = threading.Lock()

    def write(self, record: OperationRecord) -> None:
        self.concepts.guarded(self.concepts.blobs.write, record.id + SUFFIX, record.to_bytes())
        with self._lock:
            if record.done:
                self._done[record.id] = record
            else:
                self._done.pop(record.id, None)

    def read(self, operation_id: str) -> OperationRecord | None:
        """The stored record, None if there is none (or it is unreadable: logged)."""
        with self._lock:
            if operation_id in self._done:
                return self._done[operation_id]
        try:
            data = self.concepts.guarded(self.concepts.blobs.read, operation_id + SUFFIX)
        except FileNotFoundError:
            return None
        return self._parse(operation_id, data)

    def all(self) -> list[OperationRecord]:
        """Every stored record: done ones from the cache, the others read again (another server may run them)."""
        names = self.concepts.guarded(self.concepts.blobs.names, SUFFIX, PREFIX)
        ids = [n[: -len(SUFFIX)] for n in names if OPERATION_ID_RE.fullmatch(n[: -len(SUFFIX)])]
        with self._lock:
            for gone in set(self._done) - set(ids):  # deleted by another server's pruning
                del self._done[gone]
            cached = [self._done[i] for i in ids if i in self._done]
        missing = [i + SUFFIX for i in ids if i not in self._done]
        data = self.concepts.guarded(self.concepts.blobs.read_many, missing) if missing else {}
        read = [self._parse(name[: -len(SUFFIX)], blob) for name, blob in data.items()]
        return cached + [r for r in read if r is not None]

    def delete(self, operation_id: str) -> None:
        self.concepts.guarded(self.concepts.blobs.delete, operation_id + SUFFIX)
        self.clear_cancel(operation_id)
        with self._lock:
            self._done.pop(operation_id, None)

    # a replica cannot stop another one's job; it leaves a marker that the runner looks for
    def request_cancel(self, operation_id: str) -> None:
        self.concepts.guarded(self.concepts.blobs.write, operation_id + CANCEL_SUFFIX, b"")

    def cancel_requests(self) -> set[str]:
        """Ids of the operations with a cancellation asked of their server."""
        names = self.concepts.guarded(self.concepts.blobs.names, CANCEL_SUFFIX, PREFIX)
        return {n[: -len(CANCEL_SUFFIX)] for n in names}

    def clear_cancel(self, operation_id: str) -> None:
        self.concepts.guarded(self.concepts.blobs.delete, operation_id + CANCEL_SUFFIX)

    def _parse(self, operation_id: str, data: bytes) -> OperationRecord | None:
        try:
            record = OperationRecord.from_bytes(operation_id, data)
        except Exception as e:  # one broken record never hides the others; kept on disk as evidence
            logger.error("operation store: skipping %s%s, it could not be read: %s", operation_id, SUFFIX, e)
            return None
        if record.done:
            with self._lock:
                self._done[record.id] = record
        return record
