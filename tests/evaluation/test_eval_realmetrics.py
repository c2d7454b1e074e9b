"""CLIP-I / CLIP-T / DINO scorers on tiny random model folders."""

from __future__ import annotations

import pytest
import torch

from evaluation import metrics, protocol
from evaluation.realmetrics import ClipScorer, DinoScorer


def _images(n: int):
    subject = protocol.heldout_identities("faces", 1)[0]
    return protocol.reference_images(subject, n, 64)


def test_clip_and_dino_embed_and_score_in_range(tiny_real_models):
    clip_dir, dino_dir = tiny_real_models
    clip, dino = ClipScorer(clip_dir), DinoScorer(dino_dir)
    images = _images(3)
    img = clip.embed_images(images)
    txt = clip.embed_texts(["a photo of a face on the beach", "a sketch of a face", "a painting of a face"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert -1 <= metrics.text_alignment(img, txt) <= 1
    assert metrics.fidelity([(img, img)]) > 0.3  # an image is closest to itself
    cls = dino.embed_images(images)
    assert cls.shape == (3, 32) and torch.isfinite(cls).all()
    assert len(clip.hash) == 16 and clip.hash != dino.hash


def test_bad_folders_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipScorer(tmp_path / "nope")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        DinoScorer(tmp_path)
