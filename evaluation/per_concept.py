"""Scores for each concept a multi-subject image names: id_sim per concept from crops, and context accuracy.

The identity judge (`e4t.judges.IdentityJudge`) was trained on ONE subject roughly centred at the
base's resolution, so a picture of two subjects is judged crop by crop. Each image is cut into the
candidate crops of `CROPS` (the whole image, and the left and right halves of a side-by-side
layout), every crop is resized to the judge's input, and each concept is compared with every crop
(mean cosine with the concept's reference views). Concepts are then assigned to crops, per image:

- each crop holds at most one concept (two concepts may not both claim the one subject a blended
  image shows), and
- among such assignments, the one with the largest total similarity wins (all of them are tried:
  at most 4 concepts by 3 crops).

A concept's id_sim is the mean, over images, of its similarity with its assigned crop. An image of
one subject scores that subject on whichever crop fits it best (normally the whole image), so the
same rule scores a concept generated alone and one generated with others.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from evaluation import metrics

# name -> (left, top, right, bottom) as fractions of the image; halves are square for a square image
CROPS: dict[str, tuple[float, float, float, float]] = {
    "whole": (0.0, 0.0, 1.0, 1.0),
    "left": (0.0, 0.25, 0.5, 0.75),
    "right": (0.5, 0.25, 1.0, 0.75),
}


@dataclass(frozen=True)
class ConceptScores:
    """Per concept: id_sim and how often each crop was assigned to it; context accuracy of the images."""

    id_sim: dict[str, float]
    crops: dict[str, dict[str, int]]  # concept -> crop name -> images where that crop was its
    context_acc: float | None  # None: no context was given (or it names no label)


def crop(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The fractional `box` of `image` (pixels rounded to the nearest)."""
    w, h = image.size
    left, top, right, bottom = box
    return image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))


def assign_crops(similarity: torch.Tensor) -> tuple[int, ...]:
    """Crop index per concept: each crop at most once, largest total similarity (ties: the first found).

    `similarity` is [concepts, crops]; raises ValueError when there are more concepts than crops.
    """
    n, k = similarity.shape
    if n > k:
        raise ValueError(f"cannot assign {n} concepts to {k} crops (each crop holds one concept); give more crops")
    best, best_total = (), float("-inf")
    for choice in itertools.permutations(range(k), n):
        total = float(sum(similarity[c, j] for c, j in enumerate(choice)))
        if total > best_total:
            best, best_total = choice, total
    return best


def similarity_to_crops(
    identity_judge,
    images: Sequence[Image.Image],
    references: Mapping[str, Sequence[Image.Image]],
    crops: Mapping[str, tuple[float, float, float, float]] = CROPS,
) -> torch.Tensor:
    """[images, concepts, crops]: mean cosine of each crop's identity embedding with each concept's references."""
    if not images:
        raise ValueError("expected at least one image but got none")
    if not references or any(len(r) == 0 for r in references.values()):
        raise ValueError("expected at least one reference image for every concept")
    boxes = list(crops.values())
    pieces = [crop(image, box) for image in images for box in boxes]
    emb = identity_judge.embed(pieces).view(len(images), len(boxes), -1)  # unit-norm rows
    refs = torch.stack([identity_judge.embed(list(r)).mean(0) for r in references.values()])  # [concepts, D]
    # mean cosine over reference views = cosine with their (unnormalized) mean, as metrics.fidelity computes it
    return torch.einsum("ikd,cd->ick", emb, refs)


def score_concepts(
    judges,
    images: Sequence[Image.Image],
    references: Mapping[str, Sequence[Image.Image]],
    *,
    context: Mapping[str, str] | None = None,
    crops: Mapping[str, tuple[float, float, float, float]] = CROPS,
) -> ConceptScores:
    """id_sim of each concept of `references` (name -> its reference views) in `images`, by the crop rule above.

    `judges` is `e4t.judges.Judges` (identity, context). `context` holds the labels the prompt names
    (e.g. {"background": "beach"}); context accuracy is judged on the whole image, as for one subject.
    """
    identity, context_judge = judges
    names = list(references)
    crop_names = list(crops)
    sim = similarity_to_crops(identity, images, references, crops)
    totals = torch.zeros(len(names))
    counts: dict[str, Counter] = {name: Counter() for name in names}
    for per_image in sim:
        for c, j in enumerate(assign_crops(per_image)):
            totals[c] += per_image[c, j]
            counts[names[c]][crop_names[j]] += 1
    id_sim = {name: round(float(totals[c]) / len(images), 4) for c, name in enumerate(names)}
    acc = None
    if context:
        vocab = context_judge.vocab.labels
        named = {k: v for k, v in context.items() if v in vocab.get(k, ())}  # labels the judge cannot see don't count
        acc = metrics.context_accuracy(context_judge.predict(list(images)), [named] * len(images))
    return ConceptScores(id_sim, {n: dict(c) for n, c in counts.items()}, None if acc is None else round(acc, 4))
