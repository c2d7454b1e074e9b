"""Concepts: what personalization produced for one subject, self-contained in one safetensors file.

A concept holds the subject's token embedding and its tuned weight offsets, plus metadata;
generation never needs the input image again. How the offsets are read depends on the method:

- E4T (`relative_to_pack=True`): `offset_deltas` are the tuned LoRA factors minus the domain pack's,
  key for key; generation adds them back to the pack's offsets (`offsets(pack)`).
- Textual Inversion and DreamBooth (`relative_to_pack=False`): the pack's offsets play no part, so
  `offset_deltas` are the whole offsets, from zero: empty for Textual Inversion (the plain base
  UNet, as it was tuned on), DreamBooth's own LoRA factors in the pack's layout (rank and targets)
  so that the same slot adapters load them. Storing deltas that cancel the pack's offsets instead
  would carry a pack-sized tensor set of no use, tie these concepts to one pack version, and run a
  zero adapter at every denoising step.

`suffix` is text that follows the concept's token wherever a prompt names it: DreamBooth binds the
subject to "[V] face" (identifier plus class noun), so its concepts carry the class word there.
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
    offset_deltas: dict[str, torch.Tensor]  # LoRA factors: minus the pack's, or whole (see relative_to_pack)
    domain: str
    pack_hash: str
    base_hash: str
    method: str = "e4t"
    steps: int = 0
    id: str = field(default_factory=new_concept_id)
    created: float = field(default_factory=time.time)
    owner: str = ""
    extra: dict = field(default_factory=dict)
    relative_to_pack: bool = True  # False: offset_deltas are the whole offsets, the pack's are not used
    suffix: str = ""  # words after the concept's token in every prompt naming it (DreamBooth: the class word)

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
        """The full weight offsets: the pack's plus this concept's delta, or the concept's own ones.

        Empty (no offsets to activate) for a concept that runs the plain base, such as Textual Inversion.
        """
        if not self.relative_to_pack:
            return dict(self.offset_deltas)
        if pack.hash != self.pack_hash:
            raise InvalidInput(
                f"concept {self.id} was made with {self.domain} pack {self.pack_hash}; the loaded pack is {pack.hash}"
            )
        return {k: v + self.offset_deltas[k] for k, v in pack.offsets.items()}

    def to_bytes(self) -> bytes:
        tensors = {"embedding": self.embedding}
        tensors.update({f"delta.{k}": v for k, v in self.offset_deltas.items()})
        config = {
            **self.metadata(),
            "steps": self.steps,
            "created": self.created,
            "extra": self.extra,
            "relative_to_pack": self.relative_to_pack,
            "suffix": self.suffix,
        }
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
            relative_to_pack=bool(config.get("relative_to_pack", True)),  # files written before baselines existed
            suffix=config.get("suffix", ""),
        )
