"""A pretrained CLIP vision tower as the encoder's vision branch: referred to by hash when frozen, stored when tuned."""

import shutil

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from e4t import load_base, load_pack
from e4t.errors import InvalidInput, NotFound
from e4t.pack import FORMAT, DomainPack
from e4t.safetensors_io import read_file
from e4t.vision import load_vision_folder, vision_folder_hash

# 48 px: not the base's resolution, so the encoder must resize to the tower's own size
TOWER = dict(
    image_size=48, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)


def save_tower(path, seed=0):
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base(tiny_base_dir):
    return load_base(tiny_base_dir)


def encoder_inputs(pack, base, batch=2):
    torch.manual_seed(1)
    pixels = torch.rand(batch, 3, base.resolution, base.resolution) * 2 - 1
    return pixels, [torch.randn(batch, c, 4, 4) for c in pack.encoder.config.unet_channels]


def test_a_frozen_tower_is_referred_to_by_path_and_hash_not_stored(base, tmp_path):
    tower = save_tower(tmp_path / "clip")
    pack = DomainPack.initial(base, "faces", "face", vision=tower)
    path = tmp_path / "faces.safetensors"
    pack.save(path)

    tensors, config = read_file(path, FORMAT)
    assert not [k for k in tensors if k.startswith("encoder.vision.")]
    assert config["encoder"]["vision"] == str(tower.resolve())
    assert config["encoder"]["vision_hash"] == vision_folder_hash(tower)
    assert config["encoder"]["freeze_vision"] is True and config["encoder"]["resample"] == "bicubic"

    loaded = load_pack(path, base)
    reference = CLIPVisionModel.from_pretrained(tower)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.encoder.vision.state_dict()[name], value)
    pixels, features = encoder_inputs(pack, base)
    offset = loaded.encoder(pixels, features)
    assert offset.shape == (2, pack.encoder.config.embed_dim)
    torch.testing.assert_close(offset, pack.encoder.eval()(pixels, features))
    assert loaded.save(tmp_path / "again.safetensors") == pack.hash


def test_a_moved_or_changed_folder_is_refused_clearly(base, tmp_path):
    tower = save_tower(tmp_path / "clip")
    path = tmp_path / "faces.safetensors"
    DomainPack.initial(base, "faces", "face", vision=tower).save(path)

    moved = tower.rename(tmp_path / "elsewhere")
    with pytest.raises(NotFound, match=r"refers to the vision tower folder .*which does not exist.*vision="):
        load_pack(path, base)
    assert load_pack(path, base, vision=moved).encoder.config.vision == str(moved.resolve())

    shutil.rmtree(moved)
    save_tower(moved, seed=1)  # same architecture, other weights
    with pytest.raises(InvalidInput, match="now hash to"):
        load_pack(path, base, vision=moved)


def test_a_frozen_tower_stays_frozen_when_a_trainer_unfreezes_the_encoder(base, tmp_path):
    pack = DomainPack.initial(base, "faces", "face", vision=save_tower(tmp_path / "clip"))
    encoder = pack.encoder.train().requires_grad_(True)  # what the domain trainer does
    assert not any(p.requires_grad for p in encoder.vision.parameters())
    assert not encoder.vision.training and encoder.fuse.training
    pixels, features = encoder_inputs(pack, base)
    encoder(pixels, features).pow(2).sum().backward()
    assert all(p.grad is None for p in encoder.vision.parameters())
    assert all(p.grad is not None for p in encoder.fuse.parameters())


def test_a_fine_tuned_tower_is_stored_and_loads_without_its_folder(base, tmp_path):
    tower = save_tower(tmp_path / "clip")
    pack = DomainPack.initial(base, "faces", "face", vision=tower, freeze_vision=False)
    pack.encoder.requires_grad_(True)
    assert all(p.requires_grad for p in pack.encoder.vision.parameters())
    with torch.no_grad():  # stands in for fine-tuning
        next(pack.encoder.vision.parameters()).add_(0.5)
    path = tmp_path / "faces.safetensors"
    pack.save(path)
    source_hash = vision_folder_hash(tower)
    shutil.rmtree(tower)

    tensors, config = read_file(path, FORMAT)
    assert [k for k in tensors if k.startswith("encoder.vision.")]
    assert config["encoder"]["vision"]["hidden_size"] == TOWER["hidden_size"]
    assert config["encoder"]["vision_hash"] == source_hash  # provenance
    loaded = load_pack(path, base)
    pixels, features = encoder_inputs(pack, base)
    torch.testing.assert_close(loaded.encoder(pixels, features), pack.encoder.eval()(pixels, features))


def test_folders_that_cannot_hold_a_clip_vision_tower(base, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        DomainPack.initial(base, "faces", "face", vision=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="should contain config.json but does not"):
        DomainPack.initial(base, "faces", "face", vision=empty)
    tower = save_tower(tmp_path / "clip")
    (tower / "model.safetensors").rename(tower / "weights.bin")
    with pytest.raises(InvalidInput, match="should contain safetensors weights"):
        DomainPack.initial(base, "faces", "face", vision=tower)
    (tower / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(InvalidInput, match="'dinov2' model"):
        DomainPack.initial(base, "faces", "face", vision=tower)


def test_a_whole_clip_model_folder_gives_its_vision_tower(tmp_path):
    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=TOWER))
    clip.save_pretrained(tmp_path / "clip")
    tower = load_vision_folder(tmp_path / "clip", vision_folder_hash(tmp_path / "clip"))
    loaded = tower.state_dict()
    for name, value in clip.vision_model.state_dict().items():
        torch.testing.assert_close(loaded[name.removeprefix("vision_model.")], value)
