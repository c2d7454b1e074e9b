"""Drawing one cartoon cat head (front view) on the supersampled canvas: palettes, ears, fur, features.

`draw_cat` is the only entry point; `shards.cats` owns the world's attributes and captions. The
framing matches `shards.face_drawing` (head centred at (0.5, 0.56), ears to ~0.24, chest to the
bottom edge) so that both domains fill the frame alike.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageChops, ImageDraw

Color = tuple[int, int, int]

FUR_COLORS: dict[str, Color] = {
    "black": (30, 28, 30),
    "white": (246, 244, 238),
    "orange": (232, 132, 40),
    "grey": (128, 130, 136),
    "brown": (122, 78, 40),
    "cream": (236, 210, 160),
    "silver": (196, 202, 212),
    "chocolate": (80, 46, 28),
}
EYE_COLORS: dict[str, Color] = {
    "green": (40, 185, 60),
    "yellow": (240, 220, 30),
    "blue": (40, 120, 240),
    "copper": (200, 95, 20),
    "odd": (40, 120, 240),  # heterochromia: left blue, right yellow
}
NOSE_COLORS: dict[str, Color] = {"pink": (240, 130, 150), "black": (20, 18, 18), "brown": (120, 70, 45)}
# head half-width as a fraction of the canvas; the half-height is fixed
HEAD_WIDTHS = {"narrow": 0.235, "medium": 0.27, "wide": 0.305}
_HEAD_H = 0.215
_OUTLINE = (35, 25, 22)
_CALICO = ((232, 128, 36), (28, 26, 26))  # orange and black patches


def _darker(color: Color, f: float) -> Color:
    return tuple(int(c * f) for c in color)  # type: ignore[return-value]


def _lum(color: Color) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _contrast_marks(fur: Color) -> tuple[Color, Color]:
    """(light, dark) marking colours that stand out on `fur`: white marks on a white cat would vanish."""
    light = (250, 250, 248) if _lum(fur) < 200 else (150, 140, 130)
    dark = _darker(fur, 0.45) if _lum(fur) > 70 else (120, 110, 100)
    return light, dark


class _Pen:
    """Draws in head-relative units: (u, v) in [-1, 1] across the head's half-width/height."""

    def __init__(self, draw: ImageDraw.ImageDraw, s: int, cx: float, cy: float, hw: float, hh: float, k: float):
        self.d, self.s, self.cx, self.cy, self.hw, self.hh, self.k = draw, s, cx, cy, hw, hh, k

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + u * self.hw) * self.s, (self.cy + v * self.hh) * self.s

    def w(self, frac: float) -> int:
        return max(1, round(frac * self.k * self.s))

    def oval(self, u: float, v: float, ru: float, rv: float, fill, outline=None, width: float = 0.0) -> None:
        x0, y0 = self.xy(u - ru, v - rv)
        x1, y1 = self.xy(u + ru, v + rv)
        self.d.ellipse([x0, y0, x1, y1], fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def poly(self, pts: list[tuple[float, float]], fill, outline=None, width: float = 0.0) -> None:
        self.d.polygon(
            [self.xy(u, v) for u, v in pts], fill=fill, outline=outline, width=self.w(width) if outline else 0
        )

    def line(self, pts: list[tuple[float, float]], fill, width: float) -> None:
        self.d.line([self.xy(u, v) for u, v in pts], fill=fill, width=self.w(width), joint="curve")


def _head_points(n: int = 48) -> list[tuple[float, float]]:
    # a cat head is widest at the cheeks (below the eyes) with a flatter crown: superellipse, shifted bulge
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        c, s_ = math.cos(t), math.sin(t)
        u = (abs(c) ** 0.8) * (1 if c >= 0 else -1)
        v = (abs(s_) ** 0.9) * (1 if s_ >= 0 else -1)
        u *= 1.0 + 0.1 * max(0.0, s_)  # cheek fluff
        pts.append((u, v))
    return pts


def _draw_ears(pen: _Pen, shape: str, fur: Color) -> None:
    inner = (238, 150, 160)
    for side in (-1, 1):
        if shape == "pointy":
            outer = [(side * 0.3, -0.75), (side * 0.95, -0.45), (side * 0.85, -1.55)]
            pen.poly(outer, fill=fur, outline=_OUTLINE, width=0.008)
            pen.poly([(side * 0.45, -0.72), (side * 0.85, -0.55), (side * 0.8, -1.3)], fill=inner)
        elif shape == "round":
            pen.oval(side * 0.66, -0.86, 0.36, 0.5, fill=fur, outline=_OUTLINE, width=0.008)
            pen.oval(side * 0.66, -0.82, 0.22, 0.34, fill=inner)
        else:  # folded: short ears whose tips bend forward and down (Scottish fold)
            pen.poly(
                [(side * 0.3, -0.78), (side * 0.9, -0.5), (side * 0.72, -1.12)], fill=fur, outline=_OUTLINE, width=0.008
            )
            pen.poly(
                [(side * 0.42, -0.95), (side * 0.82, -0.8), (side * 0.55, -0.62)],
                fill=_darker(fur, 0.8),
                outline=_OUTLINE,
                width=0.008,
            )


def _draw_pattern(pen: _Pen, pattern: str, fur: Color, seed: str) -> None:
    light, dark = _contrast_marks(fur)
    if pattern == "tabby":
        for u in (-0.22, 0.0, 0.22):  # the "M" on the forehead
            pen.line([(u, -1.05), (u * 0.6, -0.5)], fill=dark, width=0.028)
        for side in (-1, 1):
            for v in (0.05, 0.28, 0.5):
                pen.line([(side * 1.1, v - 0.05), (side * 0.7, v + 0.02)], fill=dark, width=0.024)
    elif pattern == "spotted":
        rng = random.Random(seed)  # spot layout is part of the identity
        for _ in range(12):
            u, v = rng.uniform(-0.95, 0.95), rng.uniform(-1.0, 0.75)
            if abs(u) < 0.55 and -0.4 < v < 0.7:
                u = 0.6 * (1 if u >= 0 else -1) + u * 0.4  # keep eyes and muzzle clear
            pen.oval(u, v, 0.1, 0.1 * pen.hw / pen.hh, fill=dark)
    elif pattern == "tuxedo":
        # light lower face: inverted V from between the eyes down to the chin
        pen.poly([(0.0, -0.35), (-0.75, 0.55), (-0.55, 1.1), (0.55, 1.1), (0.75, 0.55)], fill=light)
    elif pattern == "calico":
        rng = random.Random(seed)
        for i, (u, v) in enumerate(((-0.7, -0.7), (0.75, -0.35), (-0.55, 0.55))):
            ru, rv = rng.uniform(0.35, 0.5), rng.uniform(0.35, 0.5)
            pen.oval(u + rng.uniform(-0.1, 0.1), v + rng.uniform(-0.1, 0.1), ru, rv, fill=_CALICO[i % 2])


def _draw_mark(pen: _Pen, mark: str, fur: Color) -> None:
    light, dark = _contrast_marks(fur)
    if mark == "blaze":
        pen.poly([(-0.1, -1.05), (0.1, -1.05), (0.16, -0.15), (-0.16, -0.15)], fill=light)
    elif mark == "eye_patch_left":
        pen.oval(-0.42, -0.12, 0.36, 0.42, fill=dark if _lum(fur) > 70 else light)
    elif mark == "chin_spot":
        pen.oval(0.0, 0.78, 0.22, 0.18, fill=light if _lum(fur) < 200 else dark)


def _draw_body(pen: _Pen, a: dict, fur: Color) -> None:
    light, _ = _contrast_marks(fur)
    x0, y0 = pen.xy(-1.05, 0.6)
    x1, _ = pen.xy(1.05, 0.6)
    pen.d.ellipse([x0, y0, x1, y0 + (x1 - x0) * 1.2], fill=_darker(fur, 0.9), outline=_OUTLINE, width=pen.w(0.008))
    if a["pattern"] == "tuxedo":
        pen.poly([(-0.45, 0.9), (0.45, 0.9), (0.3, 3.0), (-0.3, 3.0)], fill=light)  # white bib
    elif a["pattern"] == "calico":
        pen.oval(0.6, 1.7, 0.35, 0.5, fill=_CALICO[0])


def _draw_face_features(pen: _Pen, a: dict, fur: Color) -> None:
    # muzzle puffs, nose, mouth
    muzzle = tuple(min(255, int(c * 0.55 + 255 * 0.45)) for c in fur)
    for side in (-1, 1):
        pen.oval(side * 0.17, 0.46, 0.2, 0.2 * pen.hw / pen.hh, fill=muzzle)
    pen.poly(
        [(-0.13, 0.24), (0.13, 0.24), (0.0, 0.4)], fill=NOSE_COLORS[a["nose_color"]], outline=_OUTLINE, width=0.006
    )
    pen.line([(0.0, 0.4), (0.0, 0.5)], fill=_OUTLINE, width=0.008)
    for side in (-1, 1):
        pen.line([(0.0, 0.5), (side * 0.1, 0.58), (side * 0.2, 0.52)], fill=_OUTLINE, width=0.008)
    # eyes: big almond-ish ovals with a vertical slit pupil
    for side in (-1, 1):
        u = side * 0.42
        color = EYE_COLORS[a["eye_color"]]
        if a["eye_color"] == "odd" and side == 1:
            color = EYE_COLORS["yellow"]
        pen.oval(u, -0.12, 0.24, 0.27 * pen.hw / pen.hh, fill=color, outline=_OUTLINE, width=0.012)
        pen.oval(u, -0.12, 0.05, 0.22 * pen.hw / pen.hh, fill=(8, 8, 8))
        pen.oval(u + 0.08, -0.22, 0.045, 0.045 * pen.hw / pen.hh, fill=(255, 255, 255))  # glint
    # whiskers: white on dark fur, dark on light fur
    reach = 1.15 if a["whiskers"] == "short" else 1.75
    wcol = (250, 250, 250) if _lum(fur) < 150 else (40, 36, 34)
    for side in (-1, 1):
        for dv in (-0.12, 0.0, 0.12):
            pen.line([(side * 0.3, 0.45 + dv * 0.3), (side * reach, 0.4 + dv * 1.6)], fill=wcol, width=0.009)


def _draw_accessory(pen: _Pen, acc: str, a: dict) -> None:
    if acc == "glasses":
        for side in (-1, 1):
            pen.oval(side * 0.42, -0.12, 0.33, 0.33 * pen.hw / pen.hh, fill=None, outline=(15, 15, 15), width=0.022)
            pen.line([(side * 0.75, -0.15), (side * 1.02, -0.3)], fill=(15, 15, 15), width=0.018)
        pen.line([(-0.1, -0.16), (0.1, -0.16)], fill=(15, 15, 15), width=0.018)
    elif acc == "earrings":
        # small gold rings hanging from the outer edge of each ear
        ear_u, ear_v = {"pointy": (0.9, -0.6), "round": (0.95, -0.7), "folded": (0.85, -0.6)}[a["ear_shape"]]
        for side in (-1, 1):
            pen.oval(
                side * ear_u, ear_v + 0.12, 0.13, 0.13 * pen.hw / pen.hh, fill=None, outline=(250, 200, 20), width=0.014
            )
            pen.oval(
                side * ear_u, ear_v + 0.12, 0.155, 0.155 * pen.hw / pen.hh, fill=None, outline=(120, 80, 0), width=0.004
            )
    elif acc == "hat":
        # top hat sits between the ears, so ear shape stays visible
        pen.d.rectangle(
            [*pen.xy(-0.5, -1.95), *pen.xy(0.5, -0.9)], fill=(150, 20, 35), outline=_OUTLINE, width=pen.w(0.008)
        )
        pen.d.rectangle([*pen.xy(-0.5, -1.12), *pen.xy(0.5, -0.98)], fill=(20, 20, 20))  # hat band
        pen.d.rounded_rectangle(
            [*pen.xy(-0.82, -0.98), *pen.xy(0.82, -0.82)],
            radius=pen.w(0.02),
            fill=(120, 15, 28),
            outline=_OUTLINE,
            width=pen.w(0.008),
        )


def draw_cat(a: dict, acc: str, nz: dict, s: int, seed: str) -> tuple[Image.Image, tuple[int, int]]:
    """Draw the cat head (with `acc`) on a transparent `s` px canvas; returns (RGBA part, paste offset).

    `seed` (the identity name) fixes identity-specific layouts such as spot and patch positions.
    """
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    k = nz["scale"]
    cx, cy = 0.5 + nz["dx"], 0.56 + nz["dy"]
    pen = _Pen(ImageDraw.Draw(layer), s, cx, cy, HEAD_WIDTHS[a["face_width"]] * k, _HEAD_H * k, k)
    fur = FUR_COLORS[a["fur_color"]]
    # 1. behind the head: chest, ears
    _draw_body(pen, a, fur)
    _draw_ears(pen, a["ear_shape"], fur)
    # 2. the head; pattern and marks are drawn on their own layer and clipped to the head
    head = _head_points()
    pen.poly(head, fill=fur, outline=_OUTLINE, width=0.01)
    fur_layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    fpen = _Pen(ImageDraw.Draw(fur_layer), s, cx, cy, pen.hw, pen.hh, k)
    _draw_pattern(fpen, a["pattern"], fur, seed)
    _draw_mark(fpen, a["mark"], fur)
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).polygon([pen.xy(u * 0.97, v * 0.97) for u, v in head], fill=255)
    layer.paste(fur_layer, (0, 0), ImageChops.multiply(fur_layer.getchannel("A"), mask))
    _draw_face_features(pen, a, fur)
    # 3. accessory last so it sits on top of fur and face
    _draw_accessory(pen, acc, a)
    # rotate only the drawn region: rotating the whole transparent canvas is the slowest step
    box = layer.getbbox() or (0, 0, s, s)
    pad = s // 8
    box = (max(0, box[0] - pad), max(0, box[1] - pad), min(s, box[2] + pad), min(s, box[3] + pad))
    part = layer.crop(box).rotate(nz["rotation"], resample=Image.NEAREST, center=(cx * s - box[0], cy * s - box[1]))
    return part, box[:2]
