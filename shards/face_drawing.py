"""Drawing one cartoon face on the supersampled canvas: palettes, head shapes and features.

`draw_face` is the only entry point; `shards.faces` owns the world's attributes and captions.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

SKIN_TONES = {
    "porcelain": (255, 226, 208),
    "ivory": (246, 208, 168),
    "sand": (228, 186, 136),
    "golden": (214, 160, 98),
    "olive": (184, 148, 92),
    "tan": (160, 108, 66),
    "brown": (118, 76, 46),
    "ebony": (74, 46, 30),
}
EYE_COLORS = {
    "blue": (30, 100, 235),
    "green": (25, 165, 55),
    "brown": (105, 55, 15),
    "gray": (125, 128, 140),
    "amber": (235, 150, 10),
    "violet": (150, 50, 210),
}
HAIR_COLORS = {
    "black": (22, 18, 18),
    "brown": (110, 62, 24),
    "blonde": (242, 205, 80),
    "red": (205, 65, 25),
    "white": (238, 238, 238),
    "blue": (35, 75, 225),
    "pink": (245, 95, 180),
}
_SHAPES = {
    "round": (0.25, 0.26),
    "oval": (0.215, 0.29),
    "square": (0.245, 0.27),
    "long": (0.185, 0.31),
    "heart": (0.25, 0.28),
}
_EYE_DX = {"narrow": 0.072, "medium": 0.1, "wide": 0.128}
_OUTLINE = (40, 25, 20)
_LIPS = (150, 25, 40)


def _darker(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(c * f) for c in color)


class _Pen:
    """Draws in head-relative units: (u, v) in [-1, 1] across the head's half-width/height."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        s: int,
        cx: float,
        cy: float,
        fw: float,
        fh: float,
        k: float,
    ):
        self.d, self.s, self.cx, self.cy, self.fw, self.fh, self.k = (
            draw,
            s,
            cx,
            cy,
            fw,
            fh,
            k,
        )

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + u * self.fw) * self.s, (self.cy + v * self.fh) * self.s

    def w(self, frac: float) -> int:
        return max(1, round(frac * self.k * self.s))

    def disc(self, u: float, v: float, r: float, fill, outline=None, width: float = 0.0) -> None:
        x, y = self.xy(u, v)
        rr = r * self.k * self.s
        self.d.ellipse(
            [x - rr, y - rr, x + rr, y + rr],
            fill=fill,
            outline=outline,
            width=self.w(width) if outline else 0,
        )

    def oval(
        self,
        u: float,
        v: float,
        ru: float,
        rv: float,
        fill,
        outline=None,
        width: float = 0.0,
    ) -> None:
        x0, y0 = self.xy(u - ru, v - rv)
        x1, y1 = self.xy(u + ru, v + rv)
        self.d.ellipse(
            [x0, y0, x1, y1],
            fill=fill,
            outline=outline,
            width=self.w(width) if outline else 0,
        )


def _head_outline(shape: str, pen: _Pen, n: int = 40) -> list[tuple[float, float]]:
    def width_at(v: float) -> float:
        if shape == "square":
            return (1 - abs(v) ** 4) ** 0.25
        if shape == "heart" and v > 0:
            return (1 - v) ** 0.8
        return math.sqrt(max(0.0, 1 - v * v))

    vs = [math.cos(math.pi * i / n) * -1 for i in range(n + 1)]  # top to chin, dense at both ends
    right = [pen.xy(width_at(v), v) for v in vs]
    left = [pen.xy(-width_at(v), v) for v in reversed(vs)]
    return right + left


def _draw_hair_back(pen: _Pen, style: str, hair) -> None:
    if style == "long":
        x0, y0 = pen.xy(-1.3, -0.75)
        x1, y1 = pen.xy(1.3, 1.05)
        pen.d.rounded_rectangle([x0, y0, x1, y1], radius=pen.w(0.12), fill=hair)


def _draw_hair_top(pen: _Pen, style: str, hair) -> None:
    if style in ("short", "long", "bun"):
        x0, y0 = pen.xy(-1.1, -1.14)
        x1, y1 = pen.xy(1.1, 0.1)
        pen.d.pieslice([x0, y0, x1, y1], 180, 360, fill=hair)
        pen.oval(0.0, -0.52, 1.05, 0.12, fill=hair)  # fringe covers the top of the forehead
        if style == "long":
            pen.oval(-0.95, -0.05, 0.2, 0.6, fill=hair)
            pen.oval(0.95, -0.05, 0.2, 0.6, fill=hair)
        if style == "bun":
            pen.disc(0.0, -1.22, 0.09, fill=hair, outline=_OUTLINE, width=0.008)
    elif style == "mohawk":
        pts = [pen.xy(-0.2, -0.55)]
        for i, u in enumerate((-0.2, -0.1, 0.0, 0.1, 0.2)):
            pts += [pen.xy(u, -1.55 if i % 2 == 0 else -1.3)]
        pts += [pen.xy(0.2, -0.55)]
        pen.d.polygon(pts, fill=hair, outline=_OUTLINE)
    elif style == "curly":
        for i in range(11):
            a = math.pi * (1.0 + i / 10)
            pen.disc(1.02 * math.cos(a), -0.25 + 0.92 * math.sin(a), 0.065, fill=hair)
        pen.oval(0.0, -0.68, 0.85, 0.32, fill=hair)


def _draw_eyes(pen: _Pen, a: dict) -> None:
    dx = _EYE_DX[a["eye_spacing"]] / pen.fw
    brow = _darker(HAIR_COLORS[a["hair_color"]], 0.7) if a["hair_style"] != "bald" else _OUTLINE
    for side in (-1, 1):
        u = side * dx
        pen.oval(
            u,
            -0.12,
            0.05 / pen.fw,
            0.036 / pen.fh,
            fill=(255, 255, 255),
            outline=_OUTLINE,
            width=0.007,
        )
        pen.disc(u, -0.12, 0.028, fill=EYE_COLORS[a["eye_color"]])
        pen.disc(u, -0.12, 0.011, fill=(5, 5, 5))
        pen.d.line(
            [
                pen.xy(u - 0.05 / pen.fw, -0.3),
                pen.xy(u + 0.05 / pen.fw, -0.3 - side * 0.0),
            ],
            fill=brow,
            width=pen.w(0.016),
        )


def _draw_nose(pen: _Pen, nose: str, skin) -> None:
    shade = _darker(skin, 0.72)
    if nose == "small":
        pen.disc(0.0, 0.14, 0.016, fill=shade)
    elif nose == "round":
        pen.disc(0.0, 0.16, 0.042, fill=_darker(skin, 0.85), outline=shade, width=0.01)
    else:
        pts = [pen.xy(0.0, -0.08), pen.xy(-0.16, 0.3), pen.xy(0.16, 0.3)]
        pen.d.polygon(pts, fill=shade)


def _draw_mouth(pen: _Pen, mouth: str) -> None:
    hw, y = 0.4, 0.52
    if mouth == "smile":
        x0, y0 = pen.xy(-hw, y - 0.14)
        x1, y1 = pen.xy(hw, y + 0.14)
        pen.d.chord([x0, y0, x1, y1], 0, 180, fill=_LIPS)
    elif mouth == "frown":
        x0, y0 = pen.xy(-hw, y)
        x1, y1 = pen.xy(hw, y + 0.24)
        pen.d.arc([x0, y0, x1, y1], 200, 340, fill=_LIPS, width=pen.w(0.022))
    elif mouth == "open":
        pen.oval(0.0, y + 0.02, 0.24, 0.12, fill=(70, 10, 20), outline=_LIPS, width=0.014)
    else:
        pen.d.line(
            [pen.xy(-hw * 0.9, y + 0.02), pen.xy(hw * 0.9, y + 0.02)],
            fill=_LIPS,
            width=pen.w(0.02),
        )


def _draw_mark(pen: _Pen, mark: str) -> None:
    if mark == "mole_left":
        pen.disc(-0.56, 0.25, 0.022, fill=(25, 12, 8))
    elif mark == "freckles":
        for u, v in (
            (-0.5, 0.12),
            (-0.36, 0.22),
            (-0.55, 0.3),
            (0.5, 0.12),
            (0.36, 0.22),
            (0.55, 0.3),
        ):
            pen.disc(u, v, 0.011, fill=(125, 55, 25))
    elif mark == "scar_right":
        pen.d.line(
            [pen.xy(0.42, -0.02), pen.xy(0.72, 0.36)],
            fill=(200, 40, 50),
            width=pen.w(0.014),
        )
        for t in (0.25, 0.5, 0.75):
            u, v = 0.42 + 0.3 * t, -0.02 + 0.38 * t
            pen.d.line(
                [pen.xy(u - 0.09, v + 0.05), pen.xy(u + 0.09, v - 0.05)],
                fill=(200, 40, 50),
                width=pen.w(0.008),
            )
    elif mark == "beauty_mark":
        pen.disc(0.5, 0.4, 0.016, fill=(25, 12, 8))


def _draw_accessory(pen: _Pen, acc: str, a: dict) -> None:
    if acc == "glasses":
        dx = _EYE_DX[a["eye_spacing"]] / pen.fw
        for side in (-1, 1):
            pen.disc(side * dx, -0.12, 0.07, fill=None, outline=(15, 15, 15), width=0.024)
            pen.d.line(
                [pen.xy(side * (dx + 0.07 / pen.fw), -0.14), pen.xy(side * 1.0, -0.2)],
                fill=(15, 15, 15),
                width=pen.w(0.018),
            )  # temples reach the ears
        pen.d.line(
            [pen.xy(-dx + 0.07 / pen.fw, -0.14), pen.xy(dx - 0.07 / pen.fw, -0.14)],
            fill=(15, 15, 15),
            width=pen.w(0.018),
        )
    elif acc == "earrings":
        for side in (-1, 1):
            pen.d.line(
                [pen.xy(side * 1.02, 0.12), pen.xy(side * 1.02, 0.3)],
                fill=(120, 80, 0),
                width=pen.w(0.01),
            )
            pen.disc(
                side * 1.02,
                0.34,
                0.036,
                fill=(250, 200, 20),
                outline=(120, 80, 0),
                width=0.008,
            )
    elif acc == "hat":
        x0, y0 = pen.xy(-0.82, -1.5)
        x1, y1 = pen.xy(0.82, -0.62)
        pen.d.rectangle([x0, y0, x1, y1], fill=(150, 20, 35), outline=_OUTLINE, width=pen.w(0.008))
        x0, y0 = pen.xy(-0.82, -0.86)
        x1, y1 = pen.xy(0.82, -0.74)
        pen.d.rectangle([x0, y0, x1, y1], fill=(20, 20, 20))  # hat band
        x0, y0 = pen.xy(-1.35, -0.7)
        x1, y1 = pen.xy(1.35, -0.56)
        pen.d.rounded_rectangle(
            [x0, y0, x1, y1],
            radius=pen.w(0.02),
            fill=(120, 15, 28),
            outline=_OUTLINE,
            width=pen.w(0.008),
        )


def draw_face(a: dict, acc: str, nz: dict, s: int) -> tuple[Image.Image, tuple[int, int]]:
    """Draw the head (with `acc`) on a transparent `s` px canvas; returns (RGBA part, paste offset)."""
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    k = nz["scale"]
    hw, hh = _SHAPES[a["face_shape"]]
    cx, cy = 0.5 + nz["dx"], 0.56 + nz["dy"]
    pen = _Pen(ImageDraw.Draw(layer), s, cx, cy, hw * k, hh * k, k)
    skin, hair = SKIN_TONES[a["skin_tone"]], HAIR_COLORS[a["hair_color"]]
    # 1. behind the head: long hair, neck, ears
    _draw_hair_back(pen, a["hair_style"], hair)
    x0, y0 = pen.xy(-0.38, 0.6)
    x1, _ = pen.xy(0.38, 0.0)
    pen.d.rectangle([x0, y0, x1, s], fill=_darker(skin, 0.88))
    for side in (-1, 1):
        pen.oval(
            side * 1.0,
            0.0,
            0.16,
            0.17,
            fill=_darker(skin, 0.92),
            outline=_OUTLINE,
            width=0.007,
        )
    # 2. the head and its features
    pen.d.polygon(
        _head_outline(a["face_shape"], pen),
        fill=skin,
        outline=_OUTLINE,
        width=pen.w(0.01),
    )
    _draw_hair_top(pen, a["hair_style"], hair)
    _draw_eyes(pen, a)
    _draw_nose(pen, a["nose"], skin)
    _draw_mouth(pen, a["mouth"])
    _draw_mark(pen, a["mark"])
    # 3. accessory last so it sits on top of hair and face
    _draw_accessory(pen, acc, a)
    # rotate only the drawn region: rotating the whole transparent canvas is the slowest step
    box = layer.getbbox() or (0, 0, s, s)
    pad = s // 8
    box = (
        max(0, box[0] - pad),
        max(0, box[1] - pad),
        min(s, box[2] + pad),
        min(s, box[3] + pad),
    )
    part = layer.crop(box).rotate(
        nz["rotation"],
        resample=Image.NEAREST,
        center=(cx * s - box[0], cy * s - box[1]),
    )
    return part, box[:2]
