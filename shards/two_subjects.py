"""Two-subject scenes of the synthetic worlds, with one exact mask per subject (evaluation only).

Break-A-Scene (Avrahami et al. 2023) learns several concepts from ONE image and a mask per
subject; this module draws such images: two identities (faces, cats, or one of each) side by
side on one background, and the mask of each, for the benchmark and the tests. It is not a
shard source: no training stage of the embedded world reads two-subject images (the base
never saw one), so scenes are rendered on demand, like the evaluation protocol's renders.

Each subject is drawn by its own domain's renderer (`draw_subject`) on its own transparent
layer, so its mask is that layer's alpha, never a guess from colours: the alpha is
downsampled to the output size as pixel coverage and a pixel belongs to the subject when a
quarter of it or more is covered (a half would leave thin strokes, whiskers, outside).
Subject i is drawn in a bottom-aligned square of `SUBJECT_SCALE` of the scene's side centred
on column i (each column half the scene's width), and its layer is clipped to that column,
so the masks never share a pixel.

    python -m shards.two_subjects --out out/scene --left faces:7 --right cats:3 --background beach
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageChops

from shards.scenes import MEDIA, apply_lighting, apply_medium, background, background_phrase, coverage_mask
from shards.synth import get_domain

SUPERSAMPLE = 4
# A subject's drawing canvas against the scene's side: the renderers fill about 60% of their canvas's
# width, so 0.7 gives heads ~40% of the scene wide that still fit their half (a few whisker tips clip).
SUBJECT_SCALE = 0.7
# A subject facing the camera, centred in its square: the "one image" a user would upload.
FRONTAL = {"dx": 0.0, "dy": 0.0, "scale": 1.0, "rotation": 0.0}
EVEN_LIGHT = {"brightness": 1.0, "contrast": 1.0, "shade_angle": 0.0, "shade_strength": 0.0, "bg_variant": 0}
_POSE_KEYS = tuple(FRONTAL)


@dataclass(frozen=True)
class SceneSubject:
    """One subject of a scene: its domain and identity attributes (`identity` is its name, for reports)."""

    domain: str
    attributes: dict
    identity: str = ""


@dataclass
class TwoSubjectScene:
    image: Image.Image  # RGB, size x size
    masks: list[Image.Image]  # L, 255 = subject; left subject first
    caption: str  # "a photo of a face and a cat on the beach"
    subjects: list[SceneSubject]
    context: dict = field(default_factory=dict)

    @property
    def class_words(self) -> list[str]:
        return [get_domain(s.domain).CLASS_WORD for s in self.subjects]


def scene_caption(class_words: Sequence[str], context: dict) -> str:
    """f"a {medium} of a {word1} and a {word2}{background}{accessory}", the faces world's grammar for two subjects."""
    if context["medium"] not in MEDIA:
        raise ValueError(f"`medium` must be one of {MEDIA} but is {context['medium']!r}.")
    accessories = {
        label: phrase for kind, label, phrase in get_domain("faces").context_phrases() if kind == "accessory"
    }
    if context["accessory"] not in accessories:
        raise ValueError(f"`accessory` must be one of {tuple(accessories)} but is {context['accessory']!r}.")
    subjects = " and ".join(f"a {w}" for w in class_words)
    suffix = background_phrase(context["background"]) + accessories[context["accessory"]]
    return f"a {context['medium']} of {subjects}{suffix}"


def render_scene(
    subjects: Sequence[SceneSubject],
    context: dict | None = None,
    poses: Sequence[dict] | None = None,
    light: dict | None = None,
    size: int = 64,
) -> TwoSubjectScene:
    """Draw two subjects side by side (left, right) on one background; returns the image, masks and caption.

    `context`: background, medium and accessory (both subjects wear it); default a plain photo.
    `poses`: per subject dx, dy, scale, rotation as in the domains' nuisance (default frontal).
    `light`: brightness, contrast, shade and background variant of the whole picture (default even).
    """
    # 1. check inputs
    if len(subjects) != 2:
        raise ValueError(f"a scene has exactly 2 subjects but {len(subjects)} were given.")
    if size < 16 or size % 2:
        raise ValueError(f"`size` must be an even number >= 16 but is {size}.")
    context = dict(context or {"background": "plain", "medium": "photo", "accessory": "none"})
    poses = list(poses) if poses is not None else [FRONTAL, FRONTAL]
    if len(poses) != 2 or any(set(_POSE_KEYS) - set(p) for p in poses):
        raise ValueError(f"`poses` must be 2 dicts with keys {_POSE_KEYS} but are {poses!r}.")
    light = {**EVEN_LIGHT, **(light or {})}
    caption = scene_caption([get_domain(s.domain).CLASS_WORD for s in subjects], context)

    # 2. each subject on its own layer, clipped to its column
    s = size * SUPERSAMPLE
    half, side = s // 2, int(round(s * SUBJECT_SCALE))
    canvas = background(context["background"], light["bg_variant"], s).copy()
    masks = []
    for i, (subject, pose) in enumerate(zip(subjects, poses, strict=True)):
        mod = get_domain(subject.domain)
        part, (ox, oy) = mod.draw_subject(subject.attributes, context["accessory"], pose, side)
        left, top = i * half + half // 2 - side // 2, s - side
        layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        layer.paste(part, (left + ox, top + oy))
        column = Image.new("L", (s, s), 0)
        column.paste(255, (i * half, 0, (i + 1) * half, s))
        layer.putalpha(ImageChops.multiply(layer.getchannel("A"), column))
        canvas.alpha_composite(layer)
        masks.append(coverage_mask(layer.getchannel("A"), size))

    # 3. medium and light on the finished picture, as the single-subject renderers do
    image = apply_medium(canvas.convert("RGB"), context["medium"]).resize((size, size), Image.LANCZOS, reducing_gap=2.0)
    image = apply_lighting(image, light)
    return TwoSubjectScene(image, masks, caption, list(subjects), context)


def crop_to_mask(image: Image.Image, mask: Image.Image, margin: float = 0.15) -> Image.Image:
    """The square around the mask's subject (its bounding box plus `margin` of its side), clamped to the image."""
    box = mask.convert("L").point(lambda v: 255 if v >= 128 else 0).getbbox()
    if box is None:
        raise ValueError("the mask is empty: no subject to crop")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = min(max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin), image.width, image.height)
    left = int(round(min(max(cx - side / 2, 0), image.width - side)))
    top = int(round(min(max(cy - side / 2, 0), image.height - side)))
    return image.crop((left, top, left + int(round(side)), top + int(round(side))))


def _subject_arg(text: str) -> SceneSubject:
    domain, _, index = text.partition(":")
    mod = get_domain(domain)
    return SceneSubject(domain, mod.identity_attributes(int(index), 0), mod.identity_name(int(index), 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.two_subjects", description=__doc__.split("\n\n")[0])
    p.add_argument("--left", type=_subject_arg, default="faces:7", help="DOMAIN:INDEX of world seed 0")
    p.add_argument("--right", type=_subject_arg, default="cats:3", help="DOMAIN:INDEX of world seed 0")
    p.add_argument("--background", default="plain")
    p.add_argument("--medium", default="photo")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", required=True, help="folder for scene.png, mask_0.png, mask_1.png, scene.json")
    args = p.parse_args(argv)
    scene = render_scene(
        [args.left, args.right],
        {"background": args.background, "medium": args.medium, "accessory": "none"},
        size=args.size,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene.image.save(out / "scene.png")
    for i, mask in enumerate(scene.masks):
        mask.save(out / f"mask_{i}.png")
    meta = {"caption": scene.caption, "subjects": [s.identity for s in scene.subjects]}
    (out / "scene.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}/scene.png, mask_0.png, mask_1.png: {scene.caption}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
