"""The E4T encoder (Gal et al. 2023, sec. 4.1): image -> word-embedding offset for the class word.

Two branches: a vision transformer on the clean image (a CLIP vision tower for real bases,
a small one trained from scratch for the embedded base) and the base UNet's own down- and
mid-block features on a noised latent of the image. Their pooled features are fused by an
MLP into an offset that is scaled and added to the class word's embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int  # the text encoder's token embedding width
    unet_channels: tuple[int, ...]  # channels of each down block's output, then the mid block's
    vision: dict = field(
        default_factory=lambda: dict(
            image_size=64,
            patch_size=8,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
        )
    )
    hidden: int = 256
    scale: float = 0.1  # offset scale of the community implementation

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> EncoderConfig:
        d = dict(d)
        d["unet_channels"] = tuple(d["unet_channels"])
        return cls(**d)

    @classmethod
    def for_base(cls, base, **overrides) -> EncoderConfig:
        channels = tuple(base.unet.config.block_out_channels)
        embed_dim = base.text_encoder.get_input_embeddings().weight.shape[1]
        return cls(embed_dim=embed_dim, unet_channels=channels + channels[-1:], **overrides)


class E4TEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.vision = CLIPVisionModel(CLIPVisionConfig(**config.vision))
        width = config.vision["hidden_size"]
        self.vision_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.hidden))
        self.unet_proj = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(min(32, c), c), nn.SiLU(), nn.Conv2d(c, config.hidden, 1))
            for c in config.unet_channels
        )
        self.fuse = nn.Sequential(
            nn.LayerNorm(2 * config.hidden),
            nn.Linear(2 * config.hidden, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.embed_dim),
        )
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor, unet_features: list[torch.Tensor]) -> torch.Tensor:
        """pixels: [B, 3, H, W] in [-1, 1]; unet_features: from `unet_features`. Returns the scaled offset [B, D]."""
        size = self.config.vision["image_size"]
        x = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        v = self.vision_proj(self.vision(pixel_values=x).pooler_output)
        if len(unet_features) != len(self.unet_proj):
            raise ValueError(f"expected {len(self.unet_proj)} UNet feature maps, got {len(unet_features)}")
        # .contiguous(): some UNet outputs are strided views, and the CPU backward of GroupNorm
        # on those crashes torch 2.13 (segfault)
        u = torch.stack([proj(f.contiguous()).mean(dim=(2, 3)) for proj, f in zip(self.unet_proj, unet_features)])
        u = u.mean(0)
        return self.config.scale * self.fuse(torch.cat([v, u], dim=-1))


def unet_features(
    unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text_states: torch.Tensor
) -> list[torch.Tensor]:
    """Outputs of every down block and of the mid block of `unet` for this input.

    Hooks are attached for the duration of one forward pass; the UNet is otherwise untouched.
    """
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    blocks = list(unet.down_blocks) + [unet.mid_block]
    handles = [b.register_forward_hook(keep) for b in blocks]
    try:
        unet(noisy_latents, timesteps, encoder_hidden_states=text_states)
    finally:
        for h in handles:
            h.remove()
    return captured
