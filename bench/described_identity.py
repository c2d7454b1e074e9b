"""Can a base draw an identity from words? Attribute by attribute, for one or several bases in one run.

For each base and domain, on held-out subjects:
- `text_cosine`: mean cosine between the text encoder's end-of-text states of the subjects' full
  descriptions (same context): near 1 when the encoder cannot tell the descriptions apart.
- `description_gap`: held-out diffusion loss (fixed views, noise and timesteps) with another
  subject's description minus with the view's own; 0 when the UNet ignores the identity words.
- `image_gap_by_noise`: the same, as the error of the image the UNet implies, in five bands of noise
  levels from low to high: comparable between an epsilon- and a v-predicting UNet.
- `attribute_accuracy`: the base prompted with each subject's full description (a photo, plain
  background), its images read by an attribute probe (a small CNN trained here on real renders of
  the base and evaluator splits, kept in OUT and reused); per attribute, against chance.
- `id_sim`: the identity judge's cosine of those images with the subject's real views, as the
  evaluation's `base_described_identity` row.

    python bench/described_identity.py --base runs/world2/base --base runs/world4/base \
        --judges runs/world2/artifacts/judges --out docs/bench/described_identity

Writes OUT/results.json and OUT/described_identity.png (per domain and base: each subject rendered as
described, then the base's images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from e4t import load_base  # noqa: E402
from e4t.images import to_tensor  # noqa: E402
from e4t.judges import load_judges  # noqa: E402
from e4t.objective import diffusion_target, image_error_scale  # noqa: E402
from evaluation.protocol import INPUT_NUISANCE  # noqa: E402
from evaluation.references import class_word_images  # noqa: E402
from shards.reader import make_pipeline, shard_urls  # noqa: E402
from shards.synth import DOMAINS, described_caption  # noqa: E402

CONTEXT = {"medium": "photo", "background": "plain", "accessory": "none"}


class AttributeProbe(nn.Module):
    """One linear head per attribute on a small CNN: reads what a picture shows, attribute by attribute."""

    def __init__(self, attributes: dict[str, tuple[str, ...]]):
        super().__init__()
        self.attributes = dict(attributes)

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        widths = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 2)]
        self.body = nn.Sequential(*(block(*w) for w in widths), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in attributes.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(pixels)
        return {name: head(h) for name, head in self.heads.items()}


def renders(shards: Path, split: str) -> tuple[torch.Tensor, list[dict]]:
    """Every view of `split` as [N, 3, 64, 64] in [-1, 1], with its metadata."""
    pixels, metas = [], []
    for batch in make_pipeline(shard_urls(shards), batch_size=256, splits=[split], shuffle=0):
        pixels.append(batch["pixels"])
        metas += batch["meta"]
    return torch.cat(pixels), metas


def labels(metas: list[dict], attributes: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([values.index(m["attributes"][k]) for m in metas]) for k, values in attributes.items()}


def train_probe(domain: str, shards: Path, path: Path, steps: int) -> AttributeProbe:
    attributes = DOMAINS[domain].ATTRIBUTES
    probe = AttributeProbe(attributes)
    if path.is_file():
        probe.load_state_dict(load_file(path))
        return probe.eval()
    parts = [renders(shards, s) for s in ("base", "evaluator")]
    x, metas = torch.cat([p[0] for p in parts]), parts[0][1] + parts[1][1]
    y = labels(metas, attributes)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(probe.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    probe.train()
    for _ in tqdm(range(steps), desc=f"probe {domain}"):
        i = torch.randint(len(x), (64,))
        out = probe(x[i] + 0.05 * torch.randn_like(x[i]))  # generated pictures are noisier than renders
        loss = sum(F.cross_entropy(out[k], y[k][i]) for k in attributes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, path)
    return probe.eval()


@torch.no_grad()
def attribute_hits(probe: AttributeProbe, pixels: torch.Tensor, attributes: dict[str, str]) -> dict[str, list[bool]]:
    """Per attribute, whether the probe reads the described value in each picture."""
    out = probe(pixels)
    return {k: (out[k].argmax(1) == probe.attributes[k].index(attributes[k])).tolist() for k in out}


@torch.no_grad()
def text_cosine(base, captions: list[str]) -> float:
    """Mean pairwise cosine of the captions' end-of-text states."""
    max_length = base.tokenizer.model_max_length
    tok = base.tokenizer(captions, padding="max_length", max_length=max_length, return_tensors="pt")
    out = base.text_encoder(tok.input_ids.to(base.device)).last_hidden_state.float()
    last = tok.attention_mask.sum(1) - 1
    states = F.normalize(out[torch.arange(len(captions)), last], dim=-1)
    n = len(captions)
    return float(((states @ states.T).sum() - n) / (n * n - n))


@torch.no_grad()
def description_gap(base, pixels: torch.Tensor, metas: list[dict], domain: str) -> float:
    """Held-out diffusion loss with the next view's identity described minus with the view's own."""
    own, other = _errors(base, pixels, metas, domain, (100, 900), seed=1)
    return float(other.mean() - own.mean())


@torch.no_grad()
def image_gap(base, pixels: torch.Tensor, metas: list[dict], domain: str, bands: int = 5) -> list[float]:
    """Per band of noise levels (low to high), the image error with the next view's identity described minus
    with the view's own: the same yardstick whatever the UNet predicts (epsilon or v)."""
    out = []
    width = 1000 // bands
    for band in range(bands):
        own, other = _errors(base, pixels, metas, domain, (band * width, (band + 1) * width), 100 + band, image=True)
        out.append(round(float(other.mean() - own.mean()), 5))
    return out


def _errors(
    base, pixels, metas, domain, steps: tuple[int, int], seed: int, image: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view, the UNet's squared error with its own description and with the next view's, at noise
    levels drawn from `steps`. `image`: as the error of the image it implies (`image_error_scale`)."""
    g = torch.Generator().manual_seed(seed)
    latents = base.vae.encode(pixels.to(base.device, base.vae.dtype)).latent_dist.mean * base.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g).to(latents)
    t = torch.randint(*steps, (len(metas),), generator=g).to(base.device)
    sched = DDPMScheduler.from_config(base.scheduler.config)
    noisy = sched.add_noise(latents, noise, t)
    target = diffusion_target(sched, latents, noise, t)
    ones = torch.ones_like(sched.alphas_cumprod)
    per_step = image_error_scale(sched.alphas_cumprod, sched.config.prediction_type) if image else ones
    scale = per_step.to(base.device)[t].view(-1, 1, 1, 1)

    def error(described: list[dict]) -> torch.Tensor:
        captions = [described_caption(domain, d["attributes"], m["context"]) for d, m in zip(described, metas)]
        ids = base.tokenizer(
            captions, padding="max_length", max_length=base.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids.to(base.device)
        prediction = base.unet(noisy, t, base.text_encoder(ids)[0]).sample.float()
        return ((prediction - target.float()) ** 2 * scale).mean((1, 2, 3))

    return error(metas), error([metas[(k + 1) % len(metas)] for k in range(len(metas))])


def measure(base, judge, probe, domain: str, held: tuple[torch.Tensor, list[dict]], subjects: int, images: int):
    pixels, metas = held
    views: dict[str, list[int]] = {}
    for k, m in enumerate(metas):
        views.setdefault(m["identity"], []).append(k)
    chosen = sorted(views)[:subjects]
    attributes = [metas[views[i][0]]["attributes"] for i in chosen]
    captions = [described_caption(domain, a, CONTEXT) for a in attributes]
    hits: dict[str, list[bool]] = {}
    sims, pictures = [], []
    for n, (identity, caption) in enumerate(zip(tqdm(chosen, desc=domain, leave=False), captions)):
        generated = class_word_images(base, caption, images, steps=20, guidance=7.5, seed=1000 + n)
        x = torch.cat([to_tensor(im, 64) for im in generated])
        for k, v in attribute_hits(probe, x, attributes[n]).items():
            hits.setdefault(k, []).extend(v)
        sims.append(judge.id_similarity(x, pixels[views[identity]]))
        pictures.append(generated)
    gap_views = torch.randperm(len(metas), generator=torch.Generator().manual_seed(0))[:64].tolist()
    gap_set = (pixels[gap_views], [metas[i] for i in gap_views])
    accuracy = {k: round(sum(v) / len(v), 3) for k, v in hits.items()}
    return (
        {
            "text_cosine": round(text_cosine(base, captions), 4),
            "description_gap": round(description_gap(base, *gap_set, domain), 5),
            "image_gap_by_noise": image_gap(base, *gap_set, domain),
            "attribute_accuracy": accuracy,
            "mean_attribute_accuracy": round(sum(accuracy.values()) / len(accuracy), 3),
            "id_sim": round(sum(sims) / len(sims), 4),
        },
        [DOMAINS[domain].render(a, CONTEXT, INPUT_NUISANCE) for a in attributes],
        pictures,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", action="append", required=True, type=Path, help="a base folder (repeat to compare)")
    ap.add_argument("--judges", type=Path, required=True, help="judges folder (its identity judge scores id_sim)")
    ap.add_argument("--shards", type=Path, default=Path("runs/embedded/shards"), help="folder of per-domain shards")
    ap.add_argument("--domains", default="faces,cats")
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--images", type=int, default=2, help="images per subject")
    ap.add_argument("--probe-steps", type=int, default=1500)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    judge = load_judges(args.judges).identity
    rows, figure = [], []
    for domain in args.domains.split(","):
        probe = train_probe(domain, args.shards / domain, args.out / f"probe-{domain}.safetensors", args.probe_steps)
        held = renders(args.shards / domain, "heldout")
        chance = {k: round(1 / len(v), 3) for k, v in DOMAINS[domain].ATTRIBUTES.items()}
        probe_real = {k: round(v, 3) for k, v in probe_accuracy(probe, *held).items()}
        for path in args.base:
            base = load_base(path)
            row, real, pictures = measure(base, judge, probe, domain, held, args.subjects, args.images)
            rows.append({"domain": domain, "base": str(path), **row, "chance": chance, "probe_on_renders": probe_real})
            print(json.dumps(rows[-1]), flush=True)
            figure.append((f"{domain}: {path}", real, pictures))
    (args.out / "results.json").write_text(
        json.dumps({"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "context": CONTEXT}, indent=1)
    )
    draw(figure, args.out / "described_identity.png")


@torch.no_grad()
def probe_accuracy(probe: AttributeProbe, pixels: torch.Tensor, metas: list[dict]) -> dict[str, float]:
    """The probe's own accuracy on real held-out renders: how far its reading can be trusted."""
    out = probe(pixels)
    y = labels(metas, probe.attributes)
    return {k: float((out[k].argmax(1) == y[k]).float().mean()) for k in out}


def draw(figure: list, path: Path) -> None:
    """One block per (domain, base): each subject as described (a render in CONTEXT) over the base's pictures."""
    cell, label = 64, 16
    cols = max(len(real) for _, real, _ in figure)
    rows_per = 1 + max(len(p[0]) for _, _, p in figure)
    canvas = Image.new("RGB", (cols * cell, len(figure) * (label + rows_per * cell)), "white")
    draw_ = ImageDraw.Draw(canvas)
    y = 0
    for title, real, pictures in figure:
        draw_.text((2, y + 2), title, fill="black")
        y += label
        for c, view in enumerate(real):
            canvas.paste(view.resize((cell, cell)), (c * cell, y))
            for r, im in enumerate(pictures[c]):
                canvas.paste(im.resize((cell, cell)), (c * cell, y + (r + 1) * cell))
        y += rows_per * cell
    canvas.save(path)


if __name__ == "__main__":
    main()
