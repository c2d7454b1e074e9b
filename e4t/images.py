"""Image <-> tensor conversions and the light augmentation used while tuning on one image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from e4t.errors import InvalidInput


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited on white."""
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    if image.mode == "I;16" or image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float32)
        array = 255 * array / max(float(array.max()), 1.0)
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [-1, 1]: short side resized to `size`, then center-cropped."""
    if image.width < 1 or image.height < 1:
        raise InvalidInput(f"image has no pixels ({image.width}x{image.height})")
    image = ImageOps.fit(to_rgb(image), (size, size), method=Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def mask_to_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    """[1, 1, size, size] in [0, 1] from a mask image (white = subject)."""
    fitted = ImageOps.fit(mask.convert("L"), (size, size), method=Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)[None, None]


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def augment(pixels: torch.Tensor, n: int, generator: torch.Generator, max_shift: float = 0.06) -> torch.Tensor:
    """`n` copies of [1, 3, H, W] `pixels` with a small random shift, zoom and brightness change.

    No horizontal flips: identities of the embedded world carry asymmetric marks.
    """
    return augment_with_masks(pixels, None, n, generator, max_shift)[0]


def augment_with_masks(
    pixels: torch.Tensor, masks: torch.Tensor | None, n: int, generator: torch.Generator, max_shift: float = 0.06
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`augment`, with [1, M, H, W] `masks` moved by the same shift and zoom as their image (no brightness change).

    Draws exactly the random numbers `augment` draws, so both give the same views for one generator.
    """
    theta = torch.zeros(n, 2, 3)
    zoom = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.1
    theta[:, 0, 0] = theta[:, 1, 1] = zoom
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    grid = F.affine_grid(theta.to(pixels), [n, *pixels.shape[1:]], align_corners=False)
    out = F.grid_sample(pixels.expand(n, -1, -1, -1), grid, padding_mode="border", align_corners=False)
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=generator).to(pixels) - 0.5) * 0.1
    moved = None
    if masks is not None:
        moved = F.grid_sample(masks.to(pixels).expand(n, -1, -1, -1), grid, padding_mode="border", align_corners=False)
    return (out * gain).clamp(-1, 1), moved
