"""Break-A-Scene on two-subject scenes against E4T on each subject cropped by its mask, in one run.

    python bench/break_a_scene.py --out docs/break-a-scene             # 4 scenes, ~30 min on 2 cores
    python bench/break_a_scene.py --out out/bas --scenes 1 --steps 20 --images 1   # a minute
    python bench/break_a_scene.py --out out/bas --variants class_words,bare_handles,no_attention

Scenes (`shards.two_subjects`, plain photo, frontal, even light) pair held-out identities: two
faces, a face and a cat, two cats, a cat and a face. On each, Break-A-Scene learns one concept per
mask (each `--variants` entry is one run with that config); E4T (`e4t.tuner.personalize`, 5 and
15 steps) learns each subject from the square around its mask (`crop_to_mask`) with that mask.
Every concept generates the protocol's quick prompts (a background, a medium) with the same
seeds; Break-A-Scene also generates both handles in one prompt ("a photo of {c1} and {c2} on the
beach"). Scores, by the project's judges against four reference renders of each subject:

- id_sim of an image showing one concept: the whole image, as `e4t eval` scores it;
- id_sim of an image naming both: each subject scored on a crop, the crops taken from a fixed
  set on the left and on the right half (squares of 32 and 44 px, top, middle, bottom), the
  subjects assigned to opposite halves, whichever assignment matches better (so one face cannot
  count for both). The threshold it is held to is computed the same way on real scenes of OTHER
  held-out identities (`real_different_crops`), and its ceiling on the real scene itself
  (`real_same_crops`);
- real_different_identity: id_sim of whole renders of another identity of the same domain;
- context_acc: the context judge on each image against the labels its prompt names.

Targets (reported, not asserted): per subject, Break-A-Scene's single-handle id_sim >= 0.9 x
E4T's (15 steps) on the cropped subject; both subjects recognisable in one image: both crop
scores above real_different_crops + 0.2. Writes OUT/results.json and OUT/grid.png (per scene:
the scene, its masks, then handle 1 alone, handle 2 alone, both together); the last line printed
is the summary as one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e4t import generate, load_base, load_pack  # noqa: E402
from e4t.break_a_scene import BreakASceneConfig, break_a_scene  # noqa: E402
from e4t.embedded import artifacts_root, default_paths  # noqa: E402
from e4t.judges import load_judges  # noqa: E402
from e4t.tuner import personalize  # noqa: E402
from evaluation import protocol  # noqa: E402
from shards.two_subjects import SceneSubject, crop_to_mask, render_scene  # noqa: E402

# (left domain, left held-out index, right domain, right held-out index)
SCENES = (("faces", 0, "faces", 1), ("faces", 2, "cats", 2), ("cats", 0, "cats", 1), ("cats", 3, "faces", 3))
DECOY = 4  # held-out identities from here on stand in for "another identity"
VARIANTS = {
    "class_words": BreakASceneConfig(class_words=True),  # "a photo of {h1} face and {h2} cat"
    "bare_handles": BreakASceneConfig(class_words=False),  # "a photo of {h1} and {h2}", the paper's prompt
    "no_attention": BreakASceneConfig(class_words=True, attention_weight=0.0),
}
REFERENCES = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scenes", type=int, default=len(SCENES), help=f"how many of the {len(SCENES)} scenes")
    p.add_argument("--steps", type=int, default=300, help="Break-A-Scene steps")
    p.add_argument("--variants", default="class_words", help=f"comma-separated, of {sorted(VARIANTS)}")
    p.add_argument("--e4t-steps", default="5,15")
    p.add_argument("--images", type=int, default=4, help="images per prompt")
    p.add_argument("--denoise-steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    return p


def subject_of(domain: str, heldout: int) -> protocol.Subject:
    return protocol.heldout_identities(domain, 1, skip=heldout)[0]


def scene_of(subjects: list[protocol.Subject], size: int):
    return render_scene([SceneSubject(s.domain, s.attributes, s.identity) for s in subjects], size=size)


def crop_boxes(size: int) -> dict[str, list[tuple[int, int, int, int]]]:
    """Candidate squares of each half: where a subject of a generated two-subject image may stand."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = {"left": [], "right": []}
    for side in (size // 2, round(size * 0.7)):
        for top in sorted({0, (size - side) // 2, size - side}):
            boxes["left"].append((0, top, side, top + side))
            boxes["right"].append((size - side, top, size, top + side))
    return boxes


def pair_scores(judge, images: list[Image.Image], refs: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Per image: (subject 1, subject 2) crop id_sims, the subjects on opposite halves, the better assignment."""
    boxes = crop_boxes(images[0].width)
    out = []
    for image in images:
        best = {}
        for half, squares in boxes.items():
            emb = judge.embed([image.crop(b) for b in squares])  # [crops, D]
            best[half] = [float((emb @ r.T).mean(1).max()) for r in refs]
        straight = (best["left"][0], best["right"][1])
        swapped = (best["right"][0], best["left"][1])
        out.append(max(straight, swapped, key=sum))
    return out


@dataclass
class SceneRun:
    name: str
    kind: str  # "same-domain" | "cross-domain"
    subjects: list
    prompts: list  # per subject, its domain's quick prompts
    refs_img: list  # per subject, reference renders
    whole_diff: list  # per subject, id_sim of another identity's renders


def generate_for(base, packs, args, concepts: dict, prompt, text: str) -> list[Image.Image]:
    """`args.images` images of `text`, seeded by the protocol prompt it stands for."""
    return generate(
        base,
        packs,
        concepts,
        text,
        num_images=args.images,
        steps=args.denoise_steps,
        seed=protocol.generation_seed(prompt),
        batch_size=args.images,
    )


def score_single(run: SceneRun, judges, images_for, per_prompt: int, k, concept, method, steps, seconds) -> dict:
    """A row for one concept of subject k alone: id_sim of whole images and context accuracy."""
    images, contexts = [], []
    for p in run.prompts[k]:
        images += images_for({concept.id: concept}, p, p.for_concept(concept.id))
        contexts += [p.named] * per_prompt
    return {
        "scene": run.name,
        "kind": run.kind,
        "subject": k + 1,
        "identity": run.subjects[k].identity,
        "method": method,
        "steps": steps,
        "seconds": round(seconds, 2),
        "id_sim": round(judges.identity.id_similarity(images, run.refs_img[k]), 4),
        "context_acc": round(judges.context.context_accuracy(images, contexts), 4),
        "real_different_identity": round(run.whole_diff[k], 4),
        "_images": images,
    }


def mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base_dir, pack_paths = default_paths()
    base = load_base(base_dir)
    packs = {p.domain: p for p in (load_pack(path, base) for path in pack_paths)}
    judges = load_judges(artifacts_root() / "judges")
    size = base.resolution
    e4t_steps = [int(v) for v in args.e4t_steps.split(",") if v]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {sorted(VARIANTS)}")

    rows, scene_rows, grid_rows = [], [], []
    personalize(base, packs["faces"], protocol.input_image(subject_of("faces", 0), size), steps=0)  # warm-up
    for n, (d1, i1, d2, i2) in enumerate(SCENES[: args.scenes]):
        subjects = [subject_of(d1, i1), subject_of(d2, i2)]
        decoys = [subject_of(d1, DECOY + 2 * n), subject_of(d2, DECOY + 2 * n + 1)]
        scene = scene_of(subjects, size)
        refs_img = [protocol.reference_images(s, REFERENCES, size) for s in subjects]
        refs = [judges.identity.embed(r) for r in refs_img]
        prompts = [protocol.prompts(s.domain, quick=True) for s in subjects]
        kind = "same-domain" if d1 == d2 else "cross-domain"
        name = f"{subjects[0].identity}+{subjects[1].identity}"

        # the bars: real renders scored the way generated images are
        real_same = pair_scores(judges.identity, [scene.image], refs)[0]
        real_diff = pair_scores(judges.identity, [scene_of(decoys, size).image], refs)[0]
        whole_diff = [
            float((judges.identity.embed(protocol.reference_images(d, REFERENCES, size)) @ r.T).mean())
            for d, r in zip(decoys, refs, strict=True)
        ]

        run = SceneRun(name, kind, subjects, prompts, refs_img, whole_diff)
        images_for = functools.partial(generate_for, base, packs, args)
        score_alone = functools.partial(score_single, run, judges, images_for, args.images)

        # E4T on each subject cropped by its mask
        for k in range(2):
            crop = crop_to_mask(scene.image, scene.masks[k])
            crop_mask = crop_to_mask(scene.masks[k], scene.masks[k])
            for steps in e4t_steps:
                t = time.perf_counter()
                concept = personalize(base, packs[subjects[k].domain], crop, steps=steps, mask=crop_mask)
                rows.append(score_alone(k, concept, "e4t", steps, time.perf_counter() - t))

        # Break-A-Scene on the whole scene
        for variant in variants:
            config = VARIANTS[variant]
            t = time.perf_counter()
            concepts = break_a_scene(
                base, [packs[s.domain] for s in subjects], scene.image, scene.masks, steps=args.steps, config=config
            )
            seconds = time.perf_counter() - t
            method = f"break_a_scene/{variant}"
            alone = [score_alone(k, concepts[k], method, args.steps, seconds) for k in range(2)]
            rows += alone
            both = {c.id: c for c in concepts}
            together, contexts = [], []
            for p in prompts[0]:  # both domains share one prompt grammar
                text = p.template.replace("{subject}", f"{{{concepts[0].id}}} and {{{concepts[1].id}}}")
                together += images_for(both, p, text)
                contexts += [p.named] * args.images
            pairs = pair_scores(judges.identity, together, refs)
            bar = [real_diff[k] + 0.2 for k in range(2)]
            scene_rows.append(
                {
                    "scene": name,
                    "kind": kind,
                    "method": method,
                    "steps": args.steps,
                    "seconds": round(seconds, 2),
                    "together_id_sim": [mean(p[k] for p in pairs) for k in range(2)],
                    "together_context_acc": round(judges.context.context_accuracy(together, contexts), 4),
                    "real_same_crops": [round(v, 4) for v in real_same],
                    "real_different_crops": [round(v, 4) for v in real_diff],
                    "both_recognisable": mean(float(p[0] > bar[0] and p[1] > bar[1]) for p in pairs),
                    "mean_above_bar": [bool(mean(p[k] for p in pairs) > bar[k]) for k in range(2)],
                }
            )
            if variant == variants[0]:  # the first image of each prompt: beach, then sketch
                firsts = [alone[0]["_images"][0], alone[1]["_images"][0], together[0], together[args.images]]
                grid_rows.append([scene.image, *scene.masks, *firsts])
        write_results(args, variants, rows, scene_rows, grid_rows, e4t_steps, started)
        print(f"scene {n + 1}/{args.scenes} ({name}) done at {time.perf_counter() - started:.0f} s", flush=True)

    summary = write_results(args, variants, rows, scene_rows, grid_rows, e4t_steps, started)
    for r in rows + scene_rows:
        print(json.dumps({k: v for k, v in r.items() if k != "_images"}))
    print(json.dumps(summary))
    return 0


def write_results(args, variants, rows, scene_rows, grid_rows, e4t_steps, started) -> dict:
    """OUT/results.json and OUT/grid.png of the scenes done so far (written after each: a long run keeps its part)."""
    clean = [{k: v for k, v in r.items() if k != "_images"} for r in rows]
    summary = summarize(clean, scene_rows, e4t_steps)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    config = vars(args) | {"out": None, "variants": {v: VARIANTS[v].__dict__ for v in variants}}
    result = {"rows": clean, "together": scene_rows, "summary": summary, "config": config}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_grid(grid_rows, args.out / "grid.png")
    return summary


def summarize(rows: list[dict], scene_rows: list[dict], e4t_steps: list[int]) -> dict:
    """Per Break-A-Scene variant: its id_sim over E4T's per subject, and how often both subjects show together."""
    out: dict = {}
    reference = max(e4t_steps)
    e4t = {(r["scene"], r["subject"]): r for r in rows if r["method"] == "e4t" and r["steps"] == reference}
    for method in sorted({r["method"] for r in rows if r["method"] != "e4t"}):
        mine = [r for r in rows if r["method"] == method]
        ratios = [r["id_sim"] / e4t[r["scene"], r["subject"]]["id_sim"] for r in mine]
        together = [s for s in scene_rows if s["method"] == method]
        out[method] = {
            "seconds": mean(r["seconds"] for r in together),
            "id_sim_alone": mean(r["id_sim"] for r in mine),
            "context_acc_alone": mean(r["context_acc"] for r in mine),
            f"id_sim_over_e4t{reference}": [round(x, 3) for x in ratios],
            f"subjects_at_0.9_of_e4t{reference}": f"{sum(x >= 0.9 for x in ratios)}/{len(ratios)}",
            "together_id_sim": mean(v for s in together for v in s["together_id_sim"]),
            "together_context_acc": mean(s["together_context_acc"] for s in together),
            "both_recognisable_images": mean(s["both_recognisable"] for s in together),
            "scenes_with_both_means_above_bar": f"{sum(all(s['mean_above_bar']) for s in together)}/{len(together)}",
        }
    for steps in e4t_steps:
        mine = [r for r in rows if r["method"] == "e4t" and r["steps"] == steps]
        out[f"e4t{steps}_crop"] = {
            "seconds": mean(r["seconds"] for r in mine),
            "id_sim": mean(r["id_sim"] for r in mine),
            "context_acc": mean(r["context_acc"] for r in mine),
        }
    out["real_different_identity"] = mean(r["real_different_identity"] for r in rows if r["method"] == "e4t")
    out["real_same_crops"] = mean(v for s in scene_rows for v in s["real_same_crops"])
    out["real_different_crops"] = mean(v for s in scene_rows for v in s["real_different_crops"])
    return out


def write_grid(grid_rows: list[list[Image.Image]], path: Path, scale: int = 2) -> None:
    """Per scene one row: scene, mask 1, mask 2, handle 1 alone, handle 2 alone, both together (two prompts)."""
    labels = ["scene", "mask 1", "mask 2", "{c1} beach", "{c2} beach", "{c1}+{c2} beach", "{c1}+{c2} sketch"]
    tile, head = 64 * scale, 14
    grid = Image.new("RGB", (tile * len(labels), head + tile * len(grid_rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(labels):
        draw.text((j * tile + 4, 2), label, fill="black")
    for i, images in enumerate(grid_rows):
        for j, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (j * tile, head + i * tile))
    grid.save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
