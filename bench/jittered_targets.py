"""Why domain pretraining denoises clean targets: offsets fitted to jittered targets draw mosaics.

Fits fresh weight offsets (the packs' layout, rank 4) to a domain's pretraining split with the
base's own captions, once on jittered targets (the reader's translation and colour jitter, as
domain pretraining used until it was fixed) and once on clean ones, from the same seeds. Each
variant reports the diffusion loss on a fixed held-out set (fixed images, noise and timesteps)
before and after, and draws one prompt with its offsets active. Both run in this one process.

    python bench/jittered_targets.py --out docs/bench/jittered_targets [--base DIR --shards DIR]

Writes OUT/results.json and OUT/jittered_targets.png (rows: the base, jittered, clean).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402

from e4t import load_base  # noqa: E402
from e4t.embedded import default_paths  # noqa: E402
from e4t.objective import E4TObjective  # noqa: E402
from e4t.offsets import TUNE, OffsetConfig, activate, ensure_adapter, get_offsets, offset_parameters, set_offsets  # noqa: E402
from e4t.prompts import encode_prompts  # noqa: E402
from shards.reader import make_pipeline, shard_urls  # noqa: E402
from shards.synth import DOMAINS  # noqa: E402


def stream(urls: list[str], batch_size: int, size: int, *, seed: int, jitter: bool):
    """An endless single-process stream of the pretraining split, jittered by the reader or not."""
    pipe = make_pipeline(
        urls,
        batch_size=batch_size,
        splits=["pretrain"],
        resampled=True,
        augment=jitter,
        seed=seed,
        world_size=1,
        rank=0,
        image_size=size,
    )
    return iter(pipe)


def heldout_loss(unet, batches) -> float:
    with torch.no_grad():
        losses = [F.mse_loss(unet(b.noisy, b.timesteps, encoder_hidden_states=s).sample, b.target) for b, s in batches]
    return float(torch.stack(losses).mean())


def draw(base, unet, prompt: str, images: int) -> list[Image.Image]:
    with torch.no_grad():
        states = encode_prompts(base.text_encoder, base.tokenizer, [prompt], {})
        empty = encode_prompts(base.text_encoder, base.tokenizer, [""], {})
        return base.pipe(
            prompt_embeds=states,
            negative_prompt_embeds=empty,
            num_images_per_prompt=images,
            num_inference_steps=25,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(i) for i in range(images)],
        ).images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="base folder (default: the embedded base)")
    parser.add_argument("--shards", type=Path, default=Path("runs/embedded/shards/faces"))
    parser.add_argument("--domain", default="faces")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-4, help="the offsets' rate in domain pretraining")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base_dir = args.base or default_paths()[0]
    base = load_base(base_dir)
    class_word = DOMAINS[args.domain].CLASS_WORD
    objective = E4TObjective(base, class_word)
    unet = base.unet.requires_grad_(False)
    ensure_adapter(unet, TUNE, OffsetConfig())
    initial = get_offsets(unet, TUNE)  # gaussian A, B = 0: the offsets start at exactly zero
    urls = shard_urls(args.shards)
    prompt = f"a photo of a {class_word} on the beach"

    # the held-out set: unjittered pretraining images with their captions, fixed noise and timesteps
    held = stream(urls, 32, base.resolution, seed=123, jitter=False)
    g = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(4):
        b = next(held)
        with torch.no_grad():
            batches.append(
                (objective.noise(b["pixels"], g), encode_prompts(base.text_encoder, base.tokenizer, b["caption"], {}))
            )

    unet.disable_adapters()
    rows = {"base": draw(base, unet, prompt, args.images)}
    results = {
        "base": str(base_dir),
        "domain": args.domain,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "heldout_loss_base": round(heldout_loss(unet, batches), 5),
        "variants": {},
    }
    for variant, jitter in (("jittered", True), ("clean", False)):
        torch.manual_seed(0)
        set_offsets(unet, initial, TUNE)
        activate(unet, TUNE)
        params = offset_parameters(unet, TUNE)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        data = stream(urls, args.batch_size, base.resolution, seed=0, jitter=jitter)
        g = torch.Generator().manual_seed(0)
        started = time.time()
        for _ in tqdm(range(args.steps), desc=variant):
            b = next(data)
            noised = objective.noise(b["pixels"], g)
            states = encode_prompts(base.text_encoder, base.tokenizer, b["caption"], {})
            loss = F.mse_loss(unet(noised.noisy, noised.timesteps, encoder_hidden_states=states).sample, noised.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        results["variants"][variant] = {
            "heldout_loss": round(heldout_loss(unet, batches), 5),
            "seconds": round(time.time() - started, 1),
        }
        rows[variant] = draw(base, unet, prompt, args.images)
        unet.disable_adapters()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _grid(rows, prompt, results).save(args.out / "jittered_targets.png")
    print(json.dumps(results, indent=1))
    return 0


def _grid(rows: dict[str, list[Image.Image]], prompt: str, results: dict) -> Image.Image:
    size, label, scale = 64, 230, 2
    n = max(len(r) for r in rows.values())
    grid = Image.new("RGB", (label + n * size * scale, len(rows) * size * scale + 24), "white")
    pen = ImageDraw.Draw(grid)
    pen.text((4, 4), f'"{prompt}", 25 DDIM steps, seeds 0-{n - 1}', fill="black")
    for y, (name, images) in enumerate(rows.items()):
        top = 24 + y * size * scale
        loss = results["heldout_loss_base"] if name == "base" else results["variants"][name]["heldout_loss"]
        text = "the base" if name == "base" else f"offsets fitted to {name} targets"
        pen.text((4, top + 8), f"{text}\nheld-out loss {loss:.4f}", fill="black")
        for x, image in enumerate(images):
            grid.paste(image.resize((size * scale, size * scale)), (label + x * size * scale, top))
    return grid


if __name__ == "__main__":
    raise SystemExit(main())
