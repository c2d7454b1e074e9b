"""Writing a set of WebDataset shards plus the `manifest.json` that describes them.

The manifest is written last, through a temp file and `os.replace`, and any previous manifest
is removed before the first shard is touched: a build that crashes half way leaves no manifest,
so nothing downstream ever trusts partial tars.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import webdataset as wds

MANIFEST = "manifest.json"
IMAGE_EXTS = ("png", "jpg")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_json(meta: dict) -> bytes:
    """Canonical JSON bytes (sorted keys) so equal metadata gives equal shards."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_manifest(out: str | Path, manifest: dict) -> Path:
    """Atomically write `manifest` as `out/manifest.json`."""
    path = Path(out) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | Path) -> dict:
    """Load `directory/manifest.json`, with a clear error if the directory is not a shard set."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"expected a shard directory with {MANIFEST} but {path} does not exist "
            "(build it with `e4t shards synth` or `e4t shards build`; an interrupted build leaves no manifest)."
        )
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    for field in ("name", "domain", "num_samples", "shards"):
        if field not in manifest:
            raise ValueError(f"{path} must have the field {field!r} but has only {sorted(manifest)}.")
    return manifest


class ShardSetWriter:
    """Writes samples into `out/{name}-%06d.tar` and, on `close`, the manifest.

    Use as a context manager: on an exception the open shard is closed and no manifest is written.
    """

    def __init__(
        self,
        out: str | Path,
        name: str,
        *,
        created_by: str,
        maxcount: int = 2000,
        maxsize: float = 1e9,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            raise ValueError(f"shard set `name` must match [A-Za-z0-9_.]+ but is {name!r}.")
        if maxcount < 1:
            raise ValueError(f"`maxcount` must be at least 1 but is {maxcount}.")
        self.out, self.name, self.created_by = Path(out), name, created_by
        self.maxcount, self.maxsize = maxcount, maxsize
        self.out.mkdir(parents=True, exist_ok=True)
        # 1. forget the previous build before touching any of its shards
        (self.out / MANIFEST).unlink(missing_ok=True)
        stale = re.compile(rf"{re.escape(name)}-\d{{6}}\.tar")
        for p in self.out.iterdir():
            if stale.fullmatch(p.name):
                p.unlink()
        self.shards: list[dict] = []
        self.skipped: list[dict] = []
        self.num_samples = 0
        self._keys: set[str] = set()
        self._in_shard = 0
        self._sink: wds.ShardWriter | None = None

    def _finished_shard(self, fname: str) -> None:
        self.shards.append(
            {
                "file": os.path.basename(fname),
                "num_samples": self._in_shard,
                "sha256": sha256_file(fname),
            }
        )
        self._in_shard = 0

    def write(self, key: str, image: bytes, ext: str, meta: dict) -> None:
        """Add one sample: `image` holds encoded bytes of type `ext` ("png" or "jpg")."""
        if ext not in IMAGE_EXTS:
            raise ValueError(f"image `ext` must be one of {IMAGE_EXTS} but is {ext!r}.")
        if "." in key or not key or key in self._keys:
            raise ValueError(f"sample keys must be unique, non-empty and free of dots but got {key!r}.")
        if self._sink is None:
            # mtime=0: no timestamps in the tars, so the same inputs give the same bytes
            self._sink = wds.ShardWriter(
                str(self.out / f"{self.name}-%06d.tar"),
                maxcount=self.maxcount,
                maxsize=self.maxsize,
                post=self._finished_shard,
                verbose=0,
                mtime=0,
            )
        self._keys.add(key)
        self._sink.write({"__key__": key, ext: image, "json": encode_json(meta)})
        self._in_shard += 1
        self.num_samples += 1

    def skip(self, path: str, reason: str) -> None:
        """Record an input that did not become a sample, and why."""
        self.skipped.append({"path": path, "reason": reason})

    def close(self, **fields: object) -> dict:
        """Finish the last shard and write the manifest (extra `fields` are added to it)."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        manifest = {
            "name": self.name,
            "domain": fields.pop("domain", None),
            "created_by": self.created_by,
            **fields,
            "num_samples": self.num_samples,
            "shards": self.shards,
            "skipped": self.skipped,
            "num_skipped": len(self.skipped),
        }
        write_manifest(self.out, manifest)
        return manifest

    def abort(self) -> None:
        """Close the open shard without writing a manifest."""
        if self._sink is not None and self._sink.tarstream is not None:
            self._sink.tarstream.close()
        self._sink = None

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
