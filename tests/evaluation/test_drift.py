"""Language drift on the embedded base, faces pack and judges: no offsets no drift, the before-images are
the plain base's, and offsets that change the UNet move the class word's images."""

import numpy as np
import pytest
import torch

from e4t import generate, load_base, load_pack
from e4t.concept import Concept
from e4t.embedded import artifacts_root, default_paths
from e4t.judges import load_judges
from evaluation import drift


@pytest.fixture(scope="module")
def world():
    base_dir, pack_paths = default_paths()
    base = load_base(base_dir)
    pack = next(p for p in (load_pack(path, base) for path in pack_paths) if p.domain == "faces")
    identity, _ = load_judges(artifacts_root() / "judges")
    return base, pack, identity, drift.DriftProbe(base, pack, identity, count=2, steps=3)


def concept_with(base, pack, offsets: dict[str, torch.Tensor]) -> Concept:
    return Concept(
        embedding=torch.zeros(base.text_encoder.config.hidden_size),
        offset_deltas=offsets,
        relative_to_pack=False,
        domain=pack.domain,
        pack_hash=pack.hash,
        base_hash=base.hash,
        method="two_stage",
    )


def test_before_images_are_the_plain_bases(world):
    base, pack, _, probe = world
    assert probe.prompt == "a photo of a face" and probe.seeds == [0, 1]
    plain = generate(base, {}, {}, "a photo of a face", num_images=2, steps=3, seed=0)
    for a, b in zip(probe.before, plain, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2  # one batch vs one by one


def test_no_offsets_no_drift(world, monkeypatch):
    base, pack, identity, probe = world
    refs = identity.embed(probe.before)
    monkeypatch.setattr(drift, "generate_samples", lambda *a, **k: pytest.fail("nothing should be generated"))
    assert probe.measure(concept_with(base, pack, {}), refs) == {"drift": 0.0, "toward_subject": 0.0}


def test_offsets_that_add_nothing_move_nothing_and_large_ones_move_the_class_word(world):
    base, pack, identity, probe = world
    refs = identity.embed(probe.before)
    zero = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in pack.offsets.items()}
    still = probe.measure(concept_with(base, pack, zero), refs)
    assert abs(still["drift"]) < 1e-4 and abs(still["toward_subject"]) < 1e-4, still
    generator = torch.Generator().manual_seed(0)
    large = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in pack.offsets.items()}
    moved = probe.measure(concept_with(base, pack, large), refs)
    # the references are the before-images themselves: moving away from them lowers their similarity
    assert moved["drift"] > 0.05 and moved["toward_subject"] < 0, moved
