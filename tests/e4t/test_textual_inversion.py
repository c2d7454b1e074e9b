"""Textual Inversion on the tiny base: only the embedding moves, the loss falls, snapshots, determinism."""

import pytest
import torch
from PIL import Image

from e4t import generate, personalize
from e4t.concept import Concept
from e4t.errors import InvalidInput
from e4t.offsets import TUNE, activate, ensure_adapter, set_offsets
from e4t.textual_inversion import MAX_STEPS, TextualInversionConfig, textual_inversion

FAST = TextualInversionConfig(lr=5e-2, batch=2)  # a few steps must show on a random tiny base


@pytest.fixture(scope="module")
def run(tiny, subject):
    """One 6-step run with snapshots at 0, 3 and 6, and the UNet's weights (offsets included) before it."""
    base, pack = tiny
    # offsets left active on the shared UNet must neither leak in (it tunes on the plain base) nor change
    ensure_adapter(base.unet, TUNE, pack.offset_config)
    set_offsets(base.unet, {k: torch.randn_like(v) for k, v in pack.offsets.items()}, TUNE)
    activate(base.unet, TUNE)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    seen, snaps = [], {}
    concept = textual_inversion(
        base,
        pack,
        subject,
        steps=6,
        seed=1,
        config=FAST,
        progress=lambda s, n, loss: seen.append((s, n)),
        snapshots=(0, 3, 6),
        on_snapshot=lambda step, c: snaps.setdefault(step, c),
    )
    return concept, seen, snaps, before


def test_only_the_embedding_changes_and_the_loss_falls(tiny, run, fixed_noise_loss):
    base, pack = tiny
    concept, seen, _, before = run
    assert seen == [(i, 6) for i in range(1, 7)]
    assert concept.method == "textual_inversion" and concept.steps == 6 and concept.domain == "faces"
    assert concept.offset_deltas == {} and not concept.relative_to_pack and concept.offsets(pack) == {}
    after = base.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(p.requires_grad for p in base.unet.parameters())

    class_word = fixed_noise_loss(run[2][0].embedding, "a photo of {S}")
    learned = fixed_noise_loss(concept.embedding, "a photo of {S}")
    assert learned < class_word, (learned, class_word)


def test_snapshots_arrive_at_the_requested_steps(run, fixed_noise_loss):
    concept, _, snaps, _ = run
    assert sorted(snaps) == [0, 3, 6] and [snaps[s].steps for s in (0, 3, 6)] == [0, 3, 6]
    assert torch.equal(snaps[6].embedding, concept.embedding)
    assert not torch.equal(snaps[3].embedding, snaps[0].embedding)
    assert len({c.id for c in snaps.values()}) == 3  # each snapshot is a concept of its own


def test_deterministic_for_a_seed_and_blind_to_active_offsets(tiny, subject, run):
    base, pack = tiny
    assert any(".lora_" in k for k in run[3])  # the run above had offsets active; this one has none
    base.unet.disable_adapters()
    again = textual_inversion(base, pack, subject, steps=3, seed=1, config=FAST)
    assert torch.equal(again.embedding, run[2][3].embedding)  # the first 3 steps of the same run
    other = textual_inversion(base, pack, subject, steps=3, seed=2, config=FAST)
    assert not torch.equal(other.embedding, again.embedding)


def test_an_empty_mask_leaves_the_embedding_at_the_class_word(tiny, subject, run):
    base, pack = tiny
    concept = textual_inversion(base, pack, subject, steps=2, mask=Image.new("L", subject.size, 0), config=FAST)
    assert torch.equal(concept.embedding, run[2][0].embedding)  # no pixel counts: no gradient


def test_generation_runs_the_plain_base_with_the_embedding(tiny, run, tmp_path):
    base, pack = tiny
    concept = run[0]
    concept.save(tmp_path / "ti.safetensors")
    loaded = Concept.load(tmp_path / "ti.safetensors")
    assert loaded.method == "textual_inversion" and not loaded.relative_to_pack and loaded.offset_deltas == {}
    e4t_concept = personalize(base, pack, Image.new("RGB", (64, 64), "gray"), steps=0)
    concepts = {loaded.id: loaded, e4t_concept.id: e4t_concept}
    (alone,) = generate(base, {"faces": pack}, concepts, f"a photo of {{{loaded.id}}}", num_images=1, steps=2)
    (both,) = generate(
        base, {"faces": pack}, concepts, f"{{{loaded.id}}} next to {{{e4t_concept.id}}}", num_images=1, steps=2
    )
    assert alone.size == both.size == (64, 64)


def test_bad_requests(tiny, subject):
    base, pack = tiny
    with pytest.raises(InvalidInput, match=f"textual_inversion: `steps` must be between 0 and {MAX_STEPS}"):
        textual_inversion(base, pack, subject, steps=MAX_STEPS + 1)
    with pytest.raises(InvalidInput, match=r"`snapshots` must be steps between 0 and 3, got \[4\]"):
        textual_inversion(base, pack, subject, steps=3, snapshots=(1, 4), on_snapshot=lambda s, c: None)
    with pytest.raises(InvalidInput, match="without an `on_snapshot`"):
        textual_inversion(base, pack, subject, steps=3, snapshots=(1,))
