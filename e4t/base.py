"""Loading a base model: any Stable Diffusion 1.x / 2.x diffusers folder, the embedded one included."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from e4t.errors import InvalidInput, NotFound

_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Stable Diffusion's customary classifier-free guidance scale: what a folder draws at unless it records its own
SD_GUIDANCE = 7.5


@dataclass
class Base:
    """A frozen text-to-image base. Its modules are shared by every request and never mutated,
    except for the LoRA adapters that `e4t.offsets` manages on the UNet."""

    pipe: StableDiffusionPipeline
    path: Path
    hash: str
    default_guidance: float = SD_GUIDANCE  # the guidance scale generation uses when a caller names none

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device


def folder_hash(path: str | Path, components: tuple[str, ...] | None = None) -> str:
    """sha256 over model_index.json and the files of each pipeline component (names and bytes, sorted).

    Anything else in the folder (training notes, samples, work files) does not change the hash, nor
    does where the folder lives: so that a clone anywhere fetches the stages and packs keyed by it.
    `components` restricts it to those components (say, the text side alone).
    """
    root = Path(path)
    index = json.loads((root / "model_index.json").read_text())
    files = [root / "model_index.json"]
    names = [k for k in index if not k.startswith("_") and (root / k).is_dir()]
    for component in sorted(k for k in names if components is None or k in components):
        files += sorted(p for p in (root / component).rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        # diffusers records in a saved config the absolute path it loaded the model from: not content.
        # Configs without it count by their bytes, so their hashes are what they always were.
        config = json.loads(f.read_text()) if f.name == "config.json" else {}
        if "_name_or_path" in config:
            del config["_name_or_path"]
            h.update(json.dumps(config, sort_keys=True).encode())
            continue
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_base(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Base:
    """Load a Stable Diffusion diffusers folder (model_index.json, unet, vae, text_encoder, tokenizer, scheduler).

    Weights are read from the folder only (never from a hub) and must be safetensors.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"base model folder {str(root)!r} does not exist")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise InvalidInput(f"{str(root)!r} is not a diffusers pipeline folder: model_index.json is missing")
    index = json.loads(index_file.read_text())
    missing = [c for c in _COMPONENTS if c not in index or not (root / c).is_dir()]
    if missing:
        raise InvalidInput(f"{str(root)!r} is not a Stable Diffusion folder: missing component(s) {', '.join(missing)}")
    if index.get("_class_name") not in {"StableDiffusionPipeline", None}:
        raise InvalidInput(
            f"{str(root)!r} holds a {index.get('_class_name')}; "
            "only StableDiffusionPipeline (SD 1.x / 2.x) is supported"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        root,
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    return Base(pipe=pipe, path=root, hash=folder_hash(root), default_guidance=recorded_guidance(root))


def recorded_guidance(root: Path) -> float:
    """The guidance scale a folder's `embedded.json` records under "sampling" (the embedded base's, chosen by
    `bench/guidance.py`); Stable Diffusion's 7.5 for a folder without one."""
    record = root / "embedded.json"
    if not record.is_file():
        return SD_GUIDANCE
    guidance = json.loads(record.read_text()).get("sampling", {}).get("guidance", SD_GUIDANCE)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 30:
        raise InvalidInput(f"{str(record)!r} records sampling guidance {guidance!r}; expected a number in 0..30")
    return float(guidance)
