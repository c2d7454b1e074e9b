"""`e4t pretrain base`: train the embedded base (tokenizer, VAE, text encoder, UNet) from scratch.

Launch (one process, CPU; the embedded base is small enough that one machine suffices):

    e4t pretrain base --shards shards/faces --shards shards/art --out models/base --preset described-cpu

The recipe is a list of stages. Each one writes into `OUT/work/<stage>/`, checkpoints while
it trains (rerunning after a kill resumes from the last checkpoint), and stamps itself
(`stage.json`) with a hash of its inputs (shard manifests, earlier stages) and config, so a
rerun with unchanged inputs skips it: 1-tokenizer, 2-vae, 3-latents, 4-text (only with
`text_steps`: the text encoder pretrained contrastively, then read frozen), 4-unet (4-unet-continued
for a schedule started from an earlier base with `init_from`; a `-v` suffix for a v-predicting UNet), 5-save.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from e4t.base import folder_hash
from e4t.objective import diffusion_target, image_error_scale
from pretrain import checkpoint as ck
from pretrain.arch import (
    DEFAULT,
    BaseArch,
    build_pipeline,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    save_pipeline,
)
from pretrain.arch import train_tokenizer as _train_bpe
from pretrain.latent_cache import LatentCache
from pretrain.loop import StepCallback, train_loop
from pretrain.text_tower import stage_text
from shards.reader import make_loader, make_pipeline, shard_urls
from shards.synth import DOMAINS, described_caption
from shards.writer import sha256_file

_LATER = ("unet_snr_floor",)  # fields added after stages were committed (pretrain.checkpoint.keyed_fields)


@dataclass(frozen=True)
class BaseTrainConfig:
    """How the embedded base is trained. Fields prefixed `vae_` / `unet_` belong to one stage."""

    vae_steps: int = 700
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_warmup: int = 50
    vae_kl_weight: float = 1e-6
    vae_l1_weight: float = 1.0
    unet_steps: int = 2200
    unet_batch_size: int = 32
    unet_lr: float = 5e-4
    unet_warmup: int = 150
    unet_caption_dropout: float = 0.1
    unet_describe_share: float = 0.0  # captions that name the identity's attributes (shards.synth.training_caption)
    unet_snr_gamma: float = 0.0  # min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    # with it, a floor on the weight of the image error at high noise (Salimans & Ho 2022's truncated SNR,
    # max(SNR, 1)): where words decide what is drawn, min-SNR alone weighs that error by SNR, near 0
    unet_snr_floor: float = 0.0
    unet_ema: bool = True
    unet_ema_max_decay: float = 0.999
    # Contrastive text pretraining (pretrain/text_tower.py) before the UNet stage, which then reads the
    # text encoder frozen; 0 steps: no such stage, the text encoder trains jointly with the UNet.
    text_steps: int = 0
    text_batch_size: int = 128
    text_lr: float = 1e-3
    text_warmup: int = 50
    # a pipeline folder whose UNet and text encoder start the UNet stage instead of random weights
    # (a longer schedule on top of a finished one); it counts by its content, not its path
    init_from: str = ""
    # appended to the UNet stage's name, so that two schedules of one kind (say, two continued
    # v-prediction schedules) keep separate folders in one stage store
    stage_tag: str = ""
    grad_clip: float = 1.0
    weight_decay: float = 1e-2
    seed: int = 0
    # Not part of any stage's hash: changing them never invalidates finished work.
    checkpoint_every: int = 200
    sample_every: int = 0
    num_threads: int = 0  # 0: os.cpu_count(); fewer when other jobs share the cores (oversubscription is slow)
    device: str = "auto"  # "auto": the first CUDA device when there is one, else the CPU
    data_workers: int = 0  # reader processes for the VAE stage (a GPU outruns one reader)
    # What the shipped folder holds, and how samples.png is drawn.
    dtype: str = "float32"
    sample_steps: int = 25
    sample_per_prompt: int = 4
    guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ValueError(f"`device` must be 'auto', 'cpu' or 'cuda[:N]' but is {self.device!r}.")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"`dtype` must be 'float32' or 'float16' but is {self.dtype!r}.")
        for name in ("vae_steps", "unet_steps", "vae_batch_size", "unet_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer but is {getattr(self, name)}.")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def subset(self, *prefixes: str) -> dict[str, Any]:
        return ck.keyed_fields(self, _LATER, prefixes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BaseTrainConfig:
        if name not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)} but is {name!r}.")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, BaseTrainConfig] = {
    "tiny": BaseTrainConfig(
        vae_steps=3,
        vae_batch_size=8,
        vae_warmup=1,
        unet_steps=4,
        unet_batch_size=8,
        unet_warmup=1,
        checkpoint_every=2,
        sample_steps=2,
        sample_per_prompt=1,
        num_threads=1,
    ),
    "plain": BaseTrainConfig(),  # with pretrain.arch.PLAIN, on 2 CPU cores
    # with pretrain.arch.DESCRIBED (README, "The described world, measured"): captions name the identity's
    # attributes; batch 512 wants a GPU (about 6 minutes of UNet steps on one H100)
    "described": BaseTrainConfig(
        vae_steps=3000,
        vae_batch_size=64,
        unet_steps=1500,
        unet_batch_size=512,
        unet_lr=1e-3,
        unet_warmup=300,
        unet_describe_share=0.7,
        unet_snr_gamma=5.0,
        checkpoint_every=500,
    ),
}
# The described world on 2 CPU cores: the VAE at batch 32 (~1 s a step), the text encoder pretrained
# contrastively (14 min), then the UNet alone on it at batch 32 (README, "The described world, measured").
PRESETS["described-cpu"] = replace(
    PRESETS["described"],
    vae_batch_size=32,
    unet_steps=5000,
    unet_batch_size=32,
    unet_lr=5e-4,
    unet_warmup=150,
    text_steps=800,
)
# The described world's second schedule, started from the first one's base (`init_from`).
PRESETS["described-continue"] = replace(PRESETS["described"], unet_steps=900, unet_lr=5e-4, unet_warmup=100)
# The CPU recipe's second schedule: 4000 more UNet steps at batch 32 from the first one's base (`init_from`),
# where the first schedule's loss was still falling.
PRESETS["described-cpu-continue"] = replace(PRESETS["described-cpu"], unet_steps=4000, unet_lr=3e-4, unet_warmup=100)
# The CPU recipe's third schedule, from the second one's base: 2400 steps turning the UNet to v-prediction
# (pretrain.arch.DESCRIBED_V), its image error weighed at least 1 at every noise level.
PRESETS["described-v-cpu-continue"] = replace(PRESETS["described-cpu-continue"], unet_steps=2400, unet_snr_floor=1.0)
# The fourth schedule, from the third one's base, on one GPU: the same objective at batch 512 (16x the
# samples of a CPU step); 8.5 minutes on an H100, about 5 hours on 2 CPU cores (README, "A GPU schedule").
PRESETS["described-v-gpu-continue"] = replace(
    PRESETS["described-v-cpu-continue"], unet_steps=1900, unet_batch_size=512, unet_lr=4e-4, stage_tag="gpu"
)
_TRAIN_KEYS = ("grad_clip", "weight_decay", "seed")


def train_base(
    shards: list[str | Path],
    out: Path,
    *,
    arch: BaseArch = DEFAULT,
    cfg: BaseTrainConfig,
    progress: bool = True,
    callback: StepCallback | None = None,
    store: Path | None = None,
) -> Path:
    """Train the embedded base on the `base` split of `shards` (one dir per domain) into the folder `out`.

    `callback(stage, step)` runs after every optimizer step (after any checkpoint at that step).
    `store` is a stage store (`pretrain.checkpoint.store_stage`): trained stages found there with the
    right key are fetched instead of trained, and every stage finished here is kept there, except the
    latent cache (large, and minutes to re-encode) and the export.
    Returns `out`, a plain `StableDiffusionPipeline` folder with `embedded.json` and `samples.png`.
    """
    # 0. inputs: every shard dir must carry a manifest; their hashes key every stage
    out = Path(out)
    dirs = [Path(d) for d in shards]
    if not dirs:
        raise ValueError("`shards` must name at least one shard directory but is empty.")
    for d in dirs:
        if not (d / "manifest.json").is_file():
            raise FileNotFoundError(f"Shard directory {d} should contain manifest.json but does not.")
    inputs = {str(d): sha256_file(d / "manifest.json") for d in dirs}  # paths for the record; hashes key the stages
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    urls = [u for d in dirs for u in shard_urls(d)]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    if cfg.torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        data = _Data(urls, arch, cfg)
        return _train_stages(out, inputs, manifests, data, arch, cfg, progress, callback, store)
    finally:
        torch.set_num_threads(threads)


def _train_stages(
    out: Path,
    inputs: dict[str, str],
    manifests: list[dict],
    data: _Data,
    arch: BaseArch,
    cfg: BaseTrainConfig,
    progress: bool,
    callback: StepCallback | None,
    store: Path | None,
) -> Path:
    work, shas = out / "work", list(inputs.values())  # moved shards with the same content stay up to date
    timings: dict[str, float] = {}

    def run_stage(name: str, key: str, body: Callable[[Path], dict[str, Any]], *, kept: bool = True) -> Path:
        stage_dir = work / name
        kept = kept and store is not None
        if kept and not ck.stage_done(stage_dir, key) and ck.fetch_stage(store, stage_dir, key) and progress:
            tqdm.write(f"[pretrain base] {name}: fetched from {store}")
        if ck.stage_done(stage_dir, key):
            timings[name] = ck.read_stamp(stage_dir).get("seconds", 0.0)
            if progress:
                tqdm.write(f"[pretrain base] {name}: up to date, skipped")
            return stage_dir
        ck.clear_stamp(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info = body(stage_dir)
        timings[name] = round(time.perf_counter() - t0, 2)
        ck.write_stamp(stage_dir, key, {"seconds": timings[name], **info})
        if kept:
            ck.store_stage(stage_dir, store)
        return stage_dir

    # 1. tokenizer: BPE on every caption of the base split, plus the domains' class words
    described = cfg.unet_describe_share > 0  # described captions join the tokenizer's corpus
    tok_key = ck.config_hash(
        {"stage": 1, "inputs": shas, "arch": [arch.vocab_merges, arch.max_tokens], "described": described}
    )
    tok_dir = run_stage("1-tokenizer", tok_key, lambda d: _stage_tokenizer(d, data, manifests, arch))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    # 2. VAE
    vae_arch = [arch.image_size, arch.latent_channels, list(arch.vae_channels)]
    vae_key = ck.config_hash({"stage": 2, "inputs": shas, "arch": vae_arch, "cfg": cfg.subset("vae_", *_TRAIN_KEYS)})
    vae_dir = run_stage("2-vae", vae_key, lambda d: _stage_vae(d, vae_key, data, arch, cfg, progress, callback))
    vae = AutoencoderKL.from_pretrained(vae_dir / "model")

    # 3. latent cache and whitened VAE: the whole base split encoded once; the UNet stage reads only this
    cache_key = ck.config_hash({"stage": 3, "vae": vae_key, "whiten": "per-channel", "metas": 1})
    cache_dir = run_stage(
        "3-latents", cache_key, lambda d: _stage_latents(d, data, vae, cfg.torch_device, progress), kept=False
    )
    vae = AutoencoderKL.from_pretrained(cache_dir / "vae")

    # 4a. the text encoder, pretrained contrastively on the latent cache (when asked for)
    text_dir, text_key = None, None
    if cfg.text_steps > 0:
        text_cfg = cfg.subset("text_", "unet_describe_share", *_TRAIN_KEYS)
        text_key = ck.config_hash({"stage": "4-text", "tokenizer": tok_key, "latents": cache_key, "cfg": text_cfg})
        text_dir = run_stage(
            "4-text",
            text_key,
            lambda d: stage_text(d, text_key, cache_dir, tokenizer, arch, cfg, progress, callback),
        )

    # 4b. UNet, from scratch, and the text encoder with it unless the text stage pretrained it
    unet_key = ck.config_hash(
        {
            "stage": 4,
            "tokenizer": tok_key,
            "latents": cache_key,
            "arch": arch.to_json(),
            "cfg": cfg.subset("unet_", *_TRAIN_KEYS),
            **({"init_from": folder_hash(cfg.init_from)} if cfg.init_from else {}),
            **({"text": text_key} if text_key else {}),
        }
    )
    unet_dir = run_stage(
        # one stage per schedule of a world, so that one stage store keeps them all
        "4-unet"
        + ("-continued" if cfg.init_from else "")
        + ("-v" if arch.prediction_type == "v_prediction" else "")
        + (f"-{cfg.stage_tag}" if cfg.stage_tag else ""),
        unet_key,
        lambda d: _stage_unet(d, unet_key, cache_dir, text_dir, tokenizer, vae, arch, cfg, progress, callback),
    )

    # 5. the shipped folder: a plain StableDiffusionPipeline, then samples.png drawn from it
    save_key = ck.config_hash({"stage": 5, "unet": unet_key, "cfg": cfg.subset("dtype", "sample_", "guidance")})

    def save(stage_dir: Path) -> dict[str, Any]:
        unet = UNet2DConditionModel.from_pretrained(unet_dir / "unet")
        text_encoder = CLIPTextModel.from_pretrained(unet_dir / "text_encoder")
        extra = {
            "training": asdict(cfg),
            "inputs": inputs,
            "timings": timings,
            "world_version": sorted({m.get("world_version") for m in manifests}, key=str),
            "steps": {"vae": cfg.vae_steps, "unet": cfg.unet_steps},
        }
        save_pipeline(
            out,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            unet=unet,
            arch=arch,
            dtype=getattr(torch, cfg.dtype),
            extra=extra,
        )
        pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True).to(dtype=torch.float32)
        prompts = json.loads((cache_dir / "prompts.json").read_text())
        sample_grid(
            pipe,
            prompts,
            out / "samples.png",
            steps=cfg.sample_steps,
            guidance=cfg.guidance_scale,
            per_prompt=cfg.sample_per_prompt,
            seed=cfg.seed,
            progress=progress,
        )
        return {"samples": str(out / "samples.png")}

    run_stage("5-save", save_key, save, kept=False)
    return out


class _Data:
    """The base split of the shards, as the reader streams it."""

    def __init__(self, urls: list[str], arch: BaseArch, cfg: BaseTrainConfig):
        self.urls, self.arch, self.cfg = urls, arch, cfg

    def once(self, batch_size: int) -> Iterator[dict]:
        return iter(
            make_pipeline(
                self.urls,
                batch_size=batch_size,
                image_size=self.arch.image_size,
                splits=["base"],
                shuffle=0,
                seed=self.cfg.seed,
            )
        )

    def forever(self, batch_size: int, seed: int) -> Iterator[dict]:
        kw = dict(batch_size=batch_size, image_size=self.arch.image_size, splits=["base"], resampled=True, shuffle=1000)
        while True:  # resampled streams are endless; this loop only guards against an early end
            if self.cfg.data_workers:
                yield from make_loader(self.urls, num_workers=self.cfg.data_workers, seed=seed, **kw)
            else:
                yield from make_pipeline(self.urls, seed=seed, **kw)
            seed += 1


def _stage_tokenizer(stage_dir: Path, data: _Data, manifests: list[dict], arch: BaseArch) -> dict[str, Any]:
    captions, class_words = [], {m["class_word"] for m in manifests if m.get("class_word")}
    class_words |= {DOMAINS[m["domain"]].CLASS_WORD for m in manifests if m.get("domain") in DOMAINS}
    for batch in data.once(256):
        captions += batch["caption"]
        if data.cfg.unet_describe_share > 0:  # every attribute word the UNet stage's captions may use
            captions += [
                described_caption(m["domain"], m["attributes"], m["context"])
                for m in batch["meta"]
                if m.get("domain") in DOMAINS and isinstance(m.get("attributes"), dict)
            ]
        class_words |= {m["class_word"] for m in batch["meta"] if m.get("class_word")}
    if not captions:
        raise ValueError(f"The shards {data.urls[:3]}... should hold samples of the `base` split but hold none.")
    # Repeating each class word makes it one token, as E4T's placeholder init expects.
    tokenizer = _train_bpe(captions + [" ".join([w] * 16) for w in sorted(class_words)], stage_dir, arch)
    single = {w: len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in class_words}
    return {"captions": len(captions), "vocab": len(tokenizer), "class_words": single}


def _stage_vae(
    stage_dir: Path,
    key: str,
    data: _Data,
    arch: BaseArch,
    cfg: BaseTrainConfig,
    progress: bool,
    callback: StepCallback | None,
) -> dict[str, Any]:
    ck.seed_everything(cfg.seed)
    device = cfg.torch_device
    vae = build_vae(arch).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.vae_warmup, cfg.vae_steps)

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["pixels"].to(device, non_blocking=True)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse, l1 = F.mse_loss(rec, x), F.l1_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()  # per pixel, so the weight is independent of image size
        return mse + cfg.vae_l1_weight * l1 + cfg.vae_kl_weight * kl, {"mse": mse.item()}

    logs = train_loop(
        "2-vae",
        stage_dir / "ckpt.pt",
        key,
        cfg,
        cfg.vae_steps,
        {"vae": vae},
        opt,
        sched,
        lambda start: data.forever(cfg.vae_batch_size, cfg.seed + start),
        loss_fn,
        progress=progress,
        callback=callback,
    )
    vae.save_pretrained(stage_dir / "model", safe_serialization=True)
    (stage_dir / "ckpt.pt").unlink(missing_ok=True)
    return logs


def _stage_latents(
    stage_dir: Path, data: _Data, vae: AutoencoderKL, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Encode the base split once, then whiten the VAE with the exact statistics of what it encoded."""
    means, stds, captions, metas = [], [], [], []
    vae.eval().to(device)
    with torch.no_grad():
        for batch in tqdm(data.once(64), desc="3-latents", disable=not progress):
            dist = vae.encode(batch["pixels"].to(device)).latent_dist
            means.append(dist.mean.cpu())
            stds.append(dist.std.cpu())
            captions += batch["caption"]
            metas += batch["meta"]
    mean, std = torch.cat(means), torch.cat(stds)
    vae.cpu()
    # Per channel, over samples and positions, of z = mean + std * eps.
    shift = mean.mean((0, 2, 3))
    scale = (mean.var((0, 2, 3)) + std.pow(2).mean((0, 2, 3))).sqrt()
    whiten_vae(vae, shift, scale)
    vae.save_pretrained(stage_dir / "vae", safe_serialization=True)
    shift_, scale_ = shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)
    tensors = {"mean": ((mean - shift_) / scale_).contiguous(), "std": (std / scale_).contiguous()}
    save_file(tensors, stage_dir / "latents.safetensors")
    (stage_dir / "captions.json").write_text(json.dumps(captions))
    keep = ("domain", "caption", "attributes", "context", "identity")
    (stage_dir / "metas.json").write_text(json.dumps([{k: m[k] for k in keep if k in m} for m in metas]))
    (stage_dir / "prompts.json").write_text(json.dumps(sample_prompts(captions, metas), indent=1))
    return {"samples": len(captions), "latent_shift": shift.tolist(), "latent_scale": scale.tolist()}


def whiten_vae(vae: AutoencoderKL, shift: torch.Tensor, scale: torch.Tensor) -> AutoencoderKL:
    """Fold a per-channel affine map into the VAE's 1x1 quant convs: latents z become (z - shift) / scale.

    decode(encode(x)) is unchanged and the folder stays a plain `AutoencoderKL`, now with
    `scaling_factor` 1. A single global factor (SD's trick) would leave per-channel means of
    several units in place, which the UNet must then produce from near-pure noise: a colour
    cast in every sample.
    """
    c = vae.config.latent_channels
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("whiten_vae needs a VAE with quant_conv and post_quant_conv (use_quant_conv=True).")
    q, p = vae.quant_conv, vae.post_quant_conv
    with torch.no_grad():
        q.weight[:c] /= scale.view(-1, 1, 1, 1)
        q.bias[:c] = (q.bias[:c] - shift) / scale
        q.bias[c:] -= 2 * scale.log()  # the log-variance rows
        p.bias += p.weight.sum((2, 3)) @ shift  # decode(scale * z' + shift), with the old weights
        p.weight *= scale.view(1, -1, 1, 1)
    vae.register_to_config(scaling_factor=1.0)
    return vae


def _stage_unet(
    stage_dir: Path,
    key: str,
    cache_dir: Path,
    text_dir: Path | None,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL,
    arch: BaseArch,
    cfg: BaseTrainConfig,
    progress: bool,
    callback: StepCallback | None,
) -> dict[str, Any]:
    ck.seed_everything(cfg.seed)
    device = cfg.torch_device
    cache = LatentCache.read(cache_dir, device)
    scale = vae.config.scaling_factor

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", max_length=arch.max_tokens, truncation=True, return_tensors="pt"
        ).input_ids.to(device)

    empty = tokenize([""])
    if cfg.init_from:
        unet, text_encoder = _initial_weights(Path(cfg.init_from), tokenizer, arch)
    else:
        unet, text_encoder = build_unet(arch), build_text_encoder(arch, tokenizer)
    if text_dir is not None:  # pretrained contrastively: read frozen, as Stable Diffusion reads CLIP's
        text_encoder = CLIPTextModel.from_pretrained(text_dir / "text_encoder", dtype=torch.float32)
        text_encoder.requires_grad_(False)
    unet, text_encoder = unet.to(device), text_encoder.to(device)
    vae.to(device)  # previews only
    params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.unet_warmup, cfg.unet_steps)
    ema = EMAModel(params, decay=cfg.unet_ema_max_decay, use_ema_warmup=True) if cfg.unet_ema else None
    noise_sched = DDPMScheduler.from_config(build_scheduler(arch.prediction_type).config)
    weight = loss_weights(noise_sched.alphas_cumprod, arch.prediction_type, cfg).to(device)

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = cfg.seed * 1_000_003 + start
        for idx, captions, g in cache.caption_batches(cfg.unet_batch_size, cfg.unet_describe_share, seed):
            drop = (torch.rand(len(idx), generator=g) < cfg.unet_caption_dropout).to(device)
            yield idx.to(device), torch.where(drop[:, None], empty, tokenize(captions))

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        idx, tokens = batch
        latents = cache.sample(idx) * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), device=device)
        cond = text_encoder(tokens)[0]
        pred = unet(noise_sched.add_noise(latents, noise, t), t, cond).sample
        mse = F.mse_loss(pred, diffusion_target(noise_sched, latents, noise, t), reduction="none").mean((1, 2, 3))
        return (weight[t] * mse).mean(), {"mse": mse.mean().item()}

    def on_step(stage: str, step: int) -> None:
        if cfg.sample_every and step % cfg.sample_every == 0:
            path = stage_dir / f"samples-{step:06d}.png"
            _preview(path, cache_dir, tokenizer, text_encoder, vae, unet, ema, params, cfg, arch)
        if callback is not None:
            callback(stage, step)

    logs = train_loop(
        stage_dir.name,
        stage_dir / "ckpt.pt",
        key,
        cfg,
        cfg.unet_steps,
        {"unet": unet, "text_encoder": text_encoder},
        opt,
        sched,
        batches,
        loss_fn,
        ema=ema,
        params=params,
        progress=progress,
        callback=on_step,
    )
    if ema is not None:
        ema.copy_to(params)
    unet.cpu().save_pretrained(stage_dir / "unet", safe_serialization=True)
    text_encoder.cpu().save_pretrained(stage_dir / "text_encoder", safe_serialization=True)
    vae.cpu()
    (stage_dir / "ckpt.pt").unlink(missing_ok=True)
    return logs


def loss_weights(alphas_cumprod: torch.Tensor, prediction_type: str, cfg: BaseTrainConfig) -> torch.Tensor:
    """Per-timestep weight of the UNet's loss: min-SNR-gamma, floored by `unet_snr_floor`, in image-error terms
    (`e4t.objective.image_error_scale` carries it over to the UNet's own error). No weighting when
    `unet_snr_gamma` is 0.
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if cfg.unet_snr_gamma <= 0:
        return torch.ones_like(snr)
    image_weight = snr.clamp(max=cfg.unet_snr_gamma)
    if cfg.unet_snr_floor > 0:
        image_weight = image_weight.clamp(min=cfg.unet_snr_floor)
    return image_weight * image_error_scale(alphas_cumprod, prediction_type)


def _initial_weights(
    folder: Path, tokenizer: CLIPTokenizer, arch: BaseArch
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """The UNet and text encoder of an earlier base, after checking that they fit this stage's tokenizer and arch."""
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"`init_from` should be a pipeline folder with model_index.json but {folder} is not.")
    if CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"`init_from` {folder} was trained with another tokenizer than this stage's.")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    if (tuple(unet.config.block_out_channels), unet.config.in_channels) != (arch.unet_channels, arch.latent_channels):
        raise ValueError(f"`init_from` {folder} has another UNet than {arch}.")
    return unet, text_encoder


def _preview(
    path: Path,
    cache_dir: Path,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    ema: EMAModel | None,
    params: list,
    cfg: BaseTrainConfig,
    arch: BaseArch,
) -> None:
    """Samples mid-training, from the EMA weights when there are some."""
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    unet.eval(), text_encoder.eval()
    pipe = build_pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet, prediction_type=arch.prediction_type
    ).to(unet.device)
    prompts = json.loads((cache_dir / "prompts.json").read_text())
    sample_grid(
        pipe,
        prompts,
        path,
        steps=cfg.sample_steps,
        guidance=cfg.guidance_scale,
        per_prompt=cfg.sample_per_prompt,
        seed=cfg.seed,
        progress=False,
    )
    unet.train(), text_encoder.train()
    if ema is not None:
        ema.restore(params)


def sample_prompts(captions: list[str], metas: list[dict]) -> list[str]:
    """One training caption per context label of each domain, all other labels at their most common value.

    E.g. "a photo of a face on the beach", "a sketch of a face", "a photo of a face wearing a hat".
    """
    by_domain: dict[str, list[tuple[str, dict]]] = {}
    for caption, meta in zip(captions, metas, strict=True):
        if isinstance(meta.get("context"), dict):
            by_domain.setdefault(str(meta.get("domain", "")), []).append((caption, meta["context"]))
    if not by_domain:  # samples without context labels: a spread of distinct captions
        distinct = sorted(set(captions))
        return distinct[:: max(1, len(distinct) // 16)][:16]
    prompts: list[str] = []
    for domain, items in sorted(by_domain.items()):
        kinds = sorted({k for _, ctx in items for k in ctx})
        common = {k: Counter(str(ctx.get(k)) for _, ctx in items).most_common(1)[0][0] for k in kinds}
        caption_of = {json.dumps({k: str(ctx.get(k)) for k in kinds}, sort_keys=True): c for c, ctx in items}
        for kind in kinds:
            for label in sorted({str(ctx.get(kind)) for _, ctx in items}):
                caption = caption_of.get(json.dumps(common | {kind: label}, sort_keys=True))
                if caption is not None and caption not in prompts:
                    prompts.append(caption)
        # identities drawn from words alone: three subjects' full descriptions, plain photo
        if domain in DOMAINS:
            plain = {"background": "plain", "medium": "photo", "accessory": "none"}
            described = {m["identity"]: m for m in metas if m.get("domain") == domain and "attributes" in m}
            for meta in list(described.values())[:3]:
                prompts.append(described_caption(domain, meta["attributes"], plain))
    return prompts


def sample_grid(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    path: Path,
    *,
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    per_prompt: int = 4,
    progress: bool = True,
) -> Path:
    """A labelled grid: one row per prompt, `per_prompt` seeds per row, DDIM with classifier-free guidance."""
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    # long descriptions wrap, so the pictures, not the captions, take the width
    labels = ["\n".join(textwrap.wrap(p, 44)) for p in prompts]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.multiline_textbbox((0, 0), label)[2]) for label in labels) + 8
    grid = Image.new("RGB", (label_w + per_prompt * size, len(prompts) * size), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(tqdm(prompts, desc="samples", disable=not progress)):
        images = pipe(
            [prompt] * per_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(seed + row),
        ).images
        draw.multiline_text((4, row * size + size // 2), labels[row], fill="black", anchor="lm")
        for col, image in enumerate(images):
            grid.paste(image, (label_w + col * size, row * size))
    grid.save(path)
    return path
