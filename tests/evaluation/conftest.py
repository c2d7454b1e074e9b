"""Tiny random CLIP and DINO folders, saved the way a user's downloaded models are (save_pretrained)."""

from __future__ import annotations

from pathlib import Path

import pytest


def build_tiny_clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pretrain.arch import TINY, train_tokenizer
    from shards.faces import BACKGROUNDS, MEDIA, caption_for

    captions = [caption_for({"background": b, "medium": m, "accessory": "none"}) for b in BACKGROUNDS for m in MEDIA]
    tokenizer = train_tokenizer(captions * 2, out / "_tokenizer", TINY)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=TINY.max_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **tiny,
        ),
        vision_config=dict(image_size=32, patch_size=8, **tiny),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def build_tiny_dino(out: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_real_models(tmp_path_factory) -> tuple[Path, Path]:
    import torch

    torch.manual_seed(0)
    return build_tiny_clip(tmp_path_factory.mktemp("clip")), build_tiny_dino(tmp_path_factory.mktemp("dino"))
