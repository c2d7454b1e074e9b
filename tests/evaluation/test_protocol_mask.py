"""`protocol.input_mask`: the input image's subject, taken from its renderer's layer, exact to the pixel."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from evaluation import protocol
from shards.scenes import apply_lighting, background
from shards.synth import get_domain


@pytest.mark.parametrize("domain,index", [("faces", 0), ("faces", 1), ("cats", 0), ("cats", 1)])
def test_input_mask_is_the_rendered_subject(domain, index):
    subject = protocol.heldout_identities(domain, 2)[index]
    image = np.asarray(protocol.input_image(subject, 64)).astype(int)
    mask = np.asarray(protocol.input_mask(subject, 64))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert 200 < (mask > 0).sum() < 0.6 * 64 * 64  # a head, not the whole picture

    # outside the mask, past the Lanczos resize's reach from a pixel covered under a quarter (4 px), the input
    # is the bare background
    s = 64 * get_domain(domain).SUPERSAMPLE
    bare = background("plain", 0, s).convert("RGB").resize((64, 64), Image.LANCZOS, reducing_gap=2.0)
    bare = np.asarray(apply_lighting(bare, protocol.INPUT_NUISANCE)).astype(int)
    outside = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(9))) == 0
    assert outside.sum() > 1000 and np.array_equal(image[outside], bare[outside])
    # and inside it is mostly the subject
    assert (np.abs(image - bare).sum(-1)[mask > 0] > 0).mean() > 0.9
