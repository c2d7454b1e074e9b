"""The synthetic face world and `synthesize`: determinism, schema, splits, distinguishability."""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from shards import faces
from shards.check import read_tar
from shards.splits import SPLITS, split_of
from shards.synth import synthesize


def test_synth_is_deterministic(tmp_path):
    m1 = synthesize("faces", 6, 2, 32, 3, tmp_path / "a", progress=False)
    m2 = synthesize("faces", 6, 2, 32, 3, tmp_path / "b", progress=False)
    assert m1 == m2
    assert m1["num_samples"] == 12
    for shard in m1["shards"]:
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_synth_schema(tmp_path):
    m = synthesize("faces", 5, 3, 32, 0, tmp_path, progress=False)
    assert m["domain"] == "faces" and m["world_version"] == 1 and m["views"] == 3 and m["size"] == 32
    assert sum(m["splits"].values()) == m["num_samples"] == 15
    assert m["num_skipped"] == 0 and m["skipped"] == []
    samples = read_tar(tmp_path / m["shards"][0]["file"])
    assert len(samples) == 15
    for s in samples.values():
        meta = json.loads(s["json"])
        assert set(meta) >= {
            "domain",
            "caption",
            "identity",
            "source",
            "split",
            "view",
            "attributes",
            "context",
            "nuisance",
            "world_version",
        }
        assert meta["source"] == "synthetic/faces/v1"
        assert meta["split"] == split_of(meta["identity"])
        assert set(meta["attributes"]) == set(faces.ATTRIBUTES)
        assert meta["caption"] == faces.caption_for(meta["context"])
        img = Image.open(io.BytesIO(s["png"]))
        assert img.size == (32, 32) and img.mode == "RGB"


def test_split_filter_and_bad_args(tmp_path):
    m = synthesize("faces", 40, 1, 16, 0, tmp_path, splits=["heldout", "demo"], progress=False)
    assert {k for k, v in m["splits"].items() if v} <= {"heldout", "demo"}
    with pytest.raises(ValueError, match="one of"):
        synthesize("dogs", 2, 1, 16, 0, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="subset"):
        synthesize("faces", 2, 1, 16, 0, tmp_path / "x", splits=["train"], progress=False)
    with pytest.raises(ValueError, match="views"):
        synthesize("faces", 2, 0, 16, 0, tmp_path / "x", progress=False)


def test_splits_disjoint_and_proportional():
    names = [f"faces/s0/{i:06d}" for i in range(2000)]
    splits = [split_of(n) for n in names]
    assert set(splits[:200]) == set(SPLITS)  # all five present among ~200 identities
    assert all(split_of(n) == s for n, s in zip(names, splits, strict=True))  # stable: one split per identity
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    for s, expected in zip(SPLITS, (0.40, 0.35, 0.12, 0.10, 0.03), strict=True):
        assert abs(share[s] - expected) < 0.035, (s, share[s])


def test_captions():
    ctx = {"background": "forest", "medium": "sketch", "accessory": "hat"}
    assert faces.caption_for(ctx) == "a sketch of a face in the forest wearing a hat"
    assert faces.caption_for({"background": "plain", "medium": "photo", "accessory": "none"}) == "a photo of a face"
    kinds = {k for k, _, _ in faces.context_phrases()}
    assert kinds == {"background", "medium", "accessory"}
    with pytest.raises(ValueError, match="medium"):
        faces.caption_for({"background": "plain", "medium": "oil", "accessory": "none"})


def test_identities_are_distinguishable():
    rng = random.Random(1)
    ctx = {"background": "plain", "medium": "photo", "accessory": "none"}
    nz = faces.sample_nuisance(rng)
    imgs = [np.asarray(faces.render(faces.identity_attributes(i, 0), ctx, nz, 64), np.float32) for i in range(8)]
    same = np.abs(imgs[0] - np.asarray(faces.render(faces.identity_attributes(0, 0), ctx, nz, 64), np.float32))
    assert same.max() == 0  # rendering is a pure function
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(8) for j in range(i + 1, 8)]
    # a small nuisance change on one identity moves fewer pixels than a change of identity
    nz2 = dict(nz, dx=nz["dx"] + 0.01, brightness=nz["brightness"] * 1.03)
    jitter = np.abs(imgs[0] - np.asarray(faces.render(faces.identity_attributes(0, 0), ctx, nz2, 64), np.float32))
    assert min(diffs) > 4.0 and np.median(diffs) > 2 * jitter.mean(), (
        min(diffs),
        jitter.mean(),
    )


def test_contexts_change_the_image():
    a = faces.identity_attributes(3, 0)
    nz = faces.sample_nuisance(random.Random(0))
    base = {"background": "plain", "medium": "photo", "accessory": "none"}
    ref = np.asarray(faces.render(a, base, nz, 64), np.float32)
    for kind, values in (
        ("background", faces.BACKGROUNDS),
        ("medium", faces.MEDIA),
        ("accessory", faces.ACCESSORIES),
    ):
        for v in values[1:]:
            img = np.asarray(faces.render(a, dict(base, **{kind: v}), nz, 64), np.float32)
            changed = (np.abs(img - ref).max(axis=2) > 40).sum()  # accessories are local, so count pixels
            assert changed >= 40, (kind, v, changed)
