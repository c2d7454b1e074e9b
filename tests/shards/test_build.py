"""Building shards from image folders with awkward inputs, and checking shard sets."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from shards.build import build_from_folder, class_word_for
from shards.check import ShardCheckError, check_shards, read_tar
from shards.cli import main
from shards.synth import synthesize


def _read(directory, manifest):
    samples = {k: v for shard in manifest["shards"] for k, v in read_tar(directory / shard["file"]).items()}
    return {
        json.loads(s["json"])["source"]: (Image.open(io.BytesIO(s["jpg"])), json.loads(s["json"]))
        for s in samples.values()
    }


@pytest.fixture
def messy_folder(tmp_path):
    src = tmp_path / "ffhq"
    (src / "00000").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).save(src / "00000" / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P").save(src / "palette.png")
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red but fully transparent: must come out white
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(src / "gray16.png")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(src / "cmyk.jpg")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (src / "README.txt").write_text("FFHQ readme")
    (src / "blob.dat").write_bytes(rng.integers(0, 255, 100, dtype=np.uint8).tobytes())
    Image.new("RGB", (300, 300)).save(src / "huge.png")  # over the test's pixel limit
    return src


def test_build_flat_folder_skips_bad_files(messy_folder, tmp_path):
    out = tmp_path / "out"
    m = build_from_folder(messy_folder, "faces", 32, out, progress=False, max_pixels=200 * 200)
    assert m["layout"] == "flat" and m["num_samples"] == 5
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"corrupt.jpg", "README.txt", "blob.dat", "huge.png"} and m["num_skipped"] == 4
    assert "not an image" in reasons["README.txt"] and "decompression bomb" in reasons["huge.png"]
    samples = _read(out, m)
    for img, meta in samples.values():
        assert img.size == (32, 32) and img.mode == "RGB"
        assert meta["caption"] == "a photo of a face" and meta["domain"] == "faces" and "label" not in meta
    assert np.asarray(samples["rgba.png"][0]).min() > 240  # alpha composited on white
    gray = np.asarray(samples["gray16.png"][0], np.float32)
    assert 90 < gray.mean() < 165 and gray[:, -1].mean() > gray[:, 0].mean() + 150  # 16-bit rescaled, not clipped
    assert check_shards(out, progress=False)["ok"]


def test_build_per_class_layout(tmp_path):
    src = tmp_path / "wikiart"
    for style in ("Impressionism", "Pop_Art"):
        (src / style).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 64), (i * 90, 50, 200)).save(src / style / f"{i}.png")
    m = build_from_folder(src, "art", 16, tmp_path / "out", progress=False)
    assert m["layout"] == "per_class" and m["labels"] == {"Impressionism": 2, "Pop Art": 2}
    captions = {meta["caption"] for _, meta in _read(tmp_path / "out", m).values()}
    assert captions == {"a painting in the style of Impressionism", "a painting in the style of Pop Art"}
    m = build_from_folder(src, "cats", 16, tmp_path / "cats", progress=False, class_word="kitty")
    assert {meta["label"] for _, meta in _read(tmp_path / "cats", m).values()} == {"Impressionism", "Pop Art"}
    assert "a photo of a Pop Art kitty" in {meta["caption"] for _, meta in _read(tmp_path / "cats", m).values()}
    assert [class_word_for(d) for d in ("faces", "cats", "art", "puppies")] == ["face", "cat", "art", "puppy"]
    with pytest.raises(ValueError, match="placeholders"):
        build_from_folder(src, "art", 16, tmp_path / "x", caption_template="a {style}", progress=False)


def test_check_detects_tampering_and_cli_exit_codes(tmp_path, capsys):
    out = tmp_path / "s"
    m = synthesize("faces", 6, 2, 16, 0, out, progress=False, maxcount=5)
    assert len(m["shards"]) == 3
    assert main(["check", str(out), "--quiet"]) == 0
    shard = out / m["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first sample's image bytes
    shard.write_bytes(bytes(data))
    report = check_shards(out, progress=False)
    assert not report["ok"] and any("sha256" in p for p in report["problems"])
    with pytest.raises(ShardCheckError, match="sha256"):
        check_shards(out, raise_on_problems=True, progress=False)
    (out / m["shards"][2]["file"]).unlink()
    assert main(["check", str(out), "--quiet"]) == 1
    assert "missing" in capsys.readouterr().err


def test_cli_synth_build_and_errors(tmp_path, messy_folder, capsys):
    out = tmp_path / "synth"
    assert (
        main(
            [
                "synth",
                "--identities",
                "30",
                "--views",
                "1",
                "--size",
                "16",
                "--out",
                str(out),
                "--splits",
                "heldout,demo",
                "--quiet",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["selected_splits"]) == {"heldout", "demo"}
    assert (
        main(
            [
                "build",
                "--src",
                str(messy_folder),
                "--domain",
                "faces",
                "--size",
                "16",
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            ["synth", "--domain", "dogs", "--identities", "2", "--views", "1", "--out", str(tmp_path / "c"), "--quiet"]
        )
        == 2
    )
    assert "['cats', 'faces']" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert main(["build", "--src", str(tmp_path / "nope"), "--domain", "faces", "--out", str(tmp_path / "d")]) == 2
