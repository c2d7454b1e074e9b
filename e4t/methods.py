"""The personalization methods by name, as the API, the CLI, the evaluation and the benchmark call them.

Every tuner takes `e4t.tuner.personalize`'s arguments (base, pack, image, *, steps, seed, mask,
owner, progress, should_stop) and returns a Concept. Scene tuners (Break-A-Scene) take one pack
per mask and a list of masks instead (base, packs, image, masks, *, steps, seed, owner, progress,
should_stop) and return one Concept per mask; `tune_one` runs either kind on one subject.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from e4t.break_a_scene import break_a_scene
from e4t.concept import Concept
from e4t.dreambooth import dreambooth
from e4t.errors import InvalidInput
from e4t.pack import DomainPack
from e4t.textual_inversion import textual_inversion
from e4t.tuner import personalize
from e4t.two_stage import two_stage

TUNERS: dict[str, Callable[..., Concept]] = {
    "e4t": personalize,
    "textual_inversion": textual_inversion,
    "dreambooth": dreambooth,
    "two_stage": two_stage,
}
SCENE_TUNERS: dict[str, Callable[..., list[Concept]]] = {"break_a_scene": break_a_scene}
METHODS: tuple[str, ...] = tuple(TUNERS) + tuple(SCENE_TUNERS)  # the default first


def tune_one(
    method: str, base, pack: DomainPack, image: Image.Image, *, subject_mask: Image.Image | None = None, **kwargs
) -> Concept:
    """One concept of the single subject of `image` by any method, as the evaluation and the benchmark run them.

    A scene tuner gets `[pack]`, `image`, `[subject_mask]` (the subject's exact mask, required) and gives its one
    concept; a single-subject tuner gets the whole image and ignores `subject_mask`. `kwargs` go to the tuner.
    """
    if method in SCENE_TUNERS:
        if subject_mask is None:
            raise InvalidInput(f"{method} learns a concept from a masked subject: it needs `subject_mask`")
        (concept,) = SCENE_TUNERS[method](base, [pack], image, [subject_mask], **kwargs)
        return concept
    if method not in TUNERS:
        raise InvalidInput(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    return TUNERS[method](base, pack, image, **kwargs)
