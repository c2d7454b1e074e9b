"""Generation from prompts that name concepts, on the shared base."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from PIL import Image

from e4t.base import Base
from e4t.concept import Concept
from e4t.errors import Cancelled, InvalidInput, NotFound
from e4t.offsets import activate_offsets
from e4t.pack import DomainPack
from e4t.prompts import add_suffixes, encode_prompts, find_concept_ids


def generate(
    base: Base,
    packs: Mapping[str, DomainPack],
    concepts: Mapping[str, Concept],
    prompt: str,
    *,
    negative_prompt: str = "",
    num_images: int = 4,
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    on_image: Callable[[int, Image.Image], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int = 1,
) -> list[Image.Image]:
    """Images for `prompt`; braced ids name entries of `concepts`. Image i uses seed `seed + i`.

    Images are denoised `batch_size` at a time; `on_image(i, image)` streams each batch's images
    as soon as it is done (1: every image as it finishes; more: faster overall). The result does
    not depend on `batch_size`.
    """
    # 1. check inputs
    if not prompt.strip():
        raise InvalidInput("`prompt` is empty")
    if num_images < 1:
        raise InvalidInput(f"`num_images` must be at least 1, got {num_images}")
    if steps < 1:
        raise InvalidInput(f"`steps` must be at least 1, got {steps}")
    if batch_size < 1:
        raise InvalidInput(f"`batch_size` must be at least 1, got {batch_size}")
    if guidance < 0:
        raise InvalidInput(f"`guidance` must be non-negative, got {guidance}")

    # 2. resolve the concepts the prompts name
    named = find_concept_ids(prompt) + find_concept_ids(negative_prompt)
    missing = [i for i in named if i not in concepts]
    if missing:
        raise NotFound(f"unknown concept(s): {', '.join(missing)}")
    used = [concepts[i] for i in dict.fromkeys(named)]
    for c in used:
        if c.base_hash != base.hash:
            raise InvalidInput(f"concept {c.id} was made for base {c.base_hash}; this base is {base.hash}")
        if c.domain not in packs:
            raise NotFound(f"concept {c.id} belongs to domain {c.domain!r}, which is not loaded")

    # 3. encode the prompts with the concepts' embeddings spliced in (and their suffixes, e.g. DreamBooth's class word)
    embeddings = {c.id: c.embedding for c in used}
    suffixes = {c.id: c.suffix for c in used}
    with torch.no_grad():
        prompt_embeds = encode_prompts(base.text_encoder, base.tokenizer, [add_suffixes(prompt, suffixes)], embeddings)
        negative_embeds = encode_prompts(
            base.text_encoder, base.tokenizer, [add_suffixes(negative_prompt, suffixes)], embeddings
        )

    # 4. activate the concepts' weight offsets (averaged when several); a concept without offsets
    # (Textual Inversion: the plain base) adds none and does not dilute the others'
    unet = base.unet
    tuned = [(c, c.offsets(packs[c.domain])) for c in used]
    tuned = [(c, offsets) for c, offsets in tuned if offsets]
    if tuned:
        configs = {packs[c.domain].offset_config for c, _ in tuned}
        if len(configs) > 1:
            raise InvalidInput("concepts in one prompt must come from packs with the same offset layout")
        activate_offsets(unet, configs.pop(), [offsets for _, offsets in tuned])

    # 5. denoise, a batch at a time, one seeded generator per image
    def check_cancel(pipe, i, t, kwargs):
        if should_stop is not None and should_stop():
            raise Cancelled("generation was cancelled")
        return kwargs

    images = []
    try:
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            generators = [torch.Generator(device="cpu").manual_seed(seed + start + k) for k in range(count)]
            batch = base.pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_images_per_prompt=count,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="pil",
                callback_on_step_end=check_cancel,
            ).images
            for k, image in enumerate(batch):
                images.append(image)
                if on_image is not None:
                    on_image(start + k, image)
    finally:
        if tuned:
            unet.disable_adapters()
    return images
