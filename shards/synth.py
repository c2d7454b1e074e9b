"""Rendering a synthetic domain into WebDataset shards (`e4t shards synth`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from shards import cats, faces
from shards.images import png_bytes
from shards.splits import SPLITS, check_splits, split_of
from shards.writer import ShardSetWriter

# domain name -> renderer module (DOMAIN, CLASS_WORD, WORLD_VERSION, ATTRIBUTES, identity_name, identity_attributes,
# sample_context, sample_nuisance, render, caption_for)
DOMAINS: dict[str, ModuleType] = {"faces": faces, "cats": cats}


def get_domain(domain: str) -> ModuleType:
    """The renderer module of a synthetic domain, with a clear error for unknown names."""
    if domain not in DOMAINS:
        raise ValueError(f"synthetic `domain` must be one of {sorted(DOMAINS)} but is {domain!r}.")
    return DOMAINS[domain]


def training_caption(meta: dict, rng: random.Random, describe_share: float) -> str:
    """A base-training caption for a shard sample: with probability `describe_share` it names the identity.

    A described caption lists a random non-empty subset of the identity's attributes (all of
    them a third of the time, so that the full description is well trained), e.g.
    "a photo of a face with a round face, tan skin and green eyes, on the beach". Samples of
    other sources, or without attributes, keep their own caption.
    """
    mod = DOMAINS.get(meta.get("domain", ""))
    if mod is None or not isinstance(meta.get("attributes"), dict) or rng.random() >= describe_share:
        return meta["caption"]
    names = list(mod.ATTRIBUTES)
    chosen = names if rng.random() < 1 / 3 else rng.sample(names, rng.randint(1, len(names)))
    return mod.caption_for(meta["context"], mod.describe(meta["attributes"], chosen))


def described_caption(domain: str, attributes: dict, context: dict) -> str:
    """The caption naming every attribute of an identity: the most words can say about it."""
    mod = get_domain(domain)
    return mod.caption_for(context, mod.describe(attributes))


def render_sample(domain: str, index: int, view: int, size: int, seed: int) -> tuple[str, bytes, dict]:
    """Render view `view` of identity `index`: returns (key, png bytes, json metadata)."""
    mod = get_domain(domain)
    identity = mod.identity_name(index, seed)
    attributes = mod.identity_attributes(index, seed)
    rng = random.Random(f"{identity}/view{view}")  # per-view stream: views are independent of each other
    context = mod.sample_context(rng)
    nuisance = mod.sample_nuisance(rng)
    img = mod.render(attributes, context, nuisance, size)
    meta = {
        "domain": mod.DOMAIN,
        "caption": mod.caption_for(context),
        "identity": identity,
        "source": f"synthetic/{mod.DOMAIN}/v{mod.WORLD_VERSION}",
        "split": split_of(identity),
        "view": view,
        "attributes": attributes,
        "context": context,
        "nuisance": nuisance,
        "world_version": mod.WORLD_VERSION,
    }
    return f"{domain}_s{seed}_{index:06d}_v{view:03d}", png_bytes(img), meta


def synthesize(
    domain: str,
    identities: int,
    views: int,
    size: int,
    seed: int,
    out: str | Path,
    splits: Sequence[str] | None = None,
    progress: bool = True,
    *,
    maxcount: int = 2000,
) -> dict:
    """Render `identities` x `views` images of a synthetic domain into shards under `out`.

    Deterministic: the same arguments give byte-identical shards and manifest. `splits`
    restricts rendering to identities of those splits (all five when None); `maxcount` is the
    number of samples per shard. Returns the manifest.
    """
    # 1. check inputs
    mod = get_domain(domain)
    for name, value, low in (
        ("identities", identities, 1),
        ("views", views, 1),
        ("size", size, 8),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low} but is {value!r}.")
    selected = check_splits(splits) if splits is not None else SPLITS
    # 2. pick identities; the split is a hash of the name, so filtering costs nothing
    chosen = [i for i in range(identities) if split_of(mod.identity_name(i, seed)) in selected]
    counts = {s: 0 for s in SPLITS}
    # 3. render and write
    with ShardSetWriter(out, domain, created_by="e4t shards synth", maxcount=maxcount) as writer:
        bar = tqdm(
            total=len(chosen) * views,
            desc=f"synth {domain}",
            unit="img",
            disable=not progress,
        )
        for index in chosen:
            for view in range(views):
                key, data, meta = render_sample(domain, index, view, size, seed)
                writer.write(key, data, "png", meta)
                counts[meta["split"]] += 1
                bar.update(1)
        bar.close()
        return writer.close(
            domain=mod.DOMAIN,
            world_version=mod.WORLD_VERSION,
            identities=len(chosen),
            identities_requested=identities,
            views=views,
            size=size,
            seed=seed,
            selected_splits=list(selected),
            splits=counts,
        )
