"""Concepts: what personalization produced for one subject, self-contained in one safetensors file.

A concept holds the subject's token embedding and its tuned weight offsets as deltas from its
domain pack, plus metadata; generation never needs the input image again.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from e4t.errors import InvalidInput
from e4t.safetensors_io import from_bytes, read_file, to_bytes, write_file

FORMAT = "e4t.concept/1"


def new_concept_id() -> str:
    return "c_" + secrets.token_hex(6)


@dataclass
class Concept:
    embedding: torch.Tensor  # [D] the placeholder token's input embedding
    offset_deltas: dict[str, torch.Tensor]  # tuned offsets minus the pack's, same keys
    domain: str
    pack_hash: str
    base_hash: str
    method: str = "e4t"
    steps: int = 0
    id: str = field(default_factory=new_concept_id)
    created: float = field(default_factory=time.time)
    owner: str = ""
    extra: dict = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        return {
            "id": self.id,
            "domain": self.domain,
            "pack_hash": self.pack_hash,
            "base_hash": self.base_hash,
            "method": self.method,
            "steps": str(self.steps),
            "created": f"{self.created:.3f}",
            "owner": self.owner,
        }

    def offsets(self, pack) -> dict[str, torch.Tensor]:
        """The full weight offsets: the pack's plus this concept's delta."""
        if pack.hash != self.pack_hash:
            raise InvalidInput(
                f"concept {self.id} was made with {self.domain} pack {self.pack_hash}; the loaded pack is {pack.hash}"
            )
        return {k: v + self.offset_deltas[k] for k, v in pack.offsets.items()}

    def to_bytes(self) -> bytes:
        tensors = {"embedding": self.embedding}
        tensors.update({f"delta.{k}": v for k, v in self.offset_deltas.items()})
        config = {**self.metadata(), "steps": self.steps, "created": self.created, "extra": self.extra}
        return to_bytes(tensors, FORMAT, config)

    @classmethod
    def from_bytes(cls, data: bytes) -> Concept:
        return cls._build(*from_bytes(data, FORMAT, "concept"))

    def save(self, path: str | Path) -> None:
        write_file(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Concept:
        return cls._build(*read_file(path, FORMAT))

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], config: dict) -> Concept:
        return cls(
            embedding=tensors["embedding"].float(),
            offset_deltas={k[len("delta.") :]: v.float() for k, v in tensors.items() if k.startswith("delta.")},
            domain=config["domain"],
            pack_hash=config["pack_hash"],
            base_hash=config["base_hash"],
            method=config["method"],
            steps=int(config["steps"]),
            id=config["id"],
            created=float(config["created"]),
            owner=config.get("owner", ""),
            extra=config.get("extra", {}),
        )
