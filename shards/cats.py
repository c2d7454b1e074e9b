"""The synthetic cat world (WORLD_VERSION 1): procedurally drawn cartoon cat heads, the pets of this world.

Same schema and contexts as `shards.faces` (backgrounds, media, accessories, nuisance, captions
"a {medium} of a cat{bg}{acc}"), so one prompt grammar serves both domains. An identity is a
fixed set of attribute values (fur colour and pattern, eyes, ears, head width, nose, whiskers,
mark), drawn deterministically from its index and seed; its split comes from
`shards.splits.split_of` like every other synthetic identity.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image

from shards import faces
from shards.cat_drawing import EYE_COLORS, FUR_COLORS, HEAD_WIDTHS, NOSE_COLORS, draw_cat
from shards.scenes import (
    BACKGROUND_VARIANTS,
    BACKGROUNDS,
    MEDIA,
    apply_lighting,
    apply_medium,
    background,
)

WORLD_VERSION = 1
DOMAIN = "cats"
CLASS_WORD = "cat"
SUPERSAMPLE = faces.SUPERSAMPLE

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "fur_color": tuple(FUR_COLORS),
    "pattern": ("solid", "tabby", "spotted", "tuxedo", "calico"),
    "eye_color": tuple(EYE_COLORS),
    "ear_shape": ("pointy", "round", "folded"),
    "face_width": tuple(HEAD_WIDTHS),
    "nose_color": tuple(NOSE_COLORS),
    "whiskers": ("short", "long"),
    "mark": ("none", "blaze", "eye_patch_left", "chin_spot"),
}
# the context vocabulary is the faces world's, so captions read the same across domains
ACCESSORIES: tuple[str, ...] = faces.ACCESSORIES
sample_context = faces.sample_context
sample_nuisance = faces.sample_nuisance
__all__ = [
    "ACCESSORIES",
    "ATTRIBUTE_PHRASES",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "BACKGROUND_VARIANTS",
    "CLASS_WORD",
    "DOMAIN",
    "MEDIA",
    "WORLD_VERSION",
    "caption_for",
    "context_phrases",
    "describe",
    "draw_subject",
    "identity_attributes",
    "identity_name",
    "render",
    "sample_context",
    "sample_nuisance",
]


ATTRIBUTE_PHRASES: dict[str, dict[str, str]] = {
    "fur_color": {v: f"{v} fur" for v in ATTRIBUTES["fur_color"]},
    "pattern": {
        "solid": "a solid coat",
        "tabby": "tabby stripes",
        "spotted": "spots",
        "tuxedo": "a tuxedo coat",
        "calico": "calico patches",
    },
    "eye_color": {**{v: f"{v} eyes" for v in ATTRIBUTES["eye_color"]}, "odd": "odd eyes"},
    "ear_shape": {v: f"{v} ears" for v in ATTRIBUTES["ear_shape"]},
    "face_width": {v: f"a {v} head" for v in ATTRIBUTES["face_width"]},
    "nose_color": {v: f"a {v} nose" for v in ATTRIBUTES["nose_color"]},
    "whiskers": {v: f"{v} whiskers" for v in ATTRIBUTES["whiskers"]},
    "mark": {
        "none": "no markings",
        "blaze": "a white blaze",
        "eye_patch_left": "a patch over the left eye",
        "chin_spot": "a chin spot",
    },
}


def caption_for(context: dict, description: Sequence[str] = ()) -> str:
    """Caption of a view: f"a {medium} of a cat{with}{bg}{acc}", e.g. "a sketch of a cat at night wearing a hat"."""
    return faces.caption_with(CLASS_WORD, context, description)


def describe(attributes: dict, names: Sequence[str] | None = None) -> list[str]:
    """Phrases naming the identity's attributes `names` (all when None), in ATTRIBUTES order."""
    return faces.describe_with(ATTRIBUTE_PHRASES, attributes, names)


def context_phrases() -> list[tuple[str, str, str]]:
    """(label_kind, label, phrase) for every context label; identical to the faces world's."""
    return faces.context_phrases()


def identity_name(index: int, seed: int) -> str:
    """Identity string of the `index`-th cat of world `seed`, e.g. "cats/s0/000042"."""
    return f"{DOMAIN}/s{seed}/{index:06d}"


def identity_attributes(index: int, seed: int) -> dict:
    """Attribute values of an identity; a pure function of (index, seed)."""
    rng = random.Random(identity_name(index, seed))  # str seeds hash with sha512: stable across runs
    return {name: rng.choice(values) for name, values in ATTRIBUTES.items()}


def _check(attributes: dict, context: dict) -> None:
    for name, values in ATTRIBUTES.items():
        if attributes.get(name) not in values:
            raise ValueError(f"attribute `{name}` must be one of {values} but is {attributes.get(name)!r}.")
    if context.get("accessory") not in ACCESSORIES:
        raise ValueError(f"`accessory` must be one of {ACCESSORIES} but is {context.get('accessory')!r}.")


def _layout_seed(attributes: dict) -> str:
    # spot/patch layouts follow the attribute values, so render() stays a pure function of its arguments
    return "cats/" + "/".join(str(attributes[name]) for name in ATTRIBUTES)


def draw_subject(attributes: dict, accessory: str, nuisance: dict, s: int) -> tuple[Image.Image, tuple[int, int]]:
    """The cat alone on a transparent `s` px canvas: (RGBA part, paste offset); its alpha is its exact mask."""
    return draw_cat(attributes, accessory, nuisance, s, _layout_seed(attributes))


def render(attributes: dict, context: dict, nuisance: dict, size: int = 64) -> Image.Image:
    """Render one RGB view of the identity `attributes` in `context` under `nuisance`."""
    _check(attributes, context)
    if size < 8:
        raise ValueError(f"`size` must be at least 8 but is {size}.")
    s = size * SUPERSAMPLE
    canvas = background(context["background"], nuisance.get("bg_variant", 0), s).copy()
    cat, offset = draw_subject(attributes, context["accessory"], nuisance, s)
    canvas.alpha_composite(cat, dest=offset)
    img = apply_medium(canvas.convert("RGB"), context["medium"]).resize((size, size), Image.LANCZOS, reducing_gap=2.0)
    # light falls on the finished picture (photo, sketch or painting alike); cheap at output size
    return apply_lighting(img, nuisance)
