"""The encoder's vision tower taken from a pretrained `transformers.CLIPVisionModel` folder.

The paper's encoder starts from CLIP ViT-L/14 (Gal et al. 2023, sec. 4.1). Users bring that folder
(a `CLIPVisionModel` or a whole `CLIPModel` saved with `save_pretrained`; weights as safetensors).
A pack whose tower stayed frozen refers to the folder by path and by `vision_folder_hash` instead
of copying ~1.2 GB of weights it never changed; loading it checks that hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from e4t.errors import InvalidInput, NotFound

# What CLIPVisionConfig needs to rebuild a tower's architecture (stored when its weights are).
ARCH_KEYS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)
_MODEL_TYPES = {"clip_vision_model", "clip"}  # a whole CLIPModel folder holds the tower too


def check_vision_folder(path: str | Path) -> Path:
    """The folder, resolved to an absolute path; clear errors when it cannot hold a CLIP vision tower."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotFound(f"`vision` folder {str(root)!r} does not exist")
    config = root / "config.json"
    if not config.is_file():
        raise InvalidInput(f"`vision` folder {str(root)!r} should contain config.json but does not")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in _MODEL_TYPES:
        raise InvalidInput(
            f"`vision` folder {str(root)!r} holds a {model_type!r} model; "
            "a CLIPVisionModel or CLIPModel folder (model_type 'clip_vision_model' or 'clip') is needed"
        )
    if not _weight_files(root):
        raise InvalidInput(
            f"`vision` folder {str(root)!r} should contain safetensors weights (model.safetensors) but does not; "
            "write them with save_pretrained(..., safe_serialization=True)"
        )
    return root.resolve()


def vision_folder_hash(path: str | Path) -> str:
    """sha256 over config.json and the safetensors weight files (names and bytes, sorted).

    Other files (README, preprocessor config, .bin copies) do not change it.
    """
    root = check_vision_folder(path)
    index = root / "model.safetensors.index.json"
    files = [root / "config.json", *([index] if index.is_file() else []), *_weight_files(root)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_vision_folder(path: str | Path, expected_hash: str = "", *, what: str = "") -> CLIPVisionModel:
    """The folder's tower in float32; with `expected_hash`, refuse a folder whose files changed.

    `what` names the referring object (a pack) in the error.
    """
    root = check_vision_folder(path)
    if expected_hash:
        actual = vision_folder_hash(root)
        if actual != expected_hash:
            raise InvalidInput(
                f"{what or 'the encoder'} was made with the vision tower in {str(root)!r} at hash {expected_hash}, "
                f"but that folder's config and weights now hash to {actual}; point at the original tower"
            )
    # dtype: towers are often saved in float16; the encoder computes in float32 like the rest
    return CLIPVisionModel.from_pretrained(root, local_files_only=True, use_safetensors=True, dtype=torch.float32)


def architecture(tower: CLIPVisionModel) -> dict:
    """The tower's CLIPVisionConfig arguments, enough to rebuild it around stored weights."""
    return {k: getattr(tower.config, k) for k in ARCH_KEYS}


def build_tower(config: dict) -> CLIPVisionModel:
    """A tower from CLIPVisionConfig arguments, randomly initialised (trained from scratch or loaded over)."""
    return CLIPVisionModel(CLIPVisionConfig(**config))


def _weight_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))
