"""bench/vae_identity.py on the committed judges: an untrained VAE loses identity, the shipped one keeps most of it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import vae_identity as bench  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from e4t.embedded import artifacts_root  # noqa: E402
from e4t.judges import load_judges  # noqa: E402
from pretrain.arch import TINY, build_vae  # noqa: E402


def test_vae_ratio_separates_an_untrained_vae_from_a_trained_one(tmp_path: Path) -> None:
    judge = load_judges(artifacts_root() / "judges").identity
    untrained, *_ = bench.measure(build_vae(TINY).eval(), judge, "faces", subjects=2, images=1)
    trained, truth, back = bench.measure(
        AutoencoderKL.from_pretrained(artifacts_root() / "base" / "vae").eval(), judge, "faces", subjects=2, images=1
    )
    assert untrained["real_same_identity"] == trained["real_same_identity"] > 0.6  # the same true renders
    assert untrained["ratio"] < 0.5 < trained["ratio"]
    bench.draw([("faces", truth, back)], tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 0
