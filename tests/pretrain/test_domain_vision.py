"""`e4t pretrain domain --vision PATH`: the option reaches the ranks, and the tower's content is in the fingerprint."""

import argparse
import json
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from pretrain.domain import DomainTrainConfig, _inputs_fingerprint, add_arguments, config_from_args, worker_argv

TOWER = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)


def save_tower(path, seed=0):
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(path)
    return path


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--base", "b", "--shards", "s", "--out", "o.safetensors", *argv])


def test_vision_options_reach_the_ranks_as_an_absolute_path(tmp_path, monkeypatch):
    save_tower(tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    args = parse(["--vision", "clip", "--train-vision"])
    cfg = config_from_args(args)
    assert cfg.vision == str((tmp_path / "clip").resolve()) and cfg.freeze_vision is False

    rank_argv = worker_argv(args)
    monkeypatch.chdir("/")  # ranks run from the repository root, not the user's folder
    rank_cfg = config_from_args(parse(rank_argv))
    assert rank_cfg == cfg
    assert config_from_args(parse([])).vision is None and config_from_args(parse([])).freeze_vision is True


def test_a_missing_vision_folder_is_a_usage_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_from_args(parse(["--vision", str(tmp_path / "nowhere")]))


def test_the_fingerprint_follows_the_towers_content_not_its_location(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"name": "faces"}))
    tower = save_tower(tmp_path / "clip")
    cfg = replace(DomainTrainConfig.preset("tiny"), vision=str(tower))
    first = _inputs_fingerprint("base", [shards], cfg, "faces")

    moved = shutil.move(tower, tmp_path / "moved")
    assert _inputs_fingerprint("base", [shards], replace(cfg, vision=str(moved)), "faces") == first
    assert _inputs_fingerprint("base", [shards], replace(cfg, vision=str(moved), freeze_vision=False), "faces") != first
    shutil.rmtree(moved)
    save_tower(moved, seed=1)
    assert _inputs_fingerprint("base", [shards], replace(cfg, vision=str(moved)), "faces") != first

    # a tower trained from scratch has no freezing to speak of: fingerprints of packs made before the field hold
    tiny = DomainTrainConfig.preset("tiny")
    assert _inputs_fingerprint("base", [shards], tiny, "faces") == _inputs_fingerprint(
        "base", [shards], replace(tiny, freeze_vision=False), "faces"
    )


@pytest.mark.slow
def test_pretraining_with_a_pretrained_tower_writes_a_pack_that_refers_to_it(
    tiny_base_dir, tmp_path, pretrain_domain_cmd
):
    import subprocess
    from pathlib import Path

    from e4t import load_base, load_pack
    from e4t.pack import FORMAT
    from e4t.safetensors_io import read_file
    from shards.synth import synthesize

    shards = tmp_path / "shards"
    synthesize("faces", 20, 2, 64, 0, shards, progress=False)
    tower = save_tower(tmp_path / "clip")
    out = tmp_path / "faces.safetensors"
    cmd = pretrain_domain_cmd(tiny_base_dir, shards, out, "--vision", str(tower), "--steps", "2")
    run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]

    pack = load_pack(out, load_base(tiny_base_dir))  # checks the folder's hash
    assert pack.step == 2 and pack.encoder.refers_to_folder
    assert pack.encoder.config.vision == str(tower.resolve())
    assert pack.training["config"]["vision"] == str(tower.resolve()) and pack.training["config"]["freeze_vision"]
    tensors, _ = read_file(out, FORMAT)
    assert not [k for k in tensors if k.startswith("encoder.vision.")]


def test_the_embedding_penalty_reaches_the_ranks_and_the_fingerprint_only_when_changed(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"name": "faces"}))
    tiny = DomainTrainConfig.preset("tiny")
    assert tiny.embedding_l2 == 0.01  # the paper's weight, which the shipped packs were trained with
    args = parse(["--embedding-l2", "1e-4"])
    cfg = config_from_args(args)
    assert cfg.embedding_l2 == 1e-4 and config_from_args(parse(worker_argv(args))) == cfg
    # another weight is other inputs: checkpoints of the default one are stale
    default = _inputs_fingerprint("base", [shards], tiny, "faces")
    assert _inputs_fingerprint("base", [shards], replace(tiny, embedding_l2=1e-4), "faces") != default
    with pytest.raises(ValueError, match="embedding_l2"):
        config_from_args(parse(["--embedding-l2", "-1"]))
