"""Fixtures of the baseline tests: the tiny base and pack, a subject image, and a loss on fixed noise."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from e4t import load_base, load_pack
from e4t.images import to_tensor
from e4t.objective import E4TObjective, LossWeights
from e4t.offsets import activate_offsets


@pytest.fixture(scope="module")
def tiny(tiny_base_dir, tiny_pack_path):
    """(base, pack), loaded once per module."""
    base = load_base(tiny_base_dir)
    return base, load_pack(tiny_pack_path, base)


@pytest.fixture(scope="session")
def subject() -> Image.Image:
    """One rendered face, 64x64."""
    from shards.synth import render_sample

    _, png, _ = render_sample("faces", 0, 0, 64, 0)
    return Image.open(io.BytesIO(png))


@pytest.fixture(scope="module")
def fixed_noise_loss(tiny, subject):
    """loss(embedding, prompt, offsets=None): diffusion loss of the subject, averaged over fixed noise draws.

    The same noise, timesteps and VAE samples on every call (seed 123, 4 draws of batch 8), so two
    embeddings or two sets of offsets are compared on exactly the same problem.
    """
    base, pack = tiny
    objective = E4TObjective(base, pack.class_word, LossWeights(embedding=0.0, offsets=0.0))
    pixels = to_tensor(subject, base.resolution).expand(8, -1, -1, -1)

    def loss(embedding: torch.Tensor, prompt: str, offsets: dict[str, torch.Tensor] | None = None) -> float:
        generator = torch.Generator().manual_seed(123)
        activate_offsets(base.unet, pack.offset_config, [offsets] if offsets else [])
        try:
            with torch.no_grad():
                draws = [objective.noise(pixels, generator) for _ in range(4)]
                return sum(objective.loss(b, embedding.expand(8, -1), [prompt] * 8)[0].item() for b in draws) / 4
        finally:
            activate_offsets(base.unet, pack.offset_config, [])

    return loss
