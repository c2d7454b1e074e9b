"""The evaluation protocol: held-out subjects, a fixed prompt list per domain, fixed seeds.

It carries DreamBooth's protocol (Ruiz et al. 2023, sec. 4.1) over to the synthetic worlds:
subjects the method never saw (identities of the "heldout" split), prompts that
recontextualize (backgrounds), accessorize and change the medium (sketch / painting), several
images per prompt with the same seeds for every method, so rows differ only by the method.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from types import ModuleType

from PIL import Image

from shards.scenes import coverage_mask
from shards.splits import split_of
from shards.synth import get_domain

# (medium, background, accessory) of the 8 prompts of every synthetic domain; both worlds share one grammar
PROMPT_CONTEXTS: tuple[tuple[str, str, str], ...] = (
    ("photo", "beach", "none"),  # recontextualization
    ("photo", "forest", "none"),
    ("photo", "city", "none"),
    ("photo", "snow", "none"),
    ("photo", "plain", "glasses"),  # accessorization
    ("photo", "night", "hat"),
    ("sketch", "plain", "none"),  # medium change
    ("painting", "plain", "none"),
)
QUICK_PROMPTS = (0, 6)  # --quick: one background, one medium
INPUT_CONTEXT = ("photo", "plain", "none")
# the input image is a frontal, evenly lit render: the "one image" a user would upload
INPUT_NUISANCE = {
    "dx": 0.0,
    "dy": 0.0,
    "scale": 1.0,
    "rotation": 0.0,
    "brightness": 1.0,
    "contrast": 1.0,
    "shade_angle": 0.0,
    "shade_strength": 0.0,
    "bg_variant": 0,
}
MAIN_DOMAIN = "faces"


@dataclass(frozen=True)
class Prompt:
    """One prompt of the protocol; `template` names the subject with "{subject}"."""

    index: int
    medium: str
    background: str
    accessory: str
    template: str  # e.g. "a photo of {subject} on the beach"
    caption: str  # the same with the class word: "a photo of a face on the beach"
    named: dict  # the context labels the prompt names (kind -> label): what the context judge must see
    kind: str  # "recontextualization" | "accessorization" | "medium"

    @property
    def context(self) -> dict[str, str]:
        return {"medium": self.medium, "background": self.background, "accessory": self.accessory}

    def for_concept(self, concept_id: str) -> str:
        return self.template.replace("{subject}", "{" + concept_id + "}")


@dataclass(frozen=True)
class Subject:
    domain: str
    index: int
    identity: str
    attributes: dict


def world(domain: str) -> ModuleType:
    """The renderer of a synthetic domain; evaluation needs one to know the truth of every image."""
    try:
        return get_domain(domain)
    except ValueError as e:
        raise ValueError(f"evaluation needs a synthetic domain with a renderer for held-out subjects: {e}") from None


def prompts(domain: str, quick: bool = False) -> list[Prompt]:
    """The fixed prompt list of `domain` (8 prompts; 2 with `quick`)."""
    mod = world(domain)
    unnamed = {(kind, label) for kind, label, phrase in mod.context_phrases() if not phrase.strip()}
    subject_phrase = f"a {mod.CLASS_WORD}"
    out = []
    for i, (medium, background, accessory) in enumerate(PROMPT_CONTEXTS):
        if quick and i not in QUICK_PROMPTS:
            continue
        context = {"medium": medium, "background": background, "accessory": accessory}
        caption = mod.caption_for(context)
        if subject_phrase not in caption:
            raise ValueError(f"caption {caption!r} of domain {domain!r} was expected to contain {subject_phrase!r}")
        named = {k: v for k, v in context.items() if (k, v) not in unnamed}
        kind = "medium" if medium != "photo" else "accessorization" if accessory != "none" else "recontextualization"
        template = caption.replace(subject_phrase, "{subject}", 1)
        out.append(Prompt(i, medium, background, accessory, template, caption, named, kind))
    return out


def heldout_identities(domain: str, count: int, *, skip: int = 0, seed: int = 0) -> list[Subject]:
    """The first `count` identities of the held-out split (after skipping `skip` of them)."""
    if count < 0 or skip < 0:
        raise ValueError(f"`count` and `skip` must be non-negative but are {count} and {skip}.")
    mod, found, index = world(domain), [], -1
    while len(found) < skip + count:
        index += 1
        name = mod.identity_name(index, seed)
        if split_of(name) == "heldout":
            found.append(Subject(domain, index, name, mod.identity_attributes(index, seed)))
    return found[skip:]


def render(subject: Subject, context: dict[str, str], nuisance: dict, size: int):
    """A render of `subject` in `context`: the truth the generated images are compared with."""
    return world(subject.domain).render(subject.attributes, context, nuisance, size)


def nuisance(tag: str, domain: str) -> dict:
    """A nuisance drawn from a fixed stream named by `tag`: the same tag gives the same nuisance."""
    return world(domain).sample_nuisance(random.Random(f"eval/{tag}"))


def input_image(subject: Subject, size: int):
    return render(
        subject, dict(zip(("medium", "background", "accessory"), INPUT_CONTEXT, strict=True)), INPUT_NUISANCE, size
    )


def input_mask(subject: Subject, size: int):
    """The exact mask (L, 255 = subject) of `input_image(subject, size)`: its renderer's subject layer, not a guess.

    The layer's alpha, pasted where the renderer pastes it on its supersampled canvas, becomes a pixel of the
    subject when a quarter or more of that pixel is covered (`shards.scenes.coverage_mask`, as the scenes of
    `shards.two_subjects`); scene tuners (Break-A-Scene) take it as the single subject's mask.
    """
    mod = world(subject.domain)
    s = size * mod.SUPERSAMPLE
    accessory = INPUT_CONTEXT[2]
    part, offset = mod.draw_subject(subject.attributes, accessory, INPUT_NUISANCE, s)
    layer = Image.new("L", (s, s), 0)
    layer.paste(part.getchannel("A"), offset)
    return coverage_mask(layer, size)


def reference_images(subject: Subject, count: int, size: int) -> list:
    """Other views of the subject (plain photo context, varied nuisance): the reference set of ID similarity."""
    context = dict(zip(("medium", "background", "accessory"), INPUT_CONTEXT, strict=True))
    return [
        render(subject, context, nuisance(f"ref/{subject.identity}/{k}", subject.domain), size) for k in range(count)
    ]


def truth_images(subject: Subject, prompt: Prompt, count: int, size: int) -> list:
    """Renders of `subject` in the prompt's context, one nuisance per image slot."""
    return [
        render(subject, prompt.context, nuisance(f"truth/{subject.identity}/{prompt.index}/{k}", subject.domain), size)
        for k in range(count)
    ]


def generation_seed(prompt: Prompt, seed: int = 0) -> int:
    """Seed of image 0 of a prompt (image k uses seed + k); identical for every method and subject."""
    return seed + 1000 * (prompt.index + 1)


def describe(subjects: list[Subject], prompt_list: list[Prompt]) -> dict:
    return {
        "subjects": [{"identity": s.identity, "index": s.index, "attributes": s.attributes} for s in subjects],
        "prompts": [asdict(p) for p in prompt_list],
    }
