"""Domain packs: the pretrained encoder and weight offsets of one domain, in one safetensors file.

The config (domain, class word, base hash, encoder and offset layout, training step, tuning
defaults) rides in the safetensors metadata, so the file alone says what it is.

The encoder's vision tower: a tower trained from scratch (the embedded base's, ~1 M parameters)
is stored in the pack. A pretrained CLIP tower the user has (CLIP ViT-L/14: 303 M parameters,
1.2 GB in float32) that stayed frozen in pretraining is *referred to*: the config records the
folder's absolute path and `e4t.vision.vision_folder_hash` of its config and weight files, and
loading checks that hash (a missing folder is NotFound, a changed one InvalidInput; a moved one
is given with `load_pack(..., vision=NEW_PATH)`). A pretrained tower that was fine-tuned no
longer equals its folder, so its weights are stored, with its architecture in the config and the
folder's hash kept as provenance: such a pack loads without the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from e4t.base import Base
from e4t.encoder import PRETRAINED_RESAMPLE, E4TEncoder, EncoderConfig
from e4t.errors import InvalidInput, NotFound
from e4t.objective import LossWeights
from e4t.offsets import OffsetConfig
from e4t.safetensors_io import read_file, tensors_hash, to_bytes, write_file
from e4t.vision import check_vision_folder, load_vision_folder, vision_folder_hash

FORMAT = "e4t.pack/1"


@dataclass(frozen=True)
class TuneConfig:
    """Inference-time tuning defaults stored with the pack."""

    steps: int = 5
    batch: int = 4
    lr_embedding: float = 3e-3
    lr_offsets: float = 1e-2  # the offsets carry the identity: at 1e-3, 15 steps barely move id_sim (README)
    # what the steps tune besides the offsets: "embedding" (the encoder's guess, directly) or "encoder"
    # (its weights, as the paper does; the embedding is then re-read from the image)
    mode: str = "embedding"
    lr_encoder: float = 1e-4

    def __post_init__(self) -> None:
        if self.mode not in TUNE_MODES:
            raise InvalidInput(f"tuning `mode` must be one of {TUNE_MODES} but is {self.mode!r}")


TUNE_MODES = ("embedding", "encoder")


@dataclass
class DomainPack:
    domain: str
    class_word: str
    encoder: E4TEncoder
    offsets: dict[str, torch.Tensor]
    offset_config: OffsetConfig
    base_hash: str
    step: int = 0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    tune: TuneConfig = field(default_factory=TuneConfig)
    training: dict = field(default_factory=dict)  # how it was made: inputs, config, timings
    hash: str = ""

    def config(self) -> dict:
        return {
            "domain": self.domain,
            "class_word": self.class_word,
            "base_hash": self.base_hash,
            "encoder": self.encoder.stored_config().to_json(),
            "offsets": self.offset_config.to_json(),
            "step": self.step,
            "loss_weights": self.loss_weights.to_json(),
            "tune": vars(self.tune),
            "training": self.training,
        }

    def tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        state = self.encoder.state_dict()
        if self.encoder.refers_to_folder:  # the folder, checked by its hash on loading, holds these
            state = {k: v for k, v in state.items() if not k.startswith("vision.")}
        out = {f"encoder.{k}": v.to(dtype) for k, v in state.items()}
        out.update({f"offsets.{k}": v.to(dtype) for k, v in self.offsets.items()})
        return out

    @classmethod
    def initial(
        cls,
        base: Base,
        domain: str,
        class_word: str,
        *,
        offset_config: OffsetConfig = OffsetConfig(),
        vision: dict | str | Path | None = None,
        freeze_vision: bool = True,
        seed: int = 0,
    ) -> DomainPack:
        """An untrained pack for `base`: a fresh encoder and zero offsets (LoRA B starts at 0).

        `vision`: CLIPVisionConfig arguments of a new tower, or a pretrained CLIPVisionModel folder
        (kept frozen unless `freeze_vision` is False); None: the encoder's default new tower.
        """
        from e4t.offsets import TUNE, ensure_adapter, get_offsets

        torch.manual_seed(seed)
        overrides: dict = {}
        tower = None
        if isinstance(vision, (str, Path)):
            root = check_vision_folder(vision)
            overrides = dict(
                vision=str(root),
                vision_hash=vision_folder_hash(root),
                freeze_vision=freeze_vision,
                resample=PRETRAINED_RESAMPLE,
            )
            tower = load_vision_folder(root)
        elif vision is not None:
            overrides = {"vision": dict(vision)}
        encoder = E4TEncoder(EncoderConfig.for_base(base, **overrides), tower)
        ensure_adapter(base.unet, TUNE, offset_config)
        offsets = get_offsets(base.unet, TUNE)
        base.unet.disable_adapters()
        return cls(domain, class_word, encoder, offsets, offset_config, base.hash)

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> str:
        """Write the pack atomically; returns its hash (over tensors and config)."""
        tensors, config = self.tensors(dtype), self.config()
        self.hash = config["pack_hash"] = tensors_hash(tensors, {k: v for k, v in config.items()})
        write_file(path, to_bytes(tensors, FORMAT, config))
        return self.hash


def load_pack(path: str | Path, base: Base, *, vision: str | Path | None = None) -> DomainPack:
    """Read a pack and check that it was trained for `base`.

    `vision`: where the pretrained vision tower folder the pack refers to lives now, when it moved
    (its hash is checked all the same).
    """
    tensors, config = read_file(path, FORMAT)
    if config["base_hash"] != base.hash:
        raise InvalidInput(
            f"pack {str(path)!r} ({config['domain']}) was trained for base {config['base_hash']}, "
            f"but the loaded base is {base.hash}"
        )
    encoder_config = EncoderConfig.from_json(config["encoder"])
    tower = None
    if isinstance(encoder_config.vision, str):
        folder = Path(vision or encoder_config.vision).expanduser()
        if not folder.is_dir():
            raise NotFound(
                f"pack {str(path)!r} refers to the vision tower folder {str(folder)!r} "
                f"(hash {encoder_config.vision_hash}), which does not exist; "
                "pass its new location with load_pack(..., vision=PATH)"
            )
        tower = load_vision_folder(folder, encoder_config.vision_hash, what=f"pack {str(path)!r}")
        encoder_config = replace(encoder_config, vision=str(folder.resolve()))
    encoder = E4TEncoder(encoder_config, tower)
    prefix = "encoder."
    state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
    result = encoder.load_state_dict(state, strict=False)
    # a referred-to tower's weights come from its folder; anything else missing or extra is a broken pack
    missing = [k for k in result.missing_keys if not (encoder.refers_to_folder and k.startswith("vision."))]
    if missing or result.unexpected_keys:
        raise InvalidInput(
            f"pack {str(path)!r}: encoder weights do not fit its config "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    encoder.eval().requires_grad_(False)
    offsets = {k[len("offsets.") :]: v.float() for k, v in tensors.items() if k.startswith("offsets.")}
    return DomainPack(
        domain=config["domain"],
        class_word=config["class_word"],
        encoder=encoder,
        offsets=offsets,
        offset_config=OffsetConfig.from_json(config["offsets"]),
        base_hash=config["base_hash"],
        step=config["step"],
        loss_weights=LossWeights(**config["loss_weights"]),
        tune=TuneConfig(**config["tune"]),
        training=config.get("training", {}),
        hash=config["pack_hash"],
    )
