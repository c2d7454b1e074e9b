import json

import pytest
import torch

from e4t import Concept, load_base, load_pack
from e4t.errors import InvalidInput, NotFound


@pytest.fixture(scope="module")
def base(tiny_base_dir):
    return load_base(tiny_base_dir)


def test_load_base_errors(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_base(tmp_path / "nope")
    with pytest.raises(InvalidInput, match="model_index.json is missing"):
        load_base(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": []}))
    with pytest.raises(InvalidInput, match="missing component"):
        load_base(tmp_path)


def test_base_is_a_plain_stable_diffusion_folder(tiny_base_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base_dir, local_files_only=True)
    assert pipe("a photo of a face", num_inference_steps=2, output_type="pil").images[0].size == (64, 64)


def test_folder_hash_counts_content_not_where_it_was_loaded_from(tiny_base_dir, tmp_path):
    # diffusers writes the absolute path a component was loaded from into its saved config: one base
    # saved in two checkouts must keep one hash, or stages and packs keyed by it go stale in the other
    import shutil

    from e4t.base import folder_hash

    def saved_in(checkout: str, **change) -> str:
        folder = tmp_path / checkout
        shutil.copytree(tiny_base_dir, folder)
        config_path = folder / "unet" / "config.json"
        config = json.loads(config_path.read_text()) | change
        config["_name_or_path"] = str(folder / "runs" / "work" / "unet")
        config_path.write_text(json.dumps(config, indent=2))
        return folder_hash(folder)

    cross = json.loads((tiny_base_dir / "unet" / "config.json").read_text())["cross_attention_dim"]
    assert saved_in("here") == saved_in("there")
    assert saved_in("changed", cross_attention_dim=cross + 1) != saved_in("again")


def test_pack_round_trip_keeps_weights_and_config(base, tiny_pack_path):
    pack = load_pack(tiny_pack_path, base)
    assert pack.domain == "faces" and pack.class_word == "face" and pack.base_hash == base.hash
    copy = tiny_pack_path.parent / "copy.safetensors"
    assert pack.save(copy) == pack.hash
    again = load_pack(copy, base)
    for k, v in pack.encoder.state_dict().items():
        assert torch.equal(v, again.encoder.state_dict()[k])
    assert again.offsets.keys() == pack.offsets.keys()


def test_pack_for_another_base_is_refused(base, tiny_pack_path, tmp_path):
    pack = load_pack(tiny_pack_path, base)
    pack.base_hash = "0123456789abcdef"
    pack.save(tmp_path / "other.safetensors")
    with pytest.raises(InvalidInput, match="was trained for base 0123456789abcdef"):
        load_pack(tmp_path / "other.safetensors", base)


def test_concept_round_trip_and_corrupt_bytes(tmp_path):
    concept = Concept(
        embedding=torch.randn(32),
        offset_deltas={"a.lora_A.weight": torch.randn(4, 8)},
        domain="faces",
        pack_hash="p",
        base_hash="b",
        steps=5,
        owner="alice",
    )
    concept.save(tmp_path / "c.safetensors")
    loaded = Concept.load(tmp_path / "c.safetensors")
    assert loaded.metadata() == concept.metadata()
    assert torch.equal(loaded.embedding, concept.embedding)
    assert Concept.from_bytes(concept.to_bytes()).id == concept.id
    with pytest.raises(InvalidInput, match="not a valid safetensors"):
        Concept.from_bytes(b"definitely not safetensors")
    with pytest.raises(InvalidInput, match="not an e4t.concept/1 file"):
        Concept.from_bytes(_other_format_bytes())


def _other_format_bytes() -> bytes:
    from e4t.safetensors_io import to_bytes

    return to_bytes({"x": torch.zeros(1)}, "something.else/1", {})


def test_a_base_draws_at_the_guidance_its_folder_records(tiny_base_dir, tmp_path):
    # Stable Diffusion's 7.5 unless embedded.json names the folder's own scale, which the hash leaves out
    import shutil

    import numpy as np

    from e4t import generate
    from e4t.base import SD_GUIDANCE

    folder = tmp_path / "base"
    shutil.copytree(tiny_base_dir, folder)
    record = folder / "embedded.json"
    record.unlink(missing_ok=True)
    assert load_base(folder).default_guidance == SD_GUIDANCE
    record.write_text(json.dumps({"sampling": {"guidance": 2.0}}))
    base = load_base(folder)
    assert base.default_guidance == 2.0 and base.hash == load_base(tiny_base_dir).hash

    def draw(**guidance):
        return np.asarray(generate(base, {}, {}, "a photo of a face", num_images=1, steps=2, **guidance)[0])

    assert np.array_equal(draw(), draw(guidance=2.0))
    assert not np.array_equal(draw(), draw(guidance=SD_GUIDANCE))
    for bad in ("3", 31, True):
        record.write_text(json.dumps({"sampling": {"guidance": bad}}))
        with pytest.raises(InvalidInput, match="sampling guidance"):
            load_base(folder)
