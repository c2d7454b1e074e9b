"""Generation from prompts that name concepts, on the shared base."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from e4t.base import Base
from e4t.combine import RULE, check_concepts, combine, offset_config, offsets_of
from e4t.concept import Concept
from e4t.errors import Cancelled, InvalidInput, NotFound
from e4t.offsets import OffsetConfig, activate_offsets, per_sample_offsets
from e4t.pack import DomainPack
from e4t.prompts import add_suffixes, class_word_prompt, encode_prompts, find_concept_ids


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
    identity_guidance: float | None = None,
    seed: int = 0,
    on_image: Callable[[int, Image.Image], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int = 1,
) -> list[Image.Image]:
    """Images for `prompt`; braced ids name entries of `concepts`. Image i uses seed `seed + i`.

    Images are denoised `batch_size` at a time; `on_image(i, image)` streams each batch's images
    as soon as it is done (1: every image as it finishes; more: faster overall). The result does
    not depend on `batch_size`.

    `identity_guidance` (None: off) scales the subjects apart from the scene: the prediction is
    u + guidance (c - u) + identity_guidance (s - c), where u is the negative prompt's, s the prompt's and
    c the prompt's with each concept replaced by "a <class word>". Equal scales give plain classifier-free
    guidance; a larger identity scale draws the subjects more like themselves, at 1.5x the UNet work.
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
    guidance = _guidance_scale(base, guidance, identity_guidance)

    # 2-3. resolve the named concepts and encode the prompts with their embeddings spliced in
    identity = identity_guidance is not None
    prepared = prepare_prompt(base, packs, concepts, prompt, negative_prompt, identity=identity)

    # 4. activate the concepts' weight offsets, combined as `e4t.combine.RULE` says
    unet = base.unet
    tuned = prepared.offsets
    if tuned:
        activate_offsets(unet, prepared.offset_config, [o for o, _ in tuned], weights=[w for _, w in tuned])

    # 5. denoise, a batch at a time, one seeded generator per image
    images = []
    try:
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            generators = [torch.Generator(device="cpu").manual_seed(seed + start + k) for k in range(count)]
            embeds = [
                None if e is None else e.expand(count, -1, -1)
                for e in (prepared.negative_embeds, prepared.class_embeds, prepared.prompt_embeds)
            ]
            batch = _denoise(base, embeds, generators, steps, guidance, identity_guidance, should_stop)
            for k, image in enumerate(batch):
                images.append(image)
                if on_image is not None:
                    on_image(start + k, image)
    finally:
        if tuned:
            unet.disable_adapters()
    return images


def _guidance_scale(base: Base, guidance: float | None, identity_guidance: float | None) -> float:
    """The guidance scale to draw at (the base's default when None), both scales checked."""
    guidance = base.default_guidance if guidance is None else guidance
    if guidance < 0:
        raise InvalidInput(f"`guidance` must be non-negative, got {guidance}")
    if identity_guidance is not None and identity_guidance < 0:
        raise InvalidInput(f"`identity_guidance` must be non-negative, got {identity_guidance}")
    return guidance


def _denoise(
    base: Base,
    embeds: Sequence[torch.Tensor | None],
    generators: list[torch.Generator],
    steps: int,
    guidance: float,
    identity_guidance: float | None,
    should_stop: Callable[[], bool] | None,
) -> list[Image.Image]:
    """One image per generator from `embeds`, the negative prompts', the class-word prompts' (identity guidance
    only) and the prompts' encodings, [len(generators), L, D] each: the pipeline, or the three-way loop."""
    if identity_guidance is not None:
        return _identity_guided(base, embeds, generators, steps, guidance, identity_guidance, should_stop)

    def check_cancel(pipe, i, t, kwargs):
        if should_stop is not None and should_stop():
            raise Cancelled("generation was cancelled")
        return kwargs

    negative, _, prompt = embeds
    return base.pipe(
        prompt_embeds=prompt,
        negative_prompt_embeds=negative,
        num_images_per_prompt=1,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="pil",
        callback_on_step_end=check_cancel,
    ).images


@torch.no_grad()
def _identity_guided(
    base: Base,
    embeds: Sequence[torch.Tensor],
    generators: list[torch.Generator],
    steps: int,
    guidance: float,
    identity_guidance: float,
    should_stop: Callable[[], bool] | None,
) -> list[Image.Image]:
    """The pipeline's denoising loop with three predictions a step, from `embeds`: the negative prompts', the
    class-word prompts' and the prompts' encodings, [len(generators), L, D] each."""
    pipe, unet, count = base.pipe, base.unet, len(generators)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # the shared pipeline's stays untouched
    scheduler.set_timesteps(steps, device=unet.device)
    side = base.resolution // pipe.vae_scale_factor
    shape = (count, unet.config.in_channels, side, side)
    latents = randn_tensor(shape, generator=generators, device=unet.device, dtype=unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    states = torch.cat(list(embeds))
    extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
    for t in scheduler.timesteps:
        if should_stop is not None and should_stop():
            raise Cancelled("generation was cancelled")
        x = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        negative, plain, subject = unet(x, t, encoder_hidden_states=states).sample.chunk(3)
        prediction = negative + guidance * (plain - negative) + identity_guidance * (subject - plain)
        latents = scheduler.step(prediction, t, latents, **extra).prev_sample
    decoded = base.vae.decode(latents / base.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")


@dataclass(frozen=True)
class PreparedPrompt:
    """One prompt ready to denoise: its encodings and the weight offsets of the concepts it names."""

    prompt_embeds: torch.Tensor  # [1, L, D]
    negative_embeds: torch.Tensor  # [1, L, D]
    offsets: tuple[tuple[dict[str, torch.Tensor], float], ...]  # (full LoRA factors, weight); () = plain base
    offset_config: OffsetConfig | None
    class_embeds: torch.Tensor | None = None  # [1, L, D], the prompt with "a <class word>" for each concept


def prepare_prompt(
    base: Base,
    packs: Mapping[str, DomainPack],
    concepts: Mapping[str, Concept],
    prompt: str,
    negative_prompt: str = "",
    rule: str = RULE,
    *,
    identity: bool = False,
) -> PreparedPrompt:
    """Check the concepts `prompt` and `negative_prompt` name, and encode both with their embeddings spliced in.

    Up to `e4t.combine.MAX_CONCEPTS` concepts, of any domains and methods, each read against its own
    domain's pack. Their weight offsets combine by `rule` (`e4t.combine`: the default averages the
    distinct offset sets, weight 1/n each, a measured choice); a concept without offsets (Textual
    Inversion: the plain base) adds none and does not dilute the others'. `identity` also encodes the
    prompt with each concept replaced by its domain's class word, which identity guidance needs.
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

    class_embeds = None
    if identity:
        in_prompt = [concepts[i] for i in find_concept_ids(prompt)]
        if not in_prompt:
            raise InvalidInput("`identity_guidance` needs a prompt that names a concept")
        words = {c.id: packs[c.domain].class_word for c in in_prompt}
        text = class_word_prompt(prompt, words, suffixes)
        with torch.no_grad():
            class_embeds = encode_prompts(base.text_encoder, base.tokenizer, [text], {})

    tuned = offsets_of(packs, used)
    entries = combine(packs, tuned, rule)
    config = offset_config(packs, tuned) if entries else None
    return PreparedPrompt(prompt_embeds, negative_embeds, entries, config, class_embeds)


def generate_samples(
    base: Base,
    samples: Sequence[tuple[PreparedPrompt, int]],
    *,
    steps: int = 25,
    guidance: float | None = None,
    identity_guidance: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """One image per (prepared prompt, seed), all denoised as ONE UNet batch, whatever concepts they carry.

    Each sample keeps its own prompt encodings, its own seeded generator and its own weight
    offsets (`e4t.offsets.per_sample_offsets`), so its image equals what `generate` makes for
    that prompt and seed alone (up to float rounding). `should_stop` is polled every step.
    With `identity_guidance`, every prompt must be prepared with `identity=True`.
    """
    if not samples:
        return []
    if steps < 1:
        raise InvalidInput(f"`steps` must be at least 1, got {steps}")
    guidance = _guidance_scale(base, guidance, identity_guidance)
    if identity_guidance is not None and any(p.class_embeds is None for p, _ in samples):
        raise ValueError("identity guidance needs every prompt prepared with identity=True")

    embeds = [
        torch.cat([p.negative_embeds for p, _ in samples]),
        torch.cat([p.class_embeds for p, _ in samples]) if identity_guidance is not None else None,
        torch.cat([p.prompt_embeds for p, _ in samples]),
    ]
    generators = [torch.Generator(device="cpu").manual_seed(seed) for _, seed in samples]
    with per_sample_offsets(base.unet, [p.offsets for p, _ in samples]):
        return _denoise(base, embeds, generators, steps, guidance, identity_guidance, should_stop)
