"""The E4T encoder (Gal et al. 2023, sec. 4.1): image -> word-embedding offset for the class word.

Two branches: a vision transformer on the clean image (a pretrained CLIP vision tower for real
bases, see `e4t.vision`; a small one trained from scratch for the embedded base) and the base
UNet's own down- and mid-block features on a noised latent of the image. Their pooled features
are fused by an MLP into an offset that is scaled and added to the class word's embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

from e4t.vision import architecture, build_tower, load_vision_folder

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the CLIPVisionConfig arguments of the small tower the embedded world's encoders use
NEW_TOWER = dict(
    image_size=64, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4
)
PRETRAINED_RESAMPLE = "bicubic"  # how CLIP's own preprocessing resizes; used for every pretrained tower


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int  # the text encoder's token embedding width
    unet_channels: tuple[int, ...]  # channels of each down block's output, then the mid block's
    # CLIPVisionConfig arguments of a tower whose weights the pack stores (trained from scratch, or a
    # fine-tuned pretrained one), or the path of a pretrained CLIPVisionModel folder the pack refers to
    vision: dict | str = field(default_factory=lambda: dict(NEW_TOWER))
    hidden: int = 256
    scale: float = 0.1  # offset scale of the community implementation
    vision_hash: str = ""  # `e4t.vision.vision_folder_hash` of the pretrained folder the tower comes from
    freeze_vision: bool = False  # only for a pretrained folder: frozen, it is referred to rather than stored
    resample: str = "bilinear"  # PRETRAINED_RESAMPLE for pretrained towers

    def __post_init__(self) -> None:
        if self.freeze_vision and not isinstance(self.vision, str):
            raise ValueError("`freeze_vision` needs a pretrained tower folder in `vision`; a new tower must train")
        if isinstance(self.vision, str) and not self.vision_hash:
            raise ValueError(f"the vision tower folder {self.vision!r} comes without its hash (`vision_hash`)")

    def to_json(self) -> dict:
        d = asdict(self)
        # fields at their defaults are left out, so configs (and hashes) of packs from before they existed hold
        for name in ("vision_hash", "freeze_vision", "resample"):
            if d[name] == EncoderConfig.__dataclass_fields__[name].default:
                del d[name]
        return d

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
    def __init__(self, config: EncoderConfig, tower: CLIPVisionModel | None = None):
        """`tower`: the vision tower when the caller has already loaded it; otherwise built or loaded from `config`."""
        super().__init__()
        self.config = config
        if tower is None:
            if isinstance(config.vision, str):
                tower = load_vision_folder(config.vision, config.vision_hash)
            else:
                tower = build_tower(config.vision)
        self.vision = tower
        if config.freeze_vision:
            self.vision.requires_grad_(False).eval()
        width = tower.config.hidden_size
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

    @property
    def refers_to_folder(self) -> bool:
        """True when the tower's weights are exactly those of its pretrained folder (so a pack need not store them)."""
        return isinstance(self.config.vision, str) and self.config.freeze_vision

    def stored_config(self) -> EncoderConfig:
        """The config a pack records: a fine-tuned pretrained tower is stored, with its architecture, like a new one."""
        if isinstance(self.config.vision, str) and not self.config.freeze_vision:
            return replace(self.config, vision=architecture(self.vision))
        return self.config

    def requires_grad_(self, requires_grad: bool = True) -> E4TEncoder:
        # a frozen tower stays frozen whatever a trainer asks of the whole encoder
        super().requires_grad_(requires_grad)
        if self.config.freeze_vision:
            self.vision.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> E4TEncoder:
        super().train(mode)
        if self.config.freeze_vision:
            self.vision.eval()
        return self

    def forward(self, pixels: torch.Tensor, unet_features: list[torch.Tensor]) -> torch.Tensor:
        """pixels: [B, 3, H, W] in [-1, 1]; unet_features: from `unet_features`. Returns the scaled offset [B, D]."""
        x = clip_pixels(pixels, self.vision.config.image_size, self.config.resample)
        if self.config.freeze_vision:
            with torch.no_grad():  # no activations kept for a tower that does not train
                pooled = self.vision(pixel_values=x).pooler_output
        else:
            pooled = self.vision(pixel_values=x).pooler_output
        v = self.vision_proj(pooled)
        if len(unet_features) != len(self.unet_proj):
            raise ValueError(f"expected {len(self.unet_proj)} UNet feature maps, got {len(unet_features)}")
        # .contiguous(): some UNet outputs are strided views, and the CPU backward of GroupNorm
        # on those crashes torch 2.13 (segfault)
        u = torch.stack([proj(f.contiguous()).mean(dim=(2, 3)) for proj, f in zip(self.unet_proj, unet_features)])
        u = u.mean(0)
        return self.config.scale * self.fuse(torch.cat([v, u], dim=-1))


def clip_pixels(pixels: torch.Tensor, size: int, resample: str) -> torch.Tensor:
    """[-1, 1] pixels as a CLIP vision tower reads them: resized to its input size, CLIP-normalised.

    Square images: resizing equals CLIP's resize + centre crop.
    """
    x = F.interpolate(pixels, size=(size, size), mode=resample, align_corners=False, antialias=True)
    mean = torch.tensor(_CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


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
