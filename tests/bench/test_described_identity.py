"""bench/described_identity.py's measures on a real tiny base: what they read when words carry nothing."""

import random
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import described_identity as bench  # noqa: E402

from e4t import load_base  # noqa: E402
from e4t.images import to_tensor  # noqa: E402
from shards import faces  # noqa: E402

PLAIN = {"background": "plain", "medium": "photo", "accessory": "none"}


def _views(indices: list[int]) -> tuple[torch.Tensor, list[dict]]:
    metas, pixels = [], []
    for i in indices:
        attributes = faces.identity_attributes(i, 0)
        nuisance = faces.sample_nuisance(random.Random(i))
        pixels.append(to_tensor(faces.render(attributes, PLAIN, nuisance), 64))
        metas.append({"identity": faces.identity_name(i, 0), "attributes": attributes, "context": PLAIN})
    return torch.cat(pixels), metas


def test_the_description_gap_is_zero_exactly_when_the_descriptions_agree(tiny_base_dir: Path) -> None:
    base = load_base(tiny_base_dir)
    pixels, metas = _views([1, 2, 3, 4])
    same = [dict(metas[0], identity=m["identity"]) for m in metas]  # four views that share one description
    assert bench.description_gap(base, pixels, same, "faces") == 0.0
    assert bench.description_gap(base, pixels, metas, "faces") != 0.0
    assert bench.image_gap(base, pixels, same, "faces") == [0.0] * 5
    assert all(gap != 0.0 for gap in bench.image_gap(base, pixels, metas, "faces"))


def test_the_image_gap_reads_epsilon_and_v_unets_alike(tiny_base_dir: Path) -> None:
    # the same UNet read as v-predicting: its image error is the v error x (1 - alpha_bar), the epsilon
    # one's is / SNR; both are what the other description costs in image terms
    pixels, metas = _views([1, 2, 3, 4])
    base = load_base(tiny_base_dir)
    own, _ = bench._errors(base, pixels, metas, "faces", (500, 501), seed=0, image=True)
    raw, _ = bench._errors(base, pixels, metas, "faces", (500, 501), seed=0)
    alpha_bar = float(DDPMScheduler.from_config(base.scheduler.config).alphas_cumprod[500])
    torch.testing.assert_close(own, raw * (1 - alpha_bar) / alpha_bar)
    base.scheduler.register_to_config(prediction_type="v_prediction")
    own_v, _ = bench._errors(base, pixels, metas, "faces", (500, 501), seed=0, image=True)
    raw_v, _ = bench._errors(base, pixels, metas, "faces", (500, 501), seed=0)
    torch.testing.assert_close(own_v, raw_v * (1 - alpha_bar))


def test_text_cosine_is_one_for_one_caption_and_below_for_others(tiny_base_dir: Path) -> None:
    base = load_base(tiny_base_dir)
    caption = "a photo of a face with red hair"
    assert abs(bench.text_cosine(base, [caption, caption]) - 1.0) < 1e-5
    assert bench.text_cosine(base, [caption, "a sketch of a face with a round face, at night"]) < 1.0 - 1e-4
