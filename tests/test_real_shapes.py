"""The whole method at real shapes: Stable Diffusion 1.5 and a CLIP ViT-L/14 vision tower, 512x512 px.

Random weights (nothing can be downloaded), built once for this module by `pretrain.sd15_shaped`
and saved as the folders a user would have; then one domain pretraining step (the model the domain
trainer hands DeepSpeed, here with a plain optimizer in-process), one tuning step and one
denoising step of generation, all on CPU in float32 at batch 1: about 2 minutes on 2 idle cores
and 8.5 GiB of memory at the peak.
"""

import io
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from e4t import generate, load_base, load_pack, personalize
from e4t.objective import E4TObjective, LossWeights
from e4t.offsets import TUNE, activate, get_offsets, offset_parameters
from e4t.pack import FORMAT, DomainPack, TuneConfig
from e4t.prompts import word_embedding
from e4t.safetensors_io import read_file
from e4t.vision import vision_folder_hash
from pretrain.domain import DomainModel


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from pretrain.sd15_shaped import build_sd15_shaped

    return build_sd15_shaped(tmp_path_factory.mktemp("sd15"))


@pytest.fixture(scope="module")
def base(folders):
    return load_base(folders[0])


@pytest.fixture(scope="module")
def image():
    from shards.synth import render_sample

    return Image.open(io.BytesIO(render_sample("faces", 7, 0, 128, 0)[1]))


@pytest.fixture(scope="module")
def domain_step(base, folders, tmp_path_factory):
    """One step of domain pretraining on a fresh pack whose vision branch is the ViT-L/14 folder; the pack saved."""
    pack = DomainPack.initial(base, "faces", "face", vision=folders[1])
    # as train_domain sets them up: encoder (its frozen tower excepted) and LoRA offsets train
    objective = E4TObjective(base, "face", LossWeights())
    activate(base.unet, TUNE)
    model = DomainModel(objective, pack.encoder.train().requires_grad_(True))
    offsets = offset_parameters(base.unet, TUNE)
    for p in offsets:
        p.requires_grad_(True)
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": 3e-4}, {"params": offsets, "lr": 1e-4}])

    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 512, 512) * 2 - 1
    started = time.perf_counter()
    loss, parts = model(pixels, ["a photo of a face on the beach"])
    loss.backward()
    fuse_grads = [p.grad for p in model.encoder.fuse.parameters()]
    tower_grads = [p.grad for p in model.encoder.vision.parameters()]
    optimizer.step()
    seconds = time.perf_counter() - started
    for p in offsets:
        p.requires_grad_(False)
        p.grad = None

    pack.offsets = get_offsets(base.unet, TUNE)
    base.unet.disable_adapters()
    pack.encoder.eval().requires_grad_(False)
    pack.step = 1
    pack.tune = TuneConfig(steps=1, batch=1)  # batch 1 keeps a 512 px tuning step within CPU memory
    path = tmp_path_factory.mktemp("pack") / "faces.safetensors"
    pack.save(path)
    print(f"domain step at SD 1.5 / ViT-L/14 shapes: {seconds:.1f} s, loss {loss.item():.4f}")
    return SimpleNamespace(
        loss=loss.item(), parts=parts, fuse_grads=fuse_grads, tower_grads=tower_grads, offsets=pack.offsets, path=path
    )


@pytest.fixture(scope="module")
def pack(base, domain_step):
    return load_pack(domain_step.path, base)  # checks the vision folder's hash


@pytest.fixture(scope="module")
def concept(base, pack, image):
    started = time.perf_counter()
    concept = personalize(base, pack, image, steps=1)
    print(f"tuning step at 512 px: {time.perf_counter() - started:.1f} s")
    return concept


def test_one_domain_step_trains_the_encoder_and_offsets_around_the_frozen_tower(domain_step, folders):
    assert torch.isfinite(torch.tensor(domain_step.loss))
    assert set(domain_step.parts) == {"diffusion", "embedding_l2"} and domain_step.parts["embedding_l2"] > 0
    assert all(g is not None and torch.isfinite(g).all() for g in domain_step.fuse_grads)
    assert any(g.abs().sum() > 0 for g in domain_step.fuse_grads)
    assert all(g is None for g in domain_step.tower_grads)
    lora_b = [v for k, v in domain_step.offsets.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "the offsets did not move from zero"

    # the pack refers to the 1.2 GB tower by hash instead of holding it
    tensors, config = read_file(domain_step.path, FORMAT)
    assert not [k for k in tensors if k.startswith("encoder.vision.")]
    assert config["encoder"]["vision_hash"] == vision_folder_hash(folders[1])
    assert domain_step.path.stat().st_size < 50e6


def test_the_pack_loads_with_the_towers_own_preprocessing(pack, base):
    assert pack.encoder.vision.config.image_size == 224 and pack.encoder.vision.config.hidden_size == 1024
    assert pack.encoder.config.resample == "bicubic"
    assert pack.encoder.config.unet_channels == (320, 640, 1280, 1280, 1280)
    assert base.resolution == 512


def test_one_tuning_step_at_512_px(concept, pack, base):
    class_embedding = word_embedding(base.text_encoder, base.tokenizer, "face")
    assert concept.embedding.shape == (768,) and torch.isfinite(concept.embedding).all()
    assert not torch.allclose(concept.embedding, class_embedding)
    assert concept.steps == 1 and concept.pack_hash == pack.hash
    assert set(concept.offset_deltas) == set(pack.offsets)
    assert any(d.abs().sum() > 0 for d in concept.offset_deltas.values())


def test_one_denoising_step_of_generation_at_512_px(concept, pack, base):
    started = time.perf_counter()
    images = generate(
        base, {"faces": pack}, {concept.id: concept}, f"a photo of {{{concept.id}}}", num_images=1, steps=1
    )
    print(f"generation, 1 step at 512 px (guidance 7.5): {time.perf_counter() - started:.1f} s")
    assert len(images) == 1 and images[0].size == (512, 512) and images[0].mode == "RGB"
