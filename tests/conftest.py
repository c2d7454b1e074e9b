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
    from shards.faces import ACCESSORIES, ATTRIBUTE_PHRASES, BACKGROUNDS, MEDIA, caption_for

    torch.manual_seed(0)
    captions = [
        caption_for({"background": b, "medium": m, "accessory": a})
        for b in BACKGROUNDS
        for m in MEDIA
        for a in ACCESSORIES
    ]
    # every attribute phrase, as the embedded base's tokenizer sees them in described captions
    phrases = [p for values in ATTRIBUTE_PHRASES.values() for p in values.values()]
    plain = {"background": "plain", "medium": "photo", "accessory": "none"}
    captions += [caption_for(plain, phrases[i : i + 3]) for i in range(0, len(phrases), 3)]
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


@pytest.fixture(scope="session")
def tiny_tuned_pack_path(tiny_base_dir, tiny_pack_path, tmp_path_factory) -> Path:
    """The tiny pack with random non-zero offsets (the initial pack's are zero, LoRA B = 0), so
    that whatever drops or misplaces them changes the output."""
    from e4t import load_base, load_pack

    base = load_base(tiny_base_dir)
    pack = load_pack(tiny_pack_path, base)
    generator = torch.Generator().manual_seed(0)
    pack.offsets = {k: 0.2 * torch.randn(v.shape, generator=generator) for k, v in pack.offsets.items()}
    path = tmp_path_factory.mktemp("tiny_tuned_pack") / "faces.safetensors"
    pack.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_cats_pack_path(tiny_base_dir, tmp_path_factory) -> Path:
    """A second domain ("cats") on the tiny base, its random non-zero offsets unlike the faces pack's."""
    from e4t import load_base
    from e4t.pack import DomainPack

    base = load_base(tiny_base_dir)
    pack = DomainPack.initial(base, "cats", "cat", vision=TINY_VISION, seed=1)
    generator = torch.Generator().manual_seed(1)
    pack.offsets = {k: 0.2 * torch.randn(v.shape, generator=generator) for k, v in pack.offsets.items()}
    path = tmp_path_factory.mktemp("tiny_cats_pack") / "cats.safetensors"
    pack.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_base_dir, tiny_tuned_pack_path, tmp_path_factory) -> Path:
    """`export_onnx` of the tiny tuned pack (~40 s on 2 cores: torch.export traces the whole UNet)."""
    from e4t import load_base, load_pack
    from e4t.onnx_encoder import export_onnx

    base = load_base(tiny_base_dir)
    out = tmp_path_factory.mktemp("tiny_onnx")
    export_onnx(base, load_pack(tiny_tuned_pack_path, base), out)
    return out
