"""The synthetic cat world: determinism, schema shared with faces, captions, distinguishability, faces unchanged."""

import hashlib
import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from shards import cats, faces
from shards.check import read_tar
from shards.cli import main as shards_main
from shards.splits import split_of
from shards.synth import DOMAINS, render_sample, synthesize

PLAIN = {"background": "plain", "medium": "photo", "accessory": "none"}


def _img(attributes, ctx, nz, size=64):
    return np.asarray(cats.render(attributes, ctx, nz, size), np.float32)


def test_registered_and_deterministic(tmp_path):
    assert DOMAINS["cats"] is cats
    m1 = synthesize("cats", 4, 2, 32, 3, tmp_path / "a", progress=False)
    m2 = synthesize("cats", 4, 2, 32, 3, tmp_path / "b", progress=False)
    assert m1 == m2 and m1["num_samples"] == 8 and m1["domain"] == "cats"
    for shard in m1["shards"]:
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()


def test_schema_matches_faces(tmp_path):
    m = synthesize("cats", 4, 2, 32, 0, tmp_path, progress=False)
    _, _, face_meta = render_sample("faces", 0, 0, 16, 0)
    for s in read_tar(tmp_path / m["shards"][0]["file"]).values():
        meta = json.loads(s["json"])
        assert set(meta) == set(face_meta)  # same field names as faces
        assert set(meta["context"]) == set(face_meta["context"])
        assert set(meta["nuisance"]) == set(face_meta["nuisance"])
        assert meta["domain"] == "cats" and meta["source"] == "synthetic/cats/v1"
        assert meta["identity"].startswith("cats/s0/") and meta["split"] == split_of(meta["identity"])
        assert set(meta["attributes"]) == set(cats.ATTRIBUTES)
        assert meta["caption"] == cats.caption_for(meta["context"])
        assert meta["caption"] == faces.caption_for(meta["context"]).replace(" a face", " a cat", 1)
        img = Image.open(io.BytesIO(s["png"]))
        assert img.size == (32, 32) and img.mode == "RGB"


def test_captions_and_vocabulary():
    ctx = {"background": "forest", "medium": "sketch", "accessory": "earrings"}
    assert cats.caption_for(ctx) == "a sketch of a cat in the forest wearing earrings"
    assert cats.caption_for(PLAIN) == "a photo of a cat"
    assert cats.context_phrases() == faces.context_phrases()
    assert cats.ACCESSORIES == faces.ACCESSORIES and cats.CLASS_WORD == "cat"
    assert len(cats.ATTRIBUTES) >= 6 and np.prod([len(v) for v in cats.ATTRIBUTES.values()]) > 5000
    with pytest.raises(ValueError, match="accessory"):
        cats.caption_for(dict(PLAIN, accessory="collar"))
    with pytest.raises(ValueError, match="fur_color"):
        cats.render(
            dict(cats.identity_attributes(0, 0), fur_color="green"), PLAIN, cats.sample_nuisance(random.Random(0))
        )


def test_identities_are_distinguishable():
    nz = cats.sample_nuisance(random.Random(1))
    imgs = [_img(cats.identity_attributes(i, 0), PLAIN, nz) for i in range(8)]
    assert np.abs(imgs[0] - _img(cats.identity_attributes(0, 0), PLAIN, nz)).max() == 0  # pure function
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(8) for j in range(i + 1, 8)]
    nz2 = dict(nz, dx=nz["dx"] + 0.01, brightness=nz["brightness"] * 1.03)
    jitter = np.abs(imgs[0] - _img(cats.identity_attributes(0, 0), PLAIN, nz2)).mean()
    assert min(diffs) > 4.0 and np.median(diffs) > 2 * jitter, (min(diffs), jitter)
    # every single attribute change is visible on its own (the nose is the smallest: a few pixels)
    a = cats.identity_attributes(5, 0)
    ref = _img(a, PLAIN, nz)
    for name, values in cats.ATTRIBUTES.items():
        other = next(v for v in values if v != a[name])
        changed = (np.abs(_img(dict(a, **{name: other}), PLAIN, nz) - ref).max(axis=2) > 30).sum()
        assert changed >= 4, (name, other, changed)


def test_contexts_change_the_image():
    a = cats.identity_attributes(3, 0)
    nz = cats.sample_nuisance(random.Random(0))
    ref = _img(a, PLAIN, nz)
    for kind, values in (("background", cats.BACKGROUNDS), ("medium", cats.MEDIA), ("accessory", cats.ACCESSORIES)):
        for v in values[1:]:
            changed = (np.abs(_img(a, dict(PLAIN, **{kind: v}), nz) - ref).max(axis=2) > 40).sum()
            assert changed >= 30, (kind, v, changed)  # earrings are two small rings: the smallest change


def test_faces_render_unchanged():
    # pixel hashes recorded before the cats domain was added; faces must stay byte-identical
    expected = {
        (0, 0, 0, 64): "7731e546d499a557acda858f8bd14b40538c043b73718cc800609c640958b90b",
        (1, 1, 0, 64): "72c639c52ff8ebb7decfe99878b20ea30930f734e105e4a0b9ea0fe42666727d",
        (2, 0, 0, 64): "676f22063dabb9fa928559ac9c59332a8056e0a5852f443e672da206982c6967",
        (3, 2, 0, 64): "62e85b9cf3d14d05115c4eb22850687dfb9b918abb8012cf8a5f5115e1d6f110",
        (7, 3, 1, 32): "02f34081cea7a7f7e78970057a48def603671730c8ee231b6b90d9633c21e582",
    }
    for (index, view, seed, size), digest in expected.items():
        name = faces.identity_name(index, seed)
        rng = random.Random(f"{name}/view{view}")
        ctx, nz = faces.sample_context(rng), faces.sample_nuisance(rng)
        img = faces.render(faces.identity_attributes(index, seed), ctx, nz, size)
        assert hashlib.sha256(img.tobytes()).hexdigest() == digest, (index, view, seed, size)


def test_cli_synth_cats(tmp_path, capsys):
    out = tmp_path / "cats"
    argv = ["synth", "--domain", "cats", "--identities", "3", "--views", "1", "--size", "16", "--out", str(out)]
    assert shards_main([*argv, "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["domain"] == "cats"
    assert shards_main(["check", str(out), "--quiet"]) == 0
    assert "3 samples" in capsys.readouterr().out
