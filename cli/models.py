"""Loading a base and packs for the local commands (`e4t export`, `e4t personalize`).

`--base` defaults to the embedded base; a pack is checked against the base it was trained for.
"""

from __future__ import annotations

from pathlib import Path


def base_dir(path: Path | None) -> Path:
    """`path`, or the embedded base when none is given."""
    if path is not None:
        return path
    from e4t.embedded import default_paths

    base, _ = default_paths()
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(f"no --base given and the embedded base is not built at {base} (`make embedded`)")
    return base


def load(base: Path | None, pack: Path):
    """The base (embedded by default) and one pack trained for it."""
    from e4t import load_base, load_pack

    loaded = load_base(base_dir(base))
    return loaded, load_pack(pack, loaded)


def pack_for(base, pack_hash: str, candidates: list[Path]):
    """The first of `candidates` (pack files) whose hash is `pack_hash`, loaded; None when none is."""
    from e4t.pack import load_pack

    for path in candidates:
        pack = load_pack(path, base)
        if pack.hash == pack_hash:
            return pack
    return None
