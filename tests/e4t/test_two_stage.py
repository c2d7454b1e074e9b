"""The two-stage rare-adjective method on the tiny base: the adjective rule, which stage moves what,
determinism, the concept's round trip and generation, and bad arguments."""

import re

import numpy as np
import pytest
import torch

import e4t.two_stage as ts
from e4t import generate
from e4t.concept import Concept
from e4t.errors import InvalidInput
from e4t.prompts import word_embedding

# a few steps must show on a random tiny base: 3 steps on the embedding, then 3 on the offsets
FAST = ts.TwoStageConfig(embedding_share=0.5, lr_embedding=5e-2, lr_offsets=1e-2, batch=2)


def caption_words() -> set[str]:
    """Every word the embedded world's captions can use: contexts and every attribute phrase, both domains."""
    from shards import cats, faces, scenes, synth

    words: set[str] = set()
    for mod in (faces, cats):
        phrases = [p for values in mod.ATTRIBUTE_PHRASES.values() for p in values.values()]
        for background in scenes.BACKGROUNDS:
            for medium in scenes.MEDIA:
                for accessory in mod.ACCESSORIES:
                    context = {"background": background, "medium": medium, "accessory": accessory}
                    words |= set(re.findall(r"[a-z]+", mod.caption_for(context, phrases)))
        beach = {"background": "beach", "medium": "photo", "accessory": "hat"}
        for attributes in (mod.identity_attributes(i, 0) for i in range(50)):  # captions as shards write them
            words |= set(re.findall(r"[a-z]+", synth.described_caption(mod.DOMAIN, attributes, beach)))
        words |= {w for values in mod.ATTRIBUTES.values() for v in values for w in re.findall(r"[a-z]+", v)}
    return words


def test_the_rule_picks_the_first_single_token_adjective_absent_from_the_captions(tmp_path):
    from pretrain.arch import TINY, train_tokenizer

    vocabulary = caption_words()
    assert {"face", "cat", "beach", "freckles", "tabby"} <= vocabulary  # the vocabulary is really read
    assert not vocabulary & set(ts.ADJECTIVES)  # no candidate is a caption word
    # a tokenizer that knows "loyal" and "modest" as words: the first of them in the list wins
    text = ["a photo of a face on the beach"] * 10 + ["a modest and loyal cat"] * 20
    tokenizer = train_tokenizer(text, tmp_path, TINY)
    assert len(tokenizer.tokenize("sincere")) > 1 and tokenizer.tokenize("loyal") == ["loyal</w>"]
    assert ts.ADJECTIVES.index("loyal") < ts.ADJECTIVES.index("modest")
    assert ts.rare_adjective(tokenizer) == "loyal"


def test_without_a_single_token_adjective_the_rule_takes_the_fewest_tokens(tiny):
    base, _ = tiny  # its tokenizer learned the captions only: no candidate is one token
    lengths = {w: len(base.tokenizer.tokenize(w)) for w in ts.ADJECTIVES}
    assert min(lengths.values()) > 1
    pick = ts.rare_adjective(base.tokenizer)
    assert lengths[pick] == min(lengths.values())
    assert all(lengths[w] > lengths[pick] for w in ts.ADJECTIVES[: ts.ADJECTIVES.index(pick)])  # first on ties


def unet_weights(unet) -> dict[str, torch.Tensor]:
    """The UNet's own weights, keyed as without adapters (PEFT moves a wrapped layer's under `base_layer`)."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}


@pytest.fixture(scope="module")
def run(tiny, subject):
    """One 6-step run (3 + 3) with snapshots at 0, 3 and 6, the text encoder's and UNet's weights before it,
    and the progress it reported."""
    base, pack = tiny
    text_before = {k: v.clone() for k, v in base.text_encoder.state_dict().items()}
    unet_before = unet_weights(base.unet)
    seen, snaps = [], {}

    def progress(step, total, loss, stage="?"):
        seen.append((step, total, stage))

    concept = ts.two_stage(
        base,
        pack,
        subject,
        steps=6,
        seed=1,
        config=FAST,
        progress=progress,
        snapshots=(0, 3, 6),
        on_snapshot=lambda step, c: snaps.setdefault(step, c),
    )
    return concept, snaps, seen, text_before, unet_before


def test_stage_one_moves_the_embedding_and_stage_two_only_the_offsets(tiny, run, fixed_noise_loss):
    base, pack = tiny
    concept, snaps, _, text_before, unet_before = run
    adjective = concept.extra["adjective"]
    assert adjective == ts.rare_adjective(base.tokenizer) and concept.extra["stages"] == [3, 3]
    start = word_embedding(base.text_encoder, base.tokenizer, adjective)
    zero = snaps[0].offset_deltas
    assert torch.equal(snaps[0].embedding, start) and all(v.abs().sum() == 0 for k, v in zero.items() if "lora_B" in k)

    # stage one (steps 1-3): the embedding moves, the offsets stay at their zero start
    assert not torch.equal(snaps[3].embedding, start)
    assert all(torch.equal(v, zero[k]) for k, v in snaps[3].offset_deltas.items())
    # stage two (steps 4-6): the offsets move, the embedding stays where stage one left it
    assert torch.equal(concept.embedding, snaps[3].embedding)
    assert any(v.abs().sum() > 0 for k, v in concept.offset_deltas.items() if "lora_B" in k)
    # the text encoder never changes, nor the UNet's own weights; nothing is left requiring grad
    assert all(torch.equal(v, text_before[k]) for k, v in base.text_encoder.state_dict().items())
    after = unet_weights(base.unet)
    assert after.keys() == unet_before.keys() and all(torch.equal(v, unet_before[k]) for k, v in after.items())
    assert not any(p.requires_grad for p in [*base.unet.parameters(), *base.text_encoder.parameters()])

    prompt = "a photo of {S} face"
    assert fixed_noise_loss(snaps[3].embedding, prompt) < fixed_noise_loss(start, prompt)
    tuned = fixed_noise_loss(concept.embedding, prompt, concept.offsets(pack))
    assert tuned < fixed_noise_loss(concept.embedding, prompt)


def test_progress_names_the_stages_over_the_whole_run(tiny, subject, run):
    seen = run[2]
    assert seen == [(i, 6, "tuning:embedding") for i in range(1, 4)] + [(i, 6, "tuning:unet") for i in range(4, 7)]
    base, pack = tiny
    plain = []  # a callback without a `stage` argument gets the three values of the other methods
    ts.two_stage(base, pack, subject, steps=2, config=FAST, progress=lambda s, n, loss: plain.append((s, n)))
    assert plain == [(1, 2), (2, 2)]


def test_deterministic_for_a_seed(tiny, subject):
    base, pack = tiny
    first, again, other = (ts.two_stage(base, pack, subject, steps=2, seed=s, config=FAST) for s in (1, 1, 2))
    assert torch.equal(again.embedding, first.embedding)
    assert all(torch.equal(v, first.offset_deltas[k]) for k, v in again.offset_deltas.items())
    assert not torch.equal(other.embedding, first.embedding)
    assert not all(torch.equal(v, first.offset_deltas[k]) for k, v in other.offset_deltas.items())


def test_the_concept_round_trips_and_generates_as_adjective_and_class_word(tiny, run):
    base, pack = tiny
    concept = Concept.from_bytes(run[0].to_bytes())
    assert concept.method == "two_stage" and concept.steps == 6 and concept.suffix == "face"
    assert not concept.relative_to_pack and concept.offset_deltas.keys() == pack.offsets.keys()
    assert torch.equal(concept.embedding, run[0].embedding) and concept.extra == run[0].extra
    assert all(torch.equal(v, run[0].offset_deltas[k]) for k, v in concept.offset_deltas.items())
    packs, concepts = {"faces": pack}, {concept.id: concept}
    (short,) = generate(base, packs, concepts, f"a photo of {{{concept.id}}}", num_images=1, steps=2)
    (spelled,) = generate(base, packs, concepts, f"a photo of {{{concept.id}}} face", num_images=1, steps=2)
    (plain,) = generate(base, packs, {}, "a photo of a face", num_images=1, steps=2)
    assert np.array_equal(np.asarray(short), np.asarray(spelled))  # "{id}" is read as "<S> face"
    assert not np.array_equal(np.asarray(short), np.asarray(plain))


def test_zero_steps_is_the_adjective_untuned(tiny, subject):
    base, pack = tiny
    concept = ts.two_stage(base, pack, subject, steps=0)
    adjective = ts.rare_adjective(base.tokenizer)
    assert torch.equal(concept.embedding, word_embedding(base.text_encoder, base.tokenizer, adjective))
    assert concept.steps == 0 and all(v.abs().sum() == 0 for k, v in concept.offset_deltas.items() if "lora_B" in k)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(steps=ts.MAX_STEPS + 1), f"two_stage: `steps` must be between 0 and {ts.MAX_STEPS}"),
        (dict(steps=-1), "two_stage: `steps` must be between"),
        (dict(config=ts.TwoStageConfig(embedding_share=1.5)), "embedding_share in \\[0, 1\\]"),
        (dict(config=ts.TwoStageConfig(batch=0)), "needs batch >= 1"),
        (dict(config=ts.TwoStageConfig(lr_offsets=0.0)), "learning rates must be positive"),
        (dict(config=ts.TwoStageConfig(adjective="very loyal")), "one word of letters, got 'very loyal'"),
        (dict(steps=4, snapshots=(5,), on_snapshot=print), "`snapshots` must be steps between 0 and 4"),
    ],
)
def test_bad_arguments(tiny, subject, kwargs, message):
    base, pack = tiny
    with pytest.raises(InvalidInput, match=message):
        ts.two_stage(base, pack, subject, **{"steps": 1, **kwargs})
    with pytest.raises(InvalidInput, match="no candidate adjectives"):
        ts.rare_adjective(base.tokenizer, [])
