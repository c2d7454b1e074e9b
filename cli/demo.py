"""`e4t demo`: the whole flow on the embedded default, over real gRPC.

1. make sure the embedded artifacts exist (build them, with progress bars, if not)
2. start the server on a free port and wait until health says SERVING
3. personalize one demo-split identity of each domain from a single rendered image
4. generate for prompts with different contexts (and one naming two concepts)
5. write DIR/grid.png (input, the renderer's ground truth, generated images) and DIR/timings.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

# (medium, background, accessory) per prompt row; the renderer draws the truth for each
CONTEXTS = [
    ("photo", "beach", "none"),
    ("photo", "forest", "hat"),
    ("sketch", "plain", "none"),
    ("painting", "snow", "glasses"),
    ("photo", "night", "earrings"),
]
CELL = 128  # 64-pixel images are shown at 2x


def demo_subject(domain: str, seed: int = 0) -> tuple[int, dict]:
    """The first identity of the demo split: never seen by any training stage."""
    from shards.splits import split_of
    from shards.synth import get_domain

    world = get_domain(domain)
    index = next(i for i in range(100_000) if split_of(world.identity_name(i, seed)) == "demo")
    return index, world.identity_attributes(index, seed)


def render_truth(domain: str, index: int, context: tuple[str, str, str], seed: int = 0) -> Image.Image:
    from shards.synth import get_domain

    world = get_domain(domain)
    medium, background, accessory = context
    nuisance = world.sample_nuisance(random.Random(f"demo/{domain}/{index}/{context}"))
    return world.render(
        world.identity_attributes(index, seed),
        {"background": background, "medium": medium, "accessory": accessory},
        nuisance,
        64,
    )


def prompt_for(domain: str, concept_id: str, context: tuple[str, str, str]) -> str:
    from shards.synth import get_domain

    caption = get_domain(domain).caption_for(dict(zip(("medium", "background", "accessory"), context)))
    return caption.replace(f"a {get_domain(domain).CLASS_WORD}", "{" + concept_id + "}", 1)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    words, line, lines = text.split(), "", []
    for w in words:
        if draw.textlength(f"{line} {w}".strip()) > width - 8:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    for i, text_line in enumerate(lines[:4]):
        draw.text((xy[0] + 4, xy[1] + 4 + 12 * i), text_line, fill=(20, 20, 20))


def write_grid(path: Path, rows: list[tuple[str, Image.Image | None, list[Image.Image]]], columns: int) -> None:
    """One row per prompt: its label, the ground truth (or the input), then the generated images."""
    label_w = 2 * CELL
    grid = Image.new("RGB", (label_w + CELL * (columns + 1), CELL * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (text, truth, images) in enumerate(rows):
        y = r * CELL
        _label(draw, (0, y), text, label_w)
        if truth is not None:
            grid.paste(truth.resize((CELL, CELL), Image.Resampling.NEAREST), (label_w, y))
        for c, image in enumerate(images):
            grid.paste(image.resize((CELL, CELL), Image.Resampling.NEAREST), (label_w + CELL * (c + 1), y))
    grid.save(path)


def run_demo(
    out: Path, *, num_images: int = 4, steps: int = 25, tune_steps: int = 5, guidance: float | None = None
) -> dict:
    from e4t.embedded import default_paths, missing_artifacts
    from serve.client import E4TClient
    from serve.engine import Engine
    from serve.server import create_server, stop_server

    # 1. artifacts
    if missing_artifacts():
        from pretrain.embedded import build_embedded

        print("embedded artifacts missing (" + "; ".join(missing_artifacts()) + "): building them now")
        build_embedded()
    base_dir, pack_paths = default_paths()
    out.mkdir(parents=True, exist_ok=True)
    if guidance is None:  # what the server would use, named so that timings.json records it
        from e4t.base import recorded_guidance

        guidance = recorded_guidance(base_dir)

    # 2. server
    started = time.perf_counter()
    server, port = create_server(lambda: Engine.load(base_dir, pack_paths, out / "store"), "127.0.0.1:0")
    timings: dict = {}
    rows: list = []
    try:
        client = E4TClient(f"127.0.0.1:{port}")
        client.wait_ready(timeout=300)
        timings["server_ready_s"] = round(time.perf_counter() - started, 3)
        domains = [d["name"] for d in client.list_domains()]
        print(f"server on port {port}, domains: {', '.join(domains)}")

        # 3. personalize one subject per domain
        concepts = {}
        for domain in domains:
            index, _ = demo_subject(domain)
            image = render_truth(domain, index, ("photo", "plain", "none"))
            t = time.perf_counter()
            info = client.personalize(image, domain, steps=tune_steps, seed=0, owner="demo")
            timings.setdefault("personalize_s", round(time.perf_counter() - t, 3))
            timings[f"personalize_{domain}_s"] = round(time.perf_counter() - t, 3)
            concepts[domain] = (info["id"], index)
            rows.append((f"input ({domain}, identity {index}) -> {info['id']}", image, []))
            print(f"personalized {domain} identity {index} -> {info['id']} in {timings[f'personalize_{domain}_s']} s")

        # 4. generate: each context for each subject, then one prompt naming two concepts
        generate_times = []
        for domain, (concept_id, index) in concepts.items():
            for context in CONTEXTS:
                prompt = prompt_for(domain, concept_id, context)
                t = time.perf_counter()
                images = [
                    im for _, _, im in client.generate(prompt, num_images=num_images, steps=steps, guidance=guidance)
                ]
                generate_times.append(time.perf_counter() - t)
                rows.append((prompt, render_truth(domain, index, context), images))
                print(f"generated {len(images)} for {prompt!r} in {generate_times[-1]:.2f} s")
        if len(concepts) >= 2:
            (a, _), (b, _) = list(concepts.values())[:2]
            prompt = f"a photo of {{{a}}} next to {{{b}}} on the beach"
            images = [im for _, _, im in client.generate(prompt, num_images=num_images, steps=steps, guidance=guidance)]
            rows.append((prompt, None, images))
        timings["generate_s"] = round(sum(generate_times) / len(generate_times), 3)
        timings["generate_total_s"] = round(sum(generate_times), 3)
        timings.update({"num_images": num_images, "steps": steps, "guidance": guidance, "tune_steps": tune_steps})
    finally:
        stop_server(server, grace=2)

    # 5. outputs
    write_grid(out / "grid.png", rows, num_images)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    timings["total_s"] = round(time.perf_counter() - started, 3)
    print(f"wrote {out / 'grid.png'} and {out / 'timings.json'}: {json.dumps(timings)}")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e4t demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--tune-steps", type=int, default=5, help="E4T tuning steps on the input image")
    parser.add_argument("--guidance", type=float, default=None, help="default: the base's (3 for the embedded base)")
    args = parser.parse_args(argv)
    run_demo(args.out, num_images=args.num_images, steps=args.steps, tune_steps=args.tune_steps, guidance=args.guidance)
    return 0
