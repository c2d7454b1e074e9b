"""Textual Inversion (Gal et al. 2022, "An Image is Worth One Word", arXiv 2208.01618), as a baseline.

One new token's input embedding, initialised from the domain's class word, is optimised with the
ordinary diffusion loss on "a photo of {S}" over augmented copies of the one image. The UNet, text
encoder and VAE stay frozen and no weight offsets are active: the plain base, as it was trained
(the domain pack lends only its class word).

The concept is the learned embedding and no offsets (`offset_deltas` empty, `relative_to_pack`
False, see `e4t.concept`): generation splices the embedding into the prompt and runs the plain
base UNet, exactly what the embedding was optimised against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from e4t.base import Base
from e4t.baseline import ProgressFn, SnapshotFn, check_run, plain_unet, run_steps
from e4t.concept import Concept
from e4t.images import augment, mask_to_tensor, to_tensor
from e4t.objective import PLACEHOLDER, E4TObjective, LossWeights
from e4t.pack import DomainPack

METHOD = "textual_inversion"
DEFAULT_STEPS = 1000
MAX_STEPS = 3000  # ~5 min on 2 CPU cores with the embedded base; the paper's 5000 buy little in this small world


@dataclass(frozen=True)
class TextualInversionConfig:
    lr: float = 5e-3  # the paper's base rate (before its scaling by batch size and GPU count)
    batch: int = 4  # augmented views of the image per step


def textual_inversion(
    base: Base,
    pack: DomainPack,
    image: Image.Image,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    mask: Image.Image | None = None,
    owner: str = "",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    config: TextualInversionConfig = TextualInversionConfig(),
    snapshots: Sequence[int] = (),
    on_snapshot: SnapshotFn | None = None,
) -> Concept:
    """Learn one token for the subject of `image`; returns a new concept (not stored). Deterministic for `seed`.

    Arguments as `e4t.tuner.personalize`; steps=0 returns the class word's embedding.
    `on_snapshot(step, concept)` receives a concept after each step listed in `snapshots`.
    """
    # 1. check inputs
    wanted = check_run(METHOD, base, pack, steps, MAX_STEPS, snapshots, on_snapshot)
    generator = torch.Generator().manual_seed(seed)
    pixels = to_tensor(image, base.resolution)
    mask_t = mask_to_tensor(mask, base.resolution).expand(config.batch, -1, -1, -1) if mask is not None else None
    # no penalties: Textual Inversion's loss is the diffusion loss alone
    objective = E4TObjective(base, pack.class_word, LossWeights(embedding=0.0, offsets=0.0))
    plain_unet(base.unet)

    # 2. the new token starts at the class word ("face"), as the paper initialises from a coarse descriptor
    embedding = torch.nn.Parameter(objective.class_embedding.clone())
    optimizer = torch.optim.Adam([embedding], lr=config.lr)
    prompts = [f"a photo of {{{PLACEHOLDER}}}"] * config.batch

    def step() -> float:
        batch = objective.noise(augment(pixels, config.batch, generator), generator)
        loss, _ = objective.loss(batch, embedding.expand(config.batch, -1), prompts, mask=mask_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def concept_at(at: int) -> Concept:
        return Concept(
            embedding=embedding.detach().clone(),
            offset_deltas={},
            relative_to_pack=False,
            domain=pack.domain,
            pack_hash=pack.hash,
            base_hash=base.hash,
            method=METHOD,
            steps=at,
            owner=owner,
            extra={"config": asdict(config), "seed": seed},
        )

    # 3. optimise the embedding alone (the base's weights never require gradients)
    run_steps(
        METHOD,
        steps,
        step,
        concept_at,
        snapshots=wanted,
        on_snapshot=on_snapshot,
        progress=progress,
        should_stop=should_stop,
    )
    return concept_at(steps)
