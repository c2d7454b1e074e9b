"""The committed embedded artifacts load, and what they recorded matches the code that reads them."""

import json
from pathlib import Path

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


def test_every_synthetic_domain_has_a_pack_for_this_base(base):
    from e4t import load_pack
    from shards.synth import DOMAINS

    _, pack_paths = default_paths()
    packs = {p.domain: p for p in (load_pack(path, base) for path in pack_paths)}  # strict weight loading
    assert set(packs) == set(DOMAINS)
    for domain, pack in packs.items():
        assert pack.class_word == DOMAINS[domain].CLASS_WORD
        assert pack.base_hash == base.hash
        assert pack.step == pack.training["config"]["steps"]


def test_the_described_world_is_committed_whole():
    """`artifacts/described` (`e4t pretrain embedded --world described`): base, tower and packs belong together."""
    from e4t import load_base, load_pack
    from e4t.vision import vision_folder_hash
    from pretrain.arch import DESCRIBED_V, BaseArch, arch_of_preset
    from pretrain.base import PRESETS
    from pretrain.embedded import WORLDS
    from shards.synth import DOMAINS

    root = Path(__file__).resolve().parent.parent / "artifacts" / "described"  # committed, whatever E4T_ARTIFACTS says
    recorded = json.loads((root / "base" / "embedded.json").read_text())
    # the base is the recipe's last UNet schedule, started from the one before
    last = WORLDS["described"].continue_presets[-1][0]
    assert BaseArch.from_json(recorded["arch"]) == arch_of_preset(last) == DESCRIBED_V
    assert recorded["training"]["init_from"]
    assert recorded["training"]["unet_steps"] == PRESETS[last].unet_steps
    base = load_base(root / "base")
    packs = [load_pack(root / "packs" / f"{domain}.safetensors", base) for domain in DOMAINS]
    assert all(pack.base_hash == base.hash for pack in packs)
    assert all(pack.training["config"]["paired_views"] for pack in packs)
    # both encoders started from the committed pretrained tower, fine-tuned and stored in the pack
    tower_hash = vision_folder_hash(root / "vision")
    assert all(pack.encoder.config.vision_hash == tower_hash and not pack.encoder.refers_to_folder for pack in packs)


def test_judges_were_trained_on_the_current_world():
    from e4t.judges import load_judges
    from shards.synth import DOMAINS

    judges = load_judges(ROOT / "judges")
    for judge in (judges.identity, judges.context):
        assert judge.config["world_versions"] == {d: m.WORLD_VERSION for d, m in DOMAINS.items()}
        assert judge.config["training_split"] == "evaluator"
    assert judges.identity.config["validation"]["heldout_clean"]["accuracy"] >= 0.9
