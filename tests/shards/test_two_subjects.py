"""Two-subject scenes: exact, disjoint masks drawn from each subject's layer; captions; crops; the CLI."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from shards import cats, faces
from shards.scenes import apply_lighting, background
from shards.two_subjects import EVEN_LIGHT, SUPERSAMPLE, SceneSubject, crop_to_mask, main, render_scene


def _subject(domain: str, index: int) -> SceneSubject:
    mod = faces if domain == "faces" else cats
    return SceneSubject(domain, mod.identity_attributes(index, 0), mod.identity_name(index, 0))


@pytest.mark.parametrize("pair", [("faces", "cats"), ("faces", "faces"), ("cats", "cats")])
def test_masks_are_the_drawn_subjects(pair):
    context = {"background": "beach", "medium": "photo", "accessory": "none"}
    scene = render_scene([_subject(pair[0], 7), _subject(pair[1], 3)], context)
    masks = [np.asarray(m) for m in scene.masks]
    assert scene.image.size == (64, 64) and scene.image.mode == "RGB"
    assert all(m.shape == (64, 64) and set(np.unique(m)) == {0, 255} for m in masks)
    assert not np.any((masks[0] > 0) & (masks[1] > 0))  # no shared pixel
    # left subject in the left half, right one in the right half; each a sizeable head
    assert masks[0][:, 32:].sum() == 0 and masks[1][:, :32].sum() == 0
    assert all(200 < (m > 0).sum() < 1200 for m in masks)

    # outside the subjects (past the 3 px reach of the final Lanczos resize) the picture is the background alone
    s = 64 * SUPERSAMPLE
    bare = background("beach", 0, s).convert("RGB").resize((64, 64), Image.LANCZOS, reducing_gap=2.0)
    bare = np.asarray(apply_lighting(bare, EVEN_LIGHT)).astype(int)
    union = Image.fromarray(np.maximum(*masks)).filter(ImageFilter.MaxFilter(7))
    outside = np.asarray(union) == 0
    image = np.asarray(scene.image).astype(int)
    assert np.array_equal(image[outside], bare[outside])
    # and inside each mask it is mostly not
    for m in masks:
        inside = m > 0
        assert (np.abs(image - bare).sum(-1)[inside] > 0).mean() > 0.9


def test_caption_deterministic_and_checked():
    subjects = [_subject("faces", 1), _subject("cats", 2)]
    context = {"background": "snow", "medium": "sketch", "accessory": "hat"}
    a, b = render_scene(subjects, context), render_scene(subjects, context)
    assert a.caption == "a sketch of a face and a cat in the snow wearing a hat"
    assert a.class_words == ["face", "cat"]
    assert a.image.tobytes() == b.image.tobytes()
    assert [m.tobytes() for m in a.masks] == [m.tobytes() for m in b.masks]
    with pytest.raises(ValueError, match="exactly 2 subjects"):
        render_scene(subjects[:1])
    with pytest.raises(ValueError, match="medium"):
        render_scene(subjects, {**context, "medium": "fresco"})


def test_crop_to_mask_frames_the_subject():
    scene = render_scene([_subject("faces", 4), _subject("cats", 5)])
    for mask in scene.masks:
        crop = crop_to_mask(scene.image, mask)
        assert crop.width == crop.height and crop.width >= 20
        box = mask.getbbox()
        assert crop.width >= max(box[2] - box[0], box[3] - box[1])
    with pytest.raises(ValueError, match="empty"):
        crop_to_mask(scene.image, Image.new("L", (64, 64), 0))


def test_cli_writes_scene_and_masks(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--left", "cats:2", "--right", "faces:9", "--background", "night"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mask_0.png", "mask_1.png", "scene.json", "scene.png"]
    assert Image.open(tmp_path / "mask_1.png").mode == "L"
    assert "a photo of a cat and a face at night" in capsys.readouterr().out
