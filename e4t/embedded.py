"""Where the embedded default's artifacts live: committed under `artifacts/` at the repository root.

`E4T_ARTIFACTS` points elsewhere (a container image copies them to /opt/e4t/artifacts, say).
"""

from __future__ import annotations

import os
from pathlib import Path


def artifacts_root() -> Path:
    return Path(os.environ.get("E4T_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))


def default_paths() -> tuple[Path, list[Path]]:
    """The embedded base folder and its domain packs."""
    root = artifacts_root()
    return root / "base", sorted((root / "packs").glob("*.safetensors"))


def missing_artifacts() -> list[str]:
    """What is absent, in words; empty when the embedded default can be served."""
    base, packs = default_paths()
    missing = []
    if not (base / "model_index.json").is_file():
        missing.append(f"base model at {base}")
    if not packs:
        missing.append(f"domain packs in {base.parent / 'packs'}")
    return missing
