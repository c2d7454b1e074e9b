"""Generation from prompts that name concepts, on the shared base."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from e4t.base import Base
from e4t.combine import RULE, check_concepts, combine, offset_config, offsets_of
from e4t.concept import Concept
from e4t.errors import Cancelled, InvalidInput, NotFound
from e4t.offsets import OffsetConfig, activate_offsets, per_sample_offsets
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
    guidance: float | None = None,
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
    guidance = base.default_guidance if guidance is None else guidance
    if guidance < 0:
        raise InvalidInput(f"`guidance` must be non-negative, got {guidance}")

    # 2-3. resolve the named concepts and encode the prompts with their embeddings spliced in
    prepared = prepare_prompt(base, packs, concepts, prompt, negative_prompt)
    prompt_embeds, negative_embeds = prepared.prompt_embeds, prepared.negative_embeds

    # 4. activate the concepts' weight offsets, combined as `e4t.combine.RULE` says
    unet = base.unet
    tuned = prepared.offsets
    if tuned:
        activate_offsets(unet, prepared.offset_config, [o for o, _ in tuned], weights=[w for _, w in tuned])

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


@dataclass(frozen=True)
class PreparedPrompt:
    """One prompt ready to denoise: its encodings and the weight offsets of the concepts it names."""

    prompt_embeds: torch.Tensor  # [1, L, D]
    negative_embeds: torch.Tensor  # [1, L, D]
    offsets: tuple[tuple[dict[str, torch.Tensor], float], ...]  # (full LoRA factors, weight); () = plain base
    offset_config: OffsetConfig | None


def prepare_prompt(
    base: Base,
    packs: Mapping[str, DomainPack],
    concepts: Mapping[str, Concept],
    prompt: str,
    negative_prompt: str = "",
    rule: str = RULE,
) -> PreparedPrompt:
    """Check the concepts `prompt` and `negative_prompt` name, and encode both with their embeddings spliced in.

    Up to `e4t.combine.MAX_CONCEPTS` concepts, of any domains and methods, each read against its own
    domain's pack. Their weight offsets combine by `rule` (`e4t.combine`: the default averages the
    distinct offset sets, weight 1/n each, a measured choice); a concept without offsets (Textual
    Inversion: the plain base) adds none and does not dilute the others'.
    """
    named = find_concept_ids(prompt) + find_concept_ids(negative_prompt)
    missing = [i for i in named if i not in concepts]
    if missing:
        raise NotFound(f"unknown concept(s): {', '.join(missing)}")
    used = [concepts[i] for i in dict.fromkeys(named)]
    check_concepts(base, packs, used)

    # the prompts with the concepts' suffixes (e.g. DreamBooth's class word)
    embeddings = {c.id: c.embedding for c in used}
    suffixes = {c.id: c.suffix for c in used}
    with torch.no_grad():
        prompt_embeds = encode_prompts(base.text_encoder, base.tokenizer, [add_suffixes(prompt, suffixes)], embeddings)
        negative_embeds = encode_prompts(
            base.text_encoder, base.tokenizer, [add_suffixes(negative_prompt, suffixes)], embeddings
        )

    tuned = offsets_of(packs, used)
    entries = combine(packs, tuned, rule)
    return PreparedPrompt(prompt_embeds, negative_embeds, entries, offset_config(packs, tuned) if entries else None)


def generate_samples(
    base: Base,
    samples: Sequence[tuple[PreparedPrompt, int]],
    *,
    steps: int = 25,
    guidance: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """One image per (prepared prompt, seed), all denoised as ONE UNet batch, whatever concepts they carry.

    Each sample keeps its own prompt encodings, its own seeded generator and its own weight
    offsets (`e4t.offsets.per_sample_offsets`), so its image equals what `generate` makes for
    that prompt and seed alone (up to float rounding). `should_stop` is polled every step.
    """
    if not samples:
        return []
    if steps < 1:
        raise InvalidInput(f"`steps` must be at least 1, got {steps}")
    guidance = base.default_guidance if guidance is None else guidance
    if guidance < 0:
        raise InvalidInput(f"`guidance` must be non-negative, got {guidance}")

    def check_cancel(pipe, i, t, kwargs):
        if should_stop is not None and should_stop():
            raise Cancelled("generation was cancelled")
        return kwargs

    prompt_embeds = torch.cat([p.prompt_embeds for p, _ in samples])
    negative_embeds = torch.cat([p.negative_embeds for p, _ in samples])
    generators = [torch.Generator(device="cpu").manual_seed(seed) for _, seed in samples]
    with per_sample_offsets(base.unet, [p.offsets for p, _ in samples]):
        return base.pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            num_images_per_prompt=1,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="pil",
            callback_on_step_end=check_cancel,
        ).images
