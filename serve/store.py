"""Durable concept store: one safetensors file per concept in a folder.

A concept acknowledged to a client is on disk: each write goes to a temp file
in the same folder, is fsynced, renamed over the final name with `os.replace`
(atomic on POSIX) and the folder is fsynced so the rename itself survives a
crash. The in-memory index is rebuilt from the files at start; a file that does
not load is logged and skipped, never deleted (it may be a newer format or
evidence worth keeping).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from e4t.concept import Concept
from e4t.errors import InvalidInput, NotFound
from e4t.safetensors_io import fsync_dir, write_file
from serve.limits import DEFAULT_PAGE_SIZE, check_concept_id

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"


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


def _encode_token(created: float, concept_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, concept_id]).encode()).decode()


def _decode_token(token: str) -> tuple[float, str]:
    try:
        created, concept_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(created), check_concept_id(concept_id)
    except Exception as e:
        raise InvalidInput(f"`page_token` has to be a token returned by a previous page but is {token!r}.") from e


class ConceptStore:
    """Concepts under `root`, named `<id>.safetensors`; thread-safe."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._index: dict[str, ConceptRecord] = {}
        self.skipped: dict[str, str] = {}  # file name -> why it did not load
        self._scan()

    def _path(self, concept_id: str) -> Path:
        # the id regex is what keeps every path inside root: no separators, no dots
        return self.root / f"{check_concept_id(concept_id)}{SUFFIX}"

    def _scan(self) -> None:
        for path in sorted(self.root.glob(f"c_*{SUFFIX}")):
            concept_id = path.name[: -len(SUFFIX)]
            try:
                check_concept_id(concept_id)
                concept = Concept.load(path)
                if concept.id != concept_id:
                    raise ValueError(f"file name says {concept_id} but the file holds {concept.id}")
            except Exception as e:  # whatever is wrong with one file, the others still load
                logger.error("concept store: skipping %s, it could not be loaded: %s", path, e)
                self.skipped[path.name] = str(e)
                continue
            self._index[concept_id] = ConceptRecord.of(concept, path.stat().st_size)
        logger.info("concept store %s: %d concepts, %d skipped", self.root, len(self._index), len(self.skipped))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, concept_id: str) -> bool:
        return concept_id in self._index

    def put(self, concept: Concept) -> ConceptRecord:
        """Stores `concept` durably; returns its record once it is on disk."""
        path = self._path(concept.id)
        data = concept.to_bytes()
        with self._lock:
            write_file(path, data)
            record = ConceptRecord.of(concept, len(data))
            self._index[concept.id] = record
        return record

    def get(self, concept_id: str) -> ConceptRecord:
        """The record of `concept_id`; NotFound if there is none."""
        path = self._path(concept_id)
        with self._lock:
            record = self._index.get(concept_id)
        if record is None:
            if path.is_file():  # written by another replica sharing this folder
                self._adopt(path)
                return self._index[concept_id]
            raise NotFound(f"concept {concept_id} does not exist.")
        return record

    def _adopt(self, path: Path) -> None:
        try:
            concept = Concept.load(path)
        except Exception as e:
            logger.error("concept store: %s could not be loaded: %s", path, e)
            raise NotFound(f"concept {path.stem} could not be loaded.") from e
        with self._lock:
            self._index[concept.id] = ConceptRecord.of(concept, path.stat().st_size)

    def load(self, concept_id: str) -> Concept:
        """The full concept (its tensors included) of `concept_id`; NotFound if there is none."""
        self.get(concept_id)
        path = self._path(concept_id)
        try:
            return Concept.load(path)
        except NotFound as e:  # deleted meanwhile, perhaps by another replica
            with self._lock:
                self._index.pop(concept_id, None)
            raise NotFound(f"concept {concept_id} does not exist.") from e
        except InvalidInput as e:  # the server's file is broken, not the client's request
            raise RuntimeError(f"stored concept {path} could not be loaded: {e}") from e

    def list(
        self, domain: str | None = None, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> tuple[list[ConceptRecord], str]:
        """One page of records, oldest first, and the token of the next page ("" on the last)."""
        if page_size < 1:
            raise InvalidInput(f"`page_size` has to be at least 1 but is {page_size}.")
        after = _decode_token(page_token) if page_token else None
        with self._lock:
            records = sorted(self._index.values(), key=lambda r: (r.created, r.id))
        if domain:
            records = [r for r in records if r.domain == domain]
        if after is not None:
            # a key, not an offset, so deletions between pages never skip or repeat a concept
            records = [r for r in records if (r.created, r.id) > after]
        page = records[:page_size]
        token = _encode_token(page[-1].created, page[-1].id) if len(records) > page_size else ""
        return page, token

    def delete(self, concept_id: str) -> ConceptRecord:
        """Deletes `concept_id` from disk; NotFound if there is none."""
        record = self.get(concept_id)
        path = self._path(concept_id)
        with self._lock:
            path.unlink(missing_ok=True)
            fsync_dir(self.root)
            self._index.pop(concept_id, None)
        return record
