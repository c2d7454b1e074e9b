"""Break-A-Scene on the tiny base: the cross-attention recorder and its loss, the masked loss, mask
checks, determinism, and one concept per mask that generates, alone and together."""

import pytest
import torch
from PIL import Image

from e4t import generate
from e4t.break_a_scene import BreakASceneConfig, break_a_scene, check_masks, union_masked_mse
from e4t.cross_attention import attention_mask_loss, cross_attention_resolutions, record_cross_attention
from e4t.errors import InvalidInput
from e4t.pack import DomainPack
from e4t.prompts import encode_prompts, tokenize_with_slots, word_embedding
from shards import cats, faces
from shards.two_subjects import SceneSubject, render_scene

FAST = BreakASceneConfig(batch=2, lr_handles=5e-2, lr_offsets=1e-2)  # seconds on the tiny base


@pytest.fixture(scope="module")
def scene():
    subjects = [
        SceneSubject("faces", faces.identity_attributes(3, 0)),
        SceneSubject("cats", cats.identity_attributes(4, 0)),
    ]
    return render_scene(subjects, {"background": "beach", "medium": "photo", "accessory": "none"})


@pytest.fixture(scope="module")
def cats_pack(tiny):
    """A second domain on the tiny base, for scenes of two domains."""
    from tests.conftest import TINY_VISION

    base, _ = tiny
    return DomainPack.initial(base, "cats", "cat", vision=TINY_VISION)


@pytest.fixture(scope="module")
def run(tiny, cats_pack, scene):
    """One 4-step run (2 in each phase) on a face-and-cat scene, with its progress."""
    base, faces_pack = tiny
    seen = []
    concepts = break_a_scene(
        base,
        [faces_pack, cats_pack],
        scene.image,
        scene.masks,
        steps=4,
        seed=7,
        config=FAST,
        progress=lambda s, n, loss: seen.append((s, n, loss)),
    )
    return concepts, seen


def _noisy(base, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = base.unet.config.sample_size
    latents = torch.randn(batch, base.unet.config.in_channels, size, size, generator=g)
    return latents, torch.full((batch,), 500)


def test_recorder_keeps_the_unet_output_and_records_maps(tiny):
    base, _ = tiny
    unet = base.unet
    resolution = cross_attention_resolutions(unet)[0]
    latents, t = _noisy(base, 2)
    states = encode_prompts(base.text_encoder, base.tokenizer, ["a photo of a face", "a sketch of a face"], {})
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=states).sample
        with record_cross_attention(unet, resolution) as store:
            recorded = unet(latents, t, encoder_hidden_states=states).sample
            maps = store.maps()
    assert torch.allclose(plain, recorded, atol=1e-5)  # the same attention, only made explicit
    assert maps.shape == (2, states.shape[1], resolution, resolution)
    assert torch.allclose(maps.sum(1), torch.ones(2, resolution, resolution), atol=1e-4)  # softmax over tokens
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    with pytest.raises(ValueError, match="cross-attention"):
        with record_cross_attention(unet, resolution + 1):
            pass


def test_attention_loss_is_differentiable_and_falls_toward_the_mask(tiny):
    base, _ = tiny
    unet = base.unet
    resolution = cross_attention_resolutions(unet)[0]
    handle = torch.nn.Parameter(word_embedding(base.text_encoder, base.tokenizer, "face").detach().clone())
    prompt = "a photo of {h}"
    position = tokenize_with_slots(base.tokenizer, prompt, base.tokenizer.eos_token_id)[1][0][0]
    target = torch.zeros(resolution, resolution)
    target[:, : resolution // 2] = 1.0  # the left half
    latents, t = _noisy(base, 1, seed=3)
    optimizer = torch.optim.Adam([handle], lr=0.1)
    losses = []
    with record_cross_attention(unet, resolution) as store:
        for _ in range(15):
            store.clear()
            states = encode_prompts(base.text_encoder, base.tokenizer, [prompt], {"h": handle})
            unet(latents, t, encoder_hidden_states=states)
            loss = attention_mask_loss(store.maps(), [[position]], [[target]])
            optimizer.zero_grad()
            loss.backward()
            assert handle.grad is not None and handle.grad.abs().sum() > 0
            optimizer.step()
            losses.append(loss.item())
    assert min(losses[-3:]) < 0.9 * losses[0], losses


def test_masked_loss_ignores_pixels_outside_the_union():
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    masks = torch.zeros(2, 3, 32, 32)
    masks[:, 0, :, :8] = 1  # subject 0: the left quarter
    masks[:, 1, :, 24:] = 1  # subject 1: the right quarter
    masks[:, 2, :8, 8:24] = 1  # subject 2: top middle
    subsets = [[0], [1, 0]]
    loss = union_masked_mse(prediction, target, masks, subsets)
    changed = prediction.clone()
    changed[0, :, :, 2:] += 5.0  # sample 0 outside subject 0
    changed[1, :, :, 2:6] += 5.0  # sample 1 outside subjects 0 and 1
    assert torch.equal(union_masked_mse(changed, target, masks, subsets), loss)
    changed[1, :, :, 7] += 5.0  # inside subject 1
    assert union_masked_mse(changed, target, masks, subsets) > loss
    inside = (prediction[0, :, :, :2] - target[0, :, :, :2]).pow(2).sum() + (
        prediction[1, :, :, [0, 1, 6, 7]] - target[1, :, :, [0, 1, 6, 7]]
    ).pow(2).sum()
    assert torch.allclose(loss, inside / (4 * (16 + 32)))


def test_masks_are_checked_and_named(tiny, scene):
    base, pack = tiny
    size = base.resolution
    empty = Image.new("L", scene.image.size, 0)
    small = scene.masks[1].resize((32, 32))
    overlapping = scene.masks[0].copy()
    cases = [
        ([scene.masks[0], empty], "mask 2 of 2 is empty"),
        ([small, scene.masks[1]], "mask 1 of 2 is 32x32 but the image is 64x64"),
        ([scene.masks[0], overlapping], "masks 1 and 2 of 2 overlap"),
        ([], "needs 1 to 4 masks"),
        ([scene.masks[0]] * 5, "needs 1 to 4 masks"),
    ]
    for masks, message in cases:
        with pytest.raises(InvalidInput, match=message):
            check_masks(scene.image, masks, size)
    with pytest.raises(InvalidInput, match="mask 2 of 2 is empty"):
        break_a_scene(base, [pack, pack], scene.image, [scene.masks[0], empty], steps=1)
    with pytest.raises(InvalidInput, match="one domain per mask"):
        break_a_scene(base, [pack], scene.image, scene.masks, steps=1)
    fitted = check_masks(scene.image, scene.masks, size)
    assert fitted.shape == (1, 2, size, size) and set(fitted.unique().tolist()) == {0.0, 1.0}


def test_one_concept_per_mask_sharing_one_lora(tiny, cats_pack, run):
    base, faces_pack = tiny
    concepts, seen = run
    assert [(s, n) for s, n, _ in seen] == [(i, 4) for i in range(1, 5)]
    assert [c.domain for c in concepts] == ["faces", "cats"] and [c.suffix for c in concepts] == ["face", "cat"]
    assert [c.pack_hash for c in concepts] == [faces_pack.hash, cats_pack.hash]
    assert len({c.id for c in concepts}) == 2 and concepts[0].extra["scene_concepts"] == [c.id for c in concepts]
    assert all(c.method == "break_a_scene" and c.steps == 4 and not c.relative_to_pack for c in concepts)
    a, b = (c.offset_deltas for c in concepts)
    assert a.keys() == faces_pack.offsets.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # phase two moved the UNet
    for concept, word in zip(concepts, ["face", "cat"], strict=True):  # each handle left its class word
        assert not torch.allclose(concept.embedding, word_embedding(base.text_encoder, base.tokenizer, word))
    # the shared UNet is left as it was found
    assert all(m.disable_adapters for m in base.unet.modules() if hasattr(m, "lora_A"))
    assert not any(p.requires_grad for p in base.unet.parameters())
    assert all(".attn2." not in n or "Recording" not in type(p).__name__ for n, p in base.unet.attn_processors.items())


def test_deterministic_for_a_seed(tiny, cats_pack, scene, run):
    base, faces_pack = tiny
    again = break_a_scene(base, [faces_pack, cats_pack], scene.image, scene.masks, steps=4, seed=7, config=FAST)
    other = break_a_scene(base, [faces_pack, cats_pack], scene.image, scene.masks, steps=4, seed=8, config=FAST)
    for first, second in zip(run[0], again, strict=True):
        assert torch.equal(first.embedding, second.embedding)
        assert all(torch.equal(first.offset_deltas[k], second.offset_deltas[k]) for k in first.offset_deltas)
    assert not torch.equal(run[0][0].embedding, other[0].embedding)


def test_the_concepts_generate_alone_and_together(tiny, cats_pack, run):
    base, faces_pack = tiny
    concepts, _ = run
    packs = {"faces": faces_pack, "cats": cats_pack}
    named = {c.id: c for c in concepts}
    c1, c2 = (c.id for c in concepts)
    for prompt in (f"a photo of {{{c1}}}", f"a photo of {{{c2}}} on the beach", f"a photo of {{{c1}}} and {{{c2}}}"):
        images = generate(base, packs, named, prompt, num_images=2, steps=2, seed=1, batch_size=2)
        assert [im.size for im in images] == [(base.resolution, base.resolution)] * 2
    together = generate(base, packs, named, f"a photo of {{{c1}}} and {{{c2}}}", num_images=1, steps=2, seed=1)
    alone = generate(base, packs, named, f"a photo of {{{c1}}}", num_images=1, steps=2, seed=1)
    assert together[0].tobytes() != alone[0].tobytes()


def test_tune_one_runs_a_scene_tuner_on_one_subject(tiny):
    """The evaluation's and the benchmark's path: one pack, the image, the subject's mask, one concept back."""
    from e4t.methods import tune_one
    from evaluation import protocol

    base, pack = tiny
    subject = protocol.heldout_identities("faces", 1)[0]
    image, mask = protocol.input_image(subject, base.resolution), protocol.input_mask(subject, base.resolution)
    concept = tune_one("break_a_scene", base, pack, image, subject_mask=mask, steps=2, seed=0, config=FAST)
    (alone,) = break_a_scene(base, [pack], image, [mask], steps=2, seed=0, config=FAST)
    assert concept.method == "break_a_scene" and torch.equal(concept.embedding, alone.embedding)
    with pytest.raises(InvalidInput, match="break_a_scene .* needs `subject_mask`"):
        tune_one("break_a_scene", base, pack, image, steps=2)
    with pytest.raises(InvalidInput, match="unknown method 'sks'; the methods are e4t, .*break_a_scene"):
        tune_one("sks", base, pack, image, steps=2)
