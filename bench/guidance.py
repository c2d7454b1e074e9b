"""The classifier-free guidance scale a base draws best at: identity and context against the scale.

    python bench/guidance.py --out out/guidance                     # both domains, the default grid
    python bench/guidance.py --out out/g --domains faces --scales 2,3,4 --steps 5
    python bench/guidance.py --out out/ig --scales 3 --identity-scales 4.5,6,7.5,9   # identity guidance

On validation subjects (held-out identities past the first `--skip`, 8, as in bench/tune_settings.py,
so that neither `e4t eval` nor `bench/fidelity_vs_time.py` scores the subjects the scale is chosen
on), each subject is personalized once per E4T step count; then, at every scale, its concept, the
base with the subject's full attribute description (words alone) and the base with the class word
draw the benchmark's four prompts with fixed seeds, scored by the project's judges. The chosen scale
is recorded in the embedded base's embedded.json (`pretrain.embedded.World.guidance`).

`--identity-scales` also draws every concept at each of those identity-guidance scales
(`e4t.generate.generate(identity_guidance=...)`) beside each guidance scale.

Writes OUT/results.json ({"rows": [{domain, row, steps, guidance, identity_guidance, id_sim, context_acc,
id_sim_subjects, vs_base_scale}, ...]}), OUT/guidance.png and, with identity scales, OUT/identity_guidance.png.
`vs_base_scale` compares a row with the same row at the scale the base records (`Base.default_guidance`)
without identity guidance, when the grid holds it: the mean of the per-subject differences in id_sim and
its standard error.
"""

from __future__ import annotations

import argparse
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
from evaluation.references import class_word_images  # noqa: E402
from shards.synth import described_caption  # noqa: E402

PROMPTS = (0, 4, 6, 7)  # as bench/fidelity_vs_time.py
WORDS, CLASS_WORD = "words alone", "class word"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--domains", default="faces,cats")
    p.add_argument("--scales", type=_floats, default=(2.0, 3.0, 5.0, 7.5, 10.0), help="guidance scales")
    p.add_argument("--identity-scales", type=_floats, default=(), help="identity-guidance scales for the concepts")
    p.add_argument("--steps", default="0,5", help="comma-separated E4T tuning-step counts")
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--skip", type=int, default=8, help="held-out identities left to the evaluation and the bench")
    p.add_argument("--images", type=int, default=2, help="images per prompt")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base, packs, scorer = load_embedded_world()
    steps = [int(s) for s in args.steps.split(",")]
    n = args.images
    rows = []
    for domain in args.domains.split(","):
        pack = packs[domain]
        subjects = protocol.heldout_identities(domain, args.subjects, skip=args.skip)
        prompts = [p for p in protocol.prompts(domain) if p.index in PROMPTS]
        inputs = [protocol.input_image(s, base.resolution) for s in subjects]
        refs = [protocol.reference_images(s, 4, base.resolution) for s in subjects]
        run = DomainRun(domain, subjects, [], prompts, inputs, refs, [])
        concepts = {k: [personalize(base, pack, image, steps=k, seed=0) for image in inputs] for k in steps}
        for scale in args.scales:
            scored: list[tuple[str, int | None, float | None, Row]] = []
            for k, tuned in concepts.items():
                for identity in (None, *(w for w in args.identity_scales if w != scale)):
                    row = Row("e4t", k, domain)
                    for i, concept in enumerate(tuned):
                        gen = dict(num_images=n, batch_size=n, guidance=scale, identity_guidance=identity)
                        draw_concept(row, i, base, packs, concept, prompts, **gen)
                    scored.append(("e4t", k, identity, row))
            words, word = Row(WORDS, None, domain), Row(CLASS_WORD, None, domain)
            for p in prompts:
                seed = protocol.generation_seed(p, 0)
                draw = dict(steps=25, guidance=scale, seed=seed)
                plain = class_word_images(base, p.caption, n, **draw)
                for i, s in enumerate(subjects):
                    caption = described_caption(domain, s.attributes, p.context)
                    words.groups[i, p.index] = class_word_images(base, caption, n, **draw)
                    word.groups[i, p.index] = plain
            scored += [(WORDS, None, None, words), (CLASS_WORD, None, None, word)]
            for name, k, identity, row in scored:
                scores = scorer.score(run, row, by_subject=True)
                rows.append(
                    {
                        "domain": domain,
                        "row": name,
                        "steps": k,
                        "guidance": scale,
                        "identity_guidance": identity,
                        "id_sim": scores["id_sim"],
                        "context_acc": scores["context_acc"],
                        "id_sim_subjects": scores["id_sim_subjects"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    compare_with_scale(rows, base.default_guidance)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "config": vars(args), "wall_s": round(time.perf_counter() - started, 1)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")  # paths as strings
    plot(rows, args.out / "guidance.png")
    if args.identity_scales:
        plot_identity(rows, args.out / "identity_guidance.png")
    print(f"wrote {args.out / 'results.json'} and the figures in {result['wall_s']} s")
    return 0


def compare_with_scale(rows: list[dict], scale: float) -> None:
    """Add `vs_base_scale`: the comparison with the same (domain, row, steps) at `scale` without identity guidance."""
    plain = [r for r in rows if r["guidance"] == scale and r["identity_guidance"] is None]
    at_scale = {(r["domain"], r["row"], r["steps"]): r for r in plain}
    for r in rows:
        same = at_scale.get((r["domain"], r["row"], r["steps"]))
        if same is not None:
            r["vs_base_scale"] = paired_difference(r["id_sim_subjects"], same["id_sim_subjects"])


def _domains(rows: list[dict]) -> list[str]:
    return sorted({r["domain"] for r in rows}, key=lambda d: (d != "faces", d))


def _figure(domains: list[str], path: Path, xlabel: str, draw) -> None:
    """An id_sim and a context-accuracy panel per domain; `draw(ax, domain, metric)` plots their lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(domains), 2, figsize=(10, 3.6 * len(domains)), squeeze=False)
    for row_axes, domain in zip(axes, domains, strict=True):
        for ax, metric in zip(row_axes, ("id_sim", "context_acc"), strict=True):
            draw(ax, domain, metric)
            if metric == "context_acc":  # near 1 throughout: a tight axis would magnify one miss out of 32
                ax.set_ylim(0.5, 1.02)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
            ax.set_title(f"{domain}: {metric}")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows: list[dict], path: Path) -> None:
    """id_sim and context accuracy against the guidance scale (rows without identity guidance)."""
    rows = [r for r in rows if r["identity_guidance"] is None]
    lines = sorted({(r["row"], r["steps"]) for r in rows}, key=lambda x: (x[0] != "e4t", x[0], x[1] or 0))

    def draw(ax, domain: str, metric: str) -> None:
        for name, k in lines:
            pts = sorted(
                (r["guidance"], r[metric]) for r in rows if (r["domain"], r["row"], r["steps"]) == (domain, name, k)
            )
            label = f"E4T, {k} steps" if name == "e4t" else name
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if name == "e4t" else "s--", label=label)

    _figure(_domains(rows), path, "classifier-free guidance scale", draw)


def plot_identity(rows: list[dict], path: Path) -> None:
    """E4T's id_sim and context accuracy against the identity-guidance scale, one line per guidance scale and
    step count; plain guidance at scale w is the point at identity scale w (u + w (c - u) + w (s - c))."""
    e4t = [r for r in rows if r["row"] == "e4t"]

    def draw(ax, domain: str, metric: str) -> None:
        mine = [r for r in e4t if r["domain"] == domain]
        for scale, k in sorted({(r["guidance"], r["steps"]) for r in mine}):
            pts = sorted(
                (r["identity_guidance"] or scale, r[metric]) for r in mine if (r["guidance"], r["steps"]) == (scale, k)
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"E4T, {k} steps, guidance {scale:g}")

    _figure(_domains(e4t), path, "identity-guidance scale (at the guidance scale: plain guidance)", draw)


if __name__ == "__main__":
    sys.exit(main())
