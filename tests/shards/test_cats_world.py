"""The cats domain: same schema and contexts as faces, distinguishable identities, deterministic."""

import io

import numpy as np
from PIL import Image

from shards import cats, faces
from shards.synth import render_sample


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32)


def test_same_schema_and_caption_grammar_as_faces():
    _, _, cat = render_sample("cats", 5, 0, 64, 0)
    _, _, face = render_sample("faces", 5, 0, 64, 0)
    assert set(cat) == set(face)
    assert set(cat["context"]) == set(face["context"])
    assert cat["domain"] == "cats" and cat["identity"].startswith("cats/")
    assert cat["caption"] == faces.caption_for(cat["context"]).replace("a face", "a cat", 1)
    assert (cats.BACKGROUNDS, cats.MEDIA, cats.ACCESSORIES) == (faces.BACKGROUNDS, faces.MEDIA, faces.ACCESSORIES)
    assert len(cats.ATTRIBUTES) >= 6


def test_deterministic():
    assert render_sample("cats", 11, 2, 64, 0)[1] == render_sample("cats", 11, 2, 64, 0)[1]


def test_identities_differ_more_than_views_of_one_identity():
    context = {"background": "plain", "medium": "photo", "accessory": "none"}
    nuisance = faces.sample_nuisance(__import__("random").Random(0))
    same, other = [], []
    for i in range(0, 16, 2):
        a = np.asarray(cats.render(cats.identity_attributes(i, 0), context, nuisance), dtype=np.float32)
        b = np.asarray(cats.render(cats.identity_attributes(i + 1, 0), context, nuisance), dtype=np.float32)
        other.append(np.abs(a - b).mean())
        nuisance2 = dict(nuisance, brightness=nuisance["brightness"] * 1.05)
        c = np.asarray(cats.render(cats.identity_attributes(i, 0), context, nuisance2), dtype=np.float32)
        same.append(np.abs(a - c).mean())
    assert np.mean(other) > 2 * np.mean(same)
