"""Does a VAE keep identity? Its round trip of real renders, scored by the identity judge, per domain.

On the evaluation's held-out subjects and prompts (`evaluation.protocol`), as the `e4t eval` rows
`real_same_identity` (the true renders) and `vae_reconstruction` (their round trip through the
VAE, latent mean), but for a bare VAE folder: a finished `2-vae` stage is measured before any UNet
is trained on it. The issue's target is `ratio` = vae / real >= 0.95.

    python bench/vae_identity.py --vae artifacts/base/vae \
        --vae runs/embedded/plain/base/work/2-vae/model --judges artifacts/judges --out out/vae_identity

Writes OUT/results.json and OUT/vae_identity.png (per VAE: a subject's true renders above their round trip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from e4t.judges import load_judges  # noqa: E402
from evaluation import metrics, protocol  # noqa: E402
from evaluation.references import vae_roundtrip  # noqa: E402

SIZE, CELL = 64, 96


def measure(vae: AutoencoderKL, judge, domain: str, subjects: int, images: int) -> tuple[dict, list, list]:
    real, rec, shown = [], [], ([], [])
    for s in protocol.heldout_identities(domain, subjects):
        ref = judge.embed(protocol.reference_images(s, 4, SIZE))
        for p in protocol.prompts(domain):
            truth = protocol.truth_images(s, p, images, SIZE)
            back = vae_roundtrip(vae, truth, SIZE)
            real.append((judge.embed(truth), ref))
            rec.append((judge.embed(back), ref))
            if len(shown[0]) < 8:
                shown[0].append(truth[0])
                shown[1].append(back[0])
    r, v = metrics.fidelity(real), metrics.fidelity(rec)
    return {"real_same_identity": round(r, 4), "vae_reconstruction": round(v, 4), "ratio": round(v / r, 4)}, *shown


def draw(figure: list[tuple[str, list, list]], path: Path) -> None:
    label_h = 16
    width = CELL * max(len(t) for _, t, _ in figure)
    grid = Image.new("RGB", (width, len(figure) * (label_h + 2 * CELL)), "white")
    pen = ImageDraw.Draw(grid)
    for r, (label, truth, back) in enumerate(figure):
        y = r * (label_h + 2 * CELL)
        pen.text((4, y + 2), label, fill="black")
        for c, (a, b) in enumerate(zip(truth, back, strict=True)):
            grid.paste(a.resize((CELL, CELL), Image.Resampling.NEAREST), (c * CELL, y + label_h))
            grid.paste(b.resize((CELL, CELL), Image.Resampling.NEAREST), (c * CELL, y + label_h + CELL))
    grid.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", action="append", required=True, type=Path, help="an AutoencoderKL folder (repeat)")
    ap.add_argument("--judges", type=Path, required=True, help="judges folder (its identity judge scores id_sim)")
    ap.add_argument("--domains", default="faces,cats")
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--images", type=int, default=2, help="true renders per subject and prompt")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    judge = load_judges(args.judges).identity
    rows, figure = [], []
    for path in args.vae:
        vae = AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32).eval()
        for domain in args.domains.split(","):
            row, truth, back = measure(vae, judge, domain, args.subjects, args.images)
            rows.append({"vae": str(path), "domain": domain, **row})
            print(json.dumps(rows[-1]), flush=True)
            figure.append((f"{domain}: {path} (top: true renders, below: round trip)", truth, back))
    result = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    draw(figure, args.out / "vae_identity.png")


if __name__ == "__main__":
    main()
