"""`e4t shards ...`: synthesize, build and check WebDataset shard sets.

e4t shards synth --domain faces --identities 2000 --views 5 --size 64 --seed 0 --out data/faces
e4t shards build --src ~/ffhq --domain faces --size 64 --out data/ffhq
e4t shards check data/faces
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e4t shards", description="Build, synthesize and check WebDataset shards.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render a synthetic domain into shards")
    s.add_argument("--domain", default="faces", help="synthetic domain (default: faces)")
    s.add_argument("--identities", type=int, required=True, help="number of identities to draw")
    s.add_argument("--views", type=int, required=True, help="images per identity")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--splits", default=None, help="comma-separated identity splits to render (default: all)")
    s.add_argument("--maxcount", type=int, default=2000, help="samples per shard (default: 2000)")

    b = sub.add_parser("build", help="build shards from a folder of images (FFHQ, LSUN export, WikiArt)")
    b.add_argument("--src", required=True, help="folder of images, flat/nested or one sub-folder per class")
    b.add_argument("--domain", required=True, help="domain name, e.g. faces, cats, art")
    b.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--class-word", default=None, help="word for the subject in captions (default: singular domain)")
    b.add_argument("--caption-template", default=None, help="caption with {class_word} and/or {label}")
    b.add_argument("--maxcount", type=int, default=2000, help="samples per shard (default: 2000)")

    c = sub.add_parser("check", help="verify shards against their manifest and decode every sample")
    c.add_argument("dir", help="shard folder with manifest.json")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    for q in (s, b, c):
        q.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _summary(m: dict) -> str:
    return f"wrote {m['num_samples']} samples in {len(m['shards'])} shard(s), skipped {m['num_skipped']} input(s)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `e4t shards`; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "synth":
            from shards.synth import synthesize

            splits = [x for x in args.splits.split(",") if x] if args.splits is not None else None
            m = synthesize(
                args.domain,
                args.identities,
                args.views,
                args.size,
                args.seed,
                args.out,
                splits=splits,
                progress=not args.quiet,
                maxcount=args.maxcount,
            )
            print(f"{_summary(m)} to {args.out}; per split: {m['splits']}")
        elif args.command == "build":
            from shards.build import build_from_folder

            m = build_from_folder(
                args.src,
                args.domain,
                args.size,
                args.out,
                caption_template=args.caption_template,
                class_word=args.class_word,
                progress=not args.quiet,
                maxcount=args.maxcount,
            )
            print(f"{_summary(m)} to {args.out} (layout: {m['layout']})")
            for s in m["skipped"][:10]:
                print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
        else:
            from shards.check import check_shards

            report = check_shards(args.dir, progress=not args.quiet)
            if args.json:
                print(json.dumps(report, indent=1))
            elif report["ok"]:
                print(f"ok: {report['num_samples']} samples in {report['num_shards']} shard(s) in {args.dir}")
            else:
                print(f"{len(report['problems'])} problem(s) in {args.dir}:", file=sys.stderr)
                for problem in report["problems"]:
                    print(f"  {problem}", file=sys.stderr)
            return EXIT_OK if report["ok"] else EXIT_PROBLEMS
    except (ValueError, FileNotFoundError, NotADirectoryError) as exn:
        print(f"e4t shards {args.command}: error: {exn}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
