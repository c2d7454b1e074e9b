"""`e4t pretrain base` on a tiny real world: trains, reloads as a plain pipeline, skips, resumes."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel

from pretrain.arch import TINY, build_vae
from pretrain.base import BaseTrainConfig, loss_weights, train_base, whiten_vae
from pretrain.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from pretrain.cli import main
from shards.synth import synthesize

STAGES = ("1-tokenizer", "2-vae", "3-latents", "4-unet", "5-save")
TINY_CFG = BaseTrainConfig.preset("tiny")


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "faces"
    synthesize("faces", 40, 2, 64, 0, out, splits=["base"], progress=False)
    return out


@pytest.fixture(scope="module")
def trained(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    return train_base([shard_dir], out, arch=TINY, cfg=TINY_CFG, progress=False)


def test_folder_is_a_plain_pipeline_that_generates(trained: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(trained, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a sketch of a face on the beach",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    # the per-channel whitening lives in the VAE's weights, not in a scaling factor
    assert pipe.vae.config.scaling_factor == 1.0
    info = json.loads((trained / "embedded.json").read_text())
    assert info["steps"] == {"vae": TINY_CFG.vae_steps, "unet": TINY_CFG.unet_steps}
    assert set(info["timings"]) >= {"1-tokenizer", "2-vae", "3-latents", "4-unet"}
    assert info["world_version"] == [1] and info["arch"]["unet_channels"] == list(TINY.unet_channels)
    # the class word is one token, as E4T's placeholder initialisation expects
    assert len(pipe.tokenizer("face", add_special_tokens=False).input_ids) == 1
    assert (trained / "samples.png").stat().st_size > 0
    assert not list((trained / "work").rglob("ckpt.pt")), "finished stages should drop their resume checkpoints"


def test_latent_cache_covers_the_base_split(trained: Path) -> None:
    from safetensors.torch import load_file

    cache = load_file(trained / "work" / "3-latents" / "latents.safetensors")
    captions = json.loads((trained / "work" / "3-latents" / "captions.json").read_text())
    assert cache["mean"].shape == cache["std"].shape == (len(captions), TINY.latent_channels, 16, 16)
    # whitened: every channel of z = mean + std * eps has zero mean and unit variance over the split
    mean, std = cache["mean"], cache["std"]
    torch.testing.assert_close(mean.mean((0, 2, 3)), torch.zeros(TINY.latent_channels), atol=1e-4, rtol=0)
    var = mean.var((0, 2, 3)) + std.pow(2).mean((0, 2, 3))
    torch.testing.assert_close(var, torch.ones(TINY.latent_channels), atol=1e-4, rtol=0)
    assert all(" face" in c for c in captions)


def test_rerun_with_same_inputs_skips_every_stage(trained: Path, shard_dir: Path) -> None:
    stamps = {s: (trained / "work" / s / "stage.json").read_text() for s in STAGES}

    def no_training(stage: str, step: int) -> None:
        raise AssertionError(f"{stage} trained step {step} although its inputs did not change")

    train_base([shard_dir], trained, arch=TINY, cfg=TINY_CFG, progress=False, callback=no_training)
    # checkpoint_every is not part of any stage's hash; the CLI with the same preset skips too
    train_base(
        [shard_dir], trained, arch=TINY, cfg=replace(TINY_CFG, checkpoint_every=5), progress=False, callback=no_training
    )
    assert main(["base", "--shards", str(shard_dir), "--out", str(trained), "--preset", "tiny", "--no-progress"]) == 0
    assert {s: (trained / "work" / s / "stage.json").read_text() for s in STAGES} == stamps


def test_killed_unet_stage_resumes_from_its_last_checkpoint(trained: Path, shard_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    shutil.copytree(trained / "work", out / "work")  # stages 1-3 are reused; 4 has new config
    cfg = replace(TINY_CFG, unet_steps=5, checkpoint_every=2)
    seen: list[tuple[str, int]] = []

    def kill_at_3(stage: str, step: int) -> None:
        seen.append((stage, step))
        if (stage, step) == ("4-unet", 3):
            raise _Killed

    with pytest.raises(_Killed):
        train_base([shard_dir], out, arch=TINY, cfg=cfg, progress=False, callback=kill_at_3)
    assert seen == [("4-unet", 1), ("4-unet", 2), ("4-unet", 3)], "stages 1-3 should have been skipped"
    assert load_checkpoint(out / "work" / "4-unet" / "ckpt.pt")["step"] == 2
    assert not (out / "work" / "4-unet" / "stage.json").exists()

    seen.clear()
    train_base([shard_dir], out, arch=TINY, cfg=cfg, progress=False, callback=lambda s, n: seen.append((s, n)))
    assert seen == [("4-unet", 3), ("4-unet", 4), ("4-unet", 5)]
    stamp = json.loads((out / "work" / "4-unet" / "stage.json").read_text())
    assert stamp["resumed_from"] == 2
    StableDiffusionPipeline.from_pretrained(out, local_files_only=True)


def test_stage_store_carries_finished_stages_to_a_fresh_folder(shard_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    store = tmp_path / "stages"
    first = train_base([shard_dir], tmp_path / "a", arch=TINY, cfg=TINY_CFG, progress=False, store=store)
    # kept: the trained stages, half precision, without checkpoints; not the latent cache or the export
    assert sorted(p.name for p in store.iterdir()) == ["1-tokenizer", "2-vae", "4-unet"]
    assert not list(store.rglob("*.pt"))
    stored_vae = load_file(store / "2-vae" / "model" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored_vae.values()} == {torch.float16}

    def no_training(stage: str, step: int) -> None:
        raise AssertionError(f"{stage} trained step {step} although the store holds it")

    # a fresh folder (another machine's clone) trains nothing the store has
    second = train_base(
        [shard_dir], tmp_path / "b", arch=TINY, cfg=TINY_CFG, progress=False, store=store, callback=no_training
    )
    vae = load_file(second / "work" / "2-vae" / "model" / "diffusion_pytorch_model.safetensors")
    assert all(vae[k].dtype == torch.float32 and torch.equal(vae[k], stored_vae[k].float()) for k in vae)
    first_vae = load_file(first / "work" / "2-vae" / "model" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(first_vae[k], vae[k]) for k in vae), "the store should hold half precision"
    StableDiffusionPipeline.from_pretrained(second, local_files_only=True)

    # a stage trained with other settings is not taken from the store; it trains, then replaces it there
    seen: list[tuple[str, int]] = []
    cfg = replace(TINY_CFG, vae_steps=4)
    train_base(
        [shard_dir],
        tmp_path / "c",
        arch=TINY,
        cfg=cfg,
        progress=False,
        store=store,
        callback=lambda s, n: seen.append((s, n)),
    )
    assert ("2-vae", 4) in seen and ("1-tokenizer", 1) not in seen
    assert (
        json.loads((store / "2-vae" / "stage.json").read_text())["key"]
        == json.loads((tmp_path / "c" / "work" / "2-vae" / "stage.json").read_text())["key"]
    )


def test_checkpoint_roundtrip_restores_rng(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "missing.pt") is None
    state = {"step": 7, "rng": capture_rng(), "w": torch.arange(3)}
    expected = torch.rand(4)
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    restore_rng(loaded["rng"])
    assert loaded["step"] == 7 and torch.equal(loaded["w"], torch.arange(3))
    assert torch.equal(torch.rand(4), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"], "the atomic write should leave no temp file"


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train_base([tmp_path], tmp_path / "out", arch=TINY, cfg=TINY_CFG, progress=False)


def test_whitening_keeps_the_autoencoder_and_moves_its_latents() -> None:
    torch.manual_seed(0)
    vae = build_vae(TINY).eval()
    with torch.no_grad():  # a trained VAE's latents sit off zero with uneven spread; imitate that
        vae.quant_conv.bias[: TINY.latent_channels] += torch.tensor([-1.4, -2.5, -3.8, -0.1])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        recon = vae.decode(before.mean).sample
        shift, scale = torch.tensor([-1.0, -2.0, -3.0, 0.5]), torch.tensor([2.0, 1.3, 1.9, 0.9])
        whiten_vae(vae, shift, scale)
        after = vae.encode(x).latent_dist
        shift_, scale_ = shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)
        torch.testing.assert_close(after.mean, (before.mean - shift_) / scale_, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(after.std, before.std / scale_, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(vae.decode(after.mean).sample, recon, atol=1e-5, rtol=1e-4)
    assert vae.config.scaling_factor == 1.0


def test_init_from_continues_an_earlier_base(trained: Path, shard_dir: Path, tmp_path: Path) -> None:
    # a near-zero learning rate: the continued UNet must still be the earlier one, not a fresh init
    cfg = replace(TINY_CFG, unet_lr=1e-12, unet_steps=2, init_from=str(trained))
    store, seen = tmp_path / "stages", []
    out = train_base(
        [shard_dir],
        tmp_path / "continued",
        arch=TINY,
        cfg=cfg,
        progress=False,
        store=store,
        callback=lambda s, n: seen.append(s),
    )
    # its own stage name, so that one store keeps the first schedule's UNet stage beside this one
    assert seen[-2:] == ["4-unet-continued"] * 2
    assert sorted(p.name for p in store.iterdir()) == ["1-tokenizer", "2-vae", "4-unet-continued"]
    before = StableDiffusionPipeline.from_pretrained(trained, local_files_only=True).unet.state_dict()
    after = StableDiffusionPipeline.from_pretrained(out, local_files_only=True).unet.state_dict()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-5) for k in before)
    # a base of another architecture cannot start this one
    wider = replace(TINY, unet_channels=(16, 32, 64))
    with pytest.raises(ValueError, match="another UNet"):
        train_base([shard_dir], tmp_path / "wider", arch=wider, cfg=cfg, progress=False)


def test_loss_weights_floor_the_image_error_at_high_noise() -> None:
    alphas = torch.tensor([0.999, 0.5, 0.01])  # SNR 999, 1, ~0.0101
    snr = alphas / (1 - alphas)
    min_snr = replace(TINY_CFG, unet_snr_gamma=5.0)
    torch.testing.assert_close(loss_weights(alphas, "epsilon", min_snr), torch.tensor([5 / 999, 1.0, 1.0]))
    floored = replace(min_snr, unet_snr_floor=1.0)
    # in image-error terms: 5 (capped), 1, and 1 where min-SNR alone gives 0.0101
    torch.testing.assert_close(loss_weights(alphas, "epsilon", floored) * snr, torch.tensor([5.0, 1.0, 1.0]))
    torch.testing.assert_close(loss_weights(alphas, "v_prediction", floored) * (snr + 1), torch.tensor([5.0, 1.0, 1.0]))
    assert torch.equal(loss_weights(alphas, "v_prediction", TINY_CFG), torch.ones(3))


def test_v_prediction_continues_an_epsilon_base(trained: Path, shard_dir: Path, tmp_path: Path) -> None:
    arch = replace(TINY, prediction_type="v_prediction")
    cfg = replace(TINY_CFG, unet_steps=2, unet_snr_gamma=5.0, unet_snr_floor=1.0, init_from=str(trained))
    out = train_base([shard_dir], tmp_path / "v", arch=arch, cfg=cfg, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # what samples.png and every later user read
    assert json.loads((out / "embedded.json").read_text())["arch"]["prediction_type"] == "v_prediction"
    curve = (out / "work" / "4-unet-continued-v" / "curve.jsonl").read_text().splitlines()  # its own stage
    assert curve and all(math.isfinite(json.loads(c)["loss"]) for c in curve)
    # the epsilon base's own record leaves the field out, so stages committed before it keep their keys
    assert "prediction_type" not in json.loads((trained / "embedded.json").read_text())["arch"]
    # a further schedule of the same kind, tagged, trains into a stage of its own beside it in one store
    tagged = replace(cfg, unet_steps=1, init_from=str(out), stage_tag="gpu")
    train_base([shard_dir], tmp_path / "v-gpu", arch=arch, cfg=tagged, progress=False, store=tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").glob("4-unet*")) == ["4-unet-continued-v-gpu"]


def test_contrastive_text_stage_feeds_a_frozen_text_encoder(trained: Path, shard_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    shutil.copytree(trained / "work", out / "work")  # stages 1-3 are reused; 4-text is new and 4-unet follows it
    cfg = replace(TINY_CFG, text_steps=3, text_batch_size=8, unet_describe_share=0.0)
    seen: list[tuple[str, int]] = []
    train_base([shard_dir], out, arch=TINY, cfg=cfg, progress=False, callback=lambda s, n: seen.append((s, n)))
    assert [s for s, _ in seen] == ["4-text"] * 3 + ["4-unet"] * TINY_CFG.unet_steps
    pretrained = CLIPTextModel.from_pretrained(out / "work" / "4-text" / "text_encoder").state_dict()
    shipped = StableDiffusionPipeline.from_pretrained(out, local_files_only=True).text_encoder.state_dict()
    # the UNet stage read the contrastive text encoder and left it as it was
    assert all(torch.equal(pretrained[k], shipped[k].float()) for k in pretrained)
    joint = StableDiffusionPipeline.from_pretrained(trained, local_files_only=True).text_encoder.state_dict()
    assert not all(torch.equal(joint[k].float(), shipped[k].float()) for k in joint)
