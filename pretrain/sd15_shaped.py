"""Randomly initialised stand-ins at real shapes: a Stable Diffusion 1.5 pipeline and a CLIP ViT-L/14 vision tower.

No weights can be downloaded here, so tests and `bench/real_shapes.py` check memory, speed and the
code paths of real bases on these: the same classes and configs as the published checkpoints
(SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder; CLIP ViT-L/14's vision tower), written with
`save_pretrained` as safetensors folders that `e4t.load_base` and `--vision` read like real ones.
Two parts differ: the tokenizer, a CLIP-layout BPE trained here on the synthetic captions (ids fit
CLIP's 49408-row table), and the scheduler, the project's DDIM on SD's training schedule (SD 1.5
ships PNDM on the same betas).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from pretrain.arch import BaseArch, build_pipeline, train_tokenizer

# configs of runwayml/stable-diffusion-v1-5 and openai/clip-vit-large-patch14, as published
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
CLIP_L14_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_L14_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)


def build_sd15_shaped(out: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write `out/base` (a StableDiffusionPipeline folder) and `out/vision` (a CLIPVisionModel folder).

    ~1.2 B parameters in all, float32: ~5 GB on disk; ~30 s and ~5 GB of memory to build on 2 cores.
    """
    from shards.faces import ACCESSORIES, BACKGROUNDS, MEDIA, caption_for

    out = Path(out)
    torch.manual_seed(seed)
    captions = [
        caption_for({"background": b, "medium": m, "accessory": a})
        for b in BACKGROUNDS
        for m in MEDIA
        for a in ACCESSORIES
    ]
    tokenizer = train_tokenizer(captions * 2, out / "_tokenizer", BaseArch(max_tokens=77, vocab_merges=300))
    text_config = CLIPTextConfig(
        **CLIP_L14_TEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe = build_pipeline(
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(text_config),
        vae=AutoencoderKL(**SD15_VAE),
        unet=UNet2DConditionModel(**SD15_UNET),
    )
    pipe.save_pretrained(out / "base", safe_serialization=True)
    del pipe  # one model at a time in memory
    CLIPVisionModel(CLIPVisionConfig(**CLIP_L14_VISION)).save_pretrained(out / "vision")
    return out / "base", out / "vision"
