"""Regularized weight offsets on the UNet attention projections, as PEFT LoRA adapters.

The low-rank form keeps a pack's offsets and a concept's tuned delta small, and lets
several concepts' offsets be active together (PEFT sums adapters with weights).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

TUNE = "e4t"  # the adapter that pretraining and tuning train
_SLOT = "slot{}"  # adapters that generation fills with concepts' offsets


@dataclass(frozen=True)
class OffsetConfig:
    rank: int = 4
    # q, k, v and output of both self- and cross-attention
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> OffsetConfig:
        return cls(rank=int(d["rank"]), targets=tuple(d["targets"]))

    def lora_config(self) -> LoraConfig:
        # gaussian init of A with B = 0: the offsets start at exactly zero
        return LoraConfig(
            r=self.rank, lora_alpha=self.rank, target_modules=list(self.targets), init_lora_weights="gaussian"
        )


def ensure_adapter(unet, name: str, config: OffsetConfig) -> None:
    if name not in getattr(unet, "peft_config", {}):
        with warnings.catch_warnings():  # several named adapters on one UNet is the intent here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            unet.add_adapter(config.lora_config(), adapter_name=name)


def offset_parameters(unet, name: str = TUNE) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]


def get_offsets(unet, name: str = TUNE) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed without the adapter name (a portable LoRA state dict)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}


def set_offsets(unet, offsets: Mapping[str, torch.Tensor], name: str = TUNE) -> None:
    result = set_peft_model_state_dict(unet, dict(offsets), adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"offsets do not fit this UNet: unexpected keys {unexpected[:3]}...")


def activate(unet, name: str = TUNE) -> None:
    unet.enable_adapters()
    unet.set_adapters([name], weights=[1.0])


def activate_offsets(unet, config: OffsetConfig, offsets: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Make exactly `offsets` active, averaged: one slot adapter per entry; none -> plain base."""
    if not offsets:
        if getattr(unet, "peft_config", None):
            unet.disable_adapters()
        return
    names = []
    for i, tensors in enumerate(offsets):
        name = _SLOT.format(i)
        ensure_adapter(unet, name, config)
        set_offsets(unet, tensors, name)
        names.append(name)
    unet.enable_adapters()
    unet.set_adapters(names, weights=[1.0 / len(names)] * len(names))


def offsets_penalty(unet, name: str = TUNE) -> torch.Tensor:
    """Mean squared weight change B @ A over the adapted layers: keeps the offsets small."""
    terms = []
    for module in unet.modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            delta = module.lora_B[name].weight @ module.lora_A[name].weight
            terms.append(delta.pow(2).mean())
    return torch.stack(terms).mean()
