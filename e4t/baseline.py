"""What the slow baseline methods (Textual Inversion, DreamBooth) share: input checks, the plain
UNet, and one training loop with progress, cancellation and snapshots.

Snapshots let a benchmark take concepts at several step counts of ONE long run (say 100, 400 and
800 steps) instead of restarting it for each count: `on_snapshot(step, concept)` is called right
after each requested step (0: before the first step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from e4t.base import Base
from e4t.concept import Concept
from e4t.errors import Cancelled, InvalidInput
from e4t.pack import DomainPack

ProgressFn = Callable[[int, int, float], None]
SnapshotFn = Callable[[int, Concept], None]


def check_run(
    method: str,
    base: Base,
    pack: DomainPack,
    steps: int,
    max_steps: int,
    snapshots: Sequence[int],
    on_snapshot: SnapshotFn | None,
) -> frozenset[int]:
    """Raises InvalidInput for a step count, snapshot list or pack the run cannot take; returns the snapshot steps."""
    if not 0 <= steps <= max_steps:
        raise InvalidInput(f"{method}: `steps` must be between 0 and {max_steps}, got {steps}")
    if pack.base_hash != base.hash:
        raise InvalidInput(f"pack {pack.domain} was trained for base {pack.base_hash}, not {base.hash}")
    outside = sorted(s for s in snapshots if not 0 <= s <= steps)
    if outside:
        raise InvalidInput(f"{method}: `snapshots` must be steps between 0 and {steps}, got {outside}")
    if snapshots and on_snapshot is None:
        raise InvalidInput(f"{method}: `snapshots` were asked for without an `on_snapshot` callback")
    return frozenset(snapshots)


def plain_unet(unet) -> None:
    """No weight offsets active: the base UNet exactly as it was trained."""
    if getattr(unet, "peft_config", None):
        unet.disable_adapters()


def run_steps(
    method: str,
    steps: int,
    step: Callable[[], float],
    concept_at: Callable[[int], Concept],
    *,
    snapshots: frozenset[int],
    on_snapshot: SnapshotFn | None,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Runs `step()` (one optimizer step, returns its loss) `steps` times, reporting as E4T's tuner does."""
    if 0 in snapshots and on_snapshot is not None:
        on_snapshot(0, concept_at(0))
    for i in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"{method} was cancelled")
        loss = step()
        if progress is not None:
            progress(i, steps, loss)
        if i in snapshots and on_snapshot is not None:
            on_snapshot(i, concept_at(i))
