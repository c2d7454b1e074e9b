"""The committed embedded artifacts load, and what they recorded matches the code that reads them."""

import json

import pytest

from e4t.embedded import artifacts_root, default_paths

ROOT = artifacts_root()


@pytest.fixture(scope="module")
def base():
    from e4t import load_base

    base_dir, _ = default_paths()
    return load_base(base_dir)


def test_base_matches_the_architecture_in_code(base):
    from pretrain.arch import DEFAULT, BaseArch

    recorded = json.loads((ROOT / "base" / "embedded.json").read_text())
    assert BaseArch.from_json(recorded["arch"]) == DEFAULT
    assert base.resolution == DEFAULT.image_size
    assert tuple(base.unet.config.block_out_channels) == DEFAULT.unet_channels
    assert base.tokenizer.model_max_length == DEFAULT.max_tokens
    assert base.scheduler.config.prediction_type == DEFAULT.prediction_type


def test_the_base_is_the_shipped_recipes_last_schedule():
    from pretrain.arch import DEFAULT, arch_of_preset
    from pretrain.base import PRESETS
    from pretrain.embedded import SHIPPED

    recorded = json.loads((ROOT / "base" / "embedded.json").read_text())
    last = SHIPPED.continue_presets[-1][0]
    assert arch_of_preset(last) == DEFAULT
    assert recorded["training"]["init_from"]  # started from the schedule before
    assert recorded["training"]["unet_steps"] == PRESETS[last].unet_steps
    assert recorded["sampling"] == {"guidance": SHIPPED.guidance}  # what `make embedded` writes


def test_the_base_draws_at_the_guidance_the_recipe_chose(base):
    from pretrain.embedded import SHIPPED

    assert base.default_guidance == SHIPPED.guidance


def test_every_synthetic_domain_has_a_pack_for_this_base(base):
    from e4t import load_pack
    from e4t.vision import vision_folder_hash
    from shards.synth import DOMAINS

    _, pack_paths = default_paths()
    packs = {p.domain: p for p in (load_pack(path, base) for path in pack_paths)}  # strict weight loading
    assert set(packs) == set(DOMAINS)
    tower_hash = vision_folder_hash(ROOT / "vision")
    for domain, pack in packs.items():
        assert pack.class_word == DOMAINS[domain].CLASS_WORD
        assert pack.base_hash == base.hash
        assert pack.step == pack.training["config"]["steps"]
        assert pack.training["config"]["paired_views"]
        # the encoder started from the committed pretrained tower, fine-tuned and stored in the pack
        assert pack.encoder.config.vision_hash == tower_hash and not pack.encoder.refers_to_folder


def test_judges_were_trained_on_the_current_world():
    from e4t.judges import load_judges
    from shards.synth import DOMAINS

    judges = load_judges(ROOT / "judges")
    for judge in (judges.identity, judges.context):
        assert judge.config["world_versions"] == {d: m.WORLD_VERSION for d, m in DOMAINS.items()}
        assert judge.config["training_split"] == "evaluator"
    assert judges.identity.config["validation"]["heldout_clean"]["accuracy"] >= 0.9
