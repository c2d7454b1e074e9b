"""Session fixtures: a real tiny base folder and domain pack, built once (random weights, seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)


def build_tiny_base(out: Path) -> Path:
    from pretrain.arch import TINY, build_text_encoder, build_unet, build_vae, save_pipeline, train_tokenizer
    from shards.faces import ACCESSORIES, BACKGROUNDS, MEDIA, caption_for

    torch.manual_seed(0)
    captions = [
        caption_for({"background": b, "medium": m, "accessory": a})
        for b in BACKGROUNDS
        for m in MEDIA
        for a in ACCESSORIES
    ]
    tokenizer = train_tokenizer(captions * 2, out / "_tokenizer", TINY)
    save_pipeline(
        out,
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(TINY, tokenizer),
        vae=build_vae(TINY),
        unet=build_unet(TINY),
        arch=TINY,
    )
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_pack_path(tiny_base_dir, tmp_path_factory) -> Path:
    from e4t import load_base
    from e4t.pack import DomainPack

    base = load_base(tiny_base_dir)
    path = tmp_path_factory.mktemp("tiny_pack") / "faces.safetensors"
    DomainPack.initial(base, "faces", "face", vision=TINY_VISION).save(path)
    return path


@pytest.fixture(scope="session")
def pretrain_domain_cmd():
    """`e4t pretrain domain` on the tiny preset as a command line; DeepSpeed wants processes of its own."""

    def cmd(base: Path, shards: Path, out: Path, *extra: str, num_procs: int = 1) -> list[str]:
        return [
            *(sys.executable, "-m", "cli", "pretrain", "domain", "--preset", "tiny", "--num-procs", str(num_procs)),
            *("--base", str(base), "--shards", str(shards), "--out", str(out), *extra),
        ]

    return cmd
