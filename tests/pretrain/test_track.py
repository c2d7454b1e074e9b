"""The pretraining tracker scores the encoder's 0-step guess and leaves the training adapter as it found it."""

import torch

from e4t import load_base, load_pack
from e4t.embedded import artifacts_root
from e4t.offsets import TUNE, activate, ensure_adapter, offset_parameters, set_offsets
from pretrain.track import IdentityTracker


def test_tracker_scores_guesses_and_restores_the_training_adapter(tiny_base_dir, tiny_pack_path):
    base = load_base(tiny_base_dir)
    pack = load_pack(tiny_pack_path, base)
    tracker = IdentityTracker(base, "faces", artifacts_root() / "judges", subjects=2, images=1, steps=2)
    ensure_adapter(base.unet, TUNE, pack.offset_config)
    set_offsets(base.unet, pack.offsets, TUNE)
    activate(base.unet, TUNE)
    params = offset_parameters(base.unet, TUNE)
    for p in params:
        p.requires_grad_(True)
    before = [p.detach().clone() for p in params]

    id_sim, grid = tracker(pack)

    assert -1.0 <= id_sim <= 1.0
    assert grid.size == (2 * 64, 2 * 64)  # inputs above, guesses below
    assert all(p.requires_grad for p in params), "training must go on with trainable offsets"
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "tracking must not move the offsets"
    assert base.unet.active_adapters() == [TUNE]
