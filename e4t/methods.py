"""The personalization methods by name, as the API, the CLI, the evaluation and the benchmark call them.

Every tuner takes `e4t.tuner.personalize`'s arguments (base, pack, image, *, steps, seed, mask,
owner, progress, should_stop) and returns a Concept.
"""

from __future__ import annotations

from collections.abc import Callable

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
METHODS: tuple[str, ...] = tuple(TUNERS)  # the default first
