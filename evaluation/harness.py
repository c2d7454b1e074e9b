"""The evaluation run: personalize held-out subjects, generate the protocol's prompts, score every row.

1. load the base, the domain packs and the judges (and the CLIP / DINO folders when given)
2. per domain: pick held-out subjects and distractors, render inputs, references and truths
3. reference rows: true renders, another identity's renders, their VAE round trip, the class-word base,
   the base told the subject's attributes in words
4. method rows: personalize each subject with E4T at each tuning-step count and with each baseline
   at its budget (timed), generate every prompt, and measure each concept's language drift (the bare
   class word's images before and after, `evaluation.drift`)
5. score the rows with the judges (and CLIP-I / CLIP-T / DINO), write metrics.json and report.html
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from e4t import generate, load_base, load_pack
from e4t.base import Base
from e4t.concept import Concept
from e4t.judges import CONTEXT_FILE, IDENTITY_FILE, load_judges
from e4t.methods import METHODS, TUNERS, tune_one
from e4t.pack import DomainPack
from evaluation import metrics, protocol
from evaluation.combined import CombinedConfig, run_combined
from evaluation.drift import DriftProbe
from evaluation.protocol import Prompt, Subject
from evaluation.references import (
    CLASS_WORD,
    DESCRIBED,
    REAL_DIFFERENT,
    REAL_SAME,
    VAE,
    class_word_images,
    vae_roundtrip,
)
from shards.synth import described_caption

METHOD = "e4t"
# each baseline near the budget bench/fidelity_vs_time.py found best for it with its default settings (README,
# Evaluation: DreamBooth peaks at 300 steps for faces; Textual Inversion rises to 600 for faces and falls from 50
# for cats); Break-A-Scene learns the subject from its exact mask in the input image (protocol.input_mask)
BASELINES: tuple[tuple[str, int], ...] = (
    ("textual_inversion", 400),
    ("dreambooth", 300),
    ("two_stage", 200),
    ("break_a_scene", 300),
)
COMBINED_TUNE_STEPS = 5  # E4T's default: the combined section measures what a user gets
DIVERSITY_EMBEDDING = "identity judge (e4t.judges.IdentityJudge, 128-d, L2-normalized)"
METRICS = {
    "id_sim": "mean cosine of identity-judge embeddings, generated vs the subject's reference views",
    "context_acc": "fraction of images whose context-judge labels match every label the prompt names",
    "diversity": "1 - mean pairwise cosine among the images of one (subject, prompt); embedding: "
    + DIVERSITY_EMBEDDING,
    "clip_i": "mean cosine of CLIP image embeddings, generated vs reference views",
    "clip_t": "mean cosine of CLIP image embedding and the prompt's text with the class word",
    "dino": "mean cosine of DINO CLS embeddings, generated vs reference views",
    "tune_s": "mean seconds of personalization per subject",
    "gen_s_per_image": "mean seconds per generated image",
    "combined": "prompts naming two concepts personalized apart ('{a} and {b}'): per concept, id_sim on its crop "
    "of the combined images (evaluation/per_concept.py), alone (the same prompt naming it only), and against "
    "held-out distractors (the floor); context_acc of the combined and the alone images",
    "drift": "1 - mean identity-judge cosine of the bare class word's images (fixed seeds) before and after tuning",
    "drift_toward_subject": "id_sim of the bare class word's images to the subject, after tuning minus before",
}


@dataclass(frozen=True)
class EvalConfig:
    # 3 per domain keep the default run (both domains, every baseline) within an hour on 2 cores (README)
    subjects: int = 3  # held-out subjects of the main domain (of every domain named with `domains`)
    other_subjects: int = 3  # held-out subjects of each other domain
    steps: tuple[int, ...] = (0, 1, 5, 15)  # E4T tuning-step counts, one row each
    baselines: tuple[tuple[str, int], ...] = BASELINES  # (method, steps), one row each
    images_per_prompt: int = 2
    references: int = 4  # reference views per subject for the fidelity metrics
    denoise_steps: int = 25
    guidance: float | None = None  # None: the base's default (`Base.default_guidance`)
    identity_guidance: float | None = None  # every concept's images, any method (e4t.generate); None: off
    seed: int = 0  # tuning seed; generation seeds derive from it (protocol.generation_seed)
    quick: bool = False  # 2 prompts per domain
    domains: tuple[str, ...] | None = None  # None: every loaded domain, the main one ("faces") first
    grid_images: int = 1  # images per (prompt, row) cell of the report's grids
    combined_pairs: int = 2  # pairs of subjects per domain pair for prompts naming two concepts; 0: none
    drift_images: int = 4  # class-word images per concept for its language drift (evaluation.drift); 0: none

    @classmethod
    def quick_config(cls, **overrides) -> EvalConfig:
        """2 subjects x 2 prompts x 2 images, few denoising steps: for tests and smoke runs."""
        quick = dict(
            subjects=2,
            other_subjects=1,
            images_per_prompt=2,
            references=2,
            denoise_steps=3,
            quick=True,
            combined_pairs=1,
        )
        return replace(cls(**quick), **overrides)

    def __post_init__(self):
        for name in ("subjects", "other_subjects", "images_per_prompt", "references", "denoise_steps", "grid_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1 but is {getattr(self, name)}.")
        if self.combined_pairs < 0:
            raise ValueError(f"`combined_pairs` must be at least 0 but is {self.combined_pairs}.")
        if self.drift_images < 0:
            raise ValueError(f"`drift_images` must be at least 0 but is {self.drift_images}.")
        if not self.steps or any(s < 0 for s in self.steps):
            raise ValueError(f"`steps` must be a non-empty list of non-negative counts but is {list(self.steps)}.")
        unknown = [m for m, _ in self.baselines if m not in METHODS or m == METHOD]
        if unknown:
            raise ValueError(f"`baselines` must name methods of {sorted(set(METHODS) - {METHOD})} but names {unknown}.")


@dataclass
class Row:
    """Images of one row of one domain, grouped by (subject, prompt), with their timings."""

    method: str
    steps: int | None
    domain: str
    groups: dict[tuple[int, int], list[Image.Image]] = field(default_factory=dict)  # (subject, prompt) -> images
    tune_s: list[float] = field(default_factory=list)
    gen_s: list[float] = field(default_factory=list)  # seconds per generated image
    drift: list[dict[str, float]] = field(default_factory=list)  # per subject: evaluation.drift.DriftProbe.measure

    @property
    def label(self) -> str:
        return self.method if self.steps is None else f"{self.method}@{self.steps}"


@dataclass
class DomainRun:
    domain: str
    subjects: list[Subject]
    distractors: list[Subject]
    prompts: list[Prompt]
    inputs: list[Image.Image]
    references: list[list[Image.Image]]
    rows: list[Row]


def combined_config(config: EvalConfig) -> CombinedConfig:
    """The combined section's settings: E4T at 5 tuning steps, the run's prompts, images and seeds."""
    return CombinedConfig(
        pairs=config.combined_pairs,
        tune_steps=COMBINED_TUNE_STEPS,
        images_per_prompt=config.images_per_prompt,
        references=config.references,
        denoise_steps=config.denoise_steps,
        guidance=config.guidance,
        identity_guidance=config.identity_guidance,
        seed=config.seed,
        quick=config.quick,
    )


def load_embedded_world(judges_dir: str | Path | None = None) -> tuple[Base, dict[str, DomainPack], Scorer]:
    """The embedded base, each of its packs by domain, and a scorer with the judges (default artifacts/judges):
    what the benches generate and score with."""
    from e4t.embedded import artifacts_root, default_paths

    base_dir, pack_paths = default_paths()
    base = load_base(base_dir)
    packs = {p.domain: p for p in (load_pack(path, base) for path in pack_paths)}
    return base, packs, Scorer(load_judges(judges_dir or artifacts_root() / "judges"))


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def pick_domains(packs: dict[str, DomainPack], config: EvalConfig) -> list[str]:
    if config.domains:
        missing = [d for d in config.domains if d not in packs]
        if missing:
            raise ValueError(f"`domains` must name loaded packs {sorted(packs)} but names {missing}.")
        return list(config.domains)
    return sorted(packs, key=lambda d: (d != protocol.MAIN_DOMAIN, d))


def draw_concept(
    row: Row,
    subject: int,
    base: Base,
    packs: dict[str, DomainPack],
    concept: Concept,
    prompts: list[Prompt],
    seed: int = 0,
    bar: tqdm | None = None,
    **gen,
) -> None:
    """The concept of subject number `subject` under every prompt, each with the prompt's fixed seed, into `row`."""
    for p in prompts:
        t = time.perf_counter()
        images = generate(
            base, packs, {concept.id: concept}, p.for_concept(concept.id), seed=protocol.generation_seed(p, seed), **gen
        )
        row.gen_s.append((time.perf_counter() - t) / len(images))
        row.groups[subject, p.index] = images
        if bar is not None:
            bar.update(1)


def run_domain(
    base: Base, pack: DomainPack, n_subjects: int, config: EvalConfig, progress: bool = True, identity=None
) -> DomainRun:
    """Steps 2-4 of the recipe for one domain: every image of every row, unscored.

    With the identity judge `identity`, each method row also records its concepts' language drift.
    """
    # 2. subjects, distractors (the next held-out identities) and their renders
    domain, size, n = pack.domain, base.resolution, config.images_per_prompt
    subjects = protocol.heldout_identities(domain, n_subjects)
    distractors = protocol.heldout_identities(domain, n_subjects, skip=n_subjects)
    prompt_list = protocol.prompts(domain, quick=config.quick)
    inputs = [protocol.input_image(s, size) for s in subjects]
    masks = [protocol.input_mask(s, size) for s in subjects]  # the subject's exact mask, for scene tuners
    references = [protocol.reference_images(s, config.references, size) for s in subjects]
    gen = dict(
        num_images=n,
        steps=config.denoise_steps,
        guidance=config.guidance,
        identity_guidance=config.identity_guidance,
        batch_size=n,
    )
    work = len(prompt_list) * (1 + len(subjects) * (2 + len(config.steps) + len(config.baselines)))
    bar = tqdm(total=work, desc=f"eval {domain}", unit="prompt", disable=not progress)

    # 3. reference rows; the class-word images depend on the prompt only, so they are shared by all subjects
    rows = {m: Row(m, None, domain) for m in (REAL_SAME, REAL_DIFFERENT, VAE, CLASS_WORD, DESCRIBED)}
    same, different, vae, word, described = rows.values()
    descriptions = {
        (i, p.index): described_caption(domain, s.attributes, p.context)
        for i, s in enumerate(subjects)
        for p in prompt_list
    }
    limit = base.tokenizer.model_max_length
    if max(len(base.tokenizer(c).input_ids) for c in descriptions.values()) > limit:
        del rows[DESCRIBED]  # a base whose prompts are too short for a description has no such row
        described = None
    words = dict(steps=config.denoise_steps, guidance=config.guidance)
    for p in prompt_list:
        seed = protocol.generation_seed(p, config.seed)
        t = time.perf_counter()
        images = class_word_images(base, p.caption, n, seed=seed, **words)
        word.gen_s.append((time.perf_counter() - t) / n)
        for i, (s, d) in enumerate(zip(subjects, distractors, strict=True)):
            same.groups[i, p.index] = protocol.truth_images(s, p, n, size)
            different.groups[i, p.index] = protocol.truth_images(d, p, n, size)
            vae.groups[i, p.index] = vae_roundtrip(base.vae, same.groups[i, p.index], base.resolution)
            word.groups[i, p.index] = images
            if described is not None:
                described.groups[i, p.index] = class_word_images(base, descriptions[i, p.index], n, seed=seed, **words)
        bar.update(1 + 2 * len(subjects))

    # 4. method rows: one concept per (subject, method, step count), the same tuning seed for all
    method_rows = [Row(METHOD, s, domain) for s in config.steps] + [Row(m, s, domain) for m, s in config.baselines]
    TUNERS[METHOD](base, pack, inputs[0], steps=0, seed=config.seed)  # warm-up: the first call builds the adapter
    probe = None
    if identity is not None and config.drift_images:
        words = dict(steps=config.denoise_steps, guidance=config.guidance, seed=config.seed)
        probe = DriftProbe(base, pack, identity, count=config.drift_images, **words)
    for i, image in enumerate(inputs):
        for row in method_rows:
            t = time.perf_counter()
            concept = tune_one(
                row.method, base, pack, image, subject_mask=masks[i], steps=row.steps, seed=config.seed, owner="eval"
            )
            row.tune_s.append(time.perf_counter() - t)
            if probe is not None:
                row.drift.append(probe.measure(concept, identity.embed(references[i])))
            draw_concept(row, i, base, {domain: pack}, concept, prompt_list, config.seed, bar, **gen)
    bar.close()
    return DomainRun(domain, subjects, distractors, prompt_list, inputs, references, [*method_rows, *rows.values()])


class Scorer:
    """Judges (and optional CLIP / DINO scorers) with the reference embeddings of each subject cached."""

    def __init__(self, judges, clip=None, dino=None):
        self.identity, self.context = judges
        self.clip, self.dino = clip, dino
        self._refs: dict[tuple[str, int, str], torch.Tensor] = {}

    def _ref(self, run: DomainRun, i: int, which: str) -> torch.Tensor:
        key = (run.domain, i, which)
        if key not in self._refs:
            self._refs[key] = self._embed(which, run.references[i])
        return self._refs[key]

    def _embed(self, which: str, images: list[Image.Image]) -> torch.Tensor:
        return {
            "id": self.identity.embed,
            "clip": lambda x: self.clip.embed_images(x),
            "dino": lambda x: self.dino.embed_images(x),
        }[which](images)

    def score(self, run: DomainRun, row: Row, *, by_subject: bool = False) -> dict:
        """The row's metrics; `by_subject` adds `id_sim_subjects`: each subject's id_sim on its own, in order."""
        keys = sorted(row.groups)
        images = [im for k in keys for im in row.groups[k]]
        sizes = [len(row.groups[k]) for k in keys]
        prompts = {p.index: p for p in run.prompts}
        vocab = self.context.vocab.labels
        # a label the context judge does not know cannot be scored; only known ones count
        named = [
            {kk: v for kk, v in prompts[k[1]].named.items() if v in vocab.get(kk, ())}
            for k in keys
            for _ in row.groups[k]
        ]
        out: dict = {"method": row.method, "steps": row.steps, "domain": run.domain}
        emb = self.identity.embed(images).split(sizes)
        pairs = [(e, self._ref(run, k[0], "id")) for e, k in zip(emb, keys, strict=True)]
        out["id_sim"] = metrics.fidelity(pairs)
        if by_subject:
            out["id_sim_subjects"] = [
                round(metrics.fidelity([pair for pair, k in zip(pairs, keys, strict=True) if k[0] == i]), 4)
                for i in range(len(run.subjects))
            ]
        out["context_acc"] = metrics.context_accuracy(self.context.predict(images), named)
        out["diversity"] = metrics.diversity(emb)
        if self.clip is not None:
            clip_emb = self.clip.embed_images(images)
            out["clip_i"] = metrics.fidelity(
                [(e, self._ref(run, k[0], "clip")) for e, k in zip(clip_emb.split(sizes), keys, strict=True)]
            )
            texts = [prompts[k[1]].caption for k in keys for _ in row.groups[k]]
            out["clip_t"] = metrics.text_alignment(clip_emb, self.clip.embed_texts(texts))
        if self.dino is not None:
            dino_emb = self.dino.embed_images(images).split(sizes)
            out["dino"] = metrics.fidelity(
                [(e, self._ref(run, k[0], "dino")) for e, k in zip(dino_emb, keys, strict=True)]
            )
        out["n_images"] = len(images)
        if row.tune_s:
            out["tune_s"] = sum(row.tune_s) / len(row.tune_s)
        if row.gen_s:
            out["gen_s_per_image"] = sum(row.gen_s) / len(row.gen_s)
        if row.drift:
            out["drift"] = sum(d["drift"] for d in row.drift) / len(row.drift)
            out["drift_toward_subject"] = sum(d["toward_subject"] for d in row.drift) / len(row.drift)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def evaluate(
    out: str | Path,
    *,
    base_dir: str | Path | None = None,
    pack_paths: list[str | Path] | None = None,
    judges_dir: str | Path | None = None,
    config: EvalConfig = EvalConfig(),
    clip: str | Path | None = None,
    dino: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Run the protocol, write `out`/metrics.json and `out`/report.html; returns the metrics dict.

    Each domain's scored rows also land in `out`/rows-<domain>.json as soon as that domain is done.

    Paths default to the embedded artifacts (`e4t.embedded.default_paths()`, artifacts/judges).
    """
    from e4t.embedded import artifacts_root, default_paths
    from evaluation.report import write_report

    # 1. load everything
    started = time.perf_counter()
    default_base, default_packs = default_paths()
    base_dir = Path(base_dir or default_base)
    pack_paths = [Path(p) for p in (pack_paths or default_packs)]
    judges_dir = Path(judges_dir or artifacts_root() / "judges")
    if not pack_paths:
        raise FileNotFoundError(
            f"expected at least one domain pack but found none (looked in {default_base.parent / 'packs'})"
        )
    missing = [str(judges_dir / f) for f in (IDENTITY_FILE, CONTEXT_FILE) if not (judges_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"judges not found: {', '.join(missing)} (train them with `e4t pretrain judges --out {judges_dir}`)"
        )
    base = load_base(base_dir)
    packs = {}
    for path in pack_paths:
        pack = load_pack(path, base)
        packs[pack.domain] = (pack, path)
    domains = pick_domains({d: p for d, (p, _) in packs.items()}, config)
    if config.guidance is None:  # recorded as the value used
        config = replace(config, guidance=base.default_guidance)
    from evaluation.realmetrics import ClipScorer, DinoScorer

    judges = load_judges(judges_dir)
    scorer = Scorer(judges, ClipScorer(clip) if clip else None, DinoScorer(dino) if dino else None)

    # 2-4. images of every row; 5. scores. Each domain's scored rows are written as soon as they exist,
    # so a long run cut off in a later domain keeps the earlier ones.
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, rows = [], []
    for domain in domains:
        main = domain == domains[0]
        n = config.subjects if main else config.other_subjects
        run = run_domain(base, packs[domain][0], n, config, progress, identity=scorer.identity)
        runs.append(run)
        scored = [scorer.score(run, row) for row in tqdm(run.rows, desc=f"score {domain}", disable=not progress)]
        partial = {"config": asdict(config), "rows": scored}
        (out / f"rows-{domain}.json").write_text(json.dumps(partial, indent=2) + "\n")
        rows += scored
    combined, combined_grids = [], {}
    if config.combined_pairs:  # prompts naming two concepts personalized apart (evaluation/combined.py)
        combined, combined_grids = run_combined(
            base, {d: p for d, (p, _) in packs.items()}, judges, domains, combined_config(config), progress=progress
        )

    result = {
        "protocol": {
            "paper": "DreamBooth evaluation protocol (Ruiz et al. 2023, sec. 4.1) on held-out synthetic identities",
            "config": asdict(config),
            "base": {"path": str(base_dir), "hash": base.hash},
            "packs": {
                d: {"path": str(path), "hash": p.hash, "step": p.step} for d, (p, path) in packs.items() if d in domains
            },
            "judges": {
                name: {"path": str(judges_dir / f), "sha256": file_digest(judges_dir / f)}
                for name, f in (("identity", IDENTITY_FILE), ("context", CONTEXT_FILE))
            },
            "real_models": {
                k: {"path": str(s.path), "hash": s.hash} for k, s in (("clip", scorer.clip), ("dino", scorer.dino)) if s
            },
            "seeds": {
                "tune": config.seed,
                "generation": "image k of prompt p: seed + 1000 * (p + 1) + k",
                "truth_nuisance": "random.Random('eval/truth/{identity}/{p}/{k}')",
            },
            "input": {
                "context": dict(zip(("medium", "background", "accessory"), protocol.INPUT_CONTEXT, strict=True)),
                "nuisance": protocol.INPUT_NUISANCE,
            },
            "domains": {
                r.domain: {
                    **protocol.describe(r.subjects, r.prompts),
                    "distractors": [s.identity for s in r.distractors],
                }
                for r in runs
            },
            "metrics": METRICS,
        },
        "rows": rows,
        "combined": combined,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out / "report.html", result, runs, config.grid_images, combined_grids)
    return result
