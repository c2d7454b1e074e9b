"""Per-concept scoring of multi-subject images, with the committed judges on rendered truths."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from e4t.judges import load_judges
from evaluation import protocol
from evaluation.per_concept import CROPS, assign_crops, score_concepts


def side_by_side(left: Image.Image, right: Image.Image, size: int) -> Image.Image:
    """Two single-subject images at half size in the layout `CROPS` expects, on `left`'s background colour."""
    half = size // 2
    canvas = Image.new("RGB", (size, size), left.convert("RGB").getpixel((0, 0)))
    for image, x in ((left, 0), (right, half)):
        canvas.paste(image.convert("RGB").resize((half, half), Image.Resampling.LANCZOS), (x, (size - half) // 2))
    return canvas


@pytest.fixture(scope="module")
def judges():
    from e4t.embedded import artifacts_root

    return load_judges(artifacts_root() / "judges")


@pytest.fixture(scope="module")
def world():
    """Two held-out faces and a held-out cat: their beach truths and reference views."""
    face_a, face_b = protocol.heldout_identities("faces", 2)
    (cat,) = protocol.heldout_identities("cats", 1)
    beach = protocol.prompts("faces")[0]
    truths = {s.identity: protocol.truth_images(s, beach, 2, 64) for s in (face_a, face_b, cat)}
    refs = {s.identity: protocol.reference_images(s, 3, 64) for s in (face_a, face_b, cat)}
    return (face_a.identity, face_b.identity, cat.identity), truths, refs, beach


def test_assignment_takes_each_crop_once_for_the_best_total():
    # concept 0 prefers crop 0 slightly, concept 1 needs it badly: the total decides
    assert assign_crops(torch.tensor([[0.9, 0.8, 0.1], [0.85, 0.1, 0.1]])) == (1, 0)
    assert assign_crops(torch.tensor([[0.2, 0.9, 0.1]])) == (1,)
    with pytest.raises(ValueError, match="4 concepts to 3 crops"):
        assign_crops(torch.zeros(4, 3))


@pytest.mark.parametrize("pair", [(0, 1), (0, 2), (2, 0)], ids=["face+face", "face+cat", "cat+face"])
def test_side_by_side_subjects_are_found_in_their_halves(judges, world, pair):
    names, truths, refs, beach = world
    left, right = names[pair[0]], names[pair[1]]
    images = [side_by_side(a, b, 64) for a, b in zip(truths[left], truths[right])]
    scores = score_concepts(judges, images, {left: refs[left], right: refs[right]}, context=beach.named)
    assert scores.crops == {left: {"left": 2}, right: {"right": 2}}
    # each concept is recognized in its half far above a wrong identity in the same place
    other = next(n for n in names if n not in (left, right))
    wrong = score_concepts(judges, images, {left: refs[other], right: refs[right]})
    assert scores.id_sim[left] > 0.7 and scores.id_sim[right] > 0.7
    assert scores.id_sim[left] > wrong.id_sim[left] + 0.3
    assert 0.0 <= scores.context_acc <= 1.0


def test_one_subject_is_scored_on_the_whole_image(judges, world):
    names, truths, refs, beach = world
    face = names[0]
    scores = score_concepts(judges, truths[face], {face: refs[face]}, context=beach.named)
    assert scores.crops == {face: {"whole": 2}} and scores.id_sim[face] > 0.7
    assert scores.context_acc == 1.0
    assert score_concepts(judges, truths[face], {face: refs[face]}).context_acc is None
    with pytest.raises(ValueError, match="reference"):
        score_concepts(judges, truths[face], {face: []})
    assert set(CROPS) == {"whole", "left", "right"}
