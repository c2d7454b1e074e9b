"""The synthetic face world (WORLD_VERSION 1): procedurally drawn cartoon faces.

An identity is a fixed set of attribute values (face shape, skin, eyes, hair, mouth, nose,
mark), drawn deterministically from its index and seed. Each view varies the nuisance
(position, scale, rotation, light) and the context that prompts name (background, medium,
accessory). Faces are drawn at 4x supersampling with big, high-contrast features so that
identities stay distinguishable at 64 px.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image

from shards.face_drawing import EYE_COLORS, HAIR_COLORS, SKIN_TONES, draw_face
from shards.scenes import (
    BACKGROUND_VARIANTS,
    BACKGROUNDS,
    MEDIA,
    apply_lighting,
    apply_medium,
    background,
    background_phrase,
)

WORLD_VERSION = 1
DOMAIN = "faces"
CLASS_WORD = "face"
SUPERSAMPLE = 4

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "face_shape": ("round", "oval", "square", "long", "heart"),
    "skin_tone": tuple(SKIN_TONES),
    "eye_color": tuple(EYE_COLORS),
    "eye_spacing": ("narrow", "medium", "wide"),
    "hair_color": tuple(HAIR_COLORS),
    "hair_style": ("bald", "short", "long", "bun", "mohawk", "curly"),
    "mouth": ("smile", "neutral", "open", "frown"),
    "nose": ("small", "round", "long"),
    "mark": ("none", "mole_left", "freckles", "scar_right", "beauty_mark"),
}
ACCESSORIES: tuple[str, ...] = ("none", "glasses", "hat", "earrings")
_ACC_PHRASES = {
    "none": "",
    "glasses": " wearing glasses",
    "hat": " wearing a hat",
    "earrings": " wearing earrings",
}

# How captions name each attribute value in words: the base learns identities from these phrases.
ATTRIBUTE_PHRASES: dict[str, dict[str, str]] = {
    "face_shape": {v: f"a {v} face" for v in ATTRIBUTES["face_shape"]},
    "skin_tone": {v: f"{v} skin" for v in ATTRIBUTES["skin_tone"]},
    "eye_color": {v: f"{v} eyes" for v in ATTRIBUTES["eye_color"]},
    "eye_spacing": {"narrow": "close-set eyes", "medium": "evenly set eyes", "wide": "wide-set eyes"},
    "hair_color": {v: f"{v} hair" for v in ATTRIBUTES["hair_color"]},
    "hair_style": {
        "bald": "a bald head",
        "short": "short hair",
        "long": "long hair",
        "bun": "a hair bun",
        "mohawk": "a mohawk",
        "curly": "curly hair",
    },
    "mouth": {"smile": "a smile", "neutral": "a straight mouth", "open": "an open mouth", "frown": "a frown"},
    "nose": {v: f"a {v} nose" for v in ATTRIBUTES["nose"]},
    "mark": {
        "none": "a clear complexion",
        "mole_left": "a mole on the left cheek",
        "freckles": "freckles",
        "scar_right": "a scar on the right cheek",
        "beauty_mark": "a beauty mark",
    },
}


def caption_for(context: dict, description: Sequence[str] = ()) -> str:
    """Caption of a view: f"a {medium} of a face{with}{bg}{acc}", e.g. "a sketch of a face at night"."""
    return caption_with(CLASS_WORD, context, description)


def caption_with(class_word: str, context: dict, description: Sequence[str] = ()) -> str:
    """The caption grammar every synthetic domain shares: f"a {medium} of a {class_word}{with}{bg}{acc}".

    `description`: attribute phrases, e.g. ("a round face", "green eyes") gives
    "a photo of a face with a round face and green eyes, on the beach".
    """
    medium, acc = context["medium"], context["accessory"]
    if medium not in MEDIA:
        raise ValueError(f"`medium` must be one of {MEDIA} but is {medium!r}.")
    if acc not in _ACC_PHRASES:
        raise ValueError(f"`accessory` must be one of {ACCESSORIES} but is {acc!r}.")
    suffix = f"{background_phrase(context['background'])}{_ACC_PHRASES[acc]}"
    subject = f"a {medium} of a {class_word}"
    if description:
        listed = ", ".join(description[:-1]) + " and " + description[-1] if len(description) > 1 else description[0]
        subject += f" with {listed}" + ("," if suffix else "")
    return subject + suffix


def describe(attributes: dict, names: Sequence[str] | None = None) -> list[str]:
    """Phrases naming the identity's attributes `names` (all when None), in ATTRIBUTES order."""
    if attributes.get("hair_style") == "bald":  # a bald head shows no hair colour: naming one would be noise
        names = [n for n in (names if names is not None else ATTRIBUTES) if n != "hair_color"]
    return describe_with(ATTRIBUTE_PHRASES, attributes, names)


def describe_with(phrases: dict[str, dict[str, str]], attributes: dict, names: Sequence[str] | None) -> list[str]:
    chosen = list(phrases) if names is None else [n for n in phrases if n in names]
    return [phrases[n][attributes[n]] for n in chosen]


def context_phrases() -> list[tuple[str, str, str]]:
    """(label_kind, label, phrase) for every context label; phrase is what the caption adds."""
    out = [("background", b, background_phrase(b)) for b in BACKGROUNDS]
    out += [("medium", m, f"a {m} of") for m in MEDIA]
    out += [("accessory", a, _ACC_PHRASES[a]) for a in ACCESSORIES]
    return out


def identity_name(index: int, seed: int) -> str:
    """Identity string of the `index`-th face of world `seed`, e.g. "faces/s0/000042"."""
    return f"{DOMAIN}/s{seed}/{index:06d}"


def identity_attributes(index: int, seed: int) -> dict:
    """Attribute values of an identity; a pure function of (index, seed)."""
    rng = random.Random(identity_name(index, seed))  # str seeds hash with sha512: stable across runs
    return {name: rng.choice(values) for name, values in ATTRIBUTES.items()}


def sample_context(rng: random.Random) -> dict:
    """Context of one view: photo ~50%, plain background ~25%, no accessory ~50%, rest uniform."""
    medium = "photo" if rng.random() < 0.5 else rng.choice(MEDIA[1:])
    bg = "plain" if rng.random() < 0.25 else rng.choice(BACKGROUNDS[1:])
    acc = "none" if rng.random() < 0.5 else rng.choice(ACCESSORIES[1:])
    return {"background": bg, "medium": medium, "accessory": acc}


def sample_nuisance(rng: random.Random) -> dict:
    """Nuisance of one view; offsets are fractions of the image so they hold at any size."""
    return {
        "dx": round(rng.uniform(-0.05, 0.05), 4),
        "dy": round(rng.uniform(-0.04, 0.04), 4),
        "scale": round(rng.uniform(0.9, 1.1), 4),
        "rotation": round(rng.uniform(-10.0, 10.0), 3),
        "brightness": round(rng.uniform(0.85, 1.15), 4),
        "contrast": round(rng.uniform(0.85, 1.15), 4),
        "shade_angle": round(rng.uniform(0.0, 360.0), 2),
        "shade_strength": round(rng.uniform(0.0, 0.3), 4),
        "bg_variant": rng.randrange(BACKGROUND_VARIANTS),
    }


def _check(attributes: dict, context: dict) -> None:
    for name, values in ATTRIBUTES.items():
        if attributes.get(name) not in values:
            raise ValueError(f"attribute `{name}` must be one of {values} but is {attributes.get(name)!r}.")
    if context.get("accessory") not in ACCESSORIES:
        raise ValueError(f"`accessory` must be one of {ACCESSORIES} but is {context.get('accessory')!r}.")


def draw_subject(attributes: dict, accessory: str, nuisance: dict, s: int) -> tuple[Image.Image, tuple[int, int]]:
    """The face alone on a transparent `s` px canvas: (RGBA part, paste offset); its alpha is its exact mask."""
    return draw_face(attributes, accessory, nuisance, s)


def render(attributes: dict, context: dict, nuisance: dict, size: int = 64) -> Image.Image:
    """Render one RGB view of the identity `attributes` in `context` under `nuisance`."""
    _check(attributes, context)
    if size < 8:
        raise ValueError(f"`size` must be at least 8 but is {size}.")
    s = size * SUPERSAMPLE
    canvas = background(context["background"], nuisance.get("bg_variant", 0), s).copy()
    face, offset = draw_subject(attributes, context["accessory"], nuisance, s)
    canvas.alpha_composite(face, dest=offset)
    img = apply_medium(canvas.convert("RGB"), context["medium"]).resize((size, size), Image.LANCZOS, reducing_gap=2.0)
    # light falls on the finished picture (photo, sketch or painting alike); cheap at output size
    return apply_lighting(img, nuisance)
