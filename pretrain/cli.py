"""`e4t pretrain ...`: training jobs. `base` trains the embedded base from scratch.

e4t pretrain base --shards shards/faces --out models/base --preset described-cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The `e4t pretrain` parser and its subparsers; each subcommand sets `func(args) -> int`."""
    parser = argparse.ArgumentParser(prog="e4t pretrain", description="Training jobs of the e4t project.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    base = sub.add_parser("base", help="train the embedded base (tokenizer, VAE, text encoder, UNet) from scratch")
    base.add_argument(
        "--shards",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="shard directory with manifest.json (repeat once per domain)",
    )
    base.add_argument("--out", required=True, type=Path, metavar="BASE_DIR", help="output pipeline folder")
    base.add_argument(
        "--preset",
        choices=(
            "tiny",
            "plain",
            "described",
            "described-cpu",
            "described-continue",
            "described-cpu-continue",
            "described-v-cpu-continue",
            "described-v-gpu-continue",
        ),
        default="described-cpu",
        help="training config and architecture preset; `described-cpu` (the first schedule of what ships): captions "
        "that name identities, with a contrastively pretrained text encoder, on a CPU; `described-cpu-continue`: "
        "its second schedule, `described-v-cpu-continue` a third that turns the UNet to v-prediction and "
        "`described-v-gpu-continue` a fourth at batch 512 on a GPU, each with --init-from the one before; "
        "`described` and `described-continue`: the same world at batch 512, for a GPU; `plain`: the earlier "
        "world, whose captions name the class word and the context only "
        "(default: %(default)s)",
    )
    base.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="BASE_DIR",
        help="start the UNet stage from this earlier base's UNet and text encoder (same tokenizer and arch)",
    )
    base.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is one)")
    base.add_argument("--steps", type=int, default=None, metavar="N", help="override the UNet training steps")
    base.add_argument("--vae-steps", type=int, default=None, metavar="N", help="override the VAE training steps")
    base.add_argument("--batch-size", type=int, default=None, metavar="N", help="override the UNet batch size")
    base.add_argument(
        "--text-steps",
        type=int,
        default=None,
        metavar="N",
        help="contrastive text-encoder steps before the UNet stage, which then reads it frozen (0: trained jointly)",
    )
    base.add_argument("--dtype", choices=("float32", "float16"), default=None, help="dtype of the saved weights")
    base.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: all cores)")
    base.add_argument("--no-progress", action="store_true", help="hide progress bars")
    base.set_defaults(func=_run_base)

    from pretrain.domain import add_arguments  # light: no torch import at module level beyond typing

    domain = sub.add_parser("domain", help="E4T domain pretraining (encoder + weight offsets) under DeepSpeed")
    add_arguments(domain)
    domain.add_argument("--num-procs", type=int, default=1, help="local processes; the cores are split among them")
    domain.set_defaults(func=_run_domain)

    embedded = sub.add_parser("embedded", help="rebuild every embedded artifact (shards, base, packs, judges)")
    embedded.add_argument(
        "--work", type=Path, default=None, help="shards, checkpoints and caches (default: runs/embedded)"
    )
    embedded.add_argument("--num-procs", type=int, default=2, help="processes for domain pretraining")
    from pretrain.embedded import WORLDS

    embedded.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="described",
        help="`described`: the shipped world, whose captions name identities, into artifacts/, each finished "
        "base stage committed under artifacts/stages/; `plain`: the earlier world, into artifacts/plain/ "
        "(default: %(default)s)",
    )
    embedded.set_defaults(func=_run_embedded)

    vision = sub.add_parser(
        "vision",
        help="pretrain a CLIP vision tower for the encoder, contrastively against a base's text encoder",
    )
    vision.add_argument("--base", required=True, type=Path, metavar="BASE_DIR", help="base whose text encoder it reads")
    vision.add_argument(
        "--shards", action="append", required=True, type=Path, metavar="DIR", help="shard directory (repeatable)"
    )
    vision.add_argument("--out", required=True, type=Path, metavar="DIR", help="output CLIPVisionModel folder")
    vision.add_argument(
        "--work", type=Path, default=None, metavar="DIR", help="checkpoints (default: the output folder + .work)"
    )
    vision.add_argument("--steps", type=int, default=None, metavar="N", help="training steps (default: 1000)")
    vision.add_argument("--batch-size", type=int, default=None, metavar="N", help="(default: 128)")
    vision.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: all cores)")
    vision.add_argument("--no-progress", action="store_true", help="hide progress bars")
    vision.set_defaults(func=_run_vision)

    judges = sub.add_parser("judges", help="train the identity and context judges of the synthetic world")
    judges.add_argument("--out", type=Path, default=Path("artifacts/judges"), help="output folder (%(default)s)")
    judges.add_argument(
        "--base",
        type=Path,
        default=None,
        metavar="BASE_DIR",
        help="also validate on renders degraded by this base (VAE round trip, img2img)",
    )
    judges.add_argument("--preset", choices=("tiny", "default"), default="default", help="(default: %(default)s)")
    judges.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: 1)")
    judges.add_argument("--no-progress", action="store_true", help="hide progress bars")
    judges.set_defaults(func=_run_judges)
    return parser, sub


def _run_judges(args: argparse.Namespace) -> int:
    from pretrain.judges import JudgeTrainConfig, train_judges

    cfg = JudgeTrainConfig.preset(args.preset, **({"num_threads": args.threads} if args.threads else {}))
    report = train_judges(args.out, preset=args.preset, base_dir=args.base, cfg=cfg, progress=not args.no_progress)
    print(json.dumps({"clean": report["clean"], "degraded": report["degraded"]}, indent=2))
    return 0


def _run_vision(args: argparse.Namespace) -> int:
    import torch

    from pretrain.vision_tower import VisionTowerConfig, train_vision_tower

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {"steps": args.steps, "batch_size": args.batch_size}
    cfg = VisionTowerConfig(**{k: v for k, v in given.items() if v is not None})
    train_vision_tower(args.base, list(args.shards), args.out, cfg, work=args.work, progress=not args.no_progress)
    return 0


def _run_domain(args: argparse.Namespace) -> int:
    from pretrain.domain import launch

    if args.num_procs < 1:
        raise ValueError(f"`--num-procs` must be at least 1 but is {args.num_procs}")
    return launch(args)


def _run_embedded(args: argparse.Namespace) -> int:
    from pretrain.embedded import WORLDS, build_embedded

    kwargs = {"work": args.work} if args.work is not None else {}
    build_embedded(num_procs=args.num_procs, world=WORLDS[args.world], **kwargs)
    return 0


def _run_base(args: argparse.Namespace) -> int:
    # Imported here so `e4t pretrain --help` answers without loading torch.
    from pretrain.arch import arch_of_preset
    from pretrain.base import BaseTrainConfig, train_base

    given = {
        "unet_steps": args.steps,
        "vae_steps": args.vae_steps,
        "unet_batch_size": args.batch_size,
        "text_steps": args.text_steps,
        "dtype": args.dtype,
        "num_threads": args.threads,
        "device": args.device,
        "init_from": str(args.init_from) if args.init_from else None,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg = BaseTrainConfig.preset(args.preset, **overrides)
    arch = arch_of_preset(args.preset)
    out = train_base(args.shards, args.out, arch=arch, cfg=cfg, progress=not args.no_progress)
    info = json.loads((out / "embedded.json").read_text())
    print(f"base written to {out} (stage seconds: {info.get('timings')}); samples: {out / 'samples.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"e4t pretrain {args.command}: error: {err}\n")
