"""Contrastive pretraining of the encoder's vision tower, as E4T's encoder starts from CLIP's.

    e4t pretrain vision --base artifacts/base --shards runs/embedded/shards/faces \
        --shards runs/embedded/shards/cats --out artifacts/vision

E4T reads the input image through a pretrained CLIP vision tower. Trained from scratch through
the diffusion loss alone, the embedded encoder's small tower never learns identity: on the
described world its 0-step guesses for different subjects differ by a seventh of their offset
from the class word (README, "A vision tower that knows identities"). This job trains a
`CLIPVisionModel` against the base's own text encoder, locked (LiT, Zhai et al. 2022), on the base
split with captions that name each identity's attributes, so that its features separate
identities before domain pretraining ever sees them. The result is an ordinary CLIPVisionModel
folder, used as a real one is: `e4t pretrain domain --vision DIR --train-vision`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, get_cosine_schedule_with_warmup

from e4t.base import Base, folder_hash, load_base
from e4t.encoder import NEW_TOWER, PRETRAINED_RESAMPLE, clip_pixels
from e4t.vision import build_tower
from pretrain import checkpoint as ck
from pretrain.loop import train_loop
from pretrain.text_tower import contrastive_loss
from shards.reader import make_pipeline, shard_urls
from shards.synth import training_caption
from shards.writer import sha256_file


@dataclass(frozen=True)
class VisionTowerConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    # captions that name a random subset of the identity's attributes (all of them a third of the time);
    # the rest keep the class word and context alone, so the tower learns the context as well
    describe_share: float = 0.9
    # the encoder's default new tower, so that a pack differs from a from-scratch one only by its start
    tower: dict = field(default_factory=lambda: dict(NEW_TOWER))
    checkpoint_every: int = 100
    seed: int = 0
    retrieval_subjects: int = 32  # held-out identities per domain for the view-to-view retrieval figure

    def check(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "retrieval_subjects"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1 but is {getattr(self, name)}")
        if not 0.0 <= self.describe_share <= 1.0:
            raise ValueError(f"`describe_share` must be in [0, 1] but is {self.describe_share}")


def build_clip(base: Base, tower: dict) -> CLIPModel:
    """A CLIP whose text tower is the base's text encoder, frozen, and whose vision tower is new."""
    text = base.text_encoder
    config = CLIPConfig(
        text_config=text.config.to_dict(),
        vision_config=CLIPVisionConfig(**tower).to_dict(),
        projection_dim=text.config.hidden_size,
    )
    model = CLIPModel(config)
    model.text_model.load_state_dict(text.state_dict())
    model.text_model.requires_grad_(False).eval()
    return model


def _as_tower(model: CLIPModel, tower: dict) -> CLIPVisionModel:
    """The CLIP's vision transformer as a stand-alone CLIPVisionModel (what the encoder loads)."""
    out = build_tower(tower)
    out.load_state_dict(model.vision_model.state_dict())
    return out


def identity_retrieval(tower: CLIPVisionModel, domains: list[str], subjects: int) -> dict[str, float]:
    """Top-1 view-to-view retrieval on held-out identities: is another view of the same one the nearest?

    Chance is 1 / `subjects`. The encoder's vision branch pools these same features.
    """
    from e4t.images import to_tensor
    from evaluation import protocol

    def features(images: list) -> torch.Tensor:
        pixels = torch.cat([to_tensor(im, 64) for im in images])
        with torch.no_grad():
            pooled = tower(pixel_values=clip_pixels(pixels, tower.config.image_size, PRETRAINED_RESAMPLE)).pooler_output
        return F.normalize(pooled, dim=-1)

    out = {}
    tower.eval()
    for domain in domains:
        views = [protocol.reference_images(s, 2, 64) for s in protocol.heldout_identities(domain, subjects)]
        first, second = features([v[0] for v in views]), features([v[1] for v in views])
        hits = (first @ second.T).argmax(1) == torch.arange(len(views))
        out[domain] = round(hits.float().mean().item(), 3)
    return out


def train_vision_tower(
    base_dir: Path,
    shard_dirs: list[Path],
    out: Path,
    cfg: VisionTowerConfig = VisionTowerConfig(),
    *,
    work: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train the tower and save it as a CLIPVisionModel folder `out` (float16); skipped when current."""
    cfg.check()
    base = load_base(base_dir)
    manifests = [Path(d) / "manifest.json" for d in shard_dirs]
    for m in manifests:
        if not m.is_file():
            raise FileNotFoundError(f"shard directory {m.parent} has no manifest.json")
    # the tower meets the base only through its tokenizer and locked text encoder: a base retrained with
    # the same text side (a further UNet schedule) keeps the tower current
    text_hash = folder_hash(base_dir, ("text_encoder", "tokenizer"))
    shards = sorted(sha256_file(m) for m in manifests)
    key = ck.config_hash({"text": text_hash, "shards": shards, "cfg": asdict(cfg)})
    if ck.stage_done(out, key):
        print(f"vision tower {out} is current")
        return out
    work = work or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    ck.seed_everything(cfg.seed)
    model = build_clip(base, cfg.tower)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup, cfg.steps)
    tokenizer = base.tokenizer
    urls = [u for d in shard_dirs for u in shard_urls(d)]
    domains = sorted({json.loads(m.read_text())["domain"] for m in manifests})
    before = identity_retrieval(_as_tower(model, cfg.tower), domains, cfg.retrieval_subjects)

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        # a resumed run reads a fresh stream seeded by its start step; the tower sees augmented images,
        # as the encoder's input is augmented in domain pretraining
        seed = cfg.seed * 1_000_003 + start
        rng = random.Random(seed)
        pipe = make_pipeline(
            urls,
            batch_size=cfg.batch_size,
            splits=["base"],
            resampled=True,
            augment=True,
            seed=seed,
            world_size=1,
            rank=0,
        )
        for batch in pipe:
            captions = [training_caption(m, rng, cfg.describe_share) for m in batch["meta"]]
            tokens = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            yield tokens, clip_pixels(batch["pixels"], cfg.tower["image_size"], PRETRAINED_RESAMPLE), captions

    logs = train_loop(
        "vision",
        work / "ckpt.pt",
        key,
        cfg,
        cfg.steps,
        {"clip": model},
        opt,
        sched,
        batches,
        lambda batch: contrastive_loss(model, *batch),
        params=trainable,
        progress=progress,
        callback=None,
    )
    tower = _as_tower(model, cfg.tower)
    after = identity_retrieval(tower, domains, cfg.retrieval_subjects)
    out.mkdir(parents=True, exist_ok=True)
    tower.half().save_pretrained(out, safe_serialization=True)
    info = {**logs, "retrieval_top1": after, "retrieval_top1_untrained": before, "chance": 1 / cfg.retrieval_subjects}
    ck.write_stamp(out, key, info)
    (work / "ckpt.pt").unlink(missing_ok=True)
    print(f"vision tower written to {out}: {json.dumps(info)}")
    return out
