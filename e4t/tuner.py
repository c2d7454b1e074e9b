"""Inference-time tuning (Gal et al. 2023, sec. 4.2): a few steps on one image, from the pretrained
encoder and offsets."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from e4t.base import Base
from e4t.concept import Concept
from e4t.errors import Cancelled, InvalidInput
from e4t.images import augment, mask_to_tensor, to_tensor
from e4t.objective import E4TObjective
from e4t.offsets import TUNE, activate, ensure_adapter, get_offsets, offset_parameters, set_offsets
from e4t.pack import DomainPack

MAX_STEPS = 200


def personalize(
    base: Base,
    pack: DomainPack,
    image: Image.Image,
    *,
    steps: int = 5,
    seed: int = 0,
    mask: Image.Image | None = None,
    owner: str = "",
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Concept:
    """Personalize `base` to the subject of `image`; returns a new concept (not stored).

    steps=0 keeps the encoder's prediction and the pack's offsets unchanged.
    `progress(step, steps, loss)` is called after each step; `should_stop()` is polled between steps.
    """
    # 1. check inputs
    if not 0 <= steps <= MAX_STEPS:
        raise InvalidInput(f"`steps` must be between 0 and {MAX_STEPS}, got {steps}")
    if pack.base_hash != base.hash:
        raise InvalidInput(f"pack {pack.domain} was trained for base {pack.base_hash}, not {base.hash}")
    generator = torch.Generator().manual_seed(seed)
    pixels = to_tensor(image, base.resolution)
    mask_t = mask_to_tensor(mask, base.resolution) if mask is not None else None
    objective = E4TObjective(base, pack.class_word, pack.loss_weights)
    unet = base.unet

    # 2. load the pack's offsets into the tuning adapter
    ensure_adapter(unet, TUNE, pack.offset_config)
    set_offsets(unet, pack.offsets, TUNE)
    activate(unet, TUNE)

    # 3. the encoder's guess, averaged over a few noise draws of the UNet branch
    with torch.no_grad():
        batch = objective.noise(pixels.expand(pack.tune.batch, -1, -1, -1), generator)
        offset = objective.predict_offset(pack.encoder, batch).mean(0)
    embedding = torch.nn.Parameter(objective.class_embedding + offset)

    # 4. tune the embedding and the offsets on augmented copies of the image
    params = offset_parameters(unet, TUNE)
    try:
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(
            [{"params": [embedding], "lr": pack.tune.lr_embedding}, {"params": params, "lr": pack.tune.lr_offsets}]
        )
        prompts = [f"a photo of {{{'S'}}}"] * pack.tune.batch
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled("personalization was cancelled")
            views = augment(pixels, pack.tune.batch, generator)
            batch = objective.noise(views, generator)
            m = mask_t.expand(pack.tune.batch, -1, -1, -1) if mask_t is not None else None
            loss, _ = objective.loss(batch, embedding.expand(pack.tune.batch, -1), prompts, mask=m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step + 1, steps, loss.item())
        tuned = get_offsets(unet, TUNE)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        unet.disable_adapters()

    # 5. the concept: embedding and offset deltas from the pack
    return Concept(
        embedding=embedding.detach().clone(),
        offset_deltas={k: tuned[k] - v for k, v in pack.offsets.items()},
        domain=pack.domain,
        pack_hash=pack.hash,
        base_hash=base.hash,
        steps=steps,
        owner=owner,
    )
