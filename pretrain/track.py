"""What domain pretraining watches besides its loss: the encoder's 0-step guess on held-out subjects.

Every `track_every` steps rank 0 personalizes a few held-out subjects of the synthetic domain
with 0 tuning steps (the encoder's guess alone), generates "a photo of {S}" and scores the
images with the identity judge against other views of the subject. The figure goes to
TensorBoard (scalar `track/id_sim_0step`, and a grid: inputs on top, guesses below) and to
`WORK/track.jsonl`. It is what the 0-step row of `e4t eval` measures, on fewer subjects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from e4t.base import Base
from e4t.judges import IDENTITY_FILE, IdentityJudge
from e4t.offsets import TUNE, activate, get_offsets, offset_parameters
from e4t.pack import DomainPack


class IdentityTracker:
    """id_sim of the 0-step guess on `subjects` held-out identities of `domain` (a synthetic one)."""

    def __init__(self, base: Base, domain: str, judges_dir: Path, subjects: int = 4, images: int = 2, steps: int = 20):
        from evaluation import protocol

        self.base, self.images, self.steps = base, images, steps
        self.judge = IdentityJudge.load(judges_dir / IDENTITY_FILE).eval()
        chosen = protocol.heldout_identities(domain, subjects)
        self.inputs = [protocol.input_image(s, base.resolution) for s in chosen]
        with torch.no_grad():
            self.references = [self.judge.embed(protocol.reference_images(s, 4, base.resolution)) for s in chosen]

    @classmethod
    def maybe(cls, base: Base, domain: str, judges_dir: Path | None, subjects: int) -> IdentityTracker | None:
        """A tracker when the domain has a renderer and judges exist; None otherwise (real data)."""
        from shards.synth import DOMAINS

        if subjects < 1 or domain not in DOMAINS or judges_dir is None or not (judges_dir / IDENTITY_FILE).is_file():
            return None
        return cls(base, domain, judges_dir, subjects)

    def __call__(self, pack: DomainPack) -> tuple[float, Image.Image]:
        """Mean id_sim of the guesses and a grid of inputs over generated images.

        Personalize and generate switch the UNet's adapters; the training adapter (its live
        parameters, trainable) is switched back on before returning.
        """
        from e4t import generate, personalize

        unet = self.base.unet
        pack.offsets = get_offsets(unet, TUNE)  # personalize loads these into the adapter it trains: the same values
        sims, generated = [], []
        try:
            with torch.no_grad():
                for image, refs in zip(self.inputs, self.references, strict=True):
                    concept = personalize(self.base, pack, image, steps=0, seed=0)
                    out = generate(
                        self.base,
                        {pack.domain: pack},
                        {concept.id: concept},
                        f"a photo of {{{concept.id}}}",
                        num_images=self.images,
                        steps=self.steps,
                        batch_size=self.images,
                    )
                    emb = self.judge.embed(out)
                    sims.append((emb @ refs.T).mean().item())
                    generated.append(out[0])
        finally:
            keep_training_adapter(unet)
        return float(np.mean(sims)), _grid([self.inputs, generated])


def keep_training_adapter(unet) -> None:
    """The training adapter active and trainable, every other adapter (serving's slots) frozen.

    DeepSpeed records which parameters are trainable when it starts and checks that record
    when it checkpoints, so generating during training must leave the same split behind.
    """
    activate(unet, TUNE)
    trainable = {id(p) for p in offset_parameters(unet, TUNE)}
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(id(p) in trainable)


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    size = rows[0][0].size[0]
    grid = Image.new("RGB", (size * max(len(r) for r in rows), size * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.resize((size, size)), (x * size, y * size))
    return grid


def log_track(work: Path, writer, step: int, id_sim: float, grid: Image.Image) -> None:
    """One tracking point: TensorBoard scalar and image, and a line of WORK/track.jsonl."""
    writer.add_scalar("track/id_sim_0step", id_sim, step)
    writer.add_image("track/guesses", np.asarray(grid), step, dataformats="HWC")
    with (work / "track.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, "id_sim_0step": round(id_sim, 4)}) + "\n")
