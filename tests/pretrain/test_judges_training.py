"""Training the judges: the tiny preset end to end (seconds), skipping, and the verification figures."""

import json

import pytest
import torch

from e4t.judges import CONTEXT_KINDS, IDENTITY_FORMAT, load_judges, verification
from e4t.safetensors_io import read_file
from pretrain.judges import JudgeTrainConfig, augment, train_judges
from shards.synth import DOMAINS

FIGURES = {"accuracy", "tar_at_far_1e-2", "cos_same", "cos_diff", "genuine_pairs", "impostor_pairs"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base_dir):
    out = tmp_path_factory.mktemp("judges")
    report = train_judges(out, preset="tiny", base_dir=tiny_base_dir, progress=False)
    return out, report


def test_tiny_training_writes_loadable_judges_and_report(trained):
    out, report = trained
    assert json.loads((out / "report.json").read_text()) == report
    assert FIGURES <= set(report["clean"]["identity"])
    assert set(CONTEXT_KINDS) <= set(report["clean"]["context"])
    judges = load_judges(out)
    tensors, config = read_file(out / "identity.safetensors", IDENTITY_FORMAT)
    assert config["domains"] == sorted(DOMAINS) and config["training_split"] == "evaluator"
    assert config["training_identities"] == 24 * len(DOMAINS) and config["world_versions"].keys() == DOMAINS.keys()
    assert config["validation"]["heldout_clean"] == report["clean"]["identity"]
    assert {t.dtype for t in tensors.values()} == {getattr(torch, report["dtype"])}
    emb = judges.identity.embed(torch.zeros(2, 3, 64, 64))
    assert emb.shape == (2, 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert judges.context.vocab.labels["medium"] == ("photo", "sketch", "painting")


def test_degraded_figures_on_tiny_base(trained):
    _, report = trained
    degraded = report["degraded"]
    assert degraded["base_hash"] and degraded["queries"] == 2 * len(DOMAINS)
    for kind in ("vae", "img2img"):
        assert FIGURES <= set(degraded[kind]["identity"])
        assert 0.0 <= degraded[kind]["context"]["all"] <= 1.0


def test_rerun_skips_and_config_change_retrains(trained, tmp_path):
    out, report = trained
    before = (out / "identity.safetensors").stat().st_mtime_ns
    assert train_judges(out, preset="tiny", progress=False) == report  # same key: nothing runs, nothing written
    assert (out / "identity.safetensors").stat().st_mtime_ns == before
    cfg = JudgeTrainConfig.preset("tiny", context_steps=2)
    assert cfg.training_key(sorted(DOMAINS)) != JudgeTrainConfig.preset("tiny").training_key(sorted(DOMAINS))
    again = train_judges(tmp_path, cfg=cfg, domains=["faces"], progress=False)
    assert again["domains"] == ["faces"] and again["degraded"] == {}


def test_verification_figures_on_known_scores():
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    emb = torch.nn.functional.one_hot(ids, 4).float()
    emb = emb + 0.01 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    emb = torch.nn.functional.normalize(emb, dim=-1)
    half = ids % 2 == 0
    valid = torch.ones(8, 8, dtype=torch.bool).triu(1) & (half[:, None] == half[None, :])
    figs = verification(emb @ emb.T, ids[:, None] == ids[None, :], valid, half[:, None].expand(8, 8))
    assert figs["accuracy"] == 1.0 and figs["tar_at_far_1e-2"] == 1.0
    assert figs["cos_same"] > 0.99 and abs(figs["cos_diff"]) < 0.05
    with pytest.raises(ValueError, match="genuine and impostor"):
        verification(emb @ emb.T, torch.zeros(8, 8, dtype=torch.bool), valid, half[:, None].expand(8, 8))


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 3, 64, 64) * 2 - 1
    y = augment(x.clone(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)


def test_bad_preset():
    with pytest.raises(ValueError, match="`preset` must be one of"):
        JudgeTrainConfig.preset("huge")
