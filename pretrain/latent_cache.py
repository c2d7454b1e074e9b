"""The latent cache of stage 3-latents, as the stages after it read it: the base split encoded once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass(frozen=True)
class LatentCache:
    mean: torch.Tensor  # [N, C, h, w], whitened
    std: torch.Tensor
    metas: list[dict]  # per sample: domain, caption, attributes, context, identity

    @classmethod
    def read(cls, cache_dir: Path, device: torch.device) -> LatentCache:
        tensors = load_file(cache_dir / "latents.safetensors", device=str(device))
        return cls(tensors["mean"], tensors["std"], json.loads((cache_dir / "metas.json").read_text()))

    def sample(self, idx: torch.Tensor) -> torch.Tensor:
        """z = mean + std * eps for the samples `idx`: a fresh draw from each one's posterior."""
        return self.mean[idx] + self.std[idx] * torch.randn_like(self.mean[idx])
