"""Domain pretraining of E4T (Gal et al. 2023, sec. 4.1) under DeepSpeed: encoder + weight offsets, base frozen.

Launch:
  one machine, N processes:  e4t pretrain domain --base BASE --shards DIR --out PACK --num-procs N
  DeepSpeed's launcher:      deepspeed --num_gpus N -m pretrain.domain --base ... (hostfile for many machines,
                             see deploy/deepspeed/); on CPU every process uses the gloo backend.
Each rank runs on one device (cuda:LOCAL_RANK where CUDA exists, else the CPU) and streams
resampled shards of the domain-pretraining split, a stream of its own per (seed, rank). Checkpoints
(DeepSpeed's per-rank format: weights, optimizer, LR schedule, step, RNG, and each rank's data
position) go to PACK.work/ every `checkpoint_every` steps, the newest `keep_checkpoints` kept; a
restarted run with the same output continues from the latest exactly as if it had not stopped.
Per-step figures go to PACK.work/loss.jsonl (rank 0) and TensorBoard (PACK.work/tensorboard).
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
from pretrain.checkpoint import LossLog, capture_rng, prune_checkpoints, restore_rng
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
    grad_accum: int = 1  # micro-batches per optimizer step
    zero_stage: int = 2  # 0: plain data parallel; 1: optimizer states sharded; 2: gradients too
    precision: str = "auto"  # fp32, bf16 (autocast, fp32 master weights), auto: bf16 on a CUDA device that has it
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    seed: int = 0
    rank: int = 4
    # None: the encoder's default new tower (embedded base); a dict: a new tower of that CLIPVisionConfig;
    # a str: a pretrained CLIPVisionModel folder (real bases; the paper uses CLIP ViT-L/14)
    vision: dict | str | None = None
    # a pretrained tower stays frozen (the pack then refers to its folder by hash): on CPU, fine-tuning
    # ViT-L's 303M parameters would add ~3.6 GB of gradients and Adam state per rank
    freeze_vision: bool = True
    # a pretrained tower that is fine-tuned learns slower than the new layers, so that the diffusion loss's
    # noisy gradients refine its features rather than overwrite them
    lr_vision: float = 3e-5
    # L2 on the encoder's embedding offset (the paper's 0.01 by default). On the described world, where
    # Textual Inversion moves a word twice the class word's norm to carry a subject, 0.01 pins the guess
    # 20x closer than that (README, "A vision tower that knows identities").
    embedding_l2: float = LossWeights.embedding
    split: str = "pretrain"
    # the diffusion target is another view of the input's identity, so that the encoder must encode identity,
    # not pose; off for the shipped packs (README, "The described world, measured")
    paired_views: bool = False
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

    def check(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("checkpoint_every", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"`{name}` must be at least {low} but is {getattr(self, name)}")
        if self.embedding_l2 < 0:
            raise ValueError(f"`embedding_l2` must be at least 0 but is {self.embedding_l2}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"`keep_checkpoints` must be at least 1 (the one to resume from) but is {self.keep_checkpoints}"
            )
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"`zero_stage` must be 0, 1 or 2 but is {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)} but is {self.precision!r}")


PRECISIONS = ("fp32", "bf16", "auto")


def rank_device() -> torch.device:
    """This rank's device, chosen once: cuda:LOCAL_RANK where CUDA exists (one GPU per rank), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32 or bf16 for `precision` on `device`; bf16 asked of a CUDA device without it is an error."""
    has_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if has_bf16 else "fp32"
    if precision == "bf16" and device.type == "cuda" and not has_bf16:
        raise ValueError(f"--precision bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return precision  # bf16 on the CPU: torch's CPU autocast runs it (slowly); asked for, so given


def deepspeed_config(cfg: DomainTrainConfig, world: int, device: torch.device) -> dict:
    """The JSON config for `device` (configs/cpu.json or configs/cuda.json), sized to this run."""
    ds = json.loads((CONFIG_DIR / f"{device.type}.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * world
    ds["zero_optimization"]["stage"] = cfg.zero_stage
    # autocast rather than DeepSpeed's "bf16" section: that one casts the whole module, frozen UNet
    # included, while the VAE and text encoder (outside the engine's module) stay float32
    ds["torch_autocast"] = {"enabled": resolve_precision(cfg.precision, device) == "bf16", "dtype": "bfloat16"}
    ds["scheduler"]["params"].update(
        {"warmup_num_steps": cfg.warmup, "total_num_steps": max(cfg.steps, cfg.warmup + 1)}
    )
    return ds


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
    cadences = ("checkpoint_every", "keep_checkpoints", "track_every", "track_subjects")
    settings = {k: v for k, v in asdict(cfg).items() if k not in cadences}
    settings["precision"] = resolve_precision(cfg.precision, rank_device())  # what "auto" means here
    if isinstance(cfg.vision, str):  # a pretrained tower counts by its content, wherever its folder lives
        from e4t.vision import vision_folder_hash

        settings["vision"] = {"folder_hash": vision_folder_hash(cfg.vision)}
    else:  # meaningless without a pretrained tower; left out, fingerprints of earlier packs still match
        del settings["freeze_vision"]
    if not isinstance(cfg.vision, str) or cfg.freeze_vision:
        del settings["lr_vision"]
    if cfg.embedding_l2 == LossWeights.embedding:  # fingerprints of packs from before the field hold
        del settings["embedding_l2"]
    if cfg.paired_views:  # paired target views were jittered before they were kept clean
        settings["targets"] = "clean"
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

    # 1. distributed setup: one device per rank, chosen once; nccl between GPUs, gloo between CPU processes
    cfg.check()
    device = rank_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    # 2. the frozen base, the objective, and the trainable encoder + offsets, all on this rank's device
    base = load_base(base_dir, device=device)
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
    objective = E4TObjective(base, class_word, LossWeights(embedding=cfg.embedding_l2))
    pack.loss_weights = objective.weights  # inference-time tuning penalizes the offset as pretraining did
    model = DomainModel(objective, pack.encoder.to(device).train().requires_grad_(True))
    offsets = offset_parameters(base.unet, TUNE)
    for p in offsets:
        p.requires_grad_(True)
    pretrained_tower = isinstance(cfg.vision, str) and not cfg.freeze_vision
    tower = {id(p) for p in model.encoder.vision.parameters()} if pretrained_tower else set()
    param_groups = [
        {"params": [p for p in model.encoder.parameters() if id(p) not in tower], "lr": cfg.lr_encoder},
        {"params": offsets, "lr": cfg.lr_offsets},
    ]
    if pretrained_tower:
        param_groups.append({"params": list(model.encoder.vision.parameters()), "lr": cfg.lr_vision})

    # 3. generating (the tracker's) adds serving's adapter to the UNet: add it now, frozen, so that the
    # parameters DeepSpeed records at its start are the ones it finds when it checkpoints
    activate_offsets(base.unet, pack.offset_config, [pack.offsets])
    keep_training_adapter(base.unet)

    # 4. DeepSpeed engine from the device's JSON config, sized to this run
    ds_config = deepspeed_config(cfg, world, device)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups, config=ds_config)

    # 5. resume from the latest checkpoint of this output, if any: weights, optimizer, schedule, RNG, data
    work = work or out.with_suffix(".work")
    step, data_state = 0, {"samples": 0, "bad_samples": 0}
    if (work / "latest").is_file():
        _, client = engine.load_checkpoint(str(work), load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None or client.get("fingerprint") != fingerprint:
            raise RuntimeError(
                f"checkpoints in {work} come from other inputs or settings; delete that folder or pass --restart-stale"
            )
        if len(client["data"]) != world:  # each rank's stream position belongs to that rank
            raise RuntimeError(
                f"checkpoints in {work} were written by {len(client['data'])} rank(s); resume with as many "
                f"(--num-procs {len(client['data'])}), not {world}"
            )
        step, data_state = client["step"], client["data"][rank]
        if rank == 0:
            print(f"resuming from step {step} ({work})", flush=True)
        restore_rng(client["rng"][rank])

    # 6. data: a resampled stream of the pretraining split per (seed, rank). Micro-batch k of a rank is
    # a function of (seed, rank, k) alone, and the checkpoint holds how many samples the rank took, so a
    # resumed stream skips exactly those (without decoding their images) and goes on as the unkilled
    # run's did. Reseeding by step instead would give a resumed run other samples than the unkilled one.
    urls = [u for d in shard_dirs for u in shard_urls(d)]
    pipe = make_pipeline(
        urls,
        batch_size=cfg.batch_size,
        splits=[cfg.split],
        resampled=True,
        # the reader jitters the encoder's input, never a paired target view: offsets fitted to jittered
        # targets draw mosaics on the described base (README, "Clean targets"). Unpaired runs, whose input
        # is their target, keep the jitter the shipped packs were measured best with.
        augment=True,
        seed=cfg.seed,
        world_size=world,
        rank=rank,
        image_size=base.resolution,
        pairs=cfg.paired_views,
        skip=data_state["samples"],
    )
    pipe.handler.count = data_state["bad_samples"]  # bad samples met before the checkpoint
    data = iter(pipe)
    writer, tracker, losses = None, None, None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        from e4t.embedded import artifacts_root
        from pretrain.track import IdentityTracker

        writer = SummaryWriter(str(work / "tensorboard"), purge_step=step)
        losses = LossLog(work / "loss.jsonl", step)
        if cfg.track_every:
            tracker = IdentityTracker.maybe(base, domain, artifacts_root() / "judges", cfg.track_subjects)

    # 7. the loop: `grad_accum` micro-batches per optimizer step (DeepSpeed steps the optimizer and
    # the schedule at the last one); figures are means over ranks and micro-batches
    started = time.time()
    bad_samples = data_state["bad_samples"]
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, desc=f"pretrain {domain}", dynamic_ncols=True)
    while step < cfg.steps:
        sums = torch.zeros(3, device=device)  # loss, diffusion loss, embedding L2
        for _ in range(cfg.grad_accum):
            batch = next(data)
            pixels = batch["pixels"].to(device, non_blocking=True)
            if cfg.paired_views:  # the target view's caption names the context it is drawn in
                captions = [m["target"]["caption"] for m in batch["meta"]]
                loss, parts = engine(pixels, captions, batch["target_pixels"].to(device, non_blocking=True))
            else:
                loss, parts = engine(pixels, batch["caption"])
            engine.backward(loss)
            engine.step()
            sums += torch.tensor([loss.item(), parts["diffusion"], parts.get("embedding_l2", 0.0)], device=device)
        step += 1
        figures = torch.cat([sums / (cfg.grad_accum * world), torch.tensor([float(pipe.handler.count)], device=device)])
        torch.distributed.all_reduce(figures)  # one small collective a step: the means and the bad-sample total
        mean_loss, diffusion, embedding_l2, bad = figures.tolist()
        bad_samples = int(bad)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", diffusion=f"{diffusion:.3g}", bad=bad_samples)
        if writer is not None:
            lr = engine.get_lr()[0]
            writer.add_scalar("train/loss", mean_loss, step)
            writer.add_scalar("train/diffusion", diffusion, step)
            writer.add_scalar("train/embedding_l2", embedding_l2, step)
            writer.add_scalar("train/lr_encoder", lr, step)
            writer.add_scalar("data/bad_samples", bad_samples, step)
            losses.write(step=step, loss=mean_loss, diffusion=diffusion, lr=lr, bad_samples=bad_samples)
        if tracker is not None and (step % cfg.track_every == 0 or step == cfg.steps):
            id_sim, grid = tracker(pack)
            log_track(work, writer, step, id_sim, grid)
            bar.write(f"step {step}: id_sim of the 0-step guess on held-out subjects {id_sim:.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            rng, positions = [None] * world, [None] * world
            torch.distributed.all_gather_object(rng, capture_rng())
            torch.distributed.all_gather_object(
                positions, {"samples": pipe.position.samples, "bad_samples": pipe.handler.count}
            )
            client_state = {"step": step, "rng": rng, "data": positions, "fingerprint": fingerprint}
            engine.save_checkpoint(str(work), tag=f"step{step}", client_state=client_state)
            torch.distributed.barrier()  # every rank's files are written before any old tag goes
            if rank == 0:  # readable without DeepSpeed, so that `launch` can check the folder before starting ranks
                (work / "fingerprint").write_text(fingerprint)
                prune_checkpoints(work, cfg.keep_checkpoints)
    bar.close()
    if writer is not None:
        writer.close()
        losses.close()

    # 8. the domain pack, written by rank 0
    if rank == 0:
        pack.encoder = model.encoder.eval().requires_grad_(False).cpu()
        pack.offsets = {k: v.cpu() for k, v in get_offsets(base.unet, TUNE).items()}
        pack.step = step
        pack.training = {
            "fingerprint": fingerprint,
            "config": asdict(cfg),
            "world_size": world,
            "device": device.type,
            "precision": resolve_precision(cfg.precision, device),
            "bad_samples": bad_samples,
            "seconds_this_run": round(time.time() - started, 1),
            "shards": [json.loads((d / "manifest.json").read_text()).get("name", d.name) for d in shard_dirs],
        }
        pack.save(out)
        print(f"wrote {out} (pack {pack.hash}, step {step}, {bad_samples} bad sample(s) skipped)", flush=True)
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
    p.add_argument("--grad-accum", type=int, metavar="N", help="micro-batches per optimizer step (default: 1)")
    p.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2),
        help="DeepSpeed ZeRO stage: 0 data parallel, 1 shards optimizer states, 2 gradients too (default: 2)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="bf16: autocast with float32 master weights; auto (default): bf16 on a CUDA device that has it, else fp32",
    )
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints")
    p.add_argument(
        "--embedding-l2",
        type=float,
        metavar="W",
        help="L2 weight on the encoder's embedding offset; the pack keeps it for tuning (default: 0.01)",
    )
    p.add_argument("--keep-checkpoints", type=int, metavar="K", help="newest checkpoints kept in WORK (default: 3)")
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
        help="denoise another view of the input's identity instead of the input itself (default: off)",
    )
    p.add_argument("--work", help="checkpoint folder (default: OUT with the suffix .work)")
    p.add_argument(
        "--restart-stale",
        action="store_true",
        help="when the checkpoint folder comes from other inputs or settings, delete it and start over",
    )


_OVERRIDES = (
    "steps",
    "batch_size",
    "grad_accum",
    "zero_stage",
    "precision",
    "checkpoint_every",
    "keep_checkpoints",
    "embedding_l2",
)


def config_from_args(args: argparse.Namespace) -> DomainTrainConfig:
    cfg = DomainTrainConfig.preset(args.preset)
    # getattr: `e4t pretrain embedded` passes a namespace of its own, without some
    for name in (*_OVERRIDES, "paired_views"):  # paired_views reaches the ranks as a flag (worker_argv)
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.check()
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
    for name in (*_OVERRIDES, "work"):
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
