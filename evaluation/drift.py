"""Language drift: how far a concept's weight offsets move what the base draws for the bare class word.

DreamBooth (Ruiz et al. 2023) names it language drift and counters it with prior preservation;
Zeng et al. (2024) measure their two-stage method against it the same way: the class-word prompt
("a photo of a face"), the same seeds, before tuning (the plain base) and after (the base with the
concept's offsets active, the prompt naming no concept). Two numbers, on the identity judge's
embeddings:

- `drift`: 1 − mean cosine between the before- and after-image of each seed (0: nothing moved);
- `toward_subject`: id_sim of the after-images to the subject's reference views minus that of the
  before-images (how much the class word itself has become the subject).

A concept without offsets (Textual Inversion) leaves the base untouched, text encoder included, so
both are exactly 0 and nothing is generated. An E4T concept's offsets are the pack's plus its own:
its drift includes what the pack's offsets alone do to the class word.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from e4t.base import Base
from e4t.concept import Concept
from e4t.generate import PreparedPrompt, generate_samples, prepare_prompt
from e4t.pack import DomainPack
from evaluation import metrics


class DriftProbe:
    """The class word's images before tuning, drawn once per (base, pack); `measure` compares a concept's."""

    def __init__(
        self,
        base: Base,
        pack: DomainPack,
        identity,
        *,
        count: int = 4,
        steps: int = 25,
        guidance: float | None = None,  # None: the base's default
        seed: int = 0,
    ):
        if count < 1:
            raise ValueError(f"`count` must be at least 1 but is {count}.")
        self.base, self.pack, self.identity = base, pack, identity
        self.steps, self.guidance = steps, guidance
        self.prompt = f"a photo of a {pack.class_word}"
        self.seeds = [seed + k for k in range(count)]
        self._plain = prepare_prompt(base, {}, {}, self.prompt)
        self.before = self._draw(self._plain)
        self.before_emb = identity.embed(self.before)

    def _draw(self, prepared: PreparedPrompt) -> list[Image.Image]:
        samples = [(prepared, s) for s in self.seeds]
        return generate_samples(self.base, samples, steps=self.steps, guidance=self.guidance)

    def after(self, concept: Concept) -> list[Image.Image] | None:
        """The class word's images with `concept`'s offsets active; None when it has none."""
        offsets = concept.offsets(self.pack)
        if not offsets:
            return None
        tuned = PreparedPrompt(
            self._plain.prompt_embeds, self._plain.negative_embeds, ((offsets, 1.0),), self.pack.offset_config
        )
        return self._draw(tuned)

    def measure(self, concept: Concept, references: torch.Tensor) -> dict[str, float]:
        """{"drift", "toward_subject"} of `concept`; `references`: identity embeddings of the subject's views."""
        images = self.after(concept)
        if images is None:
            return {"drift": 0.0, "toward_subject": 0.0}
        after_emb = self.identity.embed(images)
        paired = (F.normalize(self.before_emb.float(), dim=-1) * F.normalize(after_emb.float(), dim=-1)).sum(-1)
        return {
            "drift": 1.0 - float(paired.mean()),
            "toward_subject": metrics.mean_cosine(after_emb, references)
            - metrics.mean_cosine(self.before_emb, references),
        }
