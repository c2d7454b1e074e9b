"""Rebuild every embedded artifact from nothing: shards, base, vision tower, domain packs, judges.

    e4t pretrain embedded [--world described|plain] [--work runs/embedded] [--num-procs 2]

Each stage skips itself when its inputs and settings are unchanged, and resumes from its
checkpoints after an interruption. The shipped world, `described` (README, "The embedded
default"), lands in `artifacts/` (committed) and keeps each finished base stage in
`artifacts/stages/`, so that a build cut off on one machine goes on from its last finished stage
on a fresh clone. The earlier `plain` world, whose captions never describe an identity, lands in
`artifacts/plain/` (not committed).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e4t.embedded import artifacts_root

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class World:
    """Which base and packs a build makes, and where they land (under `artifacts_root()`)."""

    name: str
    preset: str  # pretrain.base.PRESETS (its arch: pretrain.arch.arch_of_preset)
    base_overrides: tuple[tuple[str, Any], ...] = ()  # BaseTrainConfig fields that differ from the preset
    subdir: str = ""  # under `artifacts_root()`; "" for the shipped world, which is `artifacts/` itself
    paired_views: bool = False  # packs pretrained on another view of the identity as the target
    keep_stages: bool = False  # a committed stage store under `<subdir>/stages`
    judges: bool = True  # the judges are trained on renders alone; one set, the shipped world's, serves every world
    # the encoder's vision tower starts from one pretrained contrastively against the base's text encoder
    # (pretrain/vision_tower.py), as E4T's starts from CLIP's; False: trained from scratch with the pack
    vision_tower: bool = False
    embedding_l2: float | None = None  # the packs' L2 on the encoder's offset; None: DomainTrainConfig's
    # later UNet schedules, (preset, folder under the work dir), each started from the one before's base
    continue_presets: tuple[tuple[str, str], ...] = ()
    # the guidance scale the exported base draws at by default (its embedded.json, `e4t.base.recorded_guidance`),
    # chosen on validation subjects with bench/guidance.py; None: Stable Diffusion's
    guidance: float | None = None


WORLDS = {
    "described": World(
        "described",
        "described-cpu",
        (("dtype", "float16"),),
        paired_views=True,
        keep_stages=True,
        vision_tower=True,
        embedding_l2=1e-4,
        continue_presets=(
            ("described-cpu-continue", "base-continued"),
            ("described-v-cpu-continue", "base-v"),
            ("described-v-gpu-continue", "base-v-gpu"),
        ),
        guidance=3.0,
    ),
    "plain": World("plain", "plain", (("unet_steps", 5000),), subdir="plain", judges=False),
}
SHIPPED = WORLDS["described"]


@dataclass(frozen=True)
class EmbeddedRecipe:
    identities: int = 5000  # per domain; about 40% land in the base split, 35% in pretraining
    views: int = 4
    size: int = 64
    seed: int = 0
    # 1200 steps left the 0-step guess still rising on the GPU-schedule base (README, "Longer pack pretraining")
    domain_steps: int = 2000
    domain_batch_size: int = 8


def _synth(domain: str, out: Path, recipe: EmbeddedRecipe) -> Path:
    from shards.synth import synthesize

    manifest = out / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        same_args = (m.get("identities"), m.get("views"), m.get("size"), m.get("seed")) == (
            recipe.identities,
            recipe.views,
            recipe.size,
            recipe.seed,
        )
        if same_args and _renderer_unchanged(domain, out, recipe):
            print(f"shards {out} are current")
            return out
    synthesize(domain, recipe.identities, recipe.views, recipe.size, recipe.seed, out)
    return out


def _renderer_unchanged(domain: str, out: Path, recipe: EmbeddedRecipe) -> bool:
    """The first stored sample equals what the renderer draws now (catches renderer edits)."""
    import tarfile

    from shards.synth import render_sample

    key, png, _ = render_sample(domain, 0, 0, recipe.size, recipe.seed)
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as tar:
        member = tar.extractfile(f"{key}.png")
        return member is not None and member.read() == png


def _export_base(trained: Path, target: Path, guidance: float | None) -> None:
    """Copy the pipeline folder without its work files (a no-op when already identical), then record the
    world's default guidance in its embedded.json, which the folder's hash leaves out: packs stay valid."""
    from e4t.base import folder_hash

    if not (target / "model_index.json").is_file() or folder_hash(target) != folder_hash(trained):
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trained, tmp, ignore=shutil.ignore_patterns("work"))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    record = json.loads((target / "embedded.json").read_text())
    sampling = {"guidance": guidance} if guidance is not None else {}
    if record.get("sampling", {}) != sampling:
        record["sampling"] = sampling
        (target / "embedded.json").write_text(json.dumps(record, indent=2))


def build_embedded(
    work: Path = ROOT / "runs" / "embedded",
    *,
    num_procs: int = 2,
    recipe: EmbeddedRecipe = EmbeddedRecipe(),
    world: World = SHIPPED,
) -> dict:
    import argparse

    from pretrain.arch import arch_of_preset
    from pretrain.base import BaseTrainConfig, train_base
    from pretrain.domain import launch
    from shards.synth import DOMAINS

    artifacts = artifacts_root() / world.subdir
    timings: dict[str, float] = {}

    # 1. shards of every synthetic domain
    t = time.time()
    shard_dirs = {d: _synth(d, work / "shards" / d, recipe) for d in DOMAINS}
    timings["shards_s"] = round(time.time() - t, 1)

    # 2. the base, trained on the base split of all domains, exported without work files
    t = time.time()

    def schedule(preset: str, folder: str, **init: str) -> Path:
        return train_base(
            list(shard_dirs.values()),
            work / world.name / folder,
            arch=arch_of_preset(preset),
            cfg=BaseTrainConfig.preset(preset, sample_every=1000, **init, **dict(world.base_overrides)),
            store=artifacts / "stages" if world.keep_stages else None,
        )

    trained = schedule(world.preset, "base")
    for preset, folder in world.continue_presets:
        trained = schedule(preset, folder, init_from=str(trained))
    _export_base(trained, artifacts / "base", world.guidance)
    timings["base_s"] = round(time.time() - t, 1)

    # 3. the encoder's pretrained vision tower, learned on the base split like the base
    vision = None
    if world.vision_tower:
        from pretrain.vision_tower import train_vision_tower

        t = time.time()
        vision = train_vision_tower(
            artifacts / "base",
            list(shard_dirs.values()),
            artifacts / "vision",
            work=work / world.name / "vision.work",
        )
        timings["vision_s"] = round(time.time() - t, 1)

    # 4. one domain pack per domain, under DeepSpeed
    for domain, shards in shard_dirs.items():
        t = time.time()
        args = argparse.Namespace(
            base=str(artifacts / "base"),
            shards=[str(shards)],
            out=str(artifacts / "packs" / f"{domain}.safetensors"),
            domain=domain,
            class_word=DOMAINS[domain].CLASS_WORD,
            preset="default",
            steps=recipe.domain_steps,
            batch_size=recipe.domain_batch_size,
            checkpoint_every=None,
            num_procs=num_procs,
            work=str(work / world.name / "packs" / f"{domain}.work"),
            paired_views=world.paired_views,
            vision=str(vision) if vision else None,
            embedding_l2=world.embedding_l2,
            train_vision=vision is not None,  # fine-tuned, so the pack stores the tower and needs no folder
            restart_stale=True,  # the recipe owns its work folders: a new base makes their checkpoints stale
        )
        (artifacts / "packs").mkdir(parents=True, exist_ok=True)
        if launch(args) != 0:
            raise RuntimeError(f"domain pretraining of {domain} failed")
        timings[f"pack_{domain}_s"] = round(time.time() - t, 1)

    # 5. the judges, when their trainer is present
    try:
        from pretrain.judges import train_judges
    except ImportError:
        train_judges = None
    if train_judges is not None and world.judges:
        t = time.time()
        train_judges(artifacts / "judges", base_dir=artifacts / "base")
        timings["judges_s"] = round(time.time() - t, 1)
    print(f"embedded artifacts in {artifacts}: {json.dumps(timings)}")
    return timings
