"""The numbers of one row, from embeddings and predicted labels (no model in here).

Groups are the images of one (subject, prompt): they share the subject's reference set and the
prompt's context, and their pairwise spread is the diversity of that prompt.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over all (row of a, row of b) pairs."""
    return float((F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T).mean())


def fidelity(groups: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over groups of the mean cosine of (generated, reference) embeddings: ID similarity, CLIP-I, DINO."""
    if not groups:
        raise ValueError("expected at least one (generated, reference) group but got none")
    return sum(mean_cosine(gen, ref) for gen, ref in groups) / len(groups)


def paired_difference(scores: Sequence[float], baseline: Sequence[float]) -> dict:
    """Mean of the per-subject differences (scores - baseline) on the same subjects and seeds, and its
    standard error (None with one subject): whether a gain is larger than what changes between subjects."""
    diffs = [a - b for a, b in zip(scores, baseline, strict=True)]
    stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"mean": round(statistics.fmean(diffs), 4), "stderr": None if stderr is None else round(stderr, 4)}


def diversity(groups: Sequence[torch.Tensor]) -> float | None:
    """1 - mean pairwise cosine among the images of each group, averaged over groups; None with 1 image a group."""
    values = []
    for emb in groups:
        n = len(emb)
        if n < 2:
            continue
        e = F.normalize(emb.float(), dim=-1)
        sim = e @ e.T
        off_diagonal = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
        values.append(1.0 - float(off_diagonal))
    return sum(values) / len(values) if values else None


def context_accuracy(predicted: Sequence[Mapping[str, str]], named: Sequence[Mapping[str, str]]) -> float | None:
    """Fraction of images whose predicted labels match every label their prompt names; None when none names any."""
    if len(predicted) != len(named):
        raise ValueError(f"expected one named context per prediction but got {len(named)} for {len(predicted)}")
    scored = [all(p.get(k) == v for k, v in want.items()) for p, want in zip(predicted, named, strict=True) if want]
    return sum(scored) / len(scored) if scored else None


def text_alignment(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Mean cosine of each image embedding with its own text embedding (CLIP-T); rows pair up."""
    if len(image_emb) != len(text_emb):
        raise ValueError(f"expected one text per image but got {len(text_emb)} texts for {len(image_emb)} images")
    return float((F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1).mean())
