"""Inference-time tuning (Gal et al. 2023, sec. 4.2): a few steps on one image, from the pretrained
encoder and offsets."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

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


def _private_copy(encoder: torch.nn.Module) -> torch.nn.Module:
    """A trainable copy of the pack's encoder, which concurrent requests share and must never see change.

    A tower kept frozen in pretraining (a pretrained CLIP) stays frozen and shared, not copied.
    """
    frozen = list(encoder.vision.parameters()) if getattr(encoder, "refers_to_folder", False) else []
    copy = deepcopy(encoder, memo={id(p): p for p in frozen})
    copy.train().requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    return copy


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
    def guess(encoder: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            batch = objective.noise(pixels.expand(pack.tune.batch, -1, -1, -1), generator)
            return objective.class_embedding + objective.predict_offset(encoder, batch).mean(0)

    tune_encoder = pack.tune.mode == "encoder" and steps > 0
    embedding = torch.nn.Parameter(guess(pack.encoder))
    encoder = _private_copy(pack.encoder) if tune_encoder else None

    # 4. tune the offsets, and the embedding itself or the encoder's weights, on augmented copies of the image
    params = offset_parameters(unet, TUNE)
    tuned_first = (
        {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": pack.tune.lr_encoder}
        if encoder is not None
        else {"params": [embedding], "lr": pack.tune.lr_embedding}
    )
    try:
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam([tuned_first, {"params": params, "lr": pack.tune.lr_offsets}])
        prompts = [f"a photo of {{{'S'}}}"] * pack.tune.batch
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled("personalization was cancelled")
            views = augment(pixels, pack.tune.batch, generator)
            batch = objective.noise(views, generator)
            m = mask_t.expand(pack.tune.batch, -1, -1, -1) if mask_t is not None else None
            if encoder is not None:  # the paper's way: the encoder reads the views, penalized like in pretraining
                offset = objective.predict_offset(encoder, batch)
                loss, _ = objective.loss(batch, objective.class_embedding + offset, prompts, offset=offset, mask=m)
            else:
                loss, _ = objective.loss(batch, embedding.expand(pack.tune.batch, -1), prompts, mask=m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step + 1, steps, loss.item())
        if encoder is not None:  # the embedding is fixed from here on: the tuned encoder's reading of the image
            embedding = torch.nn.Parameter(guess(encoder.eval()))
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
