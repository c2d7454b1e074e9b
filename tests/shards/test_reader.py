"""The shard reader: batches, split filtering, rank splitting, resampling, bad samples; the writer's atomicity."""

import itertools

import pytest
import torch

from shards.reader import CountingHandler, make_loader, make_pipeline, shard_urls
from shards.synth import render_sample, synthesize
from shards.writer import MANIFEST, ShardSetWriter


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    synthesize("faces", 24, 2, 32, 0, out, progress=False, maxcount=12)  # 48 samples in 4 shards
    return out


def _all(pipe):
    return [m for batch in pipe for m in batch["meta"]]


def test_batches_have_the_documented_shape(faces_dir):
    urls = shard_urls(faces_dir)
    assert len(urls) == 4
    batches = list(make_pipeline(urls, batch_size=5, image_size=24, augment=True))
    assert [len(b["caption"]) for b in batches] == [5] * 9 + [3]  # last partial batch kept
    b = batches[0]
    assert b["pixels"].shape == (5, 3, 24, 24) and b["pixels"].dtype == torch.float32
    assert -1.0 <= b["pixels"].min() and b["pixels"].max() <= 1.0
    assert all(isinstance(c, str) and c.startswith("a ") for c in b["caption"])
    assert b["meta"][0]["domain"] == "faces"
    keys = [(m["identity"], m["view"]) for m in _all(make_pipeline(urls, batch_size=7))]
    assert len(keys) == len(set(keys)) == 48  # one epoch reads every sample once


def test_split_filter(faces_dir):
    metas = _all(make_pipeline(shard_urls(faces_dir), batch_size=4, splits=["base", "heldout"]))
    assert metas and {m["split"] for m in metas} <= {"base", "heldout"}
    with pytest.raises(ValueError, match="subset"):
        make_pipeline(shard_urls(faces_dir), batch_size=4, splits=["train"])


def test_ranks_read_disjoint_shards(faces_dir):
    urls = shard_urls(faces_dir)
    parts = [
        {m["identity"] + str(m["view"]) for m in _all(make_pipeline(urls, batch_size=4, world_size=2, rank=r))}
        for r in (0, 1)
    ]
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 48


def test_too_few_shards_error(faces_dir):
    with pytest.raises(ValueError, match="resampled=True"):
        make_pipeline(shard_urls(faces_dir), batch_size=4, world_size=3, rank=0, num_workers=2)


def test_resampled_streams_full_batches(faces_dir):
    pipe = make_pipeline(
        shard_urls(faces_dir), batch_size=8, image_size=32, resampled=True, world_size=3, rank=2, num_workers=2
    )
    batches = list(itertools.islice(pipe, 10))  # more than one epoch's worth: the stream does not end
    assert all(b["pixels"].shape == (8, 3, 32, 32) for b in batches)


def test_loader_with_workers(faces_dir):
    loader = make_loader(shard_urls(faces_dir), batch_size=6, num_workers=2, shuffle=0)
    metas = [m for b in loader for m in b["meta"]]
    assert len(metas) == 48


def test_bad_samples_are_counted_not_fatal(tmp_path):
    with ShardSetWriter(tmp_path, "mixed", created_by="test") as w:
        for i in range(4):
            key, data, meta = render_sample("faces", i, 0, 16, 0)
            w.write(key, data, "png", meta)
        w.write("broken_image", b"\x89PNG not really", "png", {"domain": "faces", "caption": "x"})
        _, data, _ = render_sample("faces", 9, 0, 16, 0)
        w.write("no_caption", data, "png", {"domain": "faces"})
        w.close(domain="faces")
    handler = CountingHandler()
    metas = _all(make_pipeline(shard_urls(tmp_path), batch_size=2, image_size=16, handler=handler))
    assert len(metas) == 4 and handler.count == 2 and len(handler.errors) == 2


def test_crashed_write_leaves_no_manifest(tmp_path):
    synthesize("faces", 2, 1, 16, 0, tmp_path, progress=False)
    assert (tmp_path / MANIFEST).exists()
    with pytest.raises(RuntimeError), ShardSetWriter(tmp_path, "faces", created_by="test") as w:
        key, data, meta = render_sample("faces", 0, 0, 16, 0)
        w.write(key, data, "png", meta)
        raise RuntimeError("crash mid-build")
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="manifest"):
        shard_urls(tmp_path)


def test_pairs_jitter_the_input_but_never_the_target(faces_dir):
    """The target view is what the base must draw: jittering it taught the packs' offsets mosaics."""
    urls = shard_urls(faces_dir)
    kw = dict(batch_size=6, image_size=24, pairs=True, shuffle=0, seed=3)
    jittered = next(iter(make_pipeline(urls, augment=True, **kw)))
    clean = next(iter(make_pipeline(urls, augment=False, **kw)))
    assert [m["target"]["view"] for m in jittered["meta"]] == [m["target"]["view"] for m in clean["meta"]]
    assert all(m["target"]["identity"] == m["identity"] and m["target"]["view"] != m["view"] for m in clean["meta"])
    assert not torch.equal(jittered["pixels"], clean["pixels"])
    assert torch.equal(jittered["target_pixels"], clean["target_pixels"])
