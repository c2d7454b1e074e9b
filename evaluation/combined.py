"""Prompts that name two concepts: pairs of held-out subjects personalized apart, generated together.

1. per domain pair (the main domain with itself, and with each other domain): pairs of held-out
   subjects, each personalized separately with E4T from its one input image
2. every protocol prompt with "{subject}" replaced by "{a} and {b}", and, with the same seeds, by
   "{a}" alone and "{b}" alone
3. each concept's id_sim in the combined images by `evaluation.per_concept` (crops, one concept per
   crop), the same rule on its images alone, and on the combined images against held-out
   distractors of the same domains (the floor: an identity the prompt does not name); context
   accuracy of the combined and of the alone images

One row per (domain pair, combination rule), `section` "combined".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image
from tqdm import tqdm

from e4t.base import Base
from e4t.combine import RULE
from e4t.concept import Concept
from e4t.generate import generate_samples, prepare_prompt
from e4t.methods import TUNERS
from evaluation import protocol
from evaluation.per_concept import score_concepts
from evaluation.protocol import Prompt, Subject

SECTION = "combined"
DISTRACTORS = 3  # distractor pairs per domain pair; one identity alone is too noisy a floor
JOIN = "{a} and {b}"  # how a combined prompt names the pair where the protocol's prompt names one subject


@dataclass(frozen=True)
class CombinedConfig:
    pairs: int = 2  # pairs of held-out subjects per domain pair
    tune_steps: int = 5  # E4T tuning steps of every concept
    images_per_prompt: int = 2
    references: int = 4
    denoise_steps: int = 25
    guidance: float | None = None  # None: the base's default
    identity_guidance: float | None = None  # None: off (e4t.generate)
    seed: int = 0
    quick: bool = False  # the protocol's 2 quick prompts


def domain_pairs(domains: Sequence[str]) -> list[tuple[str, str]]:
    """The main (first) domain with itself, then with each other domain."""
    if not domains:
        return []
    return [(domains[0], domains[0])] + [(domains[0], d) for d in domains[1:]]


def pair_subjects(pair: tuple[str, str], count: int) -> list[tuple[Subject, Subject]]:
    """`count` pairs of distinct held-out subjects; within one domain, consecutive identities pair up."""
    a, b = pair
    if a == b:
        found = protocol.heldout_identities(a, 2 * count)
        return [(found[2 * k], found[2 * k + 1]) for k in range(count)]
    return list(zip(protocol.heldout_identities(a, count), protocol.heldout_identities(b, count), strict=True))


def distractors(pair: tuple[str, str], count: int, n: int = DISTRACTORS) -> list[tuple[Subject, Subject]]:
    """`n` pairs of held-out subjects that no scored pair uses: stand-ins for the floor."""
    return pair_subjects(pair, count + n)[count:]


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None (a context accuracy is None when a prompt names no label)."""
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def name_pair(prompt: Prompt, a: str, b: str) -> str:
    return prompt.template.replace("{subject}", JOIN.format(a="{" + a + "}", b="{" + b + "}"))


def _images(base: Base, packs, concepts: Mapping[str, Concept], text: str, seed: int, config, rule: str):
    identity = config.identity_guidance
    prepared = prepare_prompt(base, packs, concepts, text, rule=rule, identity=identity is not None)
    samples = [(prepared, seed + k) for k in range(config.images_per_prompt)]
    return generate_samples(
        base, samples, steps=config.denoise_steps, guidance=config.guidance, identity_guidance=identity
    )


def run_combined(
    base: Base,
    packs: Mapping,
    judges,
    domains: Sequence[str],
    config: CombinedConfig = CombinedConfig(),
    *,
    rules: Sequence[str] = (RULE,),
    progress: bool = True,
) -> tuple[list[dict], dict[str, list[tuple[str, list[Image.Image]]]]]:
    """The combined rows (one per domain pair and rule), and a few images per domain pair for a grid.

    Images: domain pair -> [(label, images)] of the first pair on the first prompt: the input images,
    a alone, b alone, then both under each rule.
    """
    rows, grids = [], {}
    for pair in domain_pairs(domains):
        label = "+".join(pair)
        subjects = pair_subjects(pair, config.pairs)
        floor = distractors(pair, config.pairs)
        size = base.resolution
        refs = {s.identity: protocol.reference_images(s, config.references, size) for ab in subjects for s in ab}
        refs.update({s.identity: protocol.reference_images(s, config.references, size) for ab in floor for s in ab})
        prompts = protocol.prompts(pair[0], quick=config.quick)
        total = len(subjects) * len(prompts) * (2 + len(rules))
        bar = tqdm(total=total, desc=f"combined {label}", unit="prompt", disable=not progress)

        # 1. every subject personalized on its own
        tune_s: list[float] = []
        concepts: dict[str, Concept] = {}
        for ab in subjects:
            for s in ab:
                t = time.perf_counter()
                pack = packs[s.domain]
                image = protocol.input_image(s, size)
                concepts[s.identity] = TUNERS["e4t"](
                    base, pack, image, steps=config.tune_steps, seed=config.seed, owner="eval"
                )
                tune_s.append(time.perf_counter() - t)

        # 2-3. generate and score: alone once, combined per rule
        scores: dict[str, dict[str, list]] = {
            r: {"a": [], "b": [], "floor_a": [], "floor_b": [], "ctx": []} for r in rules
        }
        alone: dict[str, list] = {"a": [], "b": [], "ctx": []}
        gen_s: list[float] = []
        for k, (sa, sb) in enumerate(subjects):
            ca, cb = concepts[sa.identity], concepts[sb.identity]
            named = {ca.id: ca, cb.id: cb}
            if k == 0:
                grids[label] = [
                    (f"input {role}", [protocol.input_image(x, size)]) for role, x in (("a", sa), ("b", sb))
                ]
            for p in prompts:
                seed = protocol.generation_seed(p, config.seed)
                for role, s, c in (("a", sa, ca), ("b", sb, cb)):
                    images = _images(base, packs, named, p.for_concept(c.id), seed, config, RULE)
                    result = score_concepts(judges, images, {s.identity: refs[s.identity]}, context=p.named)
                    alone[role].append(result.id_sim[s.identity])
                    alone["ctx"].append(result.context_acc)
                    if k == 0 and p is prompts[0]:
                        grids[label].append((f"{{{role}}} alone", images))
                    bar.update(1)
                for rule in rules:
                    t = time.perf_counter()
                    images = _images(base, packs, named, name_pair(p, ca.id, cb.id), seed, config, rule)
                    gen_s.append((time.perf_counter() - t) / len(images))
                    result = score_concepts(
                        judges,
                        images,
                        {sa.identity: refs[sa.identity], sb.identity: refs[sb.identity]},
                        context=p.named,
                    )
                    out = scores[rule]
                    out["a"].append(result.id_sim[sa.identity])
                    out["b"].append(result.id_sim[sb.identity])
                    for fa, fb in floor:  # the same images and crop rule, identities the prompt does not name
                        wrong = score_concepts(
                            judges, images, {fa.identity: refs[fa.identity], fb.identity: refs[fb.identity]}
                        )
                        out["floor_a"].append(wrong.id_sim[fa.identity])
                        out["floor_b"].append(wrong.id_sim[fb.identity])
                    out["ctx"].append(result.context_acc)
                    if k == 0 and p is prompts[0]:
                        grids[label].append((f"both, {rule}", images))
                    bar.update(1)
        bar.close()

        for rule in rules:
            out = scores[rule]
            concepts_out = [
                {
                    "position": role,
                    "domain": d,
                    "id_sim": _mean(out[role]),
                    "id_sim_alone": _mean(alone[role]),
                    "id_sim_distractor": _mean(out[f"floor_{role}"]),
                }
                for role, d in zip("ab", pair, strict=True)
            ]
            rows.append(
                {
                    "section": SECTION,
                    "method": "e4t",
                    "steps": config.tune_steps,
                    "domain": label,
                    "rule": rule,
                    "prompt": JOIN,
                    "id_sim": _mean(out["a"] + out["b"]),
                    "id_sim_alone": _mean(alone["a"] + alone["b"]),
                    "id_sim_distractor": _mean(out["floor_a"] + out["floor_b"]),
                    "context_acc": _mean(out["ctx"]),
                    "context_acc_alone": _mean(alone["ctx"]),
                    "concepts": concepts_out,
                    "pairs": [[sa.identity, sb.identity] for sa, sb in subjects],
                    "n_images": len(subjects) * len(prompts) * config.images_per_prompt,
                    "tune_s": round(sum(tune_s) / len(tune_s), 4),
                    "gen_s_per_image": round(sum(gen_s) / len(gen_s), 4),
                }
            )
    return rows, grids
