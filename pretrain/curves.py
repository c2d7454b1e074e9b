"""Plot training curves (`curve.jsonl` of each stage, or a pack's `track.jsonl`) against samples seen.

    python -m pretrain.curves OUT.png [--key KEY] FILE:LABEL:BATCH[:OFFSET] ...

KEY is the plotted field: `loss` (log scale, the default) or another, such as the pack tracker's
`id_sim_0step` (linear). OFFSET (in samples) places a continued schedule after the one it started from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(out: Path, specs: list[str], key: str = "loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in specs:
        path, label, batch, *offset = spec.split(":")
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{path} holds no curve points.")
        if key not in rows[0]:
            raise ValueError(f"{path} has no field {key!r} (it has {sorted(rows[0])}).")
        start = int(offset[0]) if offset else 0
        ax.plot([start + r["step"] * int(batch) for r in rows], [r[key] for r in rows], label=label)
    ax.set_xlabel("training samples seen")
    if key == "loss":
        ax.set_ylabel("loss (smoothed)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    key = "loss"
    if "--key" in args:
        at = args.index("--key")
        key = args[at + 1]
        del args[at : at + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    print(plot(Path(args[0]), args[1:], key))
