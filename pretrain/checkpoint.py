"""Checkpoints and stage stamps for the project's own training jobs.

A checkpoint is one self-describing dict (models, optimizer, scheduler, step, config, rng),
written atomically so that a job killed mid-write leaves the previous checkpoint intact.
A stamp (`stage.json`) records the hash of a stage's inputs and config once the stage has
finished, so a rerun with the same inputs skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a temp file beside it, fsynced, then `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """Read a checkpoint written by `save_checkpoint`, or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    # Our own resume files hold numpy RNG state and optimizer internals: trusted pickles.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise TypeError(f"Checkpoint {path} should hold a dict but holds a {type(state).__name__}.")
    return state


def capture_rng() -> dict[str, Any]:
    """State of every global RNG a training step may draw from (python, numpy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNGs captured by `capture_rng`."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state should have keys python, numpy and torch but lacks {sorted(missing)}.")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_hash(obj: Any) -> str:
    """Stable sha256 of a JSON-able object (keys sorted), used to key stage stamps."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_stamp(stage_dir: str | Path) -> dict[str, Any] | None:
    path = Path(stage_dir) / "stage.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def stage_done(stage_dir: str | Path, key: str) -> bool:
    """True when the stage in `stage_dir` finished with exactly the inputs and config hashed in `key`."""
    stamp = read_stamp(stage_dir)
    return stamp is not None and stamp.get("key") == key


def write_stamp(stage_dir: str | Path, key: str, info: dict[str, Any]) -> None:
    """Mark a stage finished; written last and atomically, so a kill never leaves a false stamp."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / ".stage.json.tmp"
    tmp.write_text(json.dumps({"key": key, **info}, indent=2, default=str))
    os.replace(tmp, stage_dir / "stage.json")


def clear_stamp(stage_dir: str | Path) -> None:
    (Path(stage_dir) / "stage.json").unlink(missing_ok=True)
