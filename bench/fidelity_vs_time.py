"""Fidelity against tuning time: E4T, Textual Inversion, DreamBooth, two_stage and Break-A-Scene on held-out subjects.

    python bench/fidelity_vs_time.py --out out/fidelity            # both domains, 4 subjects each
    python bench/fidelity_vs_time.py --out out/f --subjects 1 --ti-steps 5,20 --db-steps 5,20 --e4t-steps 0,5
    python bench/fidelity_vs_time.py --out out/ts --methods two_stage,dreambooth --ts-steps 50,100,200
    python bench/fidelity_vs_time.py --out out/bas --methods e4t,dreambooth,break_a_scene --bas-steps 100,300
    python bench/fidelity_vs_time.py --out out/all --merge out/faces out/cats   # runs of one domain each, joined
    python bench/fidelity_vs_time.py --out out/new --merge out/all out/e4t-only  # the later run's methods replace
    python bench/fidelity_vs_time.py --out out/db --merge out/all out/db-no-prior="no prior"  # a variant beside them
    E4T_ARTIFACTS=artifacts/plain python bench/fidelity_vs_time.py --out out/p --judges artifacts/judges

For each held-out subject of each domain, E4T runs once per step count (it takes seconds), and
Textual Inversion and DreamBooth run ONCE each up to their largest step count, with a concept
snapshotted at every listed count on the way (`snapshots=`): the time of a snapshot is the wall
time from the run's start to that step. Every concept then generates the same prompts with the
same seeds, scored by the project's judges (id_sim, context_acc, as `e4t eval`). The peak resident
memory of each tuning run is sampled, and compared with that of generating four images.
two_stage runs once per step count like E4T: its split between the stages depends on the total.
Break-A-Scene also runs once per step count (it takes no snapshots; its phases split the total),
with one mask: the subject's exact mask in the input image (`protocol.input_mask`).

Language drift (`evaluation.drift`): every concept also draws the bare class word ("a photo of a
face", fixed seeds) with its offsets active; each row carries `drift` (1 − mean identity cosine to
the plain base's images of the same seeds) and `drift_toward_subject` (their id_sim to the subject
after minus before), 0 for concepts without offsets (Textual Inversion).

Writes OUT/results.json ({"rows": [{domain, method, steps, seconds, id_sim, context_acc,
peak_rss_mb, drift, drift_toward_subject}, ...], "generate": {...}, "summary": {...}}) and OUT/fidelity_vs_time.png; the
last line printed is the summary as one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from real_shapes import PeakRSS  # noqa: E402  (bench/ is on the path when a script of it runs)

from e4t import generate  # noqa: E402
from e4t.dreambooth import DreamBoothConfig  # noqa: E402
from e4t.methods import TUNERS, tune_one  # noqa: E402
from e4t.two_stage import TwoStageConfig  # noqa: E402
from evaluation import protocol  # noqa: E402
from evaluation.drift import DriftProbe  # noqa: E402
from evaluation.harness import DomainRun, Row, draw_concept, load_embedded_world  # noqa: E402

SNAPSHOT_METHODS = ("textual_inversion", "dreambooth")
BASELINE_METHODS = (*SNAPSHOT_METHODS, "two_stage", "break_a_scene")
SETTINGS = {"two_stage": TwoStageConfig, "dreambooth": DreamBoothConfig}  # methods whose settings a run may change
PROMPTS = (0, 4, 6, 7)  # beach, glasses, sketch, painting: a background, an accessory, two media


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--domains", default=None, help="comma-separated (default: every embedded pack)")
    p.add_argument("--subjects", type=int, default=4, help="held-out subjects per domain")
    p.add_argument("--e4t-steps", type=_ints, default=(0, 1, 5, 15))
    p.add_argument("--ti-steps", type=_ints, default=(50, 200, 600), help="Textual Inversion snapshots")
    p.add_argument("--db-steps", type=_ints, default=(25, 100, 300), help="DreamBooth snapshots")
    p.add_argument("--ts-steps", type=_ints, default=(50, 100, 200), help="two_stage step counts (a run each)")
    p.add_argument("--bas-steps", type=_ints, default=(100, 300), help="Break-A-Scene step counts (a run each)")
    p.add_argument("--ts-config", type=json.loads, default={}, help="two_stage settings, e.g. '{\"lr_offsets\": 3e-3}'")
    p.add_argument("--db-config", type=json.loads, default={}, help="DreamBooth settings, e.g. '{\"lr\": 2e-3}'")
    p.add_argument("--methods", default=None, help="comma-separated (default: e4t and every baseline)")
    p.add_argument("--drift-images", type=int, default=4, help="class-word images per concept for drift (0: off)")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR[=LABEL]",
        help="join the results of runs (no tuning); a run given a LABEL joins as variants: method 'dreambooth (LABEL)'",
    )
    p.add_argument("--images", type=int, default=2, help="images per prompt")
    p.add_argument("--denoise-steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--judges", type=Path, default=None, metavar="DIR", help="judges folder (default: artifacts/judges)")
    return p


def tune(
    method: str, steps: tuple[int, ...], base, pack, image, settings: dict | None = None, mask=None
) -> tuple[list[tuple[int, float, object]], float]:
    """[(steps, seconds, concept)] for every step count, and the peak RSS (MB) of the tuning.

    `mask` is the subject's mask in `image`, which scene tuners (Break-A-Scene) learn from."""
    tuner: Callable = functools.partial(tune_one, method, subject_mask=mask)
    if settings:  # a method's config fields that differ from its defaults
        tuner = functools.partial(tuner, config=SETTINGS[method](**settings))
    results = []
    with PeakRSS() as peak:
        if method in SNAPSHOT_METHODS:  # one run, snapshotted on the way
            start = time.perf_counter()
            tuner(
                base,
                pack,
                image,
                steps=max(steps),
                seed=0,
                snapshots=steps,
                on_snapshot=lambda k, c: results.append((k, time.perf_counter() - start, c)),
            )
        else:
            for k in steps:
                start = time.perf_counter()
                concept = tuner(base, pack, image, steps=k, seed=0)
                results.append((k, time.perf_counter() - start, concept))
    return results, peak.peak / 2**20


def run_config(args: argparse.Namespace) -> dict:
    """The options of a run, as results.json records them (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}


def merge(out: Path, runs: list[str | Path]) -> int:
    """One results.json and figure from several runs: of disjoint domains (one process per domain, side by
    side), or a later run of some methods over an earlier one (its rows of a domain and method replace the
    earlier run's, say E4T's after new packs, where the baselines, which never read the pack's weights, hold).
    A run given as "DIR=LABEL" joins as a variant: its methods are renamed "METHOD (LABEL)", so a run with
    other settings (--db-config) sits beside the default's rows, plotted, and out of the summary."""
    results = []
    for run in runs:
        folder, _, label = str(run).partition("=")
        res = json.loads((Path(folder) / "results.json").read_text())
        if label:
            res["rows"] = [{**r, "method": f"{r['method']} ({label})"} for r in res["rows"]]
        results.append(res)
    rows: list[dict] = []
    for res in results:
        fresh = {(r["domain"], r["method"]) for r in res["rows"]}
        rows = [r for r in rows if (r["domain"], r["method"]) not in fresh] + res["rows"]
    generate_peak = {k: v for res in results for k, v in res["generate"].items()}
    summary = summarize(rows, generate_peak)
    summary["wall_s"] = max(res["summary"]["wall_s"] for res in results)  # side by side: the longest
    out.mkdir(parents=True, exist_ok=True)
    configs = {str(run): res["config"] for run, res in zip(runs, results, strict=True)}
    result = {"rows": rows, "generate": generate_peak, "summary": summary, "config": configs}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    plot(rows, out / "fidelity_vs_time.png")
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        return merge(args.out, args.merge)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base, packs, scorer = load_embedded_world(args.judges)
    domains = args.domains.split(",") if args.domains else sorted(packs, key=lambda d: (d != "faces", d))
    budgets = {
        "e4t": args.e4t_steps,
        "textual_inversion": args.ti_steps,
        "dreambooth": args.db_steps,
        "two_stage": args.ts_steps,
        "break_a_scene": args.bas_steps,
    }
    if args.methods:
        budgets = {m: budgets[m] for m in args.methods.split(",")}
    out_rows, generate_peak = [], {}

    for domain in domains:
        pack = packs[domain]
        subjects = protocol.heldout_identities(domain, args.subjects)
        prompts = [p for p in protocol.prompts(domain) if p.index in PROMPTS]
        inputs = [protocol.input_image(s, base.resolution) for s in subjects]
        masks = [protocol.input_mask(s, base.resolution) for s in subjects]
        refs = [protocol.reference_images(s, 4, base.resolution) for s in subjects]
        run = DomainRun(domain, subjects, [], prompts, inputs, refs, [])
        rows = {(m, k): Row(m, k, domain) for m, steps in budgets.items() for k in steps}
        peaks: dict[str, list[float]] = {m: [] for m in budgets}
        TUNERS["e4t"](base, pack, inputs[0], steps=0)  # warm-up: the first call builds the adapter
        probe = DriftProbe(base, pack, scorer.identity, count=args.drift_images) if args.drift_images else None

        # the memory of the thing tuning is compared with: generating four images of a prompt
        concept = TUNERS["e4t"](base, pack, inputs[0], steps=0)
        with PeakRSS() as peak:
            t = time.perf_counter()
            generate(base, packs, {concept.id: concept}, prompts[0].for_concept(concept.id), num_images=4)
        generate_peak[domain] = {
            "seconds_4_images": round(time.perf_counter() - t, 3),
            "peak_rss_mb": round(peak.peak / 2**20, 1),
        }

        for i, image in enumerate(inputs):
            for method, steps in budgets.items():
                settings = {"two_stage": args.ts_config, "dreambooth": args.db_config}.get(method)
                results, peak_mb = tune(method, steps, base, pack, image, settings, masks[i])
                peaks[method].append(peak_mb)
                for k, seconds, concept in results:
                    row = rows[method, k]
                    row.tune_s.append(seconds)
                    if probe is not None:
                        row.drift.append(probe.measure(concept, scorer.identity.embed(refs[i])))
                    draw_concept(
                        row,
                        i,
                        base,
                        packs,
                        concept,
                        prompts,
                        num_images=args.images,
                        steps=args.denoise_steps,
                        batch_size=args.images,
                    )
            print(f"{domain} subject {i + 1}/{len(inputs)} done at {time.perf_counter() - started:.0f} s", flush=True)

        for (method, k), row in rows.items():
            scores = scorer.score(run, row)
            out_rows.append(
                {
                    "domain": domain,
                    "method": method,
                    "steps": k,
                    "seconds": round(sum(row.tune_s) / len(row.tune_s), 3),
                    "id_sim": scores["id_sim"],
                    "context_acc": scores["context_acc"],
                    "peak_rss_mb": round(max(peaks[method]), 1),
                }
            )
            if row.drift:  # mean over subjects
                for name, key in (("drift", "drift"), ("drift_toward_subject", "toward_subject")):
                    out_rows[-1][name] = round(sum(d[key] for d in row.drift) / len(row.drift), 4)

    summary = summarize(out_rows, generate_peak)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    config = run_config(args) | {"guidance": base.default_guidance}  # every image is drawn at the base's default
    result = {"rows": out_rows, "generate": generate_peak, "summary": summary, "config": config}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    plot(out_rows, args.out / "fidelity_vs_time.png")
    for r in out_rows:
        print(json.dumps(r))
    print(json.dumps(summary))
    return 0


def summarize(rows: list[dict], generate_peak: dict) -> dict:
    """Per domain: E4T at 5 steps against each baseline's best, and tuning memory against generation's."""
    out = {}
    for domain in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == domain]
        e4t5 = next((r for r in mine if r["method"] == "e4t" and r["steps"] == 5), None)
        entry: dict = {}
        for method in BASELINE_METHODS:
            best = max((r for r in mine if r["method"] == method), key=lambda r: r["id_sim"], default=None)
            if best is None:
                continue
            entry[f"{method}_best"] = {
                k: best[k] for k in ("steps", "seconds", "id_sim", "context_acc", "drift") if k in best
            }
            if e4t5 is not None:
                entry[f"e4t5_minus_{method}_best_id_sim"] = round(e4t5["id_sim"] - best["id_sim"], 4)
                entry[f"{method}_best_time_over_e4t5"] = round(best["seconds"] / max(e4t5["seconds"], 1e-9), 1)
        if e4t5 is not None:
            entry["e4t5"] = {k: e4t5[k] for k in ("seconds", "id_sim", "context_acc")}
        entry.update(two_stage_vs_dreambooth(mine))
        tuning_peak = max(r["peak_rss_mb"] for r in mine)
        entry["tuning_peak_over_generate_peak"] = round(tuning_peak / generate_peak[domain]["peak_rss_mb"], 3)
        out[domain] = entry
    return out


def two_stage_vs_dreambooth(rows: list[dict]) -> dict:
    """The issue's test: the cheapest two_stage row at DreamBooth's best id_sim or above, its time ratio and drift."""
    db = max((r for r in rows if r["method"] == "dreambooth"), key=lambda r: r["id_sim"], default=None)
    ts = sorted((r for r in rows if r["method"] == "two_stage"), key=lambda r: r["seconds"])
    if db is None or not ts:
        return {}
    match = next((r for r in ts if r["id_sim"] >= db["id_sim"]), None)
    if match is None:
        return {"two_stage_reaches_dreambooth_best": None}
    out = {k: match[k] for k in ("steps", "seconds", "id_sim", "context_acc", "drift") if k in match}
    out["time_over_dreambooth_best"] = round(match["seconds"] / max(db["seconds"], 1e-9), 3)
    if "drift" in match and "drift" in db:
        out["drift_minus_dreambooth_best"] = round(match["drift"] - db["drift"], 4)
    return {"two_stage_reaches_dreambooth_best": out}


def plot(rows: list[dict], path: Path) -> None:
    """id_sim and context accuracy against tuning seconds (log scale), one panel pair per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted({r["domain"] for r in rows}, key=lambda d: (d != "faces", d))
    colors = {
        "e4t": "#264653",
        "textual_inversion": "#6d597a",
        "dreambooth": "#e76f51",
        "two_stage": "#2a9d8f",
        "break_a_scene": "#e9c46a",
    }
    # variants from a labelled merge ("dreambooth (no prior)"): dashed, in colours of their own
    variants = sorted({r["method"] for r in rows} - set(colors))
    spare = ("#8ab17d", "#b5179e", "#3a86ff", "#ff006e", "#8d99ae", "#fb8500")
    styles = {m: (c, "o-") for m, c in colors.items()} | {
        m: (spare[i % len(spare)], "s--") for i, m in enumerate(variants)
    }
    panels = ("id_sim", "context_acc", "drift") if any("drift" in r for r in rows) else ("id_sim", "context_acc")
    fig, axes = plt.subplots(len(domains), len(panels), figsize=(5 * len(panels), 3.6 * len(domains)), squeeze=False)
    for row_axes, domain in zip(axes, domains, strict=True):
        for ax, metric in zip(row_axes, panels, strict=True):
            for method, (color, style) in styles.items():
                pts = sorted(
                    (r["seconds"], r[metric], r["steps"])
                    for r in rows
                    if r["domain"] == domain and r["method"] == method and metric in r
                )
                if not pts:
                    continue
                xs = [max(p[0], 1e-2) for p in pts]
                ax.plot(xs, [p[1] for p in pts], style, color=color, label=method)
                for x, (_, v, k) in zip(xs, pts, strict=True):
                    ax.annotate(str(k), (x, v), textcoords="offset points", xytext=(3, 4), fontsize=7, color=color)
            ax.set_xscale("log")
            ax.set_xlabel("tuning seconds (2-core CPU)")
            ax.set_ylabel(metric)
            ax.set_title(f"{domain}: {metric} (labels: steps)")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
