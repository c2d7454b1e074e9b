"""The judge formats and scoring helpers, on small randomly initialized judges (no training)."""

import pytest
import torch
from PIL import Image

from e4t.errors import InvalidInput, NotFound
from e4t.judges import (
    CONTEXT_FORMAT,
    ContextJudge,
    ContextVocab,
    IdentityJudge,
    JudgeArch,
    load_judges,
)
from e4t.safetensors_io import read_file

ARCH = JudgeArch(stem=4, channels=(8, 8, 16, 16), blocks=(0, 0, 1, 1))
VOCAB = ContextVocab(
    {"background": ("plain", "beach"), "medium": ("photo", "sketch"), "accessory": ("none", "hat")},
    {
        "background": {"plain": "", "beach": " on the beach"},
        "medium": {"photo": "a photo of", "sketch": "a sketch of"},
        "accessory": {"none": "", "hat": " wearing a hat"},
    },
)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [
        Image.fromarray(torch.randint(0, 256, (48, 80, 3), generator=g, dtype=torch.uint8).numpy()) for _ in range(n)
    ]


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("judges")
    IdentityJudge(ARCH, {"domains": ["faces"], "training_identities": 3}).save(out / "identity.safetensors")
    ContextJudge(ARCH, VOCAB, {"domains": ["faces"]}).save(out / "context.safetensors")
    return out


def test_embeddings_are_unit_norm_and_deterministic(judges):
    identity = load_judges(judges).identity
    emb = identity.embed(_images(5))  # any size: resized and center-cropped to 64 px
    assert emb.shape == (5, 128) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(identity.embed(_images(5)), emb)
    assert identity.id_similarity(_images(1), _images(1)) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= identity.id_similarity(_images(2), _images(3, seed=1)) <= 1.0


def test_files_are_fp16_with_config_in_metadata(judges):
    tensors, config = read_file(judges / "context.safetensors", CONTEXT_FORMAT)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert config["arch"]["channels"] == [8, 8, 16, 16] and config["domains"] == ["faces"]
    assert config["vocab"]["labels"]["background"] == ["plain", "beach"]
    identity = IdentityJudge.load(judges / "identity.safetensors")
    assert identity.arch == ARCH and identity.info["training_identities"] == 3


def test_bytes_round_trip_keeps_weights(judges):
    ctx = ContextJudge.load(judges / "context.safetensors")
    again = ContextJudge.from_bytes(ctx.to_bytes(torch.float16))
    for k, v in ctx.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_context_predictions_and_accuracy(judges):
    ctx = load_judges(judges).context
    images = _images(4)
    preds = ctx.predict(images)
    assert len(preds) == 4 and all(set(p) == {"background", "medium", "accessory"} for p in preds)
    assert all(p["background"] in VOCAB.labels["background"] for p in preds)
    other = "photo" if preds[2]["medium"] == "sketch" else "sketch"
    wanted = [{"background": p["background"]} for p in preds[:2]] + [{"medium": other}, {}]
    assert ctx.context_accuracy(images, wanted) == pytest.approx(2 / 3)  # the empty context is not counted


def test_context_accuracy_errors(judges):
    ctx = load_judges(judges).context
    with pytest.raises(InvalidInput, match="one context per image"):
        ctx.context_accuracy(_images(2), [{"medium": "photo"}])
    with pytest.raises(InvalidInput, match="is not one of"):
        ctx.context_accuracy(_images(1), [{"background": "moon"}])
    with pytest.raises(InvalidInput, match="names a label"):
        ctx.context_accuracy(_images(1), [{}])


def test_load_errors(judges, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_judges(tmp_path)
    with pytest.raises(InvalidInput, match="e4t.judge.identity/1"):
        IdentityJudge.load(judges / "context.safetensors")
    with pytest.raises(InvalidInput, match="shape"):
        load_judges(judges).identity.embed(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        IdentityJudge(JudgeArch(image_size=40))
