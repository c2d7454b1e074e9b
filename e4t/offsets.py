"""Regularized weight offsets on the UNet attention projections, as PEFT LoRA adapters.

The low-rank form keeps a pack's offsets and a concept's tuned delta small, and lets
several concepts' offsets be active together (PEFT sums adapters with weights).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


def activate_offsets(
    unet,
    config: OffsetConfig,
    offsets: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
) -> None:
    """Make exactly `offsets` active, weighted by `weights` (default: averaged).

    One slot adapter per entry; no entries -> the plain base.
    """
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
    if weights is None:
        weights = [1.0 / len(names)] * len(names)
    elif len(weights) != len(names):
        raise ValueError(f"expected one weight per offsets entry but got {len(weights)} for {len(names)}")
    unet.enable_adapters()
    unet.set_adapters(names, weights=list(weights))


def offsets_penalty(unet, name: str = TUNE) -> torch.Tensor:
    """Mean squared weight change B @ A over the adapted layers: keeps the offsets small."""
    terms = []
    for module in unet.modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            delta = module.lora_B[name].weight @ module.lora_A[name].weight
            terms.append(delta.pow(2).mean())
    return torch.stack(terms).mean()


# ---- per-sample offsets: one UNet batch whose samples carry different concepts' offsets


def _module_factors(offsets: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A [r, in], B [out, r])} from a portable LoRA state dict."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in offsets.items():
        if key.endswith(".lora_A.weight"):
            path = key[: -len(".lora_A.weight")]
            factors[path] = (a, offsets[f"{path}.lora_B.weight"])
    return factors


@contextmanager
def per_sample_offsets(
    unet,
    samples: Sequence[Sequence[tuple[Mapping[str, torch.Tensor], float]]],
    scale: float = 1.0,
) -> Iterator[None]:
    """While active, sample b of every UNet call gets the weight offset sum_i w_bi * B_bi @ A_bi.

    `samples[b]` lists (offsets, weight) pairs, empty for the plain base: the same sums that
    `activate_offsets` makes for one prompt, but a different one per sample, so one batch can
    serve many concepts without a copy of the UNet or a swap of adapters. Each sample's
    factors are concatenated along the rank (padded with zeros to the batch's largest), and
    every adapted layer adds bmm(bmm(x, A^T), B^T) to its output. A call whose batch is a
    multiple of len(samples) (classifier-free guidance: unconditional then conditional
    halves) repeats the samples in that order. `scale` is PEFT's lora_alpha / r.
    """
    modules = dict(unet.named_modules())
    per_sample = [[(_module_factors(offsets), weight) for offsets, weight in concepts] for concepts in samples]
    paths = sorted({p for concepts in per_sample for factors, _ in concepts for p in factors})
    stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in paths:
        if path not in modules:
            raise ValueError(f"offsets name a layer the UNet does not have: {path}")
        rows = []
        for concepts in per_sample:
            parts = [(f[path][0], f[path][1] * (weight * scale)) for f, weight in concepts if path in f]
            rows.append(parts)
        layer = modules[path]
        base_layer = getattr(layer, "base_layer", layer)
        n_in, n_out = base_layer.in_features, base_layer.out_features
        rank = max((sum(a.shape[0] for a, _ in parts) for parts in rows), default=0)
        a_stack = torch.zeros(len(rows), rank, n_in)
        b_stack = torch.zeros(len(rows), n_out, rank)
        for i, parts in enumerate(rows):
            if parts:
                k = sum(a.shape[0] for a, _ in parts)
                a_stack[i, :k] = torch.cat([a for a, _ in parts])
                b_stack[i, :, :k] = torch.cat([b for _, b in parts], dim=1)
        device, dtype = base_layer.weight.device, base_layer.weight.dtype
        stacks[path] = (a_stack.transpose(1, 2).to(device, dtype), b_stack.transpose(1, 2).to(device, dtype))

    def hook(a_t: torch.Tensor, b_t: torch.Tensor):
        def add_term(module, args, output):
            x = args[0]
            n = x.shape[0]
            if n % a_t.shape[0]:
                raise RuntimeError(f"a UNet call of batch {n} does not fit {a_t.shape[0]} per-sample offsets")
            reps = n // a_t.shape[0]
            a, b = (a_t, b_t) if reps == 1 else (a_t.repeat(reps, 1, 1), b_t.repeat(reps, 1, 1))
            flat = x.reshape(n, -1, x.shape[-1])
            return output + torch.bmm(torch.bmm(flat, a), b).reshape(output.shape)

        return add_term

    if getattr(unet, "peft_config", None):
        unet.disable_adapters()  # the per-sample terms replace whatever adapter was active
    handles = [modules[path].register_forward_hook(hook(*stacks[path])) for path in paths]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
