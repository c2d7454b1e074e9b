"""Prompts that name several concepts: across domains and methods, how their offsets combine, and the errors."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import e4t.dreambooth as db
from e4t import generate, load_base, load_pack, personalize
from e4t.combine import MAX_CONCEPTS, RULES, combine, offsets_of
from e4t.concept import Concept, new_concept_id
from e4t.errors import InvalidInput
from e4t.generate import generate_samples, prepare_prompt
from e4t.offsets import OffsetConfig
from e4t.pack import DomainPack
from e4t.textual_inversion import textual_inversion

FAST_DB = db.DreamBoothConfig(lr=1e-2, batch=2, prior_images=2, prior_steps=2)


def render(domain: str, identity: int) -> Image.Image:
    from shards.synth import render_sample

    _, png, _ = render_sample(domain, identity, 0, 64, 0)
    return Image.open(io.BytesIO(png))


@pytest.fixture(scope="module")
def world(tiny_base_dir, tiny_tuned_pack_path, tiny_cats_pack_path):
    """The tiny base with a faces pack and a cats pack (different non-zero offsets), and concepts of every method."""
    base = load_base(tiny_base_dir)
    packs = {"faces": load_pack(tiny_tuned_pack_path, base), "cats": load_pack(tiny_cats_pack_path, base)}
    concepts = {
        "face": personalize(base, packs["faces"], render("faces", 0), steps=2, seed=0),
        "face2": personalize(base, packs["faces"], render("faces", 1), steps=2, seed=0),
        "cat": personalize(base, packs["cats"], render("cats", 0), steps=2, seed=0),
        "ti": textual_inversion(base, packs["faces"], render("faces", 2), steps=2, seed=0),
        "db": db.dreambooth(base, packs["cats"], render("cats", 1), steps=2, seed=0, config=FAST_DB),
    }
    return base, packs, concepts


def named(concepts: dict[str, Concept], template: str) -> str:
    return template.format(**{k: "{" + c.id + "}" for k, c in concepts.items()})


def image(base, packs, concepts, prompt: str) -> np.ndarray:
    by_id = {c.id: c for c in concepts.values()}
    return np.asarray(generate(base, packs, by_id, prompt, num_images=1, steps=2, seed=3)[0], dtype=float)


def test_each_concept_reads_its_offsets_against_its_own_domain_pack(world):
    base, packs, c = world
    prepared = prepare_prompt(base, packs, {x.id: x for x in c.values()}, named(c, "a photo of {face} holding {cat}"))
    (face_offsets, wf), (cat_offsets, wc) = prepared.offsets
    assert wf == wc == 0.5  # the default rule averages the two concepts' offsets
    for key, value in cat_offsets.items():
        assert torch.equal(value, packs["cats"].offsets[key] + c["cat"].offset_deltas[key])
        assert torch.equal(face_offsets[key], packs["faces"].offsets[key] + c["face"].offset_deltas[key])
    assert any(not torch.equal(cat_offsets[k], face_offsets[k]) for k in cat_offsets)


def test_a_cross_domain_prompt_differs_from_each_concept_alone_and_uses_both_offsets(world):
    base, packs, c = world
    both = image(base, packs, c, named(c, "a photo of {face} and {cat}"))
    assert np.abs(both - image(base, packs, c, named(c, "a photo of {face}"))).max() > 10
    assert np.abs(both - image(base, packs, c, named(c, "a photo of {cat}"))).max() > 10
    # the same embeddings, one concept's offsets changed: the image changes, so each concept's offsets take part
    for who in ("face", "cat"):
        other = dict(c)
        other[who] = replace(c[who], offset_deltas={k: v + 0.3 for k, v in c[who].offset_deltas.items()})
        assert np.abs(both - image(base, packs, other, named(c, "a photo of {face} and {cat}"))).max() > 5, who


def test_generate_and_the_batched_path_agree_on_a_combined_prompt(world):
    base, packs, c = world
    by_id = {x.id: x for x in c.values()}
    prompt = named(
        c, "a photo of {face} and {face2} next to {db} on the beach"
    )  # DreamBooth adds "cat" after its token
    alone = np.asarray(generate(base, packs, by_id, prompt, num_images=1, steps=2, seed=3)[0], float)
    batched = generate_samples(base, [(prepare_prompt(base, packs, by_id, prompt), 3)], steps=2)[0]
    assert np.abs(alone - np.asarray(batched, float)).max() <= 2
    # every rule runs batched ("deltas" carries a negative weight for the faces pack both faces share)
    for rule in RULES:
        assert generate_samples(base, [(prepare_prompt(base, packs, by_id, prompt, rule=rule), 3)], steps=1)


def test_identity_guidance_agrees_batched_and_alone_and_reads_each_concept_as_its_class_word(world):
    base, packs, c = world
    by_id = {x.id: x for x in c.values()}
    prompt = named(c, "a photo of {face} next to {db} on the beach")  # DreamBooth's "cat" suffix goes with it
    prepared = prepare_prompt(base, packs, by_id, prompt, identity=True)
    classes = prepare_prompt(base, packs, {}, "a photo of a face next to a cat on the beach")
    assert torch.equal(prepared.class_embeds, classes.prompt_embeds)
    alone = generate(base, packs, by_id, prompt, num_images=1, steps=2, seed=3, guidance=3.0, identity_guidance=6.0)
    batched = generate_samples(base, [(prepared, 3)], steps=2, guidance=3.0, identity_guidance=6.0)[0]
    assert np.abs(np.asarray(alone[0], float) - np.asarray(batched, float)).max() <= 2
    with pytest.raises(ValueError, match="identity=True"):
        generate_samples(base, [(prepare_prompt(base, packs, by_id, prompt), 3)], steps=1, identity_guidance=6.0)


def test_combination_rules_in_weight_space(world):
    base, packs, c = world
    tuned = offsets_of(packs, [c["face"], c["face2"], c["cat"]])
    path = next(k[: -len(".lora_A.weight")] for k in tuned[0][1] if k.endswith(".lora_A.weight"))

    def delta_w(entries) -> torch.Tensor:
        return sum(w * o[f"{path}.lora_B.weight"] @ o[f"{path}.lora_A.weight"] for o, w in entries)

    w = [delta_w([(o, 1.0)]) for _, o in tuned]
    pf, pc = (delta_w([(packs[d].offsets, 1.0)]) for d in ("faces", "cats"))
    torch.testing.assert_close(delta_w(combine(packs, tuned, "average")), sum(w) / 3)
    torch.testing.assert_close(delta_w(combine(packs, tuned, "sum")), sum(w))
    # the domains' priors once each (averaged), plus each concept's own tuning on top of its pack
    expected = (pf + pc) / 2 + (w[0] - pf) + (w[1] - pf) + (w[2] - pc)
    torch.testing.assert_close(delta_w(combine(packs, tuned, "deltas")), expected)
    with pytest.raises(ValueError, match="`rule`"):
        combine(packs, tuned, "median")


def test_identical_offsets_count_once_and_offset_free_concepts_do_not_dilute(world):
    base, packs, c = world
    # two concepts sharing one set of offsets (as one Break-A-Scene run makes): one entry
    twin = replace(c["face"], id=new_concept_id(), embedding=c["face"].embedding.flip(0))
    concepts = {"face": c["face"], "twin": twin, "cat": c["cat"], "ti": c["ti"]}
    by_id = {x.id: x for x in concepts.values()}
    entries = prepare_prompt(base, packs, by_id, named(concepts, "{face} and {twin} with {cat} and {ti}")).offsets
    assert [w for _, w in entries] == [0.5, 0.5]
    sums = prepare_prompt(base, packs, by_id, named(concepts, "{face} and {twin}"), rule="sum").offsets
    assert [w for _, w in sums] == [1.0]
    # a concept named twice is one concept, its offsets once
    twice = prepare_prompt(base, packs, by_id, named(concepts, "{face} next to {face} and {cat}")).offsets
    assert [w for _, w in twice] == [0.5, 0.5]
    assert image(base, packs, concepts, named(concepts, "a photo of {face} and {face}")).shape == (64, 64, 3)


def test_more_concepts_than_the_limit_are_refused_by_name(world):
    base, packs, c = world
    extra = {f"x{i}": replace(c["face"], id=new_concept_id()) for i in range(MAX_CONCEPTS + 1)}
    by_id = {x.id: x for x in extra.values()}
    prompt = " and ".join("{" + x.id + "}" for x in extra.values())
    with pytest.raises(InvalidInput, match=f"at most {MAX_CONCEPTS} concepts but names {MAX_CONCEPTS + 1}") as info:
        prepare_prompt(base, packs, by_id, prompt)
    assert all(x.id in str(info.value) for x in extra.values())
    # the limit counts the negative prompt's concepts too
    ids = list(by_id)
    with pytest.raises(InvalidInput, match="at most"):
        prepare_prompt(base, packs, by_id, " ".join("{" + i + "}" for i in ids[:4]), "{" + ids[4] + "}")


def test_concepts_of_another_base_are_named_with_both_hashes(world):
    base, packs, c = world
    foreign = replace(c["cat"], id=new_concept_id(), base_hash="0123456789abcdef")
    concepts = {"face": c["face"], "foreign": foreign}
    with pytest.raises(InvalidInput) as info:
        prepare_prompt(base, packs, {x.id: x for x in concepts.values()}, named(concepts, "{face} and {foreign}"))
    message = str(info.value)
    assert c["face"].id in message and foreign.id in message and base.hash in message and "0123456789abcdef" in message


def test_offsets_of_different_layouts_are_refused_by_name(world, tiny_base_dir):
    base, packs, c = world
    # a DreamBooth concept whose LoRA has rank 8 where its pack's layout has rank 4
    wide = {
        k: torch.zeros(8, v.shape[1]) if k.endswith("lora_A.weight") else torch.zeros(v.shape[0], 8)
        for k, v in c["db"].offset_deltas.items()
    }
    odd = replace(c["db"], id=new_concept_id(), offset_deltas=wide)
    concepts = {"face": c["face"], "odd": odd}
    with pytest.raises(InvalidInput, match=f"concept {odd.id}'s weight offsets \\(rank 8 on to_q"):
        prepare_prompt(base, packs, {x.id: x for x in concepts.values()}, named(concepts, "{face} and {odd}"))
    # a domain whose pack has another layout (rank 2): each concept fits its pack, but not each other
    other_base = load_base(tiny_base_dir)  # a fresh UNet, so the rank-2 adapter does not meet the rank-4 one
    narrow = DomainPack.initial(other_base, "art", "art", offset_config=OffsetConfig(rank=2), seed=2)
    art = replace(
        c["cat"],
        id=new_concept_id(),
        domain="art",
        pack_hash=narrow.hash,
        offset_deltas={k: torch.zeros_like(v) for k, v in narrow.offsets.items()},
    )
    concepts = {"face": c["face"], "art": art}
    with pytest.raises(InvalidInput, match="different layouts") as info:
        prepare_prompt(
            base, {**packs, "art": narrow}, {x.id: x for x in concepts.values()}, named(concepts, "{face} and {art}")
        )
    assert c["face"].id in str(info.value) and art.id in str(info.value) and "rank 2" in str(info.value)
