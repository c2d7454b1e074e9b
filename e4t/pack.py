"""Domain packs: the pretrained encoder and weight offsets of one domain, in one safetensors file.

The config (domain, class word, base hash, encoder and offset layout, training step, tuning
defaults) rides in the safetensors metadata, so the file alone says what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from e4t.base import Base
from e4t.encoder import E4TEncoder, EncoderConfig
from e4t.errors import InvalidInput
from e4t.objective import LossWeights
from e4t.offsets import OffsetConfig
from e4t.safetensors_io import read_file, tensors_hash, to_bytes, write_file

FORMAT = "e4t.pack/1"


@dataclass(frozen=True)
class TuneConfig:
    """Inference-time tuning defaults stored with the pack."""

    steps: int = 5
    batch: int = 4
    lr_embedding: float = 3e-3
    lr_offsets: float = 1e-2  # the offsets carry the identity: at 1e-3, 15 steps barely move id_sim (README)


@dataclass
class DomainPack:
    domain: str
    class_word: str
    encoder: E4TEncoder
    offsets: dict[str, torch.Tensor]
    offset_config: OffsetConfig
    base_hash: str
    step: int = 0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    tune: TuneConfig = field(default_factory=TuneConfig)
    training: dict = field(default_factory=dict)  # how it was made: inputs, config, timings
    hash: str = ""

    def config(self) -> dict:
        return {
            "domain": self.domain,
            "class_word": self.class_word,
            "base_hash": self.base_hash,
            "encoder": self.encoder.config.to_json(),
            "offsets": self.offset_config.to_json(),
            "step": self.step,
            "loss_weights": self.loss_weights.to_json(),
            "tune": vars(self.tune),
            "training": self.training,
        }

    def tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        out = {f"encoder.{k}": v.to(dtype) for k, v in self.encoder.state_dict().items()}
        out.update({f"offsets.{k}": v.to(dtype) for k, v in self.offsets.items()})
        return out

    @classmethod
    def initial(
        cls,
        base: Base,
        domain: str,
        class_word: str,
        *,
        offset_config: OffsetConfig = OffsetConfig(),
        vision: dict | None = None,
        seed: int = 0,
    ) -> DomainPack:
        """An untrained pack for `base`: a fresh encoder and zero offsets (LoRA B starts at 0)."""
        from e4t.offsets import TUNE, ensure_adapter, get_offsets

        torch.manual_seed(seed)
        overrides = {"vision": vision} if vision is not None else {}
        encoder = E4TEncoder(EncoderConfig.for_base(base, **overrides))
        ensure_adapter(base.unet, TUNE, offset_config)
        offsets = get_offsets(base.unet, TUNE)
        base.unet.disable_adapters()
        return cls(domain, class_word, encoder, offsets, offset_config, base.hash)

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> str:
        """Write the pack atomically; returns its hash (over tensors and config)."""
        tensors, config = self.tensors(dtype), self.config()
        self.hash = config["pack_hash"] = tensors_hash(tensors, {k: v for k, v in config.items()})
        write_file(path, to_bytes(tensors, FORMAT, config))
        return self.hash


def load_pack(path: str | Path, base: Base) -> DomainPack:
    """Read a pack and check that it was trained for `base`."""
    tensors, config = read_file(path, FORMAT)
    if config["base_hash"] != base.hash:
        raise InvalidInput(
            f"pack {str(path)!r} ({config['domain']}) was trained for base {config['base_hash']}, "
            f"but the loaded base is {base.hash}"
        )
    encoder = E4TEncoder(EncoderConfig.from_json(config["encoder"]))
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    encoder.eval().requires_grad_(False)
    offsets = {k[len("offsets.") :]: v.float() for k, v in tensors.items() if k.startswith("offsets.")}
    return DomainPack(
        domain=config["domain"],
        class_word=config["class_word"],
        encoder=encoder,
        offsets=offsets,
        offset_config=OffsetConfig.from_json(config["offsets"]),
        base_hash=config["base_hash"],
        step=config["step"],
        loss_weights=LossWeights(**config["loss_weights"]),
        tune=TuneConfig(**config["tune"]),
        training=config.get("training", {}),
        hash=config["pack_hash"],
    )
