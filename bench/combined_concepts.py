"""Prompts that combine two concepts: how their weight offsets should add up, measured in one run.

    python bench/combined_concepts.py --out out/combined                 # 4 pairs per domain pair, 8 prompts
    python bench/combined_concepts.py --out out/c --pairs 1 --quick      # a smoke run

Pairs of held-out subjects (faces+faces, faces+cats) are personalized separately with E4T (5 steps)
and generated with every protocol prompt naming both ("a photo of {a} and {b} on the beach"), once
per combination rule of `e4t.combine` (average, sum, deltas), and each concept alone with the same
prompts and seeds (`evaluation.combined`). Per-concept id_sim comes from crops of the images
(`evaluation.per_concept`); the distractor column scores the same combined images against
held-out identities the prompt does not name (the floor).

Writes OUT/results.json and OUT/grid.png (first pair, first prompt: the inputs, a alone, b alone,
then both under each rule); the last line printed is the table's rows as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e4t import load_base, load_pack  # noqa: E402
from e4t.combine import RULES  # noqa: E402
from e4t.embedded import artifacts_root, default_paths  # noqa: E402
from e4t.judges import load_judges  # noqa: E402
from evaluation import protocol  # noqa: E402
from evaluation.combined import CombinedConfig, name_pair, run_combined  # noqa: E402

COLUMNS = ("domain", "rule", "id_sim", "id_sim_alone", "id_sim_distractor", "context_acc", "context_acc_alone")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pairs", type=int, default=4, help="pairs of held-out subjects per domain pair")
    p.add_argument("--images", type=int, default=4, help="images per prompt")
    p.add_argument("--denoise-steps", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="the protocol's 2 quick prompts instead of 8")
    p.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    return p


def write_grid(path: Path, grids: dict[str, list[tuple[str, list[Image.Image]]]], prompt: str, scale: int = 2) -> None:
    """A row per domain pair, a labelled cell per entry (inputs, each alone, both under each rule), pixels scaled up."""
    size = next(iter(grids.values()))[0][1][0].width * scale
    entries = next(iter(grids.values()))
    widths = [len(images) * (size + 2) + 8 for _, images in entries]
    label_w, head_h = 90, 32
    sheet = Image.new("RGB", (label_w + sum(widths), head_h + len(grids) * (size + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), prompt, fill="black")
    for r, (pair, cells) in enumerate(grids.items()):
        y = head_h + r * (size + 6)
        draw.text((4, y + size // 2 - 6), pair, fill="black")
        x = label_w
        for (label, images), w in zip(cells, widths, strict=True):
            if r == 0:
                draw.text((x, head_h - 14), label, fill="black")
            for k, image in enumerate(images):
                sheet.paste(image.resize((size, size), Image.Resampling.NEAREST), (x + k * (size + 2), y))
            x += w
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rules = tuple(r.strip() for r in args.rules.split(",") if r.strip())
    started = time.perf_counter()
    base_dir, pack_paths = default_paths()
    base = load_base(base_dir)
    packs = {p.domain: p for p in (load_pack(path, base) for path in pack_paths)}
    judges = load_judges(artifacts_root() / "judges")
    domains = sorted(packs, key=lambda d: (d != "faces", d))
    config = CombinedConfig(
        pairs=args.pairs, images_per_prompt=args.images, denoise_steps=args.denoise_steps, quick=args.quick
    )
    rows, grids = run_combined(base, packs, judges, domains, config, rules=rules)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"config": vars(config) | {"rules": rules}, "rows": rows, "wall_s": round(time.perf_counter() - started)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    first = protocol.prompts("faces", quick=True)[0]
    write_grid(args.out / "grid.png", grids, name_pair(first, "a", "b") + f" (seed {protocol.generation_seed(first)})")
    widths = [max(len(c), 9) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        print("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)))
    print(json.dumps([{c: r[c] for c in COLUMNS} | {"concepts": r["concepts"]} for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
