"""On the committed embedded artifacts: the method does what its claim needs, or these fail.

Each test measures a property whose absence once left E4T at chance (README, "The embedded
default"): the UNet must respond to identity in a word embedding, the encoder must read identity
rather than pose, tuning an embedding alone must be able to carry an identity, and pretraining
must have lowered the loss it optimizes.
"""

from __future__ import annotations

import pytest
import torch

from e4t.embedded import artifacts_root, default_paths
from evaluation import protocol

SUBJECTS = 4
# The shipped base draws identities from words, but not yet strongly enough for these (README, "The
# embedded default"): they fail on it, and must start passing, strictly, once the world is strong enough.
WORDS_TOO_WEAK = pytest.mark.xfail(
    strict=True, reason="words carry too little identity on the shipped base (issue: a base that draws identities)"
)


@pytest.fixture(scope="module")
def world():
    from e4t import load_base, load_pack
    from e4t.objective import E4TObjective

    base_dir, _ = default_paths()
    base = load_base(base_dir)
    pack = load_pack(artifacts_root() / "packs" / "faces.safetensors", base)
    subjects = protocol.heldout_identities("faces", SUBJECTS)
    return base, pack, E4TObjective(base, pack.class_word, pack.loss_weights), subjects


def _guess(base, pack, image) -> torch.Tensor:
    from e4t import personalize

    return personalize(base, pack, image, steps=0, seed=0).embedding


def _views(subject, count: int = 4) -> torch.Tensor:
    from e4t.images import to_tensor

    return torch.cat([to_tensor(im, 64) for im in protocol.reference_images(subject, count, 64)])


def _loss(objective, pack, views: torch.Tensor, embedding: torch.Tensor, seed: int = 0) -> float:
    """Diffusion loss on `views` with S = `embedding`, the pack's offsets active, fixed noise (mid-range steps)."""
    from e4t.offsets import TUNE, activate, ensure_adapter, set_offsets

    unet = objective.base.unet
    ensure_adapter(unet, TUNE, pack.offset_config)
    set_offsets(unet, pack.offsets, TUNE)
    activate(unet, TUNE)
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(4):
            batch = objective.noise(views, g)
            batch.timesteps = torch.randint(100, 700, batch.timesteps.shape, generator=g)
            latents = objective.base.vae.encode(views).latent_dist.mean
            batch.noisy = objective.noise_scheduler.add_noise(latents, batch.target, batch.timesteps)
            prompts = ["a photo of {S}"] * len(views)
            total += objective.loss(batch, embedding.expand(len(views), -1), prompts)[1]["diffusion"]
    unet.disable_adapters()
    return total / 4


@WORDS_TOO_WEAK
def test_own_embedding_denoises_its_subject_better_than_another_subjects(world):
    base, pack, objective, subjects = world
    guesses = [_guess(base, pack, protocol.input_image(s, 64)) for s in subjects]
    own, other = [], []
    for i, s in enumerate(subjects):
        views = _views(s)
        own.append(_loss(objective, pack, views, guesses[i], seed=i))
        other.append(_loss(objective, pack, views, guesses[(i + 1) % len(subjects)], seed=i))
    own_mean, other_mean = sum(own) / len(own), sum(other) / len(other)
    assert own_mean < other_mean * 0.97, f"own {own} vs another subject's {other}: the UNet ignores identity"


def test_encoder_reads_identity_not_pose(world):
    base, pack, objective, subjects = world
    offsets = torch.stack(
        [
            torch.stack([_guess(base, pack, im) for im in protocol.reference_images(s, 3, 64)])
            for s in protocol.heldout_identities("faces", 6)
        ]
    )  # [identities, views, D]
    within = offsets.var(dim=1).sum(-1).mean()
    between = offsets.mean(dim=1).var(dim=0).sum()
    assert between > 2 * within, f"between-identity variance {between:.3g} vs within {within:.3g}"


def test_pretraining_lowered_the_loss_on_held_out_subjects(world):
    from e4t.pack import DomainPack

    base, pack, objective, subjects = world
    untrained = DomainPack.initial(base, "faces", pack.class_word, seed=1)
    untrained.hash = pack.hash  # same base; only the weights differ
    trained_loss = untrained_loss = 0.0
    for i, s in enumerate(subjects):
        views, image = _views(s), protocol.input_image(s, 64)
        trained_loss += _loss(objective, pack, views, _guess(base, pack, image), seed=i)
        untrained_loss += _loss(objective, untrained, views, _guess(base, untrained, image), seed=i)
    assert trained_loss < 0.97 * untrained_loss, f"trained {trained_loss:.4f} vs untrained {untrained_loss:.4f}"


def test_embedding_only_tuning_carries_identity(world):
    """Textual Inversion tunes a word embedding and nothing else: above chance only if words can hold identity."""
    from e4t import generate
    from e4t.judges import load_judges
    from e4t.textual_inversion import textual_inversion

    base, pack, _, subjects = world
    judge = load_judges(artifacts_root() / "judges").identity
    s, d = subjects[0], subjects[1]
    concept = textual_inversion(base, pack, protocol.input_image(s, 64), steps=150, seed=0)
    images = generate(base, {"faces": pack}, {concept.id: concept}, f"a photo of {{{concept.id}}}", num_images=4)
    generated = judge.embed(images)
    same = (generated @ judge.embed(protocol.reference_images(s, 4, 64)).T).mean().item()
    different = (generated @ judge.embed(protocol.reference_images(d, 4, 64)).T).mean().item()
    assert same > different + 0.1, f"id_sim {same:.3f} with its subject vs {different:.3f} with another"
