"""`e4t export`: a concept to the files diffusers loads, or a pack's encoder to ONNX.

    e4t export diffusers c_1a2b3c4d5e6f --out out/diffusers/me        # from the concept store (--store)
    e4t export diffusers me.safetensors --out out/diffusers/me --base DIR --pack faces.safetensors
    e4t export onnx --pack artifacts/packs/faces.safetensors --out out/onnx/faces [--base DIR]

`diffusers` writes learned_embeds.safetensors (`pipe.load_textual_inversion`) and
pytorch_lora_weights.safetensors (`pipe.load_lora_weights`): the pack's offsets and the
concept's delta folded into one LoRA. Without --pack it uses the embedded pack the concept
was made with. `onnx` writes encoder.onnx (the encoder's whole guess, its UNet branch
included) and encoder.json, and prints the largest difference from PyTorch it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e4t.prompts import CONCEPT_ID


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e4t export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    d = sub.add_parser("diffusers", help="textual-inversion embedding + LoRA for a plain StableDiffusionPipeline")
    d.add_argument("concept", help="a concept id (looked up in --store) or a concept .safetensors file")
    d.add_argument("--out", type=Path, required=True, help="folder to write the two files into")
    d.add_argument("--store", type=Path, default=Path("runs/concepts"), help="concept store folder (as `e4t serve`)")
    d.add_argument("--base", type=Path, help="the concept's base folder (default: the embedded base)")
    d.add_argument("--pack", type=Path, help="the concept's domain pack (default: the embedded pack it was made with)")
    o = sub.add_parser("onnx", help="the E4T encoder (UNet branch included) as ONNX, checked against PyTorch")
    o.add_argument("--pack", type=Path, required=True)
    o.add_argument("--base", type=Path, help="the pack's base folder (default: the embedded base)")
    o.add_argument("--out", type=Path, required=True, help="folder for encoder.onnx and encoder.json")
    return p


def concept_file(name: str, store: Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    if CONCEPT_ID.match(name):
        from serve.store import SUFFIX

        stored = store / f"{name}{SUFFIX}"
        if stored.is_file():
            return stored
        raise FileNotFoundError(f"concept {name} is not in the store {str(store)!r} (pass --store, or a file)")
    raise FileNotFoundError(f"{name!r} is neither a concept file nor a concept id (c_ + 12 hex digits)")


def export_diffusers(args: argparse.Namespace) -> dict:
    from cli.models import base_dir, pack_for
    from e4t import load_base
    from e4t.concept import Concept
    from e4t.embedded import default_paths
    from e4t.export import export_diffusers as export

    concept = Concept.load(concept_file(args.concept, args.store))
    base = load_base(base_dir(args.base))
    if concept.base_hash != base.hash:
        raise ValueError(f"concept {concept.id} was made for base {concept.base_hash}; {base.path} is {base.hash}")
    candidates = [args.pack] if args.pack else default_paths()[1]
    pack = pack_for(base, concept.pack_hash, candidates)
    if pack is None:
        where = str(args.pack) if args.pack else "the embedded packs"
        raise ValueError(f"concept {concept.id} was made with pack {concept.pack_hash}, which is not {where}")
    return export(concept, pack, args.out)


def export_onnx(args: argparse.Namespace) -> dict:
    from cli.models import load
    from e4t.onnx_encoder import export_onnx as export

    base, pack = load(args.base, args.pack)
    return export(base, pack, args.out)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from e4t.errors import E4TError

    try:
        result = export_diffusers(args) if args.format == "diffusers" else export_onnx(args)
    except (E4TError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
