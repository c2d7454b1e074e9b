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
import re
import shutil
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


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
    """State of every global RNG a training step may draw from (python, numpy, torch, and the
    current CUDA device's, where the step's noise is drawn when it runs there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNGs captured by `capture_rng`."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state should have keys python, numpy and torch but lacks {sorted(missing)}.")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


_TAG = re.compile(r"step(\d+)")


def checkpoint_tags(work: str | Path) -> list[str]:
    """DeepSpeed checkpoint tags (`step<N>` folders) in `work`, oldest first."""
    work = Path(work)
    if not work.is_dir():
        return []
    found = [(int(m.group(1)), d.name) for d in work.iterdir() if d.is_dir() and (m := _TAG.fullmatch(d.name))]
    return [name for _, name in sorted(found)]


def prune_checkpoints(work: str | Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` tags; returns the deleted ones.

    Call after a save has succeeded on every rank: the newest tag is the one `latest` names,
    so a kill at any point leaves a complete checkpoint behind.
    """
    if keep < 1:
        raise ValueError(f"`keep` must be at least 1 but is {keep}.")
    old = checkpoint_tags(work)[:-keep]
    for tag in old:
        shutil.rmtree(Path(work) / tag)
    return old


class LossLog:
    """Per-step figures of a run as JSON lines (WORK/loss.jsonl), flushed every step.

    A resumed run first drops the lines past its checkpoint (the killed run got further than
    what it saved), so that the file reads as one uninterrupted run.
    """

    def __init__(self, path: str | Path, resume_step: int) -> None:
        self.path = Path(path)
        kept = [line for line in read_loss_log(self.path) if line["step"] <= resume_step] if resume_step else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        for line in kept:
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def write(self, **figures: Any) -> None:
        self._file.write(json.dumps(figures) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_loss_log(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a `LossLog`; a last line cut by a kill is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    return lines


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keyed_fields(obj: Any, later: Collection[str], prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
    """The dataclass `obj`'s fields whose names start with `prefixes`, for a stage key or record.

    Fields named in `later` were added after stages were committed: they appear only when they differ
    from their defaults, so those stages' keys still hold.
    """
    return {
        f.name: getattr(obj, f.name)
        for f in fields(obj)
        if f.name.startswith(prefixes) and (f.name not in later or getattr(obj, f.name) != f.default)
    }


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


# A stage store is a committed folder of finished stages (`<store>/<stage>/`), so that a build
# interrupted on one machine resumes on a fresh clone from its last finished stage. Weights are kept
# in half precision there (small, as committed artifacts are) and widened again when fetched.


def store_stage(stage_dir: str | Path, store: str | Path) -> Path:
    """Copy a finished stage into `store`: without checkpoints, float weights halved, the stamp last."""
    stage_dir = Path(stage_dir)
    if read_stamp(stage_dir) is None:
        raise ValueError(f"{stage_dir} is not a finished stage (no stage.json)")
    dst = Path(store) / stage_dir.name
    _copy_stage(stage_dir, dst, torch.float32, torch.float16, ignore=("*.pt", ".*"))
    return dst


def fetch_stage(store: str | Path, stage_dir: str | Path, key: str) -> bool:
    """Copy the stage finished with `key` from `store` into `stage_dir`; False when the store has none."""
    src = Path(store) / Path(stage_dir).name
    if not stage_done(src, key):
        return False
    _copy_stage(src, Path(stage_dir), torch.float16, torch.float32)
    return True


def _copy_stage(src: Path, dst: Path, cast_from: torch.dtype, cast_to: torch.dtype, ignore: tuple = ()) -> None:
    """Replace `dst` by a copy of the stage `src` with its `cast_from` weights cast; the stamp is copied last."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("stage.json", *ignore))
    _cast_safetensors(tmp, cast_from, cast_to)
    shutil.copy2(src / "stage.json", tmp / "stage.json")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _cast_safetensors(folder: Path, src: torch.dtype, dst: torch.dtype) -> None:
    for path in folder.rglob("*.safetensors"):
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
        tensors = {k: v.to(dst) if v.dtype == src else v for k, v in load_file(path).items()}
        save_file(tensors, path, metadata=metadata)
