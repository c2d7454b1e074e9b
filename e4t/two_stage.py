"""The two-stage rare-adjective method (Zeng, Suganuma, Okatani 2024, "An Improved Method for
Personalizing Diffusion Models", arXiv 2407.05312), as a baseline.

The subject is bound to "<adjective> <class word>" ("a photo of sincere face"), where the adjective
is a real English word the base's captions rarely use, so that its embedding starts with a weak
prior that still sits where adjectives sit in text space:

1. stage one (Textual Inversion): the adjective's embedding, as a new token, is optimised with the
   ordinary diffusion loss on "a photo of {S} <class word>" over augmented copies of the one image;
   the plain base UNet, text encoder and VAE stay frozen.
2. stage two (DreamBooth without prior preservation): the UNet is fine-tuned, as LoRA offsets from
   zero in the domain pack's layout, on the same prompt, while the text encoder and the learned
   embedding stay frozen. No class images are generated: the embedding already carries the subject,
   so the UNet has less to learn and the class word less reason to move (the drift the paper
   measures, `evaluation/drift.py` here).

The rare adjective (`rare_adjective`): the first word of `ADJECTIVES` that the base's tokenizer reads
as one token. The list holds ordinary adjectives of temperament ("sincere", "humble", ...), which
describe no visible attribute, so image captions rarely use them; none is a word of the embedded
world's captions (tests/e4t/test_two_stage.py checks it against shards/). A tokenizer trained on a
small world's captions alone, like the embedded base's (571 entries), reads no word outside those
captions as one token; the rule then takes the adjective of fewest tokens (the first in the list on
ties) and starts from the mean of its token embeddings, as `e4t.prompts.word_embedding` does for
any word. The placeholder takes one token slot either way.

`steps` counts both stages: the first `embedding_share` * steps (rounded half up; half by default)
tune the embedding, the rest the offsets. Progress reports steps of the whole run, with the stage
named where the callback takes a `stage` argument (the engine's does: "tuning:embedding", then
"tuning:unet").

The concept is self-contained like DreamBooth's: the learned embedding, its own LoRA factors
(`relative_to_pack=False`) and the class word as `suffix`, so that "a photo of {c_...} on the beach"
reads as "a photo of <S> face on the beach", as it was tuned. The pack lends its class word and
offset layout only.

Defaults, measured on the embedded world (README, "Baseline methods"; 3 held-out subjects per domain,
`python bench/fidelity_vs_time.py --methods two_stage --ts-steps ... --ts-config ...`): half the
steps on the embedding at lr 2e-2, the other half on the offsets at lr 3e-4, batch 4, 200 steps. The
drift of the class word follows how far the offsets move, whichever stage carries the subject, so
the offsets' rate sets the trade: at 200 steps these settings pass DreamBooth's best identity
(id_sim 0.172 / 0.302 for faces / cats against 0.147 / 0.217 at 300 steps) in a third of its time at
about its drift (0.35 / 0.36 against 0.32 / 0.41); a quarter of the steps on the embedding at lr
5e-3 with the offsets at lr 1e-3 reach more than twice its identity (0.376 / 0.459) in the same
time, at twice its drift (0.72 / 0.76).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from e4t.base import Base
from e4t.baseline import ProgressFn, SnapshotFn, check_run, plain_unet, run_steps
from e4t.concept import Concept
from e4t.dreambooth import initial_offsets
from e4t.errors import InvalidInput
from e4t.images import augment, mask_to_tensor, to_tensor
from e4t.objective import PLACEHOLDER, E4TObjective, LossWeights
from e4t.offsets import TUNE, activate, ensure_adapter, get_offsets, offset_parameters, set_offsets
from e4t.pack import DomainPack
from e4t.prompts import word_embedding

METHOD = "two_stage"
DEFAULT_STEPS = 200
MAX_STEPS = 1000  # as DreamBooth's: ~2 min on 2 CPU cores with the embedded base (one pass a step, no prior)
STAGES = ("embedding", "unet")

# Ordinary English adjectives of temperament, in the order the rule tries them (module docstring).
ADJECTIVES: tuple[str, ...] = (
    "sincere",
    "humble",
    "loyal",
    "honest",
    "gentle",
    "modest",
    "brave",
    "calm",
    "noble",
    "proud",
    "witty",
    "merry",
)


@dataclass(frozen=True)
class TwoStageConfig:
    embedding_share: float = 0.5  # of `steps`, spent on stage one
    lr_embedding: float = 2e-2  # stage one (Textual Inversion's 5e-3 is made for 1000 steps)
    lr_offsets: float = 3e-4  # stage two, on the LoRA factors; 1e-3 buys identity with drift (module docstring)
    batch: int = 4  # augmented views of the image per step, both stages
    adjective: str = ""  # empty: the rule's pick (`rare_adjective`)


def rare_adjective(tokenizer, candidates: Iterable[str] = ADJECTIVES) -> str:
    """The first candidate the tokenizer reads as one token; else the one of fewest tokens, first on ties."""
    candidates = list(candidates)
    if not candidates:
        raise InvalidInput("two_stage: no candidate adjectives to choose from")
    lengths = [len(tokenizer(word, add_special_tokens=False).input_ids) for word in candidates]
    return candidates[lengths.index(min(lengths))]


def stage_steps(steps: int, config: TwoStageConfig) -> tuple[int, int]:
    """(stage one, stage two) steps of a run of `steps` in all."""
    first = int(steps * config.embedding_share + 0.5)  # half up: 2 steps are 1 + 1 (round() would give 0 + 2)
    return first, steps - first


def _reporter(progress: ProgressFn | None) -> Callable[[int, int, float, str], None] | None:
    """progress(step, total, loss, stage=...) where the callback takes a stage, else progress(step, total, loss)."""
    if progress is None:
        return None
    try:
        params = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: the plain form
        params = ()
    if any(p.name == "stage" or p.kind is p.VAR_KEYWORD for p in params):
        return lambda step, total, loss, stage: progress(step, total, loss, stage=f"tuning:{stage}")
    return lambda step, total, loss, stage: progress(step, total, loss)


def two_stage(
    base: Base,
    pack: DomainPack,
    image: Image.Image,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    mask: Image.Image | None = None,
    owner: str = "",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    config: TwoStageConfig = TwoStageConfig(),
    snapshots: Sequence[int] = (),
    on_snapshot: SnapshotFn | None = None,
) -> Concept:
    """Learn the rare adjective's embedding, then LoRA offsets, on the subject of `image`; returns a new
    concept (not stored). Deterministic for `seed`.

    Arguments as `e4t.tuner.personalize`; steps=0 returns the adjective's own embedding and zero offsets.
    `on_snapshot(step, concept)` receives a concept after each step listed in `snapshots` (steps of the
    whole run; a snapshot in stage one carries zero offsets).
    """
    # 1. check inputs
    wanted = check_run(METHOD, base, pack, steps, MAX_STEPS, snapshots, on_snapshot)
    if config.batch < 1 or not 0.0 <= config.embedding_share <= 1.0:
        raise InvalidInput(f"two_stage: needs batch >= 1 and embedding_share in [0, 1], got {config}")
    if config.lr_embedding <= 0 or config.lr_offsets <= 0:
        raise InvalidInput(f"two_stage: learning rates must be positive, got {config}")
    adjective = config.adjective or rare_adjective(base.tokenizer)
    if not adjective.isalpha():
        raise InvalidInput(f"two_stage: the adjective must be one word of letters, got {adjective!r}")
    generator = torch.Generator().manual_seed(seed)
    pixels = to_tensor(image, base.resolution)
    mask_t = mask_to_tensor(mask, base.resolution).expand(config.batch, -1, -1, -1) if mask is not None else None
    objective = E4TObjective(base, pack.class_word, LossWeights(embedding=0.0, offsets=0.0))  # no penalties
    prompts = [f"a photo of {{{PLACEHOLDER}}} {pack.class_word}"] * config.batch
    n_embedding, n_offsets = stage_steps(steps, config)
    report = _reporter(progress)

    # 2. the token starts at the adjective; the LoRA's starting factors (B = 0) are drawn now, so that a
    #    stage-one snapshot and the run's offsets come from the same seeded draws
    with torch.no_grad():
        start = word_embedding(base.text_encoder, base.tokenizer, adjective).clone()
    embedding = torch.nn.Parameter(start)
    zero_offsets = initial_offsets(pack, generator)
    unet = base.unet
    in_stage_two = False

    def descend(optimizer: torch.optim.Optimizer) -> float:
        """One step of `optimizer` on the diffusion loss of augmented views, with the current embedding."""
        batch = objective.noise(augment(pixels, config.batch, generator), generator)
        loss, _ = objective.loss(batch, embedding.expand(config.batch, -1), prompts, mask=mask_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def concept_at(at: int) -> Concept:
        return Concept(
            embedding=embedding.detach().clone(),
            offset_deltas=get_offsets(unet, TUNE) if in_stage_two else {k: v.clone() for k, v in zero_offsets.items()},
            relative_to_pack=False,
            suffix=pack.class_word,
            domain=pack.domain,
            pack_hash=pack.hash,
            base_hash=base.hash,
            method=METHOD,
            steps=at,
            owner=owner,
            extra={"config": asdict(config), "seed": seed, "adjective": adjective, "stages": [n_embedding, n_offsets]},
        )

    def run_stage(name: str, first: int, count: int, step: Callable[[], float], restore: Callable[[], None]) -> None:
        """`count` steps, numbered first+1..first+count of the whole run for progress and snapshots."""

        def snapshot(i: int, concept: Concept) -> None:
            on_snapshot(first + i, concept)
            restore()  # the callback may have generated with the shared UNet, which switches adapters

        run_steps(
            METHOD,
            count,
            step,
            lambda i: concept_at(first + i),
            snapshots=frozenset(
                s - first for s in wanted if first < s <= first + count or (s == 0 and name == STAGES[0])
            ),
            on_snapshot=snapshot if on_snapshot is not None else None,
            progress=None if report is None else lambda i, n, loss: report(first + i, steps, loss, name),
            should_stop=should_stop,
        )

    # 3. stage one: the embedding alone, on the plain UNet (the base's weights never require gradients)
    plain_unet(unet)
    embedding_optimizer = torch.optim.Adam([embedding], lr=config.lr_embedding)
    run_stage(STAGES[0], 0, n_embedding, lambda: descend(embedding_optimizer), lambda: plain_unet(unet))
    embedding.requires_grad_(False)  # frozen from here on, as the text encoder always is
    if n_offsets == 0:
        return concept_at(steps)

    # 4. stage two: LoRA offsets from zero on the tuning adapter; no prior preservation
    ensure_adapter(unet, TUNE, pack.offset_config)
    set_offsets(unet, zero_offsets, TUNE)
    activate(unet, TUNE)
    in_stage_two = True
    params = offset_parameters(unet, TUNE)
    offsets_optimizer = torch.optim.Adam(params, lr=config.lr_offsets)

    # the shared UNet is left with no adapter active and nothing requiring grad
    try:
        for p in params:
            p.requires_grad_(True)
        run_stage(STAGES[1], n_embedding, n_offsets, lambda: descend(offsets_optimizer), lambda: activate(unet, TUNE))
        return concept_at(steps)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        unet.disable_adapters()
