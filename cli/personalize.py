"""`e4t personalize`: one image to a concept file, locally (no server).

    e4t personalize me.png --pack artifacts/packs/faces.safetensors --out me.safetensors          # PyTorch, 5 steps
    e4t personalize me.png --pack artifacts/packs/faces.safetensors --runtime onnx --onnx out/onnx/faces \
        --out me.safetensors                                                                     # the 0-step guess

`--runtime torch` runs `e4t.tuner.personalize` (the pack's default steps unless --steps).
`--runtime onnx` runs the encoder's 0-step guess on ONNX Runtime, from the folder that
`e4t export onnx` wrote (--onnx; exported into a temporary folder when not given); it gives
the embedding that `--runtime torch --steps 0` gives. Prints the concept's metadata as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e4t personalize", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("image", type=Path)
    p.add_argument("--pack", type=Path, required=True, help="domain pack (.safetensors)")
    p.add_argument("--base", type=Path, help="the pack's base folder (default: the embedded base)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    p.add_argument("--onnx", type=Path, help="folder written by `e4t export onnx` for this pack (--runtime onnx)")
    p.add_argument("--steps", type=int, help="tuning steps (torch; default: the pack's). onnx: 0 only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask", type=Path, help="subject mask, white = subject (torch)")
    p.add_argument("--owner", default="")
    p.add_argument("--out", type=Path, required=True, help="concept file to write")
    return p


def run(args: argparse.Namespace):
    from PIL import Image

    from cli.models import load

    if args.runtime == "onnx" and args.steps:
        raise ValueError("--runtime onnx runs the encoder's 0-step guess only; tuning steps need --runtime torch")
    if args.runtime == "onnx" and args.mask is not None:
        raise ValueError("--mask weights the tuning loss; the 0-step guess of --runtime onnx has none")
    base, pack = load(args.base, args.pack)
    image = Image.open(args.image)
    if args.runtime == "torch":
        from e4t.tuner import personalize

        mask = Image.open(args.mask) if args.mask is not None else None
        steps = pack.tune.steps if args.steps is None else args.steps
        return personalize(base, pack, image, steps=steps, seed=args.seed, mask=mask, owner=args.owner)

    from e4t.onnx_encoder import OnnxEncoder, export_onnx

    if args.onnx is not None:
        return OnnxEncoder(args.onnx).guess(base, pack, image, seed=args.seed, owner=args.owner)
    with tempfile.TemporaryDirectory(prefix="e4t-onnx-") as tmp:
        export_onnx(base, pack, tmp)
        return OnnxEncoder(tmp).guess(base, pack, image, seed=args.seed, owner=args.owner)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from e4t.errors import E4TError

    try:
        concept = run(args)
    except (E4TError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    concept.save(args.out)
    print(json.dumps({**concept.metadata(), "steps": concept.steps, "path": str(args.out), **concept.extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
