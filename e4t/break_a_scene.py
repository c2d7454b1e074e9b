"""Break-A-Scene (Avrahami et al. 2023, "Break-A-Scene: Extracting Multiple Concepts from a Single
Image", arXiv 2305.16311): one image and one mask per subject give one concept per subject.

Each mask gets a handle: a new token embedding, initialised from the class word of its domain
("face", "cat"). Every training step draws, for each of its views, a random non-empty subset of
the handles in random order and trains on "a photo of {h1} face and {h2} cat" with
- the diffusion loss restricted to the union of the drawn handles' masks (the rest of the scene,
  and the handles left out, are not the prompt's business), and
- the cross-attention loss: each drawn handle's cross-attention map (`e4t.cross_attention`,
  recorded through diffusers' attention-processor API, averaged over heads and layers at the
  finest cross-attention grid, scaled to a peak of 1) against its mask, weight 0.01,
so that each handle binds to its own subject and a prompt can name any subset of them.
Phase one (the first `phase1_share` of the steps) trains the handles alone at a high learning
rate, so they find their subjects before the UNet moves; phase two trains the UNet weights, as
LoRA offsets from zero in the domain pack's layout (as `e4t.dreambooth`), and the handles at a
low rate. The views are augmented copies of the scene, masks moved with it.

Domains: `packs` has one domain pack per mask (the same pack repeated when all subjects share a
domain; the server takes a domain per mask, or one for all). A pack lends its class word and its
offset layout, and its hash goes into its handle's concept; the pack's pretrained offsets are not
used (the method starts from the plain base, as DreamBooth). All packs must share one layout.

The result is one concept per mask, in mask order. They share the run's LoRA: each concept
stores all of it (`relative_to_pack=False`) with its own handle embedding, and, with
`class_words`, its class word as `suffix` ("a photo of {c_1} and {c_2}" is generated as "a photo
of [h1] face and [h2] cat", as trained). Naming several of them averages their offsets (see
`e4t.generate`), which for one run's concepts is that very LoRA.

Defaults: 300 steps of batch 4 (~40-55 s on an idle 2-core CPU), half of them in phase one;
handles at 5e-3 then 5e-4 (Textual Inversion's rate, then a tenth), LoRA at 5e-4 (DreamBooth's).
Measured on the embedded world's two-subject scenes (`bench/break_a_scene.py`, README
"Break-A-Scene"), class words in the prompt beat bare handles (id_sim 0.025 vs 0.012, context
0.75 vs 0.61); the learning rates follow the other baselines and were not swept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from e4t.base import Base
from e4t.baseline import ProgressFn, check_run, run_steps
from e4t.concept import Concept, new_concept_id
from e4t.cross_attention import attention_mask_loss, cross_attention_resolutions, record_cross_attention
from e4t.dreambooth import initial_offsets
from e4t.errors import InvalidInput
from e4t.images import augment_with_masks, mask_to_tensor, to_tensor
from e4t.objective import E4TObjective, LossWeights
from e4t.offsets import TUNE, activate, ensure_adapter, get_offsets, offset_parameters, set_offsets
from e4t.pack import DomainPack
from e4t.prompts import encode_prompts, tokenize_with_slots, word_embedding

METHOD = "break_a_scene"
DEFAULT_STEPS = 300
MAX_STEPS = 1000
MAX_MASKS = 4  # subjects in one scene; every step's prompt names up to this many handles


@dataclass(frozen=True)
class BreakASceneConfig:
    phase1_share: float = 0.5  # share of the steps that train the handles alone (the paper: 400 of 800)
    lr_handles: float = 5e-3  # phase one
    lr_handles_phase2: float = 5e-4
    lr_offsets: float = 5e-4  # LoRA factors, phase two
    batch: int = 4  # augmented views per step, each with its own subset of handles
    attention_weight: float = 0.01  # the paper's lambda_attn
    attention_res: int | None = None  # grid side of the recorded maps; None: the finest with cross-attention
    class_words: bool = True  # "{h} face" in prompts (and the concept's suffix), not the bare handle


def _binary(mask: torch.Tensor) -> torch.Tensor:
    return (mask >= 0.5).float()


def union_masked_mse(
    prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, subsets: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Diffusion loss of sample b over the union of masks[b, k] for k in subsets[b] (resized to the latents).

    `masks` [B, N, H, W] in [0, 1]; pixels outside the union (the background, and subjects whose
    handles the prompt leaves out) contribute nothing.
    """
    union = torch.stack([masks[b, list(chosen)].amax(0) for b, chosen in enumerate(subsets)])[:, None]
    union = F.interpolate(union, size=prediction.shape[-2:], mode="area")
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return (error * union).sum() / (union.sum() * error.shape[1]).clamp(min=1.0)


def check_masks(image: Image.Image, masks: Sequence[Image.Image], size: int) -> torch.Tensor:
    """[1, N, size, size] binary masks fitted like the image; InvalidInput naming the mask that cannot be used.

    A pixel belongs to a subject where its mask is >= 128 (white = subject).
    """
    n = len(masks)
    if not 1 <= n <= MAX_MASKS:
        raise InvalidInput(f"{METHOD}: needs 1 to {MAX_MASKS} masks, one per subject, but got {n}")
    arrays = []
    for i, mask in enumerate(masks):
        if mask.size != image.size:
            raise InvalidInput(
                f"mask {i + 1} of {n} is {mask.width}x{mask.height} but the image is {image.width}x{image.height}"
            )
        array = np.asarray(mask.convert("L")) >= 128
        if not array.any():
            raise InvalidInput(f"mask {i + 1} of {n} is empty: no pixel is >= 128 (white = subject)")
        arrays.append(array)
    for i in range(n):
        for j in range(i + 1, n):
            shared = int((arrays[i] & arrays[j]).sum())
            if shared:
                raise InvalidInput(f"masks {i + 1} and {j + 1} of {n} overlap: they cover {shared} of the same pixels")
    fitted = torch.cat([_binary(mask_to_tensor(m, size)) for m in masks], dim=1)
    for i in range(n):
        if not fitted[0, i].any():
            raise InvalidInput(
                f"mask {i + 1} of {n} covers nothing of the image's centre square at the model's {size}x{size}"
            )
    return fitted


def _same_layout(packs: Sequence[DomainPack]) -> None:
    layouts = {p.offset_config for p in packs}
    if len(layouts) > 1:
        raise InvalidInput(
            f"{METHOD}: the masks' domain packs have different offset layouts: {sorted(map(str, layouts))}"
        )


def break_a_scene(
    base: Base,
    packs: Sequence[DomainPack],
    image: Image.Image,
    masks: Sequence[Image.Image],
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    owner: str = "",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    config: BreakASceneConfig = BreakASceneConfig(),
) -> list[Concept]:
    """One concept per mask of `image` (white = subject), in mask order; not stored. Deterministic for `seed`.

    `packs[i]` is the domain pack of mask i. Other arguments as `e4t.tuner.personalize`; steps=0
    returns the class words' embeddings and zero offsets.
    """
    # 1. check inputs
    if len(packs) != len(masks):
        raise InvalidInput(f"{METHOD}: needs one domain per mask but got {len(packs)} for {len(masks)} masks")
    for pack in {id(p): p for p in packs}.values():
        check_run(METHOD, base, pack, steps, MAX_STEPS, (), None)
    _same_layout(packs)
    if not 0.0 <= config.phase1_share <= 1.0 or config.batch < 1:
        raise InvalidInput(f"{METHOD}: needs 0 <= phase1_share <= 1 and batch >= 1, got {config}")
    resolution = config.attention_res or cross_attention_resolutions(base.unet)[0]
    fitted = check_masks(image, masks, base.resolution)
    n = len(masks)
    generator = torch.Generator().manual_seed(seed)
    pixels = to_tensor(image, base.resolution)
    objective = E4TObjective(base, packs[0].class_word, LossWeights(embedding=0.0, offsets=0.0))
    words = [p.class_word for p in packs]
    names = [f"h{i}" for i in range(n)]
    phase1 = round(steps * config.phase1_share)

    # 2. the handles start at their class words; LoRA offsets from zero in the packs' layout
    with torch.no_grad():
        handles = [
            torch.nn.Parameter(word_embedding(base.text_encoder, base.tokenizer, w).detach().clone()) for w in words
        ]
    unet = base.unet
    ensure_adapter(unet, TUNE, packs[0].offset_config)
    set_offsets(unet, initial_offsets(packs[0], generator), TUNE)
    activate(unet, TUNE)
    offsets = offset_parameters(unet, TUNE)
    for p in offsets:  # PEFT marks an activated adapter trainable; phase one trains the handles alone
        p.requires_grad_(False)
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def prompt_for(chosen: list[int]) -> str:
        subjects = [f"{{{names[k]}}} {words[k]}" if config.class_words else f"{{{names[k]}}}" for k in chosen]
        return "a photo of " + " and ".join(subjects)

    def step(store, done: list[int]) -> float:
        phase_two = done[0] >= phase1
        if phase_two and "two" not in optimizers:
            for p in offsets:
                p.requires_grad_(True)
            optimizers["two"] = torch.optim.Adam(
                [{"params": handles, "lr": config.lr_handles_phase2}, {"params": offsets, "lr": config.lr_offsets}]
            )
        if not phase_two and "one" not in optimizers:
            optimizers["one"] = torch.optim.Adam(handles, lr=config.lr_handles)
        optimizer = optimizers["two" if phase_two else "one"]
        views, view_masks = augment_with_masks(pixels, fitted, config.batch, generator)
        view_masks = _binary(view_masks)
        # a random non-empty subset of the handles per view, in random order
        subsets = []
        for _ in range(config.batch):
            count = int(torch.randint(1, n + 1, (1,), generator=generator))
            subsets.append(torch.randperm(n, generator=generator)[:count].tolist())
        prompts = [prompt_for(chosen) for chosen in subsets]
        batch = objective.noise(views, generator)
        embeddings = dict(zip(names, handles, strict=True))
        states = encode_prompts(base.text_encoder, base.tokenizer, prompts, [embeddings] * config.batch)
        store.clear()
        prediction = unet(batch.noisy, batch.timesteps, encoder_hidden_states=states).sample
        loss = union_masked_mse(prediction, batch.target, view_masks, subsets)
        if config.attention_weight:
            small = F.interpolate(view_masks, size=(resolution, resolution), mode="area")
            slot = base.tokenizer.eos_token_id
            positions = [[pos for pos, _ in tokenize_with_slots(base.tokenizer, p, slot)[1]] for p in prompts]
            regions = [[small[b, k] for k in chosen] for b, chosen in enumerate(subsets)]
            loss = loss + config.attention_weight * attention_mask_loss(store.maps(), positions, regions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done[0] += 1
        return loss.item()

    # 3. train; the shared UNet is left with its own processors, no adapter active and nothing requiring grad
    try:
        with record_cross_attention(unet, resolution) as store:
            done = [0]
            run_steps(
                METHOD,
                steps,
                lambda: step(store, done),
                lambda at: None,  # no snapshots
                snapshots=frozenset(),
                on_snapshot=None,
                progress=progress,
                should_stop=should_stop,
            )
        lora = get_offsets(unet, TUNE)
    finally:
        for p in offsets:
            p.requires_grad_(False)
            p.grad = None
        unet.disable_adapters()

    # 4. one concept per handle, all carrying the run's LoRA
    ids = [new_concept_id() for _ in range(n)]
    return [
        Concept(
            embedding=handles[i].detach().clone(),
            offset_deltas={k: v.clone() for k, v in lora.items()},
            relative_to_pack=False,
            suffix=words[i] if config.class_words else "",
            domain=packs[i].domain,
            pack_hash=packs[i].hash,
            base_hash=base.hash,
            method=METHOD,
            steps=steps,
            owner=owner,
            id=ids[i],
            extra={"config": asdict(config), "seed": seed, "handle": i, "scene_concepts": ids},
        )
        for i in range(n)
    ]
