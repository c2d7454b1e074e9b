"""Training and validation of the judges (`e4t pretrain judges`): identity embedder and context classifier.

    e4t pretrain judges --out artifacts/judges                        # train both, validate on clean renders
    e4t pretrain judges --out artifacts/judges --base artifacts/base  # + renders degraded by the base

Both judges learn on EVALUATOR-split identities rendered on the fly (every synthetic domain) and
are validated on HELD-OUT-split identities they never saw, clean and degraded by a base (VAE round
trip; img2img at strength ~0.4), because their job is to score generated images. The run is skipped
when both files exist with the same training key; validation alone reruns when `base` changed.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from e4t.judges import (
    CONTEXT_FILE,
    CONTEXT_KINDS,
    IDENTITY_FILE,
    ContextJudge,
    ContextVocab,
    IdentityJudge,
    JudgeArch,
    load_judges,
    verification,
)
from e4t.safetensors_io import write_file
from pretrain.checkpoint import config_hash
from shards.splits import split_of
from shards.synth import DOMAINS, get_domain, render_sample


@dataclass(frozen=True)
class JudgeTrainConfig:
    identities: int = 1000  # evaluator-split identities per domain
    views: int = 6
    identity_steps: int = 900
    context_steps: int = 900
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    margin: float = 0.3  # CosFace additive cosine margin
    scale: float = 24.0
    attribute_weight: float = 0.5  # auxiliary heads on the embedding: attributes are what identities are made of
    identity_arch: dict = field(
        default_factory=lambda: asdict(JudgeArch(stem=8, channels=(16, 32, 64, 128), blocks=(0, 1, 1, 1)))
    )
    context_arch: dict = field(
        default_factory=lambda: asdict(JudgeArch(stem=8, channels=(16, 32, 64, 128), blocks=(0, 1, 1, 1), out_dim=64))
    )
    world_seed: int = 0
    seed: int = 0
    # validation (not part of the training key)
    val_identities: int = 300  # held-out identities per domain
    val_views: int = 4
    degraded_identities: int = 48  # held-out identities per domain pushed through the base
    strength: float = 0.4  # img2img strength: noise up to t ~ 400 of 1000, then DDIM back
    degraded_steps: int = 25
    guidance: float = 3.0
    max_fp16_drop: float = 0.005  # keep fp32 files if fp16 loses more verification accuracy than this
    num_threads: int | None = 1  # the base trains beside us; one core is our share

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> JudgeTrainConfig:
        if name == "default":
            return replace(cls(), **overrides)
        if name == "tiny":
            tiny = dict(
                identities=24,
                views=3,
                identity_steps=4,
                context_steps=4,
                batch=16,
                val_identities=8,
                val_views=3,
                degraded_identities=2,
                degraded_steps=4,
                identity_arch=asdict(JudgeArch(stem=4, channels=(8, 8, 16, 16), blocks=(0, 0, 1, 1), out_dim=128)),
                context_arch=asdict(JudgeArch(stem=4, channels=(8, 8, 16, 16), blocks=(0, 0, 0, 1), out_dim=16)),
            )
            return replace(cls(**tiny), **overrides)
        raise ValueError(f"`preset` must be one of ('default', 'tiny') but is {name!r}.")

    def training_key(self, domains: list[str]) -> str:
        train = {
            k: v for k, v in asdict(self).items() if not k.startswith(("val_", "degraded_")) and k not in _VAL_KEYS
        }
        worlds = {d: get_domain(d).WORLD_VERSION for d in domains}
        return config_hash({"format": 1, "cfg": train, "worlds": worlds})[:16]


_VAL_KEYS = ("strength", "guidance", "max_fp16_drop", "num_threads")


@dataclass
class Renders:
    """Rendered views held in memory as uint8, with their truth."""

    pixels: torch.Tensor  # [N, 3, S, S] uint8
    identity: torch.Tensor  # [N] index into `names`
    view: torch.Tensor  # [N]
    attributes: torch.Tensor  # [N, A] value index per (domain, attribute) head, -1 where it does not apply
    context: torch.Tensor  # [N, 3] label index per kind
    captions: list[str]
    names: list[str]


def context_vocab(domains: list[str]) -> ContextVocab:
    """Union of the domains' context labels, first-seen order, with the caption phrase of each."""
    labels: dict[str, list[str]] = {k: [] for k in CONTEXT_KINDS}
    phrases: dict[str, dict[str, str]] = {k: {} for k in CONTEXT_KINDS}
    for d in domains:
        for kind, label, phrase in get_domain(d).context_phrases():
            if label not in labels[kind]:
                labels[kind].append(label)
                phrases[kind][label] = phrase
    return ContextVocab({k: tuple(v) for k, v in labels.items()}, phrases)


def attribute_heads(domains: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(d, name, tuple(values)) for d in domains for name, values in get_domain(d).ATTRIBUTES.items()]


def render_split(
    domains: list[str],
    split: str,
    identities: int,
    views: int,
    cfg: JudgeTrainConfig,
    vocab: ContextVocab,
    progress: bool = True,
) -> Renders:
    """`identities` identities of `split` per domain, `views` views each (contexts and nuisance vary by view)."""
    heads = attribute_heads(domains)
    size = JudgeArch.from_json(cfg.identity_arch).image_size
    pix, ids, vws, attrs, ctxs, caps, names = [], [], [], [], [], [], []
    bar = tqdm(total=len(domains) * identities * views, desc=f"render {split}", unit="img", disable=not progress)
    for d in domains:
        mod, index, found = get_domain(d), -1, 0
        while found < identities:
            index += 1
            if split_of(mod.identity_name(index, cfg.world_seed)) != split:
                continue
            found += 1
            for v in range(views):
                _, png, meta = render_sample(d, index, v, size, cfg.world_seed)
                pix.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
                ids.append(len(names))
                vws.append(v)
                attrs.append([h[2].index(meta["attributes"][h[1]]) if h[0] == d else -1 for h in heads])
                ctxs.append([vocab.labels[k].index(meta["context"][k]) for k in CONTEXT_KINDS])
                caps.append(meta["caption"])
                bar.update(1)
            names.append(meta["identity"])
    bar.close()
    pixels = torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2).contiguous()
    return Renders(pixels, *map(torch.tensor, (ids, vws, attrs, ctxs)), caps, names)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Framing jitter plus the damage generated images show: blur, resampling, noise, tone shifts.

    No horizontal flips: identities carry asymmetric marks (a mole on the left is not one on the right).
    """
    n, _, s, _ = x.shape
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # 1. small affine
    angle, zoom = (r(n) - 0.5) * math.radians(12), 1 + (r(n) - 0.5) * 0.14
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) * zoom
    theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(angle) * zoom, torch.sin(angle) * zoom
    theta[:, :, 2] = (r(n, 2) - 0.5) * 0.12
    x = F.grid_sample(
        x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border", align_corners=False
    )
    # 2. blur with a per-sample sigma (grouped conv: one kernel per channel of each sample)
    blur = r(n) < 0.3
    if blur.any():
        sigma = 0.4 + r(int(blur.sum())) * 0.9
        t = torch.arange(-2, 3, dtype=torch.float32)
        k1 = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0)[:, None]
        xb = x[blur].reshape(1, -1, s, s)
        x[blur] = F.conv2d(F.pad(xb, (2, 2, 2, 2), mode="replicate"), k2, groups=k2.shape[0]).reshape(-1, 3, s, s)
    # 3. downscale-upscale, one factor per batch
    down = r(n) < 0.3
    if down.any():
        low = int(s * (0.4 + float(r(1)) * 0.35))
        small = F.interpolate(x[down], size=(low, low), mode="bilinear", antialias=True, align_corners=False)
        x[down] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    # 4. tone and noise
    x = (x - x.mean((1, 2, 3), keepdim=True)) * (0.85 + 0.3 * r(n, 1, 1, 1)) + x.mean((1, 2, 3), keepdim=True)
    x = x + (r(n, 1, 1, 1) - 0.5) * 0.2
    noisy = (r(n, 1, 1, 1) < 0.3).float() * r(n, 1, 1, 1) * 0.1
    x = x + noisy * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / steps)))
    )


def _loop(
    name: str, modules: list[torch.nn.Module], loss_fn, data: Renders, steps: int, cfg: JudgeTrainConfig, progress: bool
) -> None:
    """The one training loop both judges share: sample a batch, augment, step, log."""
    g = torch.Generator().manual_seed(cfg.seed)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, steps)
    for m in modules:
        m.train()
    bar = tqdm(range(steps), desc=f"train {name}", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(data.pixels), (cfg.batch,), generator=g)
        x = augment(to_float(data.pixels[idx]), g).contiguous(memory_format=torch.channels_last)
        loss, logs = loss_fn(x, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(logs, refresh=False)
    for m in modules:
        m.eval()


def train_identity(data: Renders, domains: list[str], cfg: JudgeTrainConfig, progress: bool = True) -> IdentityJudge:
    """CosFace (Wang et al. 2018) over the training identities, plus attribute heads on the same embedding."""
    torch.manual_seed(cfg.seed)
    heads = attribute_heads(domains)
    judge = IdentityJudge(JudgeArch.from_json(cfg.identity_arch)).to(memory_format=torch.channels_last)
    dim = judge.arch.out_dim
    centers = torch.nn.Parameter(F.normalize(torch.randn(len(data.names), dim), dim=-1))
    attr_heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(h[2])) for h in heads)
    cls_module = torch.nn.ParameterList([centers])

    def loss_fn(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        emb = judge(x)
        y = data.identity[idx]
        cos = emb @ F.normalize(centers, dim=-1).T
        logits = cfg.scale * (cos - cfg.margin * F.one_hot(y, len(data.names)))
        id_loss = F.cross_entropy(logits, y)
        labels = data.attributes[idx]
        attr_loss = sum(
            F.cross_entropy(h(emb) * 8.0, labels[:, i], ignore_index=-1)
            for i, h in enumerate(attr_heads)
            if (labels[:, i] >= 0).any()
        )
        acc = (cos.argmax(-1) == y).float().mean()
        return id_loss + cfg.attribute_weight * attr_loss, {
            "id": f"{id_loss.item():.2f}",
            "attr": f"{float(attr_loss.detach()):.2f}",
            "acc": f"{acc.item():.2f}",
        }

    _loop("identity", [judge, attr_heads, cls_module], loss_fn, data, cfg.identity_steps, cfg, progress)
    return judge.to(memory_format=torch.contiguous_format)


def train_context(data: Renders, vocab: ContextVocab, cfg: JudgeTrainConfig, progress: bool = True) -> ContextJudge:
    """Plain cross-entropy per head (background, medium, accessory)."""
    torch.manual_seed(cfg.seed + 1)
    judge = ContextJudge(JudgeArch.from_json(cfg.context_arch), vocab).to(memory_format=torch.channels_last)

    def loss_fn(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = judge(x)
        y = data.context[idx]
        losses = [F.cross_entropy(logits[k], y[:, i]) for i, k in enumerate(CONTEXT_KINDS)]
        accs = [(logits[k].argmax(-1) == y[:, i]).float().mean().item() for i, k in enumerate(CONTEXT_KINDS)]
        return sum(losses), {k[:3]: f"{a:.2f}" for k, a in zip(CONTEXT_KINDS, accs, strict=True)}

    _loop("context", [judge], loss_fn, data, cfg.context_steps, cfg, progress)
    return judge.to(memory_format=torch.contiguous_format)


def _context_figures(judge: ContextJudge, pixels: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    preds = judge.predict(pixels)
    hit = torch.tensor(
        [
            [judge.vocab.labels[k].index(p[k]) == int(truth[i, j]) for j, k in enumerate(CONTEXT_KINDS)]
            for i, p in enumerate(preds)
        ]
    )
    return {
        **{k: round(float(hit[:, j].float().mean()), 4) for j, k in enumerate(CONTEXT_KINDS)},
        "all": round(float(hit.all(1).float().mean()), 4),
        "images": len(preds),
    }


def validate_clean(identity: IdentityJudge, context: ContextJudge, val: Renders) -> dict[str, Any]:
    emb = identity.embed(to_float(val.pixels))
    ids = val.identity
    half = ids % 2 == 0  # folds split by identity, so no identity straddles the threshold choice
    upper = torch.ones(len(ids), len(ids), dtype=torch.bool).triu(1)
    valid = upper & (half[:, None] == half[None, :])
    figures = verification(emb @ emb.T, ids[:, None] == ids[None, :], valid, half[:, None].expand_as(valid))
    return {"identity": figures, "context": _context_figures(context, to_float(val.pixels), val.context)}


@torch.no_grad()
def degrade(
    base_dir: str | Path, pixels: torch.Tensor, captions: list[str], cfg: JudgeTrainConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Generated-looking versions of clean renders: a VAE round trip, and img2img with the caption prompt."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(
        base_dir,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=torch.float32,  # a base shipped in float16 computes in float32 on the CPU
    )
    components = {**base.components, "scheduler": DDIMScheduler.from_config(base.scheduler.config)}
    pipe = StableDiffusionImg2ImgPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    res = base.unet.config.sample_size * base.vae_scale_factor
    x = F.interpolate(pixels, size=(res, res), mode="bilinear", antialias=True) if pixels.shape[-1] != res else pixels
    g = torch.Generator().manual_seed(cfg.seed)
    vae_out, img_out = [], []
    bar = tqdm(total=len(x), desc="degrade", unit="img", disable=not progress)
    for chunk, caps in zip(x.split(16), [captions[i : i + 16] for i in range(0, len(captions), 16)], strict=True):
        # 1. VAE round trip: the floor of what any generated image loses
        vae_out.append(pipe.vae.decode(pipe.vae.encode(chunk).latent_dist.mode()).sample.clamp(-1, 1))
        # 2. noise to t ~ strength * T with the base scheduler, DDIM back under the caption
        out = pipe(
            prompt=caps,
            image=(chunk + 1) / 2,
            strength=cfg.strength,
            num_inference_steps=cfg.degraded_steps,
            guidance_scale=cfg.guidance,
            generator=g,
            output_type="pt",
        ).images
        img_out.append(out * 2 - 1)
        bar.update(len(chunk))
    bar.close()
    size = pixels.shape[-1]
    back = lambda t: F.interpolate(t, size=(size, size), mode="bilinear", antialias=True) if t.shape[-1] != size else t  # noqa: E731
    return {"vae": back(torch.cat(vae_out)), "img2img": back(torch.cat(img_out))}


def validate_degraded(
    identity: IdentityJudge,
    context: ContextJudge,
    val: Renders,
    base_dir: str | Path,
    cfg: JudgeTrainConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Degraded view 0 of some held-out identities vs the clean gallery of all held-out renders."""
    per_domain = len(val.names) // max(1, len({n.split("/")[0] for n in val.names}))
    keep = min(cfg.degraded_identities, per_domain)
    picked = [i for i in range(len(val.pixels)) if int(val.view[i]) == 0 and int(val.identity[i]) % per_domain < keep]
    sel = torch.tensor(picked)
    gallery = identity.embed(to_float(val.pixels))
    q_ids, g_ids = val.identity[sel], val.identity
    half_q, half_g = q_ids % 2 == 0, g_ids % 2 == 0
    valid = (half_q[:, None] == half_g[None, :]) & (sel[:, None] != torch.arange(len(g_ids))[None, :])
    out: dict[str, Any] = {
        "queries": len(picked),
        "strength": cfg.strength,
        "steps": cfg.degraded_steps,
        "guidance": cfg.guidance,
    }
    captions = [val.captions[i] for i in picked]
    for name, pix in degrade(base_dir, to_float(val.pixels[sel]), captions, cfg, progress).items():
        sim = identity.embed(pix) @ gallery.T
        out[name] = {
            "identity": verification(sim, q_ids[:, None] == g_ids[None, :], valid, half_q[:, None].expand_as(valid)),
            "context": _context_figures(context, pix, val.context[sel]),
        }
    return out


def train_judges(
    out_dir: str | Path,
    *,
    preset: str = "default",
    base_dir: str | Path | None = None,
    progress: bool = True,
    cfg: JudgeTrainConfig | None = None,
    domains: list[str] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) both judges into `out_dir`, validate them, write `report.json`; returns the report.

    Training is skipped when identity.safetensors and context.safetensors carry the same training key
    (config + world versions + domains); the whole run is skipped when report.json also already holds
    the degraded figures of this `base_dir` (by folder hash).
    """
    # 1. inputs
    from e4t.base import folder_hash

    cfg = cfg or JudgeTrainConfig.preset(preset)
    domains = sorted(domains or DOMAINS)
    for d in domains:
        get_domain(d)
    out = Path(out_dir)
    key = cfg.training_key(domains)
    base_hash = folder_hash(base_dir) if base_dir is not None else None
    report_path, id_path, ctx_path = out / "report.json", out / IDENTITY_FILE, out / CONTEXT_FILE
    old = json.loads(report_path.read_text()) if report_path.is_file() else {}
    reuse = id_path.is_file() and ctx_path.is_file() and old.get("training_key") == key
    if reuse:
        judges = load_judges(out)
        reuse = judges.identity.info.get("training_key") == key == judges.context.info.get("training_key")
    if reuse and (base_hash is None or old.get("degraded", {}).get("base_hash") == base_hash):
        if progress:
            tqdm.write(f"[pretrain judges] {out}: up to date, skipped")
        return old
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        # 2. train on evaluator-split identities, unless the files on disk are this very training
        vocab = context_vocab(domains)
        if reuse:
            identity, context, dtype = judges.identity, judges.context, judges.identity.info["dtype"]
        else:
            train = render_split(domains, "evaluator", cfg.identities, cfg.views, cfg, vocab, progress)
            identity = train_identity(train, domains, cfg, progress)
            context = train_context(train, vocab, cfg, progress)
            del train
        # 3. validate on held-out identities, clean; keep fp16 files if they judge as well as fp32
        val = render_split(domains, "heldout", cfg.val_identities, cfg.val_views, cfg, vocab, progress)
        clean = validate_clean(identity, context, val)
        if not reuse:
            id16 = IdentityJudge.from_bytes(identity.to_bytes(torch.float16))
            ctx16 = ContextJudge.from_bytes(context.to_bytes(torch.float16))
            clean16 = validate_clean(id16.eval(), ctx16.eval(), val)
            drop = clean["identity"]["accuracy"] - clean16["identity"]["accuracy"]
            drop = max(drop, max(clean["context"][k] - clean16["context"][k] for k in CONTEXT_KINDS))
            dtype = "float16" if drop <= cfg.max_fp16_drop else "float32"
            if dtype == "float16":
                identity, context, clean = id16, ctx16, clean16
        # 4. degraded renders: VAE round trip and img2img through the base
        degraded = old.get("degraded") if reuse and base_hash is None else None
        if base_hash is not None:
            figures = validate_degraded(identity, context, val, base_dir, cfg, progress)
            degraded = {"base_dir": str(base_dir), "base_hash": base_hash, **figures}
    finally:
        torch.set_num_threads(threads)
    # 5. write both files (config and figures in their metadata) and the report
    common = {
        "training_key": key,
        "dtype": dtype,
        "domains": domains,
        "world_seed": cfg.world_seed,
        "world_versions": {d: get_domain(d).WORLD_VERSION for d in domains},
        "training_split": "evaluator",
        "training_identities": cfg.identities * len(domains),
        "training_identities_per_domain": cfg.identities,
        "views_per_identity": cfg.views,
        "train_config": asdict(cfg),
    }
    deg = lambda part: {k: v[part] for k, v in (degraded or {}).items() if isinstance(v, dict) and part in v}  # noqa: E731
    identity.info = {
        **common,
        "validation": {"heldout_clean": clean["identity"], "heldout_degraded": deg("identity")},
        "attribute_heads": [f"{d}.{a}" for d, a, _ in attribute_heads(domains)],
    }
    context.info = {**common, "validation": {"heldout_clean": clean["context"], "heldout_degraded": deg("context")}}
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    identity.save(id_path, torch_dtype)
    context.save(ctx_path, torch_dtype)
    files = {IDENTITY_FILE: id_path.stat().st_size, CONTEXT_FILE: ctx_path.stat().st_size}
    report = {
        "training_key": key,
        "dtype": dtype,
        "domains": domains,
        "preset": preset,
        "clean": clean,
        "degraded": degraded or {},
        "files": files,
    }
    write_file(report_path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return report
