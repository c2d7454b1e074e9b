"""Domain pretraining as a job: a SIGKILLed 2-process run against an unkilled one, and 2 processes against 1.

Three `e4t pretrain domain` runs and one resume, all measured in one go on the same shards:
- `two`: 2 processes x batch B, never stopped: the reference loss curve (WORK/loss.jsonl);
- `killed`: the same run SIGKILLed (launcher and ranks) once a checkpoint past a quarter of the
  steps is written, then resumed: its loss at every step against `two`'s (relative difference);
- `one`: 1 process x batch 2B, the same global batch and samples seen: its mean training loss
  against `two`'s, and the diffusion loss of both trained packs on one fixed batch (the first
  samples of the pretraining split, unaugmented, noise and timesteps from seed 0), beside the
  untrained pack's, so that the ratio is read against how far training moved that loss.
Uses the embedded base and faces shards of the pretraining split rendered into a temp folder,
unless --base/--shards. Last line: JSON.

    python bench/pretrain_job.py [--base DIR --shards DIR] [--steps 100] [--batch 4]

The per-step training loss of a diffusion model is noisy (each sample draws its own timestep and
noise), so the mean-training-loss ratio comes with its standard error; the fixed-batch ratio, on
shared noise, compares the two trained packs directly.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
import torch  # noqa: E402

from pretrain.checkpoint import read_loss_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def command(base: Path, shards: Path, out: Path, procs: int, batch: int, steps: int, every: int) -> list[str]:
    return [
        *(sys.executable, "-m", "cli", "pretrain", "domain", "--preset", "tiny", "--num-procs", str(procs)),
        *("--base", str(base), "--shards", str(shards), "--out", str(out), "--domain", "faces"),
        *("--batch-size", str(batch), "--steps", str(steps), "--checkpoint-every", str(every)),
    ]


def run(cmd: list[str]) -> float:
    started = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.time() - started


def run_killed(cmd: list[str], work: Path, after_step: int) -> int:
    """Start `cmd`, SIGKILL the launcher and its ranks once a checkpoint past `after_step` exists; its step."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = work / "latest"
    while proc.poll() is None:
        tag = latest.read_text().strip() if latest.is_file() else ""
        if tag.startswith("step") and int(tag[4:]) > after_step:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise RuntimeError("the run ended before it could be killed; give it more --steps")
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:  # torch's launcher starts each rank in a session of its own: kill them one by one, at once
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=60)
    return int(latest.read_text().strip()[4:])


def fixed_batch_loss(base_dir: Path, shards: Path, pack_path: Path | None, samples: int) -> float:
    """Diffusion loss of a pack on the first `samples` pretraining samples, with noise drawn from seed 0."""
    from e4t import load_base, load_pack
    from e4t.objective import E4TObjective, LossWeights
    from e4t.offsets import TUNE, OffsetConfig, activate, ensure_adapter, set_offsets
    from e4t.pack import DomainPack
    from shards.reader import make_pipeline, shard_urls

    base = load_base(base_dir)
    if pack_path is None:
        pack = DomainPack.initial(base, "faces", "face", vision=_tiny_vision(), offset_config=OffsetConfig(rank=4))
    else:
        pack = load_pack(pack_path, base)
    ensure_adapter(base.unet, TUNE, pack.offset_config)  # the same adapter, and penalty, as in training
    set_offsets(base.unet, pack.offsets, TUNE)
    activate(base.unet, TUNE)
    objective = E4TObjective(base, pack.class_word, LossWeights())
    batch = next(
        iter(
            make_pipeline(
                shard_urls(shards), batch_size=samples, image_size=base.resolution, splits=["pretrain"], shuffle=0
            )
        )
    )
    torch.manual_seed(0)
    with torch.no_grad():
        noised = objective.noise(batch["pixels"])
        offset = objective.predict_offset(pack.encoder.eval(), noised)
        _, parts = objective.loss(
            noised, objective.class_embedding + offset, objective.subject_prompts(batch["caption"]), offset=offset
        )
    return parts["diffusion"]


def _tiny_vision() -> dict:
    from pretrain.domain import DomainTrainConfig

    return DomainTrainConfig.preset("tiny").vision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="base folder (default: the embedded base)")
    parser.add_argument("--shards", type=Path, help="shard folder with a pretraining split (default: rendered)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="per-process batch of the 2-process runs")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--fixed-batch", type=int, default=128, help="samples of the fixed-batch loss")
    args = parser.parse_args()

    from e4t.embedded import default_paths
    from shards.synth import synthesize

    tmp = Path(tempfile.mkdtemp(prefix="pretrain_job_"))
    base = args.base or default_paths()[0]
    shards = args.shards
    if shards is None:
        shards = tmp / "shards"
        synthesize("faces", 400, 2, 64, 0, shards, splits=["pretrain"], progress=False)
    every = args.checkpoint_every

    # 1. the reference and the one-process run
    seconds = {
        "two": run(command(base, shards, tmp / "two.safetensors", 2, args.batch, args.steps, every)),
        "one": run(command(base, shards, tmp / "one.safetensors", 1, 2 * args.batch, args.steps, every)),
    }
    # 2. killed past a quarter of the steps, then resumed
    killed = command(base, shards, tmp / "killed.safetensors", 2, args.batch, args.steps, every)
    killed_at = run_killed(killed, tmp / "killed.work", args.steps // 4)
    seconds["resume"] = run(killed)

    two = read_loss_log(tmp / "two.work" / "loss.jsonl")
    one = read_loss_log(tmp / "one.work" / "loss.jsonl")
    resumed = read_loss_log(tmp / "killed.work" / "loss.jsonl")
    if not [r["step"] for r in resumed] == [r["step"] for r in two] == list(range(1, args.steps + 1)):
        raise RuntimeError("the resumed run's loss log does not cover every step once")
    after = [(r["loss"], t["loss"]) for r, t in zip(resumed, two, strict=True) if r["step"] > killed_at]
    rel = [abs(r - t) / t for r, t in after]
    mean_two, mean_one = statistics.fmean(r["loss"] for r in two), statistics.fmean(r["loss"] for r in one)
    # standard error of the ratio of two independent means (delta method)
    rel_se = [
        statistics.stdev(r["loss"] for r in log) / (len(log) ** 0.5 * m)
        for log, m in ((two, mean_two), (one, mean_one))
    ]
    ratio_se = mean_two / mean_one * (rel_se[0] ** 2 + rel_se[1] ** 2) ** 0.5

    fixed = {
        "untrained": fixed_batch_loss(base, shards, None, args.fixed_batch),
        "one": fixed_batch_loss(base, shards, tmp / "one.safetensors", args.fixed_batch),
        "two": fixed_batch_loss(base, shards, tmp / "two.safetensors", args.fixed_batch),
    }
    result = {
        "steps": args.steps,
        "global_batch": 2 * args.batch,
        "killed_at_step": killed_at,
        "resume_max_rel_diff": max(rel),
        "resume_steps_identical": sum(r == t for r, t in after),
        "resume_steps_compared": len(after),
        "two_over_one_mean_train_loss": mean_two / mean_one,
        "two_over_one_mean_train_loss_se": ratio_se,
        "two_over_one_fixed_batch_loss": fixed["two"] / fixed["one"],
        "fixed_batch_loss": {k: round(v, 5) for k, v in fixed.items()},
        "trained_over_untrained_fixed_batch_loss": fixed["two"] / fixed["untrained"],
        "two_over_one_seconds": seconds["two"] / seconds["one"],
        "work": str(tmp),
    }
    print(f"resumed at step {killed_at}: loss within {max(rel):.2e} of the unkilled run's at every later step")
    print(
        f"2 x {args.batch} vs 1 x {2 * args.batch}: mean training loss ratio {mean_two / mean_one:.3f} "
        f"(± {ratio_se:.3f}), fixed-batch loss ratio {fixed['two'] / fixed['one']:.4f}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
