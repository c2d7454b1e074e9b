"""The latent cache of stage 3-latents, as the stages after it read it: the base split encoded once."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from shards.synth import training_caption


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

    def caption_batches(
        self, batch_size: int, describe_share: float, seed: int
    ) -> Iterator[tuple[torch.Tensor, list[str], torch.Generator]]:
        """Endless (sample indices, training captions, generator) batches drawn from `seed`.

        The generator drew the indices; the caller draws anything further per batch (caption
        dropout) from it, so one seed fixes the whole stream and a resumed run, seeded with its
        start step, draws fresh batches.
        """
        g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        while True:
            idx = torch.randint(len(self.metas), (batch_size,), generator=g)
            yield idx, [training_caption(self.metas[i], rng, describe_share) for i in idx.tolist()], g
