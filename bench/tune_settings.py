"""E4T's inference-time tuning settings, compared on validation subjects: which `TuneConfig` a pack should ship.

    python bench/tune_settings.py --out out/tune-settings                       # the default grid
    python bench/tune_settings.py --out out/t --domains cats --grid '[{"lr_embedding": 3e-2}]' --steps 5,15

Every setting (a dict of `TuneConfig` fields that differ from the pack's) tunes each subject once per
step count, and the concepts draw the benchmark's four prompts (beach, glasses, sketch, painting)
with fixed seeds, scored by the project's judges. The subjects are held-out identities past the
first `--skip` (8), so that neither `e4t eval` (5) nor `bench/fidelity_vs_time.py` (4) scores the
subjects the settings were chosen on.

Writes OUT/results.json ({"rows": [{domain, setting, steps, seconds, id_sim, context_acc, id_sim_subjects,
vs_shipped}, ...]}) and prints each row as it is scored. `vs_shipped` (when the grid lists `{}` before the
setting) compares it with the pack's own on the same subjects and seeds: the mean of the per-subject
differences in id_sim and its standard error, which says whether a gain is larger than what changes
from one subject to the next.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e4t.tuner import personalize  # noqa: E402
from evaluation import protocol  # noqa: E402
from evaluation.harness import DomainRun, Row, draw_concept, load_embedded_world  # noqa: E402
from evaluation.metrics import paired_difference  # noqa: E402

PROMPTS = (0, 4, 6, 7)  # as bench/fidelity_vs_time.py
GRID = (
    {},  # the pack's own: the rows after it are compared with it (`vs_shipped`)
    {"lr_embedding": 1e-3},
    {"lr_embedding": 1e-2},
    {"lr_embedding": 3e-2},
    {"lr_offsets": 3e-3},
    {"lr_offsets": 5e-3},
    {"lr_offsets": 2e-2},
    {"mode": "encoder"},
    {"mode": "encoder", "lr_encoder": 1e-3},
    {"batch": 8},  # noise draws per step: each step costs more
    {"batch": 2},
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--domains", default="faces,cats")
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--skip", type=int, default=8, help="held-out identities left to the evaluation and the bench")
    p.add_argument("--steps", default="5", help="comma-separated tuning step counts")
    p.add_argument("--grid", type=json.loads, default=GRID, help="a JSON list of TuneConfig overrides")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base, packs, scorer = load_embedded_world()
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    for domain in args.domains.split(","):
        pack = packs[domain]
        shipped = pack.tune
        subjects = protocol.heldout_identities(domain, args.subjects, skip=args.skip)
        prompts = [p for p in protocol.prompts(domain) if p.index in PROMPTS]
        inputs = [protocol.input_image(s, base.resolution) for s in subjects]
        refs = [protocol.reference_images(s, 4, base.resolution) for s in subjects]
        run = DomainRun(domain, subjects, [], prompts, inputs, refs, [])
        for setting in args.grid:
            pack.tune = dataclasses.replace(shipped, **setting)
            for k in steps:
                row = Row("e4t", k, domain)
                for i, image in enumerate(inputs):
                    start = time.perf_counter()
                    concept = personalize(base, pack, image, steps=k, seed=0)
                    row.tune_s.append(time.perf_counter() - start)
                    draw_concept(row, i, base, packs, concept, prompts, num_images=args.images, batch_size=args.images)
                scores = scorer.score(run, row, by_subject=True)
                per_subject = scores["id_sim_subjects"]
                rows.append(
                    {
                        "domain": domain,
                        "setting": setting,
                        "steps": k,
                        "seconds": round(sum(row.tune_s) / len(row.tune_s), 3),
                        "id_sim": scores["id_sim"],
                        "context_acc": scores["context_acc"],
                        "id_sim_subjects": per_subject,
                    }
                )
                own = [r for r in rows if r["domain"] == domain and r["steps"] == k and not r["setting"]]
                if own:
                    rows[-1]["vs_shipped"] = paired_difference(per_subject, own[0]["id_sim_subjects"])
                print(json.dumps(rows[-1]), flush=True)
        pack.tune = shipped
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "config": vars(args)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
