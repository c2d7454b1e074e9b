"""Building shards from folders of real images (`e4t shards build`): FFHQ, LSUN exports, WikiArt.

Layouts: a flat or nested folder of images (FFHQ, LSUN exported to files), or one direct
sub-folder per class (WikiArt styles). A file that is not a readable image is skipped and
recorded in the manifest with its reason; it never stops the build.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from shards.images import MAX_PIXELS, exif_upright, jpeg_bytes, open_image, resize_center_crop
from shards.writer import ShardSetWriter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# known non-image companions of datasets: skipped without trying to decode them
TEXT_SUFFIXES = (".txt", ".json", ".csv", ".md", ".xml", ".yaml", ".yml", ".py", ".zip", ".tar")
ART_DOMAINS = ("art", "wikiart", "paintings")


def class_word_for(domain: str) -> str:
    """Simple singular of a domain name: faces -> face, cats -> cat, art -> art."""
    if domain.endswith("ies"):
        return domain[:-3] + "y"
    if domain.endswith("s") and not domain.endswith("ss"):
        return domain[:-1]
    return domain


def default_template(domain: str, per_class: bool) -> str:
    """Caption template: placeholders {class_word} and {label} (the class folder, "_" -> " ")."""
    if not per_class:
        return "a photo of a {class_word}"
    if domain in ART_DOMAINS:
        return "a painting in the style of {label}"
    return "a photo of a {label} {class_word}"


def _list_files(src: Path) -> list[Path]:
    files = [
        p for p in src.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(src).as_posix())


def _is_per_class(src: Path, images: list[Path]) -> bool:
    folders = {p.relative_to(src).parts[0] for p in images}
    direct = all(len(p.relative_to(src).parts) == 2 for p in images)
    return bool(images) and direct and len(folders) >= 2


def build_from_folder(
    src: str | Path,
    domain: str,
    size: int,
    out: str | Path,
    *,
    caption_template: str | None = None,
    class_word: str | None = None,
    progress: bool = True,
    maxcount: int = 2000,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """Convert every image under `src` to a `size` x `size` JPEG sample in shards under `out`.

    Each sample's json: {"domain", "caption", "source": path relative to `src`, "label" for
    per-class layouts}. `caption_template` may use {class_word} and {label}; `class_word`
    defaults to the singular of `domain`. Returns the manifest.
    """
    # 1. check inputs
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"`src` must be a folder of images but {src} is not a directory.")
    if not re.fullmatch(r"[A-Za-z0-9_]+", domain or ""):
        raise ValueError(f"`domain` must be a plain name like 'faces' or 'cats' but is {domain!r}.")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"`size` must be an integer >= 8 but is {size!r}.")
    files = _list_files(src)
    candidates = [p for p in files if p.suffix.lower() not in TEXT_SUFFIXES]
    if not candidates:
        raise ValueError(f"`src` must contain image files but {src} has none ({len(files)} other files).")
    # 2. layout and captions
    images = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
    per_class = _is_per_class(src, images)
    word = class_word or class_word_for(domain)
    template = caption_template or default_template(domain, per_class)
    try:
        template.format(class_word=word, label="x")
    except (KeyError, IndexError, ValueError) as exn:
        raise ValueError(
            f"`caption_template` may only use the placeholders {{class_word}} and {{label}} but is {template!r}."
        ) from exn
    if "{label}" in template and not per_class:
        raise ValueError(f"`caption_template` {template!r} uses {{label}} but {src} has no per-class sub-folders.")
    labels: Counter[str] = Counter()
    # 3. convert and write; every failure becomes a manifest entry, not an exception
    with ShardSetWriter(out, domain, created_by="e4t shards build", maxcount=maxcount) as writer:
        for path in files:
            if path.suffix.lower() in TEXT_SUFFIXES:
                writer.skip(path.relative_to(src).as_posix(), f"not an image file ({path.suffix.lower()})")
        for index, path in enumerate(tqdm(candidates, desc=f"build {domain}", unit="img", disable=not progress)):
            rel = path.relative_to(src).as_posix()
            if per_class and len(path.relative_to(src).parts) != 2:
                writer.skip(rel, "not inside a class sub-folder of the per-class layout")
                continue
            try:
                img = resize_center_crop(exif_upright(open_image(path, max_pixels)), size)
                data = jpeg_bytes(img)
            except Exception as exn:  # any unreadable input is skipped with its reason
                writer.skip(rel, f"{type(exn).__name__}: {exn}")
                continue
            label = path.relative_to(src).parts[0].replace("_", " ") if per_class else None
            meta = {"domain": domain, "caption": template.format(class_word=word, label=label), "source": rel}
            if label is not None:
                meta["label"] = label
                labels[label] += 1
            writer.write(f"{domain}_{index:08d}", data, "jpg", meta)
        return writer.close(
            domain=domain,
            src=str(src),
            size=size,
            layout="per_class" if per_class else "flat",
            class_word=word,
            caption_template=template,
            labels=dict(sorted(labels.items())),
        )
