"""DreamBooth on the tiny base: prior images from the base, LoRA offsets from zero, the loss falls,
snapshots, determinism, and generation with "[V] face"."""

import numpy as np
import pytest
import torch

import e4t.dreambooth as db
from e4t import generate
from e4t.concept import Concept
from e4t.errors import InvalidInput
from e4t.prompts import add_suffixes

FAST = db.DreamBoothConfig(lr=1e-2, batch=2, prior_images=2, prior_steps=2)  # seconds on the tiny base


@pytest.fixture(scope="module")
def run(tiny, subject):
    """One 6-step run with snapshots at 0, 3 and 6, recording the prior generation it asked the base for."""
    base, pack = tiny
    calls, seen, snaps = [], [], {}

    def spy(base_, packs, concepts, prompt, **kwargs):
        images = generate(base_, packs, concepts, prompt, **kwargs)
        calls.append((packs, concepts, prompt, kwargs, images))
        return images

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db, "generate", spy)
        concept = db.dreambooth(
            base,
            pack,
            subject,
            steps=6,
            seed=1,
            config=FAST,
            progress=lambda s, n, loss: seen.append((s, n)),
            snapshots=(0, 3, 6),
            on_snapshot=lambda step, c: snaps.setdefault(step, c),
        )
    return concept, calls, seen, snaps


def test_prior_images_come_from_the_plain_base(tiny, run):
    base, _ = tiny
    ((packs, concepts, prompt, kwargs, images),) = run[1]  # one generation, at the start
    assert packs == {} and concepts == {} and prompt == "a photo of a face"  # no concept, no offsets
    assert kwargs["num_images"] == 2 and kwargs["seed"] == FAST.prior_seed and kwargs["steps"] == 2
    assert [im.size for im in images] == [(base.resolution, base.resolution)] * 2


def test_offsets_change_from_zero_and_the_loss_falls(tiny, run, fixed_noise_loss):
    base, pack = tiny
    concept, _, seen, snaps = run
    assert seen == [(i, 6) for i in range(1, 7)]
    assert concept.method == "dreambooth" and concept.steps == 6 and concept.suffix == "face"
    assert not concept.relative_to_pack and concept.offset_deltas.keys() == pack.offsets.keys()
    assert concept.offsets(pack) == concept.offset_deltas  # its own LoRA, not the pack's
    assert all(v.abs().sum() == 0 for k, v in snaps[0].offset_deltas.items() if "lora_B" in k)  # starts at zero
    assert any(v.abs().sum() > 0 for k, v in concept.offset_deltas.items() if "lora_B" in k)
    assert torch.equal(concept.embedding, db.identifier_embedding(base, FAST.identifier))  # [V] is not trained
    assert not any(p.requires_grad for p in base.unet.parameters())

    prompt = "a photo of {S} face"
    untuned = fixed_noise_loss(concept.embedding, prompt)
    tuned = fixed_noise_loss(concept.embedding, prompt, concept.offsets(pack))
    assert tuned < untuned, (tuned, untuned)


def test_snapshots_and_determinism(tiny, subject, run):
    base, pack = tiny
    concept, _, _, snaps = run
    assert sorted(snaps) == [0, 3, 6] and [snaps[s].steps for s in (0, 3, 6)] == [0, 3, 6]
    assert all(torch.equal(v, concept.offset_deltas[k]) for k, v in snaps[6].offset_deltas.items())
    again = db.dreambooth(base, pack, subject, steps=3, seed=1, config=FAST)  # the first 3 steps of the same run
    assert all(torch.equal(v, snaps[3].offset_deltas[k]) for k, v in again.offset_deltas.items())
    # the seed draws the LoRA's A factors (B = 0): another seed, another run
    for seed, same in ((1, True), (2, False)):
        init = db.initial_offsets(pack, torch.Generator().manual_seed(seed))
        assert all(torch.equal(v, init[k]) for k, v in snaps[0].offset_deltas.items()) == same


def test_generation_binds_the_concept_to_its_class_word(tiny, run, tmp_path):
    base, pack = tiny
    run[0].save(tmp_path / "db.safetensors")
    concept = Concept.load(tmp_path / "db.safetensors")
    assert concept.suffix == "face" and not concept.relative_to_pack and concept.method == "dreambooth"
    assert add_suffixes(f"a photo of {{{concept.id}}} on the beach", {concept.id: "face"}) == (
        f"a photo of {{{concept.id}}} face on the beach"
    )
    assert add_suffixes(f"{{{concept.id}}} face", {concept.id: "face"}) == f"{{{concept.id}}} face"
    packs, concepts = {"faces": pack}, {concept.id: concept}
    (short,) = generate(base, packs, concepts, f"a photo of {{{concept.id}}}", num_images=1, steps=2)
    (spelled,) = generate(base, packs, concepts, f"a photo of {{{concept.id}}} face", num_images=1, steps=2)
    assert np.array_equal(np.asarray(short), np.asarray(spelled))  # "{id}" is read as "[V] face"


def test_bad_requests(tiny, subject):
    base, pack = tiny
    with pytest.raises(InvalidInput, match=f"dreambooth: `steps` must be between 0 and {db.MAX_STEPS}"):
        db.dreambooth(base, pack, subject, steps=db.MAX_STEPS + 1)
    with pytest.raises(InvalidInput, match="identifier 'sks' is not a regular token"):
        db.dreambooth(base, pack, subject, steps=1, config=db.DreamBoothConfig(identifier="sks"))
