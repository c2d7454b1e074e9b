"""Contrastive pretraining of the embedded text encoder, as CLIP is pretrained before Stable Diffusion uses it.

Trained only through the diffusion loss, jointly with the UNet, the embedded text encoder learns
the context words (whole backgrounds and media) but not the identity words: on the H100-trained
described base, "red hair" and "blue hair" give output states at cosine 0.998, and the diffusion
loss of held-out views barely changes when their description is swapped for another identity's
(README, "The described world, measured"). Stable Diffusion never has this problem, because its
text encoder comes from CLIP, trained to pick the one caption that fits an image. This stage does
the same on the base split: a `CLIPModel` whose text tower is the base's text encoder and whose
vision tower reads the cached VAE latents (already computed, and what the UNet sees), trained with
CLIP's symmetric contrastive loss on the UNet stage's own caption mix. The UNet stage then reads
the text tower, frozen, as Stable Diffusion reads CLIP's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, CLIPVisionConfig, get_cosine_schedule_with_warmup

from pretrain import checkpoint as ck
from pretrain.arch import BaseArch, build_text_encoder
from pretrain.latent_cache import LatentCache
from pretrain.loop import StepCallback, train_loop

if TYPE_CHECKING:
    from pretrain.base import BaseTrainConfig

LATENT_PATCH = 2  # 16x16 latents -> 64 patches, as a ViT-B/8 sees a 64 px image


def build_clip(arch: BaseArch, tokenizer: CLIPTokenizer) -> CLIPModel:
    """A CLIP whose text tower is exactly the base's text encoder and whose vision tower reads latents."""
    text_config = build_text_encoder(arch, tokenizer).config
    vision_config = CLIPVisionConfig(
        hidden_size=arch.text_width,
        intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_channels=arch.latent_channels,
        image_size=arch.latent_size,
        patch_size=LATENT_PATCH,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=arch.text_width
    )
    return CLIPModel(config)


def contrastive_loss(model: CLIPModel, tokens: torch.Tensor, latents: torch.Tensor, captions: list[str]):
    """CLIP's symmetric cross-entropy; equal captions in a batch (a short description) are all positives."""
    text = F.normalize(model.get_text_features(input_ids=tokens).pooler_output, dim=-1)
    image = F.normalize(model.get_image_features(pixel_values=latents).pooler_output, dim=-1)
    logits = model.logit_scale.exp().clamp(max=100.0) * image @ text.T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions], device=logits.device)
    same = (label[:, None] == label[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    accuracy = (logits.argmax(1) == torch.arange(len(captions), device=logits.device)).float().mean()
    return loss, {"acc": accuracy.item()}


def stage_text(
    stage_dir: Path,
    key: str,
    cache_dir: Path,
    tokenizer: CLIPTokenizer,
    arch: BaseArch,
    cfg: BaseTrainConfig,
    progress: bool,
    callback: StepCallback | None,
) -> dict[str, Any]:
    """Train the CLIP pair on the latent cache; save its text tower as `stage_dir/text_encoder`."""
    ck.seed_everything(cfg.seed)
    device = cfg.torch_device
    cache = LatentCache.read(cache_dir, device)
    model = build_clip(arch, tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.text_lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.text_warmup, cfg.text_steps)

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        seed = cfg.seed * 1_000_003 + start
        for idx, captions, _ in cache.caption_batches(cfg.text_batch_size, cfg.unet_describe_share, seed):
            tokens = tokenizer(
                captions, padding="max_length", max_length=arch.max_tokens, truncation=True, return_tensors="pt"
            ).input_ids.to(device)
            yield tokens, cache.sample(idx.to(device)), captions

    logs = train_loop(
        "4-text",
        stage_dir / "ckpt.pt",
        key,
        cfg,
        cfg.text_steps,
        {"clip": model},
        opt,
        sched,
        batches,
        lambda batch: contrastive_loss(model, *batch),
        progress=progress,
        callback=callback,
    )
    model.text_model.cpu().save_pretrained(stage_dir / "text_encoder", safe_serialization=True)
    (stage_dir / "ckpt.pt").unlink(missing_ok=True)
    return logs
