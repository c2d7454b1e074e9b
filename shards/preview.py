"""Preview grid of a shard set: `python -m shards.preview DIR OUT.png [--n 64] [--scale 2]`."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from shards.images import to_rgb
from shards.writer import IMAGE_EXTS, read_manifest


def first_samples(directory: str | Path, n: int) -> list[tuple[Image.Image, str]]:
    """(image, caption) of the first `n` samples in manifest order."""
    out: list[tuple[Image.Image, str]] = []
    pending: dict[str, dict[str, bytes]] = {}
    for shard in read_manifest(directory)["shards"]:
        with tarfile.open(Path(directory) / shard["file"]) as tf:
            for member in tf:
                key, _, ext = member.name.partition(".")
                pending.setdefault(key, {})[ext] = tf.extractfile(member).read()
                files = pending[key]
                img_ext = next((e for e in IMAGE_EXTS if e in files), None)
                if img_ext and "json" in files:
                    img = to_rgb(Image.open(io.BytesIO(files[img_ext])))
                    out.append((img, json.loads(files["json"]).get("caption", "")))
                    del pending[key]
                    if len(out) == n:
                        return out
    return out


def grid(
    samples: list[tuple[Image.Image, str]], scale: int = 2, columns: int = 8, captions: bool = True
) -> Image.Image:
    """Tile images (nearest-upscaled by `scale`) with their captions below each tile."""
    if not samples:
        raise ValueError("`samples` must not be empty.")
    tile = samples[0][0].width * scale
    text_h = 40 if captions else 0
    rows = (len(samples) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile, rows * (tile + text_h)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    chars = max(8, tile // 6)
    for i, (img, caption) in enumerate(samples):
        x, y = (i % columns) * tile, (i // columns) * (tile + text_h)
        canvas.paste(img.resize((tile, tile), Image.NEAREST), (x, y))
        if captions:
            text = "\n".join(textwrap.wrap(caption, chars)[:3])
            draw.multiline_text((x + 2, y + tile + 1), text, fill="black", font=font, spacing=0)
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.preview", description=__doc__)
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--no-captions", action="store_true")
    args = p.parse_args(argv)
    try:
        grid(first_samples(args.dir, args.n), args.scale, captions=not args.no_captions).save(args.out)
    except (ValueError, FileNotFoundError) as exn:
        print(f"preview: error: {exn}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
