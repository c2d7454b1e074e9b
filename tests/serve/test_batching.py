"""Generate requests for different concepts share one UNet batch and give the unbatched images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import e4t
from e4t.concept import Concept
from serve.engine import ConceptCache, Engine, concept_bytes
from serve.store import ConceptStore

STEPS = 3


def _concept(base, pack, seed: int, *, relative: bool = True) -> Concept:
    """A concept with random non-zero embedding and offset deltas (the pack's layout), of a tuned one's size.

    Much larger offsets (several times the pack's) drive the random tiny UNet's attention logits so
    high that float rounding alone, which differs between batch sizes, changes the images.
    """
    g = torch.Generator().manual_seed(1000 + seed)  # not the pack's seed: deltas independent of its offsets
    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    deltas = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in pack.offsets.items()} if relative else {}
    return Concept(
        embedding=0.2 * torch.randn(dim, generator=g),
        offset_deltas=deltas,
        domain=pack.domain,
        pack_hash=pack.hash,
        base_hash=base.hash,
        method="e4t" if relative else "textual_inversion",
        relative_to_pack=relative,
    )


@pytest.fixture(scope="module")
def world(tiny_base_dir, tiny_tuned_pack_path, tmp_path_factory):
    """(base, packs, store, concepts): 8 stored concepts, the last one without offsets (Textual Inversion's kind)."""
    base = e4t.load_base(tiny_base_dir)
    pack = e4t.load_pack(tiny_tuned_pack_path, base)
    store = ConceptStore(tmp_path_factory.mktemp("batch_store"))
    concepts = [_concept(base, pack, i, relative=i < 7) for i in range(8)]
    for c in concepts:
        store.put(c)
    return base, {pack.domain: pack}, store, concepts


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _run_together(engine: Engine, requests: list[dict]) -> list[list]:
    """Submit every request before the worker's batch window closes; the images of each, in order."""
    jobs = [engine.submit_generate(**r) for r in requests]
    out = []
    for job in jobs:
        images: list = []
        job.wait(lambda kind, payload, images=images: images.append(payload))
        out.append(images)
    return out


def test_mixed_concept_batch_equals_unbatched(world):
    base, packs, store, concepts = world
    prompts = [f"a photo of {{{c.id}}} on the beach" for c in concepts[:7]]
    prompts.append(f"a sketch of {{{concepts[7].id}}} next to {{{concepts[0].id}}}")  # two concepts, one offset-free
    requests = [dict(prompt=p, num_images=1, steps=STEPS, guidance=7.5, seed=10 + i) for i, p in enumerate(prompts)]
    engine = Engine(base, packs, store, queue_size=16, max_batch=8, batch_wait_ms=2000)
    try:
        batched = _run_together(engine, requests)
    finally:
        engine.close(10)
    assert engine.batch_sizes == {8: 1}, "the 8 requests were not denoised as one batch"

    by_id = {c.id: c for c in concepts}
    references = []
    for r, images in zip(requests, batched):
        (index, seed, image) = images[0]
        assert (index, seed) == (0, r["seed"])
        ref = e4t.generate(base, packs, by_id, r["prompt"], num_images=1, steps=STEPS, guidance=7.5, seed=r["seed"])[0]
        references.append(_pixels(ref))
        assert np.abs(_pixels(image) - _pixels(ref)).max() <= 1, r["prompt"]  # at most 1/255
    # the concepts really differ, so a misplaced offset or embedding could not pass the comparison above
    for i in range(1, 8):
        assert np.abs(references[i] - references[0]).max() > 8


def test_multi_image_requests_split_into_batches_of_max_batch(world):
    base, packs, store, concepts = world
    requests = [
        dict(prompt=f"a photo of {{{concepts[i].id}}}", num_images=3, steps=STEPS, guidance=2.0, seed=5 * i)
        for i in range(3)
    ]
    engine = Engine(base, packs, store, max_batch=4, batch_wait_ms=2000)
    try:
        batched = _run_together(engine, requests)
    finally:
        engine.close(10)
    # a window closes once it holds max_batch images (3 + 3): UNet batches of 4 and 2; then the third request's 3
    assert engine.batch_sizes == {4: 1, 2: 1, 3: 1}
    for r, images in zip(requests, batched):
        assert [(i, s) for i, s, _ in images] == [(k, r["seed"] + k) for k in range(3)]
        refs = e4t.generate(base, packs, {c.id: c for c in concepts}, r["prompt"], num_images=3, steps=STEPS,
                            guidance=2.0, seed=r["seed"])  # fmt: skip
        for (_, _, image), ref in zip(images, refs):
            assert np.abs(_pixels(image) - _pixels(ref)).max() <= 1


def test_different_steps_are_not_batched_together(world):
    base, packs, store, concepts = world
    requests = [dict(prompt=f"a photo of {{{concepts[0].id}}}", num_images=1, steps=s, seed=1) for s in (2, 3, 2)]
    engine = Engine(base, packs, store, max_batch=8, batch_wait_ms=2000)
    try:
        results = _run_together(engine, requests)
    finally:
        engine.close(10)
    # the window gathers both steps=2 requests; the steps=3 one waits and runs in its own batch
    assert engine.batch_sizes == {2: 1, 1: 1}
    assert all(len(images) == 1 for images in results)
    assert np.abs(_pixels(results[0][0][2]) - _pixels(results[2][0][2])).max() == 0  # same request, same image


def test_concept_cache_is_lru_by_bytes(world):
    base, packs, store, concepts = world
    size = concept_bytes(concepts[0])
    cache = ConceptCache(max_bytes=2 * size + size // 2)  # room for two
    cache.put(concepts[0])
    cache.put(concepts[1])
    assert cache.get(concepts[0].id) is concepts[0]  # 0 is now the most recent
    cache.put(concepts[2])  # evicts 1, the least recently used
    assert concepts[1].id not in cache and concepts[0].id in cache and concepts[2].id in cache
    assert cache.bytes == 2 * size
    with pytest.raises(ValueError, match="at least 0 bytes"):
        ConceptCache(-1)


def test_engine_serves_hot_concepts_from_memory_and_forgets_deleted_ones(world, tmp_path):
    base, packs, _, concepts = world
    store = ConceptStore(tmp_path / "store")
    victim = _concept(base, packs["faces"], 99)
    store.put(victim)
    engine = Engine(base, packs, store, concept_cache_mb=1)
    try:
        assert engine.load_concept(victim.id).id == victim.id
        assert engine.load_concept(victim.id).id == victim.id
        assert (engine.concepts.misses, engine.concepts.hits) == (1, 1)
        engine.delete_concept(victim.id)
        assert victim.id not in engine.concepts
        with pytest.raises(e4t.errors.NotFound):
            engine.generate(f"a photo of {{{victim.id}}}", num_images=1, steps=1)
    finally:
        engine.close(10)


def test_engine_rejects_bad_batch_settings(world):
    base, packs, store, _ = world
    with pytest.raises(ValueError, match="`max_batch` has to be at least 1 but is 0"):
        Engine(base, packs, store, max_batch=0)
    with pytest.raises(ValueError, match="`batch_wait_ms` has to be at least 0 but is -1"):
        Engine(base, packs, store, batch_wait_ms=-1)


def test_a_request_without_guidance_draws_at_the_bases_default(world):
    import dataclasses

    base, packs, store, concepts = world
    base = dataclasses.replace(base, default_guidance=2.0)  # as a folder recording its own scale loads
    prompt = f"a photo of {{{concepts[0].id}}} on the beach"
    engine = Engine(base, packs, store)
    try:
        [[(_, _, image)]] = _run_together(engine, [dict(prompt=prompt, num_images=1, steps=STEPS, seed=3)])
    finally:
        engine.close(10)
    by_id = {c.id: c for c in concepts}
    at = {
        g: _pixels(e4t.generate(base, packs, by_id, prompt, num_images=1, steps=STEPS, guidance=g, seed=3)[0])
        for g in (2.0, 7.5)
    }
    assert np.abs(_pixels(image) - at[2.0]).max() <= 1
    assert np.abs(at[7.5] - at[2.0]).max() > 8  # the scale shows in the pixels, so the check above can fail


def test_identity_guided_requests_batch_apart_from_plain_ones_and_equal_generate(world):
    base, packs, store, concepts = world
    prompts = [f"a photo of {{{c.id}}} on the beach" for c in concepts[:2]]
    requests = [dict(prompt=p, num_images=1, steps=STEPS, guidance=3.0, seed=4) for p in prompts]
    requests += [dict(r, identity_guidance=6.0) for r in requests]
    engine = Engine(base, packs, store, max_batch=8, batch_wait_ms=2000)
    try:
        results = _run_together(engine, requests)
    finally:
        engine.close(10)
    assert engine.batch_sizes == {2: 2}  # one batch per guidance rule
    by_id = {c.id: c for c in concepts}
    for r, [(_, _, image)] in zip(requests, results):
        gen = {k: v for k, v in r.items() if k != "prompt"}
        ref = e4t.generate(base, packs, by_id, r["prompt"], **gen)[0]
        assert np.abs(_pixels(image) - _pixels(ref)).max() <= 1
    assert np.abs(_pixels(results[2][0][2]) - _pixels(results[0][0][2])).max() > 8  # the rule shows in the pixels
