"""Domain pretraining of E4T (Gal et al. 2023, sec. 4.1) under DeepSpeed: encoder + weight offsets, base frozen.

Launch:
  one machine, N processes:  e4t pretrain domain --base BASE --shards DIR --out PACK --num-procs N
  DeepSpeed's launcher:      deepspeed --num_gpus N -m pretrain.domain --base ... (hostfile for many machines,
                             see deploy/deepspeed/); on CPU every process uses the gloo backend.
Each rank streams resampled shards of the domain-pretraining split. Checkpoints (DeepSpeed's
per-rank format: weights, optimizer, LR schedule, step, RNG) go to PACK.work/ every
`checkpoint_every` steps; a restarted run with the same output continues from the latest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from e4t import load_base
from e4t.objective import E4TObjective, LossWeights
from e4t.offsets import TUNE, OffsetConfig, activate, activate_offsets, get_offsets, offset_parameters
from e4t.pack import DomainPack
from pretrain.checkpoint import capture_rng, restore_rng
from pretrain.track import keep_training_adapter, log_track
from shards.reader import make_pipeline, shard_urls

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DomainTrainConfig:
    steps: int = 2000
    batch_size: int = 8  # per process
    lr_encoder: float = 3e-4
    lr_offsets: float = 1e-4
    warmup: int = 100
    checkpoint_every: int = 200
    seed: int = 0
    rank: int = 4
    # None: the encoder's default new tower (embedded base); a dict: a new tower of that CLIPVisionConfig;
    # a str: a pretrained CLIPVisionModel folder (real bases; the paper uses CLIP ViT-L/14)
    vision: dict | str | None = None
    # a pretrained tower stays frozen (the pack then refers to its folder by hash): on CPU, fine-tuning
    # ViT-L's 303M parameters would add ~3.6 GB of gradients and Adam state per rank
    freeze_vision: bool = True
    deepspeed_config: str = "zero2_cpu.json"
    split: str = "pretrain"
    # the diffusion target is another view of the input's identity, so that the encoder must encode identity,
    # not pose (with the input itself as target, the offsets can copy the input's layout instead)
    paired_views: bool = True
    # rank 0 scores the encoder's 0-step guess on held-out subjects every `track_every` steps (0: never)
    track_every: int = 100
    track_subjects: int = 4

    @classmethod
    def preset(cls, name: str) -> DomainTrainConfig:
        if name == "tiny":
            return cls(
                steps=4,
                batch_size=2,
                warmup=1,
                checkpoint_every=2,
                track_every=0,
                vision=dict(
                    image_size=32,
                    patch_size=8,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                ),
            )
        if name == "default":
            return cls()
        raise ValueError(f"unknown preset {name!r}; available: tiny, default")


class DomainModel(nn.Module):
    """What DeepSpeed trains: the encoder and the UNet's offsets; the rest of the base stays frozen."""

    def __init__(self, objective: E4TObjective, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.unet = objective.base.unet  # registered so that its LoRA parameters are the engine's
        self._objective = objective

    def forward(
        self, pixels: torch.Tensor, captions: list[str], target_pixels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of denoising `target_pixels` (captioned `captions`) with the embedding the encoder reads off `pixels`.

        Without targets the encoder's input is denoised itself, as in the paper. With another view
        of the same identity as target, nothing but identity carries over from input to target.
        """
        obj = self._objective
        source = obj.noise(pixels)  # the UNet branch sees the input view noised, as at inference
        offset = obj.predict_offset(self.encoder, source)
        target = source if target_pixels is None else obj.noise(target_pixels)
        embeddings = obj.class_embedding + offset
        return obj.loss(target, embeddings, obj.subject_prompts(captions), offset=offset)


def _inputs_fingerprint(base_hash: str, shard_dirs: list[Path], cfg: DomainTrainConfig, domain: str) -> str:
    # cadences never change results
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint_every", "track_every", "track_subjects")}
    if isinstance(cfg.vision, str):  # a pretrained tower counts by its content, wherever its folder lives
        from e4t.vision import vision_folder_hash

        settings["vision"] = {"folder_hash": vision_folder_hash(cfg.vision)}
    else:  # meaningless without a pretrained tower; left out, fingerprints of earlier packs still match
        del settings["freeze_vision"]
    h = hashlib.sha256(json.dumps({"base": base_hash, "cfg": settings, "domain": domain}, sort_keys=True).encode())
    for d in shard_dirs:
        h.update((d / "manifest.json").read_bytes())
    return h.hexdigest()[:16]


def train_domain(
    base_dir: Path,
    shard_dirs: list[Path],
    out: Path,
    cfg: DomainTrainConfig,
    *,
    domain: str,
    class_word: str,
    work: Path | None = None,
) -> Path:
    """The per-rank training job. Run under a launcher (see the module docstring)."""
    import deepspeed
    from tqdm import tqdm

    # 1. distributed setup: gloo on CPU, one rank per process
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    # 2. the frozen base, the objective, and the trainable encoder + offsets
    base = load_base(base_dir)
    fingerprint = _inputs_fingerprint(base.hash, shard_dirs, cfg, domain)
    pack = DomainPack.initial(
        base,
        domain,
        class_word,
        vision=cfg.vision,
        freeze_vision=cfg.freeze_vision,
        seed=cfg.seed,
        offset_config=OffsetConfig(rank=cfg.rank),
    )
    activate(base.unet, TUNE)
    objective = E4TObjective(base, class_word, LossWeights())
    model = DomainModel(objective, pack.encoder.train().requires_grad_(True))
    offsets = offset_parameters(base.unet, TUNE)
    for p in offsets:
        p.requires_grad_(True)
    param_groups = [
        {"params": list(model.encoder.parameters()), "lr": cfg.lr_encoder},
        {"params": offsets, "lr": cfg.lr_offsets},
    ]

    # 3. generating (the tracker's) adds serving's adapter to the UNet: add it now, frozen, so that the
    # parameters DeepSpeed records at its start are the ones it finds when it checkpoints
    activate_offsets(base.unet, pack.offset_config, [pack.offsets])
    keep_training_adapter(base.unet)

    # 4. DeepSpeed engine from the JSON config, sized to this run
    ds_config = json.loads((CONFIG_DIR / cfg.deepspeed_config).read_text())
    ds_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds_config["gradient_accumulation_steps"] = 1
    ds_config["train_batch_size"] = cfg.batch_size * world
    ds_config["scheduler"]["params"].update(
        {"warmup_num_steps": cfg.warmup, "total_num_steps": max(cfg.steps, cfg.warmup + 1)}
    )
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups, config=ds_config)

    # 5. resume from the latest checkpoint of this output, if any
    work = work or out.with_suffix(".work")
    step = 0
    if (work / "latest").is_file():
        _, client = engine.load_checkpoint(str(work), load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None or client.get("fingerprint") != fingerprint:
            raise RuntimeError(
                f"checkpoints in {work} come from other inputs or settings; delete that folder or pass --restart-stale"
            )
        step = client["step"]
        if rank == 0:
            print(f"resuming from step {step} ({work})", flush=True)
        restore_rng(client["rng"][rank] if rank < len(client["rng"]) else client["rng"][0])

    # 6. data: resampled shards of the pretraining split, a different stream per rank and restart
    urls = [u for d in shard_dirs for u in shard_urls(d)]
    data = iter(
        make_pipeline(
            urls,
            batch_size=cfg.batch_size,
            splits=[cfg.split],
            resampled=True,
            augment=True,
            seed=cfg.seed + 1000 * step + rank,
            world_size=world,
            rank=rank,
            image_size=base.resolution,
            pairs=cfg.paired_views,
        )
    )
    writer, tracker = None, None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        from e4t.embedded import artifacts_root
        from pretrain.track import IdentityTracker

        writer = SummaryWriter(str(work / "tensorboard"), purge_step=step)
        if cfg.track_every:
            tracker = IdentityTracker.maybe(base, domain, artifacts_root() / "judges", cfg.track_subjects)

    # 7. the loop
    started = time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, desc=f"pretrain {domain}", dynamic_ncols=True)
    while step < cfg.steps:
        batch = next(data)
        if cfg.paired_views:  # the target view's caption names the context it is drawn in
            captions = [m["target"]["caption"] for m in batch["meta"]]
            loss, parts = engine(batch["pixels"], captions, batch["target_pixels"])
        else:
            loss, parts = engine(batch["pixels"], batch["caption"])
        engine.backward(loss)
        engine.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3g}" for k, v in parts.items()})
        if writer is not None:
            writer.add_scalar("train/loss", loss.item(), step)
            for name, value in parts.items():
                writer.add_scalar(f"train/{name}", value, step)
            writer.add_scalar("train/lr_encoder", engine.get_lr()[0], step)
        if tracker is not None and (step % cfg.track_every == 0 or step == cfg.steps):
            id_sim, grid = tracker(pack)
            log_track(work, writer, step, id_sim, grid)
            bar.write(f"step {step}: id_sim of the 0-step guess on held-out subjects {id_sim:.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            rng = [None] * world
            torch.distributed.all_gather_object(rng, capture_rng())
            engine.save_checkpoint(
                str(work), tag=f"step{step}", client_state={"step": step, "rng": rng, "fingerprint": fingerprint}
            )
            if rank == 0:  # readable without DeepSpeed, so that `launch` can check the folder before starting ranks
                (work / "fingerprint").write_text(fingerprint)
    bar.close()
    if writer is not None:
        writer.close()

    # 8. the domain pack, written by rank 0
    if rank == 0:
        pack.encoder = model.encoder.eval().requires_grad_(False)
        pack.offsets = get_offsets(base.unet, TUNE)
        pack.step = step
        pack.training = {
            "fingerprint": fingerprint,
            "config": asdict(cfg),
            "world_size": world,
            "seconds_this_run": round(time.time() - started, 1),
            "shards": [json.loads((d / "manifest.json").read_text()).get("name", d.name) for d in shard_dirs],
        }
        pack.save(out)
        print(f"wrote {out} (pack {pack.hash}, step {step})", flush=True)
    torch.distributed.barrier()
    return out


def pack_is_current(out: Path, base_dir: Path, shard_dirs: list[Path], cfg: DomainTrainConfig, domain: str) -> bool:
    """True when `out` was trained to completion from these exact inputs and settings."""
    if not out.is_file():
        return False
    from e4t.base import folder_hash
    from e4t.safetensors_io import read_file

    _, config = read_file(out, "e4t.pack/1")
    fingerprint = _inputs_fingerprint(folder_hash(base_dir), shard_dirs, cfg, domain)
    return config.get("training", {}).get("fingerprint") == fingerprint and config.get("step") == cfg.steps


def stale_checkpoints(work: Path, base_dir: Path, shard_dirs: list[Path], cfg: DomainTrainConfig, domain: str) -> bool:
    """True when `work` holds checkpoints whose recorded fingerprint differs from these inputs and settings."""
    recorded = work / "fingerprint"
    if not ((work / "latest").is_file() and recorded.is_file()):
        return False
    from e4t.base import folder_hash

    return recorded.read_text().strip() != _inputs_fingerprint(folder_hash(base_dir), shard_dirs, cfg, domain)


def launch(args: argparse.Namespace) -> int:
    """`e4t pretrain domain`: start `num_procs` local ranks with torch's launcher, splitting the cores."""
    out, base_dir = Path(args.out), Path(args.base)
    shard_dirs = [Path(s) for s in args.shards]
    cfg = config_from_args(args)
    if pack_is_current(out, base_dir, shard_dirs, cfg, args.domain):
        print(f"{out} is up to date with its inputs; nothing to do")
        return 0
    work = Path(args.work) if args.work else out.with_suffix(".work")
    if stale_checkpoints(work, base_dir, shard_dirs, cfg, args.domain):
        if not args.restart_stale:
            print(
                f"checkpoints in {work} come from other inputs or settings; delete that folder "
                "or pass --restart-stale to start over",
                file=sys.stderr,
            )
            return 2
        print(f"checkpoints in {work} come from other inputs or settings; starting over")
        shutil.rmtree(work)
    import subprocess

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.num_procs))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.num_procs}",
        "-m",
        "pretrain.domain",
        *worker_argv(args),
    ]
    return subprocess.call(cmd, env=env, cwd=Path(__file__).resolve().parent.parent)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model folder (diffusers StableDiffusionPipeline)")
    p.add_argument("--shards", required=True, nargs="+", help="shard folder(s) with manifest.json")
    p.add_argument("--out", required=True, help="domain pack file to write (.safetensors)")
    p.add_argument("--domain", default="faces")
    p.add_argument("--class-word", default="face")
    p.add_argument("--preset", default="default", choices=["tiny", "default"])
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument(
        "--vision",
        help="pretrained transformers CLIPVisionModel (or CLIPModel) folder for the encoder's vision branch, "
        "e.g. CLIP ViT-L/14 (default: a small tower trained from scratch)",
    )
    p.add_argument(
        "--train-vision",
        action="store_true",
        help="fine-tune the --vision tower too (default: frozen; the pack then refers to the folder by hash)",
    )
    p.add_argument(
        "--paired-views",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="denoise another view of the input's identity (default: on); --no-paired-views denoises the input itself",
    )
    p.add_argument("--work", help="checkpoint folder (default: OUT with the suffix .work)")
    p.add_argument(
        "--restart-stale",
        action="store_true",
        help="when the checkpoint folder comes from other inputs or settings, delete it and start over",
    )


def config_from_args(args: argparse.Namespace) -> DomainTrainConfig:
    cfg = DomainTrainConfig.preset(args.preset)
    for name in ("steps", "batch_size", "checkpoint_every", "paired_views"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    if getattr(args, "vision", None):
        from e4t.errors import NotFound
        from e4t.vision import check_vision_folder

        try:
            cfg.vision = str(check_vision_folder(args.vision))  # absolute: ranks run from the repository root
        except NotFound as err:  # the command line reports FileNotFoundError as a usage error
            raise FileNotFoundError(str(err)) from None
    cfg.freeze_vision = not getattr(args, "train_vision", False)
    return cfg


def worker_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--base",
        args.base,
        "--shards",
        *args.shards,
        "--out",
        args.out,
        "--domain",
        args.domain,
        "--class-word",
        args.class_word,
        "--preset",
        args.preset,
    ]
    for name in ("steps", "batch_size", "checkpoint_every", "work"):
        if getattr(args, name, None) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if getattr(args, "vision", None):
        argv += ["--vision", str(Path(args.vision).expanduser().resolve())]
    if getattr(args, "train_vision", False):
        argv.append("--train-vision")
    if getattr(args, "paired_views", None) is not None:
        argv.append("--paired-views" if args.paired_views else "--no-paired-views")
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.domain", description="one rank of domain pretraining")
    add_arguments(parser)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed's launcher
    args = parser.parse_args(argv)
    random.seed(0)
    np.random.seed(0)
    train_domain(
        Path(args.base),
        [Path(s) for s in args.shards],
        Path(args.out),
        config_from_args(args),
        domain=args.domain,
        class_word=args.class_word,
        work=Path(args.work) if args.work else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
