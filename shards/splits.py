"""Identity splits: every identity belongs to exactly one split, fixed by a hash of its name.

A stable hash (not Python's salted `hash`) keeps the assignment identical across processes,
machines and rebuilds, so an identity held out today is held out in every later build.
"""

from __future__ import annotations

import hashlib

SPLITS: tuple[str, ...] = ("base", "pretrain", "evaluator", "heldout", "demo")
# cumulative per-mille bounds: 40% / 35% / 12% / 10% / 3%
_BOUNDS = (400, 750, 870, 970, 1000)


def split_of(identity: str) -> str:
    """Split of an identity string such as "faces/s0/000042"."""
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"`identity` must be a non-empty string but is {identity!r}.")
    bucket = int.from_bytes(hashlib.sha256(identity.encode("utf-8")).digest()[:8], "big") % 1000
    return next(name for name, bound in zip(SPLITS, _BOUNDS, strict=True) if bucket < bound)


def check_splits(splits: object) -> tuple[str, ...]:
    """Validate a user-given collection of split names and return it as a tuple."""
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    names = tuple(splits)  # type: ignore[arg-type]
    unknown = [s for s in names if s not in SPLITS]
    if unknown or not names:
        raise ValueError(f"`splits` must be a non-empty subset of {SPLITS} but is {list(names)}.")
    return names
