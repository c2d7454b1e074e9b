"""The personalization methods by name, as the API, the CLI, the evaluation and the benchmark call them.

Every tuner takes `e4t.tuner.personalize`'s arguments (base, pack, image, *, steps, seed, mask,
owner, progress, should_stop) and returns a Concept. Scene tuners (Break-A-Scene) take one pack
per mask and a list of masks instead (base, packs, image, masks, *, steps, seed, owner, progress,
should_stop) and return one Concept per mask.
"""

from __future__ import annotations

from collections.abc import Callable

from e4t.break_a_scene import break_a_scene
from e4t.concept import Concept
from e4t.dreambooth import dreambooth
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
