"""`e4t pretrain vision`: a pixel CLIP vision tower learned against a base's locked text encoder."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from e4t import load_base
from e4t.encoder import clip_pixels
from pretrain.text_tower import contrastive_loss
from pretrain.vision_tower import VisionTowerConfig, build_clip, train_vision_tower
from tests.conftest import TINY_VISION

COLOURS = ("red", "blue", "green", "black")
TINY_CFG = VisionTowerConfig(steps=3, batch_size=4, tower=TINY_VISION, checkpoint_every=2, retrieval_subjects=4)


def test_the_tower_learns_to_pick_the_caption_its_image_shows_and_the_text_tower_stays_locked(tiny_base_dir):
    torch.manual_seed(0)
    base = load_base(tiny_base_dir)
    model = build_clip(base, TINY_VISION)
    text_before = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    assert all(torch.equal(v, base.text_encoder.state_dict()[k]) for k, v in text_before.items())
    captions = [f"a photo of a face with {c} hair" for c in COLOURS]
    tokens = base.tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    # each colour word is one flat colour: the image is all that tells the captions apart
    rgb = torch.tensor([[1.0, -1, -1], [-1, -1, 1], [-1, 1, -1], [-1, -1, -1]])
    images = rgb[:, :, None, None].expand(-1, -1, 32, 32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def batch(n: int):
        which = torch.randint(len(COLOURS), (n,))
        pixels = (images[which] + 0.2 * torch.randn(n, 3, 32, 32)).clamp(-1, 1)
        return tokens[which], clip_pixels(pixels, 32, "bicubic"), [captions[i] for i in which]

    for _ in range(80):
        loss, _ = contrastive_loss(model, *batch(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        text = F.normalize(model.get_text_features(input_ids=tokens).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=clip_pixels(images, 32, "bicubic")).pooler_output, -1)
    assert torch.equal((image @ text.T).argmax(1), torch.arange(len(COLOURS)))
    assert all(torch.equal(v, text_before[k]) for k, v in model.text_model.state_dict().items())


@pytest.mark.slow
def test_the_job_writes_a_tower_that_domain_pretraining_fine_tunes(tiny_base_dir, tmp_path, pretrain_domain_cmd):
    from e4t import load_pack
    from e4t.pack import FORMAT
    from e4t.safetensors_io import read_file
    from e4t.vision import load_vision_folder
    from shards.synth import synthesize

    shards = tmp_path / "shards"
    synthesize("faces", 20, 2, 64, 0, shards, progress=False)
    out = tmp_path / "vision"
    train_vision_tower(tiny_base_dir, [shards], out, TINY_CFG, work=tmp_path / "work", progress=False)
    stamp = (out / "stage.json").read_text()
    assert '"retrieval_top1"' in stamp and '"faces"' in stamp
    tower = load_vision_folder(out)
    assert tower.dtype == torch.float32 and tower.config.hidden_size == TINY_VISION["hidden_size"]
    assert not (tmp_path / "work" / "ckpt.pt").exists()  # checkpoints go once the tower is written

    # a finished tower is not retrained; another config is
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    train_vision_tower(tiny_base_dir, [shards], out, TINY_CFG, work=tmp_path / "work", progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    # nor for a base whose UNet trained on (a further schedule): the tower reads its text side alone
    further = tmp_path / "further-base"
    shutil.copytree(tiny_base_dir, further)
    unet_file = next((further / "unet").glob("*.safetensors"))
    save_file({k: v + 0.01 for k, v in load_file(unet_file).items()}, unet_file)
    train_vision_tower(further, [shards], out, TINY_CFG, work=tmp_path / "work", progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="describe_share"):
        train_vision_tower(tiny_base_dir, [shards], out, replace(TINY_CFG, describe_share=2.0), progress=False)

    pack_path = tmp_path / "faces.safetensors"
    cmd = pretrain_domain_cmd(tiny_base_dir, shards, pack_path, "--vision", str(out), "--train-vision", "--steps", "2")
    run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    pack = load_pack(pack_path, load_base(tiny_base_dir))
    assert not pack.encoder.refers_to_folder  # fine-tuned: the pack stores the tower, the folder may go
    tensors, _ = read_file(pack_path, FORMAT)
    stored = {k[len("encoder.vision.") :]: v for k, v in tensors.items() if k.startswith("encoder.vision.")}
    start = tower.state_dict()
    assert stored and any(not torch.equal(stored[k].float(), start[k]) for k in start)  # the tower trained
