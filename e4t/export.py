"""Concepts out to the formats diffusers already loads.

A concept is a token embedding plus LoRA offsets (its pack's, plus its own tuned delta), so
it maps exactly onto what a plain `StableDiffusionPipeline` loads:

    pipe.load_textual_inversion("DIR/learned_embeds.safetensors")   # adds the token <c_1a2b3c4d5e6f>
    pipe.load_lora_weights("DIR", weight_name="pytorch_lora_weights.safetensors")
    pipe("a photo of <c_1a2b3c4d5e6f> on the beach", generator=torch.Generator().manual_seed(0))

The e4t prompt `a photo of {c_1a2b3c4d5e6f} on the beach` becomes `a photo of <c_1a2b3c4d5e6f> ...`
in diffusers (`diffusers_prompt`; a concept with a suffix, as DreamBooth's class word, keeps it
after its token). A concept without offsets (Textual Inversion) exports the embedding only. One
concept per exported LoRA: e4t averages several concepts' offsets, which diffusers users do with
`set_adapters([...], adapter_weights=[0.5, 0.5])`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from e4t.concept import Concept
from e4t.pack import DomainPack
from e4t.prompts import CONCEPT_ID, add_suffixes

EMBEDDING_FILE = "learned_embeds.safetensors"  # the name `load_textual_inversion` looks for in a folder
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name `load_lora_weights` looks for in a folder
INFO_FILE = "e4t_export.json"

_BRACED_ID = re.compile(r"\{(c_[0-9a-f]{12})\}")


def token_for(concept_id: str) -> str:
    """The textual-inversion token of a concept: `<c_1a2b3c4d5e6f>`."""
    return f"<{concept_id}>"


def diffusers_prompt(prompt: str, suffixes: Mapping[str, str] | None = None) -> str:
    """An e4t prompt with every braced concept id written as that concept's token, followed by
    the concept's suffix where it has one (`suffixes`: concept id -> suffix), as e4t reads it."""
    return _BRACED_ID.sub(lambda m: token_for(m.group(1)), add_suffixes(prompt, suffixes or {}))


def textual_inversion_state_dict(concept: Concept) -> dict[str, torch.Tensor]:
    # diffusers' own layout: one entry, keyed by the token, so the file names its token
    return {token_for(concept.id): concept.embedding.detach().float().cpu().contiguous()}


def lora_state_dict(concept: Concept, pack: DomainPack) -> dict[str, torch.Tensor]:
    """The concept's weight offsets as one PEFT LoRA state dict of the UNet; empty when it has none.

    For E4T they are the pack's offsets plus the concept's delta: both are LoRA factors of one
    rank and the concept's are the pack's plus the delta (A and B each), so the sum is exactly
    the adapter that e4t's generation activates: no refactoring, no approximation. Keys are the
    UNet's own module paths, whatever modules the pack adapts.
    """
    return {k: v.detach().float().cpu().contiguous() for k, v in concept.offsets(pack).items()}


def lora_metadata(pack: DomainPack) -> dict:
    """The LoraConfig that diffusers rebuilds the adapter from: alpha = rank keeps the scale at 1."""
    config = pack.offset_config
    return {"r": config.rank, "lora_alpha": config.rank, "target_modules": list(config.targets)}


def export_diffusers(concept: Concept, pack: DomainPack, out: str | Path) -> dict:
    """Write `learned_embeds.safetensors`, `pytorch_lora_weights.safetensors` (unless the concept
    has no offsets) and `e4t_export.json` (token, hashes, how to load) into `out`; returns the json."""
    from diffusers import StableDiffusionPipeline

    if not CONCEPT_ID.match(concept.id):
        raise ValueError(f"concept id {concept.id!r} is not of the form c_ + 12 hex digits")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    token = token_for(concept.id)
    save_file(textual_inversion_state_dict(concept), str(out / EMBEDDING_FILE), metadata={"format": "pt"})
    usage = [f'pipe.load_textual_inversion("{out / EMBEDDING_FILE}")']
    lora = lora_state_dict(concept, pack)
    (out / LORA_FILE).unlink(missing_ok=True)  # a stale LoRA beside a new embedding would be loaded with it
    if lora:
        # diffusers' own writer: the "unet." prefix and adapter metadata in the layout its loader reads
        StableDiffusionPipeline.save_lora_weights(
            out, unet_lora_layers=lora, weight_name=LORA_FILE, unet_lora_adapter_metadata=lora_metadata(pack)
        )
        usage.append(f'pipe.load_lora_weights("{out}", weight_name="{LORA_FILE}")')
    suffix = concept.suffix
    usage.append(f'pipe("a photo of {" ".join(filter(None, (token, suffix)))} on the beach")')
    info = {
        "concept_id": concept.id,
        "token": token,
        "suffix": suffix,
        "method": concept.method,
        "domain": concept.domain,
        "class_word": pack.class_word,
        "base_hash": concept.base_hash,
        "pack_hash": concept.pack_hash,
        "files": {"textual_inversion": EMBEDDING_FILE, "lora": LORA_FILE if lora else None},
        "usage": usage,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
