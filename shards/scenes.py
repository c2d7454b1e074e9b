"""Context rendering shared by the synthetic domains: background scenes, lighting and media.

Everything here works on the supersampled canvas (e.g. 256 px) before the final downsample,
so lines and textures are drawn wide enough to survive at 64 px.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageOps

BACKGROUNDS: tuple[str, ...] = ("plain", "beach", "forest", "city", "snow", "night")
MEDIA: tuple[str, ...] = ("photo", "sketch", "painting")
BACKGROUND_VARIANTS = 3

_BG_PHRASES = {
    "plain": "",
    "beach": " on the beach",
    "forest": " in the forest",
    "city": " in the city",
    "snow": " in the snow",
    "night": " at night",
}


def background_phrase(background: str) -> str:
    """Caption fragment naming a background ("" for the plain studio wall)."""
    if background not in _BG_PHRASES:
        raise ValueError(f"`background` must be one of {BACKGROUNDS} but is {background!r}.")
    return _BG_PHRASES[background]


def _vgradient(size: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(rows, (size, size, 3)).astype(np.uint8), "RGB")


def _plain(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    # a soft floor line keeps the studio wall from reading as a blank canvas
    d.rectangle([0, int(0.86 * s), s, s], fill=(196, 188, 176))


def _beach(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    sun_x = rng.choice((0.14, 0.86))
    d.ellipse(
        [(sun_x - 0.08) * s, 0.05 * s, (sun_x + 0.08) * s, 0.21 * s],
        fill=(255, 225, 70),
    )
    d.rectangle([0, int(0.50 * s), s, int(0.64 * s)], fill=(25, 105, 190))
    for y in (0.55, 0.60):
        d.line([0, y * s, s, y * s], fill=(190, 225, 250), width=max(1, s // 80))
    d.rectangle([0, int(0.64 * s), s, s], fill=(238, 212, 140))


def _forest(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    d.rectangle([0, int(0.86 * s), s, s], fill=(80, 120, 40))
    for i in range(7):
        x = (i + 0.5) / 7 + rng.uniform(-0.03, 0.03)
        w = rng.uniform(0.035, 0.05)
        d.rectangle([(x - w) * s, 0.25 * s, (x + w) * s, 0.9 * s], fill=(100, 62, 30))
    for _ in range(14):
        x, y, r = rng.uniform(0, 1), rng.uniform(0.0, 0.28), rng.uniform(0.08, 0.13)
        green = rng.choice(((25, 120, 40), (45, 145, 55), (20, 95, 30)))
        d.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=green)


def _city(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    x = -0.02
    while x < 1.0:
        w = rng.uniform(0.12, 0.2)
        top = rng.uniform(0.08, 0.45)
        grey = rng.choice((85, 105, 125, 145))
        d.rectangle([x * s, top * s, (x + w) * s, s], fill=(grey, grey, grey + 10))
        wy = top + 0.04
        while wy < 0.85:
            wx = x + 0.025
            while wx < x + w - 0.04:
                lit = rng.random() < 0.7
                d.rectangle(
                    [wx * s, wy * s, (wx + 0.035) * s, (wy + 0.04) * s],
                    fill=(250, 215, 100) if lit else (55, 60, 75),
                )
                wx += 0.06
            wy += 0.08
        x += w + 0.01
    d.rectangle([0, int(0.88 * s), s, s], fill=(55, 55, 60))


def _snow(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    d.rectangle([0, int(0.66 * s), s, s], fill=(250, 252, 255))
    d.line([0, 0.66 * s, s, 0.66 * s], fill=(200, 215, 235), width=max(1, s // 64))
    for _ in range(45):
        x, y, r = rng.uniform(0, 1), rng.uniform(0, 0.64), rng.uniform(0.01, 0.018)
        d.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=(255, 255, 255))


def _night(d: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    mx = rng.choice((0.15, 0.85))
    d.ellipse([(mx - 0.09) * s, 0.05 * s, (mx + 0.09) * s, 0.23 * s], fill=(250, 245, 200))
    # offset dark disc turns the moon into a crescent
    d.ellipse([(mx - 0.05) * s, 0.03 * s, (mx + 0.12) * s, 0.20 * s], fill=(14, 22, 62))
    for _ in range(40):
        x, y, r = rng.uniform(0, 1), rng.uniform(0, 0.95), rng.uniform(0.004, 0.009)
        d.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=(255, 255, 230))


_SCENES = {
    "plain": ((234, 228, 218), (210, 203, 192), _plain),
    "beach": ((110, 180, 245), (175, 220, 255), _beach),
    "forest": ((60, 130, 60), (30, 85, 40), _forest),
    "city": ((175, 190, 210), (205, 210, 220), _city),
    "snow": ((170, 200, 235), (205, 222, 242), _snow),
    "night": ((10, 18, 55), (25, 35, 90), _night),
}


@functools.lru_cache(maxsize=64)
def background(name: str, variant: int, size: int) -> Image.Image:
    """Render background scene `name` (one of BACKGROUNDS) as RGBA at `size` px; cached, do not mutate."""
    if name not in _SCENES:
        raise ValueError(f"`background` must be one of {BACKGROUNDS} but is {name!r}.")
    top, bottom, draw_fn = _SCENES[name]
    img = _vgradient(size, top, bottom)
    draw_fn(ImageDraw.Draw(img), size, random.Random(f"{name}/{variant}"))
    return img.convert("RGBA")


def coverage_mask(alpha: Image.Image, size: int) -> Image.Image:
    """The L mask (255 = subject) at `size` of a supersampled layer's alpha: a pixel counts when a quarter or more
    of it is covered (a half would leave thin strokes, whiskers, outside)."""
    coverage = alpha.resize((size, size), Image.Resampling.BOX)
    return Image.fromarray(np.where(np.asarray(coverage) >= 64, 255, 0).astype(np.uint8), "L")


def apply_lighting(img: Image.Image, nuisance: dict) -> Image.Image:
    """Brightness/contrast gain and a soft directional shade (one side darker than the other)."""
    arr = np.asarray(img, dtype=np.float32)
    s = arr.shape[0]
    arr = (arr - 128.0) * nuisance["contrast"] + 128.0
    angle = math.radians(nuisance["shade_angle"])
    grid = np.linspace(-0.5, 0.5, s, dtype=np.float32)
    ramp = math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]
    shade = 1.0 - nuisance["shade_strength"] * (ramp + 0.5)
    arr = arr * (nuisance["brightness"] * shade)[:, :, None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@functools.lru_cache(maxsize=8)
def _brush_texture(size: int) -> np.ndarray:
    # fixed pattern of short diagonal strokes, multiplied in to look like brush work
    tex = Image.new("L", (size, size), 128)
    d = ImageDraw.Draw(tex)
    rng = random.Random(f"brush/{size}")
    length, width = size * 0.07, max(2, size // 64)
    for _ in range(size * 3):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        a = math.radians(rng.uniform(30, 60))
        d.line(
            [x, y, x + length * math.cos(a), y + length * math.sin(a)],
            fill=rng.choice((108, 118, 138, 148)),
            width=width,
        )
    return np.asarray(tex, dtype=np.float32)[:, :, None] / 128.0


def _sketch(img: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(img)
    # box blur + threshold thickens the 1 px edges into pencil strokes that survive the downsample
    edges = gray.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.BoxBlur(1))
    lines = edges.point([255 - (255 if v > 12 else v * 20) for v in range(256)])
    # light pencil shading: keep a pale copy of the tones under the lines
    tone = gray.point([int(175 + v * 0.31) for v in range(256)])
    out = ImageChops.darker(lines, tone)
    warm = [out.point([int(v * f) for v in range(256)]) for f in (0.98, 0.94)]  # paper tint
    return Image.merge("RGB", (out, *warm))


def _painting(img: Image.Image) -> Image.Image:
    # half resolution is plenty for flat paint patches and 4x cheaper to filter
    half = ImageEnhance.Color(img.reduce(2)).enhance(1.6)  # saturated, like paint
    flat = ImageOps.posterize(half.filter(ImageFilter.SMOOTH_MORE), 3)
    arr = np.asarray(flat, dtype=np.float32) * _brush_texture(half.width)
    arr = arr * 0.9 + np.array((25, 18, 5), np.float32)  # warm canvas tint
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def apply_medium(img: Image.Image, medium: str) -> Image.Image:
    """Turn a rendered photo into `medium` (one of MEDIA) on the supersampled canvas."""
    if medium == "photo":
        return img
    if medium == "sketch":
        return _sketch(img)
    if medium == "painting":
        return _painting(img)
    raise ValueError(f"`medium` must be one of {MEDIA} but is {medium!r}.")
