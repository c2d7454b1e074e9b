"""Several concepts in one prompt: which concepts may be combined, and how their weight offsets add up.

A prompt may name up to `MAX_CONCEPTS` distinct concepts (prompt and negative prompt together),
from one domain or several, made by any method. Each concept's offsets are read against its own
domain's pack (`Concept.offsets`). A concept named twice is one concept: its embedding fills every
slot that names it and its offsets count once. Concepts that share one set of offsets (several
concepts of one Break-A-Scene run) count that set once, too.

How the offsets of several concepts combine (`RULE`): UNet weights are shared by every token of
the prompt, so a concept's offsets cannot be confined to its own tokens; one weight offset must
serve them all. With W_c the full offset (B @ A) of concept c and W_P that of its domain pack:

- "average":  mean_c W_c
- "sum":      sum_c W_c
- "deltas":   mean over the packs named of W_P, plus sum_c (W_c - W_P(c)): each concept's own tuning
              on top of its domain's prior, the prior counted once per domain (a concept with whole
              offsets of its own, DreamBooth, adds them all)

"average" is the measured choice (bench/combined_concepts.py; README, "Prompts that combine
concepts"): on the embedded world it has the best or tied context accuracy for faces+faces and
faces+cats (1.00 and 0.94, against 1.00 and 0.75 summed, 0.94 and 0.81 "deltas") and the best
per-concept id_sim across domains (0.154 against 0.127 and 0.121); "deltas" scores higher within
faces (0.149 against 0.134) but there all three stay under the distractor floor, so that is no
identity gained. Summing two concepts' offsets doubles the pack's prior and overshoots either.
Concepts without offsets (Textual Inversion: the plain base) add none and dilute no one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from e4t.concept import Concept
from e4t.errors import InvalidInput, NotFound
from e4t.offsets import OffsetConfig

MAX_CONCEPTS = 4  # distinct concepts in one prompt and its negative prompt
RULES = ("average", "sum", "deltas")
RULE = "average"

Offsets = dict[str, torch.Tensor]
Entries = tuple[tuple[Offsets, float], ...]  # (full LoRA factors, weight): what e4t.offsets activates


def check_concepts(base, packs: Mapping, concepts: Sequence[Concept]) -> None:
    """Raises InvalidInput (or NotFound for a domain not loaded) unless `concepts` can be generated together."""
    ids = list(dict.fromkeys(c.id for c in concepts))
    if len(ids) > MAX_CONCEPTS:
        raise InvalidInput(
            f"a prompt may combine at most {MAX_CONCEPTS} concepts but names {len(ids)}: {', '.join(ids)}"
        )
    foreign = [c for c in concepts if c.base_hash != base.hash]
    if foreign:
        if len(concepts) == 1:
            c = foreign[0]
            raise InvalidInput(f"concept {c.id} was made for base {c.base_hash}; this base is {base.hash}")
        made = "; ".join(f"{c.id} was made for base {c.base_hash}" for c in concepts)
        raise InvalidInput(f"concepts {', '.join(ids)} cannot be combined on this base ({base.hash}): {made}")
    for c in concepts:
        if c.domain not in packs:
            raise NotFound(f"concept {c.id} belongs to domain {c.domain!r}, which is not loaded")


def offsets_of(packs: Mapping, concepts: Sequence[Concept]) -> list[tuple[Concept, Offsets]]:
    """(concept, full offsets) of the concepts that have offsets, each set once, layouts checked.

    A concept's offsets must fit its pack's layout (rank and targets), and all must share one layout,
    so that one set of slot adapters serves them; InvalidInput names the concepts otherwise.
    """
    out: list[tuple[Concept, Offsets]] = []
    seen: set[str] = set()
    for c in concepts:
        offsets = c.offsets(packs[c.domain])
        if not offsets:
            continue
        pack = packs[c.domain]
        if _shapes(offsets) != _shapes(pack.offsets):
            raise InvalidInput(
                f"concept {c.id}'s weight offsets ({describe_layout(offsets)}) do not fit the layout of its "
                f"{c.domain} pack ({describe_layout(pack.offsets)})"
            )
        if out and _shapes(offsets) != _shapes(out[0][1]):
            first = out[0][0]
            raise InvalidInput(
                f"concepts {first.id} and {c.id} cannot be combined: their weight offsets have different layouts "
                f"({first.id}: {describe_layout(out[0][1])}; {c.id}: {describe_layout(offsets)})"
            )
        key = fingerprint(offsets)
        if key not in seen:  # identical offsets (one Break-A-Scene run's concepts) count once
            seen.add(key)
            out.append((c, offsets))
    return out


def check_combination(base, packs: Mapping, concepts: Sequence[Concept]) -> None:
    """Every check of a combined prompt (count, base, domain, pack, layout), without encoding anything."""
    check_concepts(base, packs, concepts)
    offsets_of(packs, concepts)


def combine(packs: Mapping, tuned: Sequence[tuple[Concept, Offsets]], rule: str = RULE) -> Entries:
    """The (offsets, weight) entries whose weighted sum of B @ A is the prompt's weight offset under `rule`."""
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {', '.join(RULES)} but is {rule!r}")
    n = len(tuned)
    if n == 0:
        return ()
    if rule == "average":
        return tuple((offsets, 1.0 / n) for _, offsets in tuned)
    if rule == "sum" or n == 1:
        return tuple((offsets, 1.0) for _, offsets in tuned)
    # "deltas": sum_c W_c, minus each relative concept's pack, plus the mean of the packs named
    relative = [packs[c.domain] for c, _ in tuned if c.relative_to_pack]
    pack_weight: dict[str, float] = {}
    for pack in relative:
        pack_weight[pack.domain] = pack_weight.get(pack.domain, 0.0) - 1.0
    for domain in pack_weight:
        pack_weight[domain] += 1.0 / len(pack_weight)
    entries = [(offsets, 1.0) for _, offsets in tuned]
    entries += [(packs[d].offsets, w) for d, w in pack_weight.items() if w != 0.0]
    return tuple(entries)


def offset_config(packs: Mapping, tuned: Sequence[tuple[Concept, Offsets]]) -> OffsetConfig | None:
    """The one adapter layout of the tuned concepts' packs (checked alike by `offsets_of`)."""
    configs = {packs[c.domain].offset_config for c, _ in tuned}
    if len(configs) > 1:
        ids = ", ".join(c.id for c, _ in tuned)
        raise InvalidInput(f"concepts {ids} come from packs with different offset layouts and cannot be combined")
    return configs.pop() if configs else None


def fingerprint(offsets: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(offsets):
        t = offsets[key].detach().float().contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def describe_layout(offsets: Mapping[str, torch.Tensor]) -> str:
    """e.g. "rank 4 on to_q, to_k, to_v, to_out.0 (32 layers)" from a LoRA state dict."""
    paths = [k[: -len(".lora_A.weight")] for k in offsets if k.endswith(".lora_A.weight")]
    ranks = sorted({offsets[f"{p}.lora_A.weight"].shape[0] for p in paths})
    targets = list(dict.fromkeys(_target(p) for p in paths))
    rank = "/".join(str(r) for r in ranks) or "?"
    return f"rank {rank} on {', '.join(targets) or 'no layers'} ({len(paths)} layers)"


def _target(path: str) -> str:
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def _shapes(offsets: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in offsets.items()}
