"""Why generation slowed 30-50x beside another busy PyTorch process, measured in one run.

Loads the embedded default once, then times the demo's generation (4 images, 25 steps, guidance
7.5) with 2 and 1 intra-op threads, alone and beside a CPU-bound PyTorch process (torch's default
threads and wait policy), alternating. The OpenMP wait policy is fixed when torch loads, so run it
once per policy; prints one JSON line:

    OMP_WAIT_POLICY=ACTIVE python bench/cpu_sharing.py    # PyTorch's default: spin while waiting
    OMP_WAIT_POLICY=PASSIVE python bench/cpu_sharing.py   # what `e4t` sets: sleep while waiting
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve_load import COMPETITOR  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="2,1", help="intra-op thread counts to compare")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    policy = os.environ.get("OMP_WAIT_POLICY", "")  # read before torch loads OpenMP

    import torch
    from tqdm import tqdm

    import e4t
    from e4t.embedded import default_paths

    base_dir, pack_paths = default_paths()
    base = e4t.load_base(base_dir)
    packs = {pack.domain: pack for pack in (e4t.load_pack(path, base) for path in pack_paths)}

    def generate4() -> float:
        start = time.perf_counter()
        e4t.generate(base, packs, {}, "a photo of a face on the beach", num_images=4, steps=25, guidance=7.5)
        return time.perf_counter() - start

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    result: dict = {"omp_wait_policy": policy or "ACTIVE (default)", "cpus": os.cpu_count()}
    counts = [int(t) for t in args.threads.split(",")]
    with tqdm(total=len(counts) * args.repeats * 2, desc="generate 4 images", file=sys.stderr) as bar:
        for threads in counts:
            torch.set_num_threads(threads)
            generate4()  # warm-up at this thread count
            alone, busy = [], []
            for _ in range(args.repeats):
                alone.append(generate4())
                bar.update()
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
                try:
                    time.sleep(2)
                    busy.append(generate4())
                finally:
                    competitor.kill()
                    competitor.wait()
                bar.update()
            result[f"threads_{threads}"] = {
                "alone_s": round(statistics.median(alone), 2),
                "contended_s": round(statistics.median(busy), 2),
                "slowdown": round(statistics.median(busy) / statistics.median(alone), 2),
            }
    result["load_average"] = os.getloadavg()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
