"""safetensors files whose metadata carries their own JSON config (as k-diffusion does)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from e4t.errors import InvalidInput


def tensors_hash(tensors: dict[str, torch.Tensor], config: dict) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def to_bytes(tensors: dict[str, torch.Tensor], fmt: str, config: dict) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(tensors, metadata={"format": fmt, "config": json.dumps(config, sort_keys=True)})


def from_bytes(data: bytes, fmt: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of safetensors bytes; InvalidInput unless it is a valid file of `fmt`."""
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as exc:  # safetensors raises several types for corrupt input
        raise InvalidInput(f"{what} is not a valid safetensors file: {exc}") from exc
    return tensors, _check_metadata(metadata, fmt, what)


def read_file(path: str | Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        from e4t.errors import NotFound

        raise NotFound(f"{str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise InvalidInput(f"{str(path)!r} is not a valid safetensors file: {exc}") from exc
    return tensors, _check_metadata(metadata, fmt, repr(str(path)))


def write_file(path: str | Path, data: bytes) -> None:
    """Atomic, durable write: a reader or a crash sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_metadata(metadata: dict, fmt: str, what: str) -> dict:
    if metadata.get("format") != fmt:
        raise InvalidInput(f"{what} is not an {fmt} file (its format is {metadata.get('format')!r})")
    return json.loads(metadata["config"])
