"""Architecture of the embedded base: a tiny Stable-Diffusion-shaped pipeline.

Every component is a stock diffusers / transformers class with a small config, and the
whole is saved as an ordinary `StableDiffusionPipeline` folder, so the code that serves
real Stable Diffusion weights serves the embedded base unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pretrain.checkpoint import keyed_fields

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's own word splitter: letters, digits one by one, punctuation runs.
_CLIP_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


@dataclass(frozen=True)
class BaseArch:
    """Sizes of the embedded base. `tiny` is for tests; `default` is what ships."""

    image_size: int = 64
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 128)
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_tokens: int = 32
    vocab_merges: int = 2000
    unet_top_attention: bool = False  # attention at the full latent resolution too
    # what the UNet predicts: "epsilon" (Stable Diffusion 1.x) or "v_prediction" (Salimans & Ho 2022, as
    # Stable Diffusion 2.x), whose high-noise target is the image itself rather than nearly the input
    prediction_type: str = "epsilon"

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_json(self) -> dict:
        return keyed_fields(self, _LATER)

    @classmethod
    def from_json(cls, d: dict) -> BaseArch:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


_LATER = ("prediction_type",)  # fields added after stages were committed (pretrain.checkpoint.keyed_fields)
TINY = BaseArch(
    vae_channels=(8, 16, 16),
    unet_channels=(16, 32, 32),
    unet_head_dim=8,
    text_width=32,
    text_layers=1,
    text_heads=2,
    vocab_merges=300,
    max_tokens=64,  # room for the described captions of the evaluation's `base_described_identity` row
    unet_top_attention=True,
)
# The first shipped world: captions name the class word and the context only. Sized for ~30 min of training
# on 2 CPU cores (a VAE at (32, 64, 128) costs ~4x the step time).
PLAIN = BaseArch(vae_channels=(16, 32, 64), unet_channels=(32, 64, 128))
# The world whose captions describe identities (README, "The described world, measured"): 8 latent
# channels and a wider VAE keep more of the marks and eye colours (16x16x8 for 64x64x3), attention at
# 16x16 lets words reach them, and a full description with its context runs to ~45 tokens.
DESCRIBED = replace(PLAIN, latent_channels=8, vae_channels=(32, 64, 128), max_tokens=64, unet_top_attention=True)
# The described world's UNet predicting v: at high noise its target is the image, which the words decide.
DESCRIBED_V = replace(DESCRIBED, prediction_type="v_prediction")
DEFAULT = DESCRIBED_V  # what ships (pretrain.embedded.SHIPPED ends on a DESCRIBED_V schedule)
ARCHS = {
    "tiny": TINY,
    "plain": PLAIN,
    "described": DESCRIBED,
    "described-v": DESCRIBED_V,
}


def arch_of_preset(preset: str) -> BaseArch:
    """The architecture a `pretrain.base.PRESETS` name trains: its world's, whatever schedule or machine suffix."""
    return ARCHS[preset.removesuffix("-continue").removesuffix("-cpu").removesuffix("-gpu")]


def train_tokenizer(captions: Iterable[str], out_dir: str | Path, arch: BaseArch) -> CLIPTokenizer:
    """Learn BPE merges on `captions` and write them in CLIP's vocab.json / merges.txt layout.

    The vocabulary is laid out exactly as CLIP's (256 byte symbols, the same with `</w>`,
    one entry per merge, then the two specials), so `CLIPTokenizer` loads it unchanged.
    """
    byte_symbols = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=None))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(_CLIP_WORDS), behavior="removed", invert=True)
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(byte_symbols) + arch.vocab_merges,
        min_frequency=2,
        initial_alphabet=byte_symbols,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer=trainer)
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]
    ]

    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m) for m in merges if "".join(m) not in vocab]
    vocab += [BOS, EOS]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        merges=merges,
        model_max_length=arch.max_tokens,
        pad_token=EOS,
    )
    tokenizer.save_pretrained(out)
    return tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return dict(zip(printable + extra, map(chr, codes)))


def build_text_encoder(arch: BaseArch, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_width,
        intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_tokens,
        projection_dim=arch.text_width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(arch: BaseArch) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=min(8, arch.vae_channels[0]),
        sample_size=arch.image_size,
    )


def build_unet(arch: BaseArch) -> UNet2DConditionModel:
    # Attention at the full latent resolution (`unet_top_attention`) is where eyes, marks and noses
    # live, but it costs ~2.3x the training step (0.65 s vs 0.28 s, batch 32 on 2 cores).
    n = len(arch.unet_channels)
    top = "CrossAttn" if arch.unet_top_attention else ""
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=(f"{top}DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + (f"{top}UpBlock2D",),
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        attention_head_dim=arch.unet_head_dim,
        cross_attention_dim=arch.text_width,
        norm_num_groups=min(16, arch.unet_channels[0]),
    )


def build_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    # Stable Diffusion's training schedule; DDIM with it samples well in 25 steps.
    return DDIMScheduler(
        prediction_type=prediction_type,
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_pipeline(
    *,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    prediction_type: str = "epsilon",
) -> StableDiffusionPipeline:
    """The components as a plain `StableDiffusionPipeline` (no safety checker: a synthetic world)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(
    out_dir: str | Path,
    *,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    arch: BaseArch,
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
) -> Path:
    """Save as a plain `StableDiffusionPipeline` folder, plus `embedded.json` saying how it was made."""
    pipe = build_pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet, prediction_type=arch.prediction_type
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "embedded.json").write_text(json.dumps({"arch": arch.to_json(), **(extra or {})}, indent=2))
    return out
