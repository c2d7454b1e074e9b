"""Durable concept store: per concept, its safetensors bytes and a small JSON entry with its checksum.

Each concept `<id>` is two blobs: `<id>.safetensors` (the concept) and `<id>.json` (its record and
the sha256 of those bytes). The entry is written after the data and deleted before it, so it is
the commit marker: a concept exists exactly when its entry does, and a crash between the two
writes leaves unacknowledged data that nothing serves. Every read of a concept checks its bytes
against the entry; a mismatch is `StoreCorrupt` (DATA_LOSS), never a concept served.

Where the blobs live is a backend: `LocalBlobs` (a folder; atomic, fsynced writes) or, for a store
several replicas share, `serve.store_fsspec.FsspecBlobs` (object storage such as S3). Replicas
see each other's concepts: a miss in the in-memory index looks the entry up in the backend, and
List re-reads the backend's listing. A blob that does not load at start is logged and skipped,
never deleted (it may be a newer format or evidence worth keeping).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from e4t.concept import Concept
from e4t.errors import InvalidInput, NotFound
from e4t.safetensors_io import fsync_dir, write_file
from serve.errors import StoreCorrupt, StoreUnavailable
from serve.limits import CONCEPT_ID_RE, DEFAULT_PAGE_SIZE, check_concept_id

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
ENTRY_SUFFIX = ".json"
ENTRY_FORMAT = "e4t.store-entry/1"


@dataclass(frozen=True)
class ConceptRecord:
    """Metadata of one stored concept, as the API reports it."""

    id: str
    domain: str
    method: str
    steps: int
    base_hash: str
    pack_hash: str
    created: float
    owner: str
    size_bytes: int

    @classmethod
    def of(cls, concept: Concept, size_bytes: int) -> ConceptRecord:
        return cls(
            id=concept.id,
            domain=concept.domain,
            method=concept.method,
            steps=int(concept.steps),
            base_hash=concept.base_hash,
            pack_hash=concept.pack_hash,
            created=float(concept.created),
            owner=concept.owner or "",
            size_bytes=size_bytes,
        )


class Blobs(Protocol):
    """Where a store keeps its blobs; names are flat (`c_0123456789ab.json`)."""

    url: str

    def read(self, name: str) -> bytes: ...  # FileNotFoundError if absent

    def read_many(self, names: list[str]) -> dict[str, bytes]: ...  # absent names are left out

    def write(self, name: str, data: bytes) -> None: ...  # atomic: readers see all of it or nothing

    def delete(self, name: str) -> None: ...  # absent is fine

    def exists(self, name: str) -> bool: ...

    def names(self, suffix: str, prefix: str = "c_") -> list[str]: ...  # concepts by default; `op_` operations

    def ping(self) -> None: ...  # raises if the backend cannot be reached


class LocalBlobs:
    """A folder: writes go to a temp file, are fsynced and renamed (atomic on POSIX), the folder fsynced."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        out = {}
        for name in names:
            try:
                out[name] = self.read(name)
            except FileNotFoundError:
                continue
        return out

    def write(self, name: str, data: bytes) -> None:
        write_file(self.root / name, data)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        fsync_dir(self.root)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def names(self, suffix: str, prefix: str = "c_") -> list[str]:
        return sorted(p.name for p in self.root.glob(f"{prefix}*{suffix}"))

    def ping(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"the store folder {self.root} does not exist")


def open_blobs(location: str | Path, storage_options: dict[str, Any] | None = None) -> Blobs:
    """A folder path, or a URL with a scheme (`s3://bucket/prefix`, `memory://x`) for fsspec."""
    if isinstance(location, str) and "://" in location and not location.startswith("file://"):
        from serve.store_fsspec import FsspecBlobs

        return FsspecBlobs(location, storage_options or {})
    if storage_options:
        raise ValueError(f"storage options are for object-store URLs, but the store is the folder {location}.")
    return LocalBlobs(str(location).removeprefix("file://"))


def encode_page_token(created: float, item_id: str) -> str:
    """The page token after the item (`created`, `item_id`) of a listing in (created, id) order."""
    return base64.urlsafe_b64encode(json.dumps([created, item_id]).encode()).decode()


def decode_page_token(token: str, check_id: Callable[[str], str] = check_concept_id) -> tuple[float, str]:
    """(created, id) of `encode_page_token`; `check_id` validates the id (concepts by default)."""
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(created), check_id(item_id)
    except Exception as e:
        raise InvalidInput(f"`page_token` has to be a token returned by a previous page but is {token!r}.") from e


def _entry_bytes(record: ConceptRecord, sha256: str) -> bytes:
    return json.dumps({"format": ENTRY_FORMAT, "sha256": sha256, "record": dataclasses.asdict(record)}).encode()


def _parse_entry(concept_id: str, data: bytes) -> tuple[ConceptRecord, str]:
    entry = json.loads(data)
    if entry.get("format") != ENTRY_FORMAT:
        raise ValueError(f"format is {entry.get('format')!r}, expected {ENTRY_FORMAT!r}")
    record = ConceptRecord(**entry["record"])
    if record.id != concept_id:
        raise ValueError(f"entry of {concept_id} holds the record of {record.id}")
    return record, str(entry["sha256"])


class ConceptStore:
    """Concepts in a backend (a folder path, an fsspec URL, or a `Blobs`); thread-safe."""

    def __init__(self, location: str | Path | Blobs, *, storage_options: dict[str, Any] | None = None) -> None:
        self.blobs: Blobs = open_blobs(location, storage_options) if isinstance(location, (str, Path)) else location
        self.url = self.blobs.url
        self._lock = threading.Lock()
        self._index: dict[str, ConceptRecord] = {}
        self.skipped: dict[str, str] = {}  # blob name -> why it did not load
        self._guard(self._scan)
        logger.info("concept store %s: %d concepts, %d skipped", self.url, len(self._index), len(self.skipped))

    @property
    def root(self) -> Path:
        """The folder of a local store (tests and `e4t export` read files there)."""
        if not isinstance(self.blobs, LocalBlobs):
            raise AttributeError(f"the store {self.url} is not a local folder")
        return self.blobs.root

    def _guard(self, fn, *args):
        """Runs a backend call; an unreachable backend is StoreUnavailable (UNAVAILABLE), not INTERNAL."""
        try:
            return fn(*args)
        except (NotFound, InvalidInput, StoreCorrupt, FileNotFoundError):
            raise
        except Exception as e:
            # botocore and aiohttp raise their own types for a store that went away
            if isinstance(e, (OSError, ConnectionError, TimeoutError)) or type(e).__module__.split(".")[0] in (
                "botocore", "aiobotocore", "aiohttp", "s3fs"
            ):  # fmt: skip
                # where the store is and why it failed go to the log, not to clients
                logger.error("concept store %s cannot be reached: %s", self.url, e)
                raise StoreUnavailable("the concept store cannot be reached; retry later.") from e
            raise

    def guarded(self, fn, *args):
        """Runs `fn(*args)`, a call of `self.blobs` (for records kept beside the concepts): StoreUnavailable
        when the backend cannot be reached."""
        return self._guard(fn, *args)

    # ---- the index

    def _scan(self) -> None:
        """Reads every entry; concepts whose data is present but whose entry is not are reported."""
        entries = self.blobs.names(ENTRY_SUFFIX)
        self._adopt_entries(entries, self.blobs.read_many(entries), at_start=True)
        with_entry = {n[: -len(ENTRY_SUFFIX)] for n in entries}
        for name in self.blobs.names(SUFFIX):
            if name[: -len(SUFFIX)] not in with_entry:
                self.skipped[name] = f"no {ENTRY_SUFFIX} entry beside it (unacknowledged, or written before checksums)"
                logger.warning("concept store: ignoring %s: %s", name, self.skipped[name])

    def _adopt_entries(self, names: list[str], data: dict[str, bytes], *, at_start: bool = False) -> None:
        for name in names:
            concept_id = name[: -len(ENTRY_SUFFIX)]
            if name not in data or not CONCEPT_ID_RE.fullmatch(concept_id):
                continue
            try:
                record, _ = _parse_entry(concept_id, data[name])
            except Exception as e:  # whatever is wrong with one entry, the others still load
                if at_start:
                    logger.error("concept store: skipping %s, it could not be read: %s", name, e)
                    self.skipped[name] = str(e)
                continue
            with self._lock:
                self._index[concept_id] = record

    def refresh(self) -> None:
        """Picks up concepts other replicas wrote and drops those they deleted."""
        present = {n[: -len(ENTRY_SUFFIX)]: n for n in self._guard(self.blobs.names, ENTRY_SUFFIX)}
        with self._lock:
            for gone in set(self._index) - set(present):
                del self._index[gone]
            new = [name for concept_id, name in present.items() if concept_id not in self._index]
        if new:
            self._adopt_entries(new, self._guard(self.blobs.read_many, new))

    def ping(self) -> None:
        """Raises StoreUnavailable unless the backend answers (readiness)."""
        self._guard(self.blobs.ping)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, concept_id: str) -> bool:
        return concept_id in self._index

    def count(self, owner: str | None = None) -> int:
        """Concepts in the index (of `owner` when given); `refresh` first for other replicas' writes."""
        with self._lock:
            return sum(1 for r in self._index.values() if owner is None or r.owner == owner)

    # ---- concepts

    def put(self, concept: Concept) -> ConceptRecord:
        """Stores `concept` durably; returns its record once data and entry are both written."""
        concept_id = check_concept_id(concept.id)
        data = concept.to_bytes()
        record = ConceptRecord.of(concept, len(data))
        # data first, entry second: the entry is what makes the concept exist
        self._guard(self.blobs.write, concept_id + SUFFIX, data)
        self._guard(self.blobs.write, concept_id + ENTRY_SUFFIX, _entry_bytes(record, hashlib.sha256(data).hexdigest()))
        with self._lock:
            self._index[concept_id] = record
        return record

    def _entry(self, concept_id: str) -> tuple[ConceptRecord, str]:
        try:
            data = self._guard(self.blobs.read, concept_id + ENTRY_SUFFIX)
        except FileNotFoundError:
            with self._lock:
                self._index.pop(concept_id, None)
            raise NotFound(f"concept {concept_id} does not exist.") from None
        try:
            record, sha256 = _parse_entry(concept_id, data)
        except Exception as e:
            logger.error("concept store %s: entry of %s is unreadable: %s", self.url, concept_id, e)
            raise StoreCorrupt(f"stored concept {concept_id} has an unreadable entry; it is not served.") from e
        with self._lock:
            self._index[concept_id] = record
        return record, sha256

    def get(self, concept_id: str) -> ConceptRecord:
        """The record of `concept_id` (written by this or another replica); NotFound if there is none."""
        check_concept_id(concept_id)
        with self._lock:
            record = self._index.get(concept_id)
        if record is not None and self._guard(self.blobs.exists, concept_id + ENTRY_SUFFIX):
            return record
        return self._entry(concept_id)[0]

    def load(self, concept_id: str) -> Concept:
        """The full concept, its bytes checked against the stored sha256; NotFound if there is none."""
        check_concept_id(concept_id)
        _, sha256 = self._entry(concept_id)
        try:
            data = self._guard(self.blobs.read, concept_id + SUFFIX)
        except FileNotFoundError:
            if not self._guard(self.blobs.exists, concept_id + ENTRY_SUFFIX):  # deleted meanwhile
                raise NotFound(f"concept {concept_id} does not exist.") from None
            raise StoreCorrupt(f"stored concept {concept_id} has an entry but no data; it is not served.") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            logger.error("concept store: %s%s fails its checksum (%s, expected %s)", concept_id, SUFFIX, actual, sha256)
            raise StoreCorrupt(
                f"stored concept {concept_id} fails its checksum (sha256 {actual[:16]}..., "
                f"expected {sha256[:16]}...); it is not served."
            )
        try:
            return Concept.from_bytes(data)
        except InvalidInput as e:  # the server's blob is broken, not the client's request
            logger.error("concept store %s: %s passed its checksum but does not load: %s", self.url, concept_id, e)
            raise StoreCorrupt(f"stored concept {concept_id} could not be loaded; it is not served.") from e

    def list(
        self,
        domain: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        owner: str | None = None,
    ) -> tuple[list[ConceptRecord], str]:
        """One page of records (of `owner` when given), oldest first, and the next page's token ("" on the last)."""
        if page_size < 1:
            raise InvalidInput(f"`page_size` has to be at least 1 but is {page_size}.")
        after = decode_page_token(page_token) if page_token else None
        self.refresh()
        with self._lock:
            records = sorted(self._index.values(), key=lambda r: (r.created, r.id))
        if domain:
            records = [r for r in records if r.domain == domain]
        if owner is not None:
            records = [r for r in records if r.owner == owner]
        if after is not None:
            # a key, not an offset, so deletions between pages never skip or repeat a concept
            records = [r for r in records if (r.created, r.id) > after]
        page = records[:page_size]
        token = encode_page_token(page[-1].created, page[-1].id) if len(records) > page_size else ""
        return page, token

    def delete(self, concept_id: str) -> ConceptRecord:
        """Deletes `concept_id`; NotFound if there is none."""
        record = self.get(concept_id)
        # entry first: the concept stops existing at once, the data after it is only garbage
        self._guard(self.blobs.delete, concept_id + ENTRY_SUFFIX)
        self._guard(self.blobs.delete, concept_id + SUFFIX)
        with self._lock:
            self._index.pop(concept_id, None)
        return record
