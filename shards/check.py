"""Validating a shard set against its manifest (`e4t shards check DIR`)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tqdm import tqdm

from shards.images import open_image
from shards.writer import IMAGE_EXTS, MANIFEST, read_manifest, sha256_file


class ShardCheckError(ValueError):
    """A shard set does not match its manifest; `.problems` lists what is wrong."""

    def __init__(self, directory: str | Path, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"shard set {directory} has {len(problems)} problem(s):\n  {shown}{more}")


def _check_sample(key: str, files: dict[str, bytes]) -> str | None:
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        return f"sample {key!r} has no image ({'/'.join(IMAGE_EXTS)}) but only {sorted(files)}"
    if "json" not in files:
        return f"sample {key!r} has no json"
    try:
        open_image(io.BytesIO(files[ext]))
    except Exception as exn:  # any decode failure is a problem to report
        return f"sample {key!r}: image does not decode ({type(exn).__name__}: {exn})"
    try:
        meta = json.loads(files["json"])
    except ValueError as exn:
        return f"sample {key!r}: json does not parse ({exn})"
    missing = [f for f in ("domain", "caption") if not isinstance(meta, dict) or f not in meta]
    return f"sample {key!r}: json lacks {missing}" if missing else None


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of one shard: {key: {extension: bytes}}."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for member in tf:
            if member.isfile():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return samples


def check_shards(directory: str | Path, *, raise_on_problems: bool = False, progress: bool = True) -> dict:
    """Verify every shard (present, sha256, sample count) and decode every sample.

    Returns a report {"directory", "name", "num_shards", "num_samples", "problems", "ok"};
    with `raise_on_problems`, a `ShardCheckError` listing the problems is raised instead.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    problems: list[str] = []
    seen = 0
    listed = {s["file"] for s in manifest["shards"]}
    for shard in tqdm(manifest["shards"], desc="check", unit="shard", disable=not progress):
        path = directory / shard["file"]
        if not path.is_file():
            problems.append(f"{shard['file']}: listed in {MANIFEST} but missing")
            continue
        if sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['file']}: sha256 differs from {MANIFEST} (modified or truncated)")
        try:
            samples = read_tar(path)
        except (tarfile.TarError, OSError, EOFError) as exn:
            problems.append(f"{shard['file']}: not a readable tar ({type(exn).__name__}: {exn})")
            continue
        if len(samples) != shard["num_samples"]:
            problems.append(f"{shard['file']}: {len(samples)} samples but {MANIFEST} says {shard['num_samples']}")
        seen += len(samples)
        problems += [f"{shard['file']}: {p}" for k, f in samples.items() if (p := _check_sample(k, f))]
    if seen != manifest["num_samples"] and not any("missing" in p for p in problems):
        problems.append(f"{seen} samples in the shards but {MANIFEST} says {manifest['num_samples']}")
    unlisted = sorted(p.name for p in directory.glob(f"{manifest['name']}-*.tar") if p.name not in listed)
    problems += [f"{name}: shard file not listed in {MANIFEST} (left over from another build?)" for name in unlisted]
    report = {
        "directory": str(directory),
        "name": manifest["name"],
        "num_shards": len(manifest["shards"]),
        "num_samples": seen,
        "problems": problems,
        "ok": not problems,
    }
    if problems and raise_on_problems:
        raise ShardCheckError(directory, problems)
    return report
