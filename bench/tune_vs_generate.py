"""Time of one E4T personalization (5 steps) over the time of generating 4 images (25 steps, the base's
default guidance: classifier-free, so two UNet passes a step).

Both are measured in this one run, on the same base and pack, so the ratio holds on a noisy
shared machine where absolute seconds do not. Uses the embedded default unless --base/--pack.

    python bench/tune_vs_generate.py [--base DIR --pack FILE] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from e4t import generate, load_base, load_pack, personalize  # noqa: E402
from e4t.embedded import default_paths  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path)
    parser.add_argument("--pack", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune-steps", type=int, default=5)
    args = parser.parse_args()
    base_dir, packs = default_paths()
    base = load_base(args.base or base_dir)
    pack = load_pack(args.pack or packs[0], base)
    torch.set_num_threads(torch.get_num_threads())

    from shards.synth import render_sample

    image = Image.open(io.BytesIO(render_sample(pack.domain, 7, 0, 64, 0)[1]))
    personalize(base, pack, image, steps=1)  # warm-up: first calls allocate and build adapters
    tune, gen = [], []
    for r in range(args.repeats):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        concept = personalize(base, pack, image, steps=args.tune_steps, seed=r)
        tune.append(time.perf_counter() - t)
        t = time.perf_counter()
        generate(
            base,
            {pack.domain: pack},
            {concept.id: concept},
            f"a photo of {{{concept.id}}} on the beach",
            num_images=4,
            steps=25,
            seed=r,
        )
        gen.append(time.perf_counter() - t)
    t_med, g_med = statistics.median(tune), statistics.median(gen)
    print(f"personalize ({args.tune_steps} steps): median {t_med:.3f} s over {args.repeats}")
    print(f"generate (4 images, 25 steps, guidance {base.default_guidance}): median {g_med:.3f} s over {args.repeats}")
    print(f"ratio personalize / generate = {t_med / g_med:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
