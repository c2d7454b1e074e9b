"""`e4t eval`: measure personalization on held-out subjects (DreamBooth's protocol on the embedded worlds).

    e4t eval --out out/eval                                   # embedded artifacts, both domains, every method
    e4t eval --out out/eval --domains faces --steps 0,5 --baselines none   # E4T only, faces only
    e4t eval --out out/eval --quick                           # 2 subjects x 2 prompts x 2 images
    e4t eval --out out/eval --combined-pairs 0                # without the prompts that name two concepts
    e4t eval --out out/eval --base BASE --pack faces.safetensors --judges JUDGES --clip CLIP_DIR --dino DINO_DIR

Writes OUT/metrics.json (protocol, rows, and the `combined` rows: per-concept id_sim of prompts naming two
concepts) and OUT/report.html (table, plots, image grids; self-contained); OUT/rows-DOMAIN.json as each
domain finishes, so a run cut off later keeps the finished domains' rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,5,15 but got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _baselines(text: str) -> tuple[tuple[str, int], ...]:
    if text.strip() == "none":
        return ()
    try:
        pairs = [item.split("@") for item in text.split(",") if item.strip()]
        return tuple((m.strip(), int(s)) for m, s in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected METHOD@STEPS pairs such as textual_inversion@400,dreambooth@200 (or none) but got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e4t eval",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder for metrics.json and report.html")
    p.add_argument("--base", type=Path, default=None, help="base model folder (default: the embedded base)")
    p.add_argument(
        "--pack",
        action="append",
        type=Path,
        default=None,
        metavar="FILE",
        help="domain pack (repeatable; default: the embedded packs)",
    )
    p.add_argument("--judges", type=Path, default=None, metavar="DIR", help="judges folder (default: artifacts/judges)")
    p.add_argument("--domains", default=None, help="comma-separated domains to evaluate (default: every loaded pack)")
    p.add_argument(
        "--subjects", type=int, default=None, help="held-out subjects of the first domain (default: 3; 2 with --quick)"
    )
    p.add_argument(
        "--other-subjects", type=int, default=None, help="held-out subjects of the other domains (default: 3)"
    )
    p.add_argument(
        "--steps", type=_int_list, default=None, help="E4T tuning-step counts, one row each (default: 0,1,5,15)"
    )
    p.add_argument(
        "--baselines",
        type=_baselines,
        default=None,
        help="baseline rows as METHOD@STEPS (default: textual_inversion@400,dreambooth@300,two_stage@200,"
        "break_a_scene@300; `none` for none)",
    )
    p.add_argument("--images", type=int, default=None, help="images per prompt (default: 2)")
    p.add_argument("--denoise-steps", type=int, default=None, help="denoising steps (default: 25; 3 with --quick)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the base's; 3 for the embedded base, 7.5 for Stable Diffusion)",
    )
    p.add_argument(
        "--identity-guidance",
        type=float,
        default=None,
        help="identity guidance for every concept's images, of every method (default: off; README, Identity guidance)",
    )
    p.add_argument("--seed", type=int, default=None, help="tuning seed; generation seeds derive from it (default: 0)")
    p.add_argument("--grid-images", type=int, default=None, help="images per cell of the report's grids (default: 1)")
    p.add_argument(
        "--combined-pairs",
        type=int,
        default=None,
        help="subject pairs per domain pair, generated with prompts naming both (default: 2; 1 with --quick; 0: none)",
    )
    p.add_argument(
        "--drift-images", type=int, default=None, help="class-word images per concept for language drift (default: 4)"
    )
    p.add_argument("--quick", action="store_true", help="2 subjects x 2 prompts x 2 images, 3 denoising steps")
    p.add_argument("--clip", type=Path, default=None, help="CLIPModel + CLIPProcessor folder: adds CLIP-I and CLIP-T")
    p.add_argument("--dino", type=Path, default=None, help="DINO ViT AutoModel + AutoImageProcessor folder: adds DINO")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported here so `e4t eval --help` answers without loading torch.
    import torch

    from e4t.errors import E4TError
    from evaluation.harness import EvalConfig, evaluate

    given = {
        "subjects": args.subjects,
        "other_subjects": args.other_subjects,
        "steps": args.steps,
        "baselines": args.baselines,
        "images_per_prompt": args.images,
        "denoise_steps": args.denoise_steps,
        "guidance": args.guidance,
        "identity_guidance": args.identity_guidance,
        "seed": args.seed,
        "grid_images": args.grid_images,
        "combined_pairs": args.combined_pairs,
        "drift_images": args.drift_images,
        "domains": tuple(d.strip() for d in args.domains.split(",") if d.strip()) if args.domains else None,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    threads = torch.get_num_threads()
    if args.threads:
        # tiny models gain little from more threads, and on a shared machine extra threads thrash
        torch.set_num_threads(args.threads)
    try:
        config = EvalConfig.quick_config(**overrides) if args.quick else EvalConfig(**overrides)
        result = evaluate(
            args.out,
            base_dir=args.base,
            pack_paths=args.pack,
            judges_dir=args.judges,
            config=config,
            clip=args.clip,
            dino=args.dino,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, E4TError) as err:
        parser.exit(2, f"e4t eval: error: {err}\n")
    finally:
        torch.set_num_threads(threads)
    print(format_table(result["rows"]))
    if result.get("combined"):
        print(format_combined(result["combined"]))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.html'} in {result['wall_s']} s")
    return 0


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table for the terminal."""
    from evaluation.report import COLUMNS

    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cell = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table)


def format_combined(rows: list[dict]) -> str:
    """The combined section for the terminal: per domain pair and rule, then per concept."""
    from evaluation.report import COMBINED_COLUMNS

    cell = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [["concept", *COMBINED_COLUMNS]]
    for r in rows:
        table.append(["both", *(cell(r.get(c)) for c in COMBINED_COLUMNS)])
        for c in r["concepts"]:
            table.append([f"{c['position']} ({c['domain']})", *(cell(c.get(k, r.get(k))) for k in COMBINED_COLUMNS)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table)
