"""Reference rows, like the "real images" row of DreamBooth's table: where the scale's ends lie.

real_same_identity       renders of the subject in the prompted contexts: the upper bound of ID
                         similarity, and the context accuracy of true images (the judge's own ceiling)
real_different_identity  renders of another held-out identity in the same contexts: chance-level ID similarity
vae_reconstruction       the base VAE's round trip of the true renders: what the autoencoder can keep at best
base_class_word          the base prompted with the class word ("a photo of a face on the beach"): no personalization
base_described_identity  the base prompted with the subject's full attribute description ("a photo of a face with
                         a round face, tan skin, ... and freckles, on the beach"): the ceiling of words alone
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from PIL import Image

from e4t import generate
from e4t.base import Base
from e4t.images import to_pil, to_tensor

REAL_SAME = "real_same_identity"
REAL_DIFFERENT = "real_different_identity"
VAE = "vae_reconstruction"
CLASS_WORD = "base_class_word"
DESCRIBED = "base_described_identity"
REFERENCE_ROWS: tuple[str, ...] = (REAL_SAME, REAL_DIFFERENT, VAE, CLASS_WORD, DESCRIBED)


@torch.no_grad()
def vae_roundtrip(vae: AutoencoderKL, images: list[Image.Image], resolution: int) -> list[Image.Image]:
    """Encode and decode with `vae`; the latent mean (not a sample), so the round trip is deterministic."""
    pixels = torch.cat([to_tensor(im, resolution) for im in images]).to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode()
    return to_pil(vae.decode(latents).sample.float())


def class_word_images(
    base: Base, caption: str, count: int, *, steps: int, guidance: float | None, seed: int
) -> list[Image.Image]:
    """The base alone (no concept, no offsets) on a caption without concepts, with the protocol's seeds."""
    return generate(
        base, {}, {}, caption, num_images=count, steps=steps, guidance=guidance, seed=seed, batch_size=count
    )
