"""Plot training curves (`curve.jsonl` of each stage) against samples seen, for the README.

    python -m pretrain.curves OUT.png FILE:LABEL:BATCH[:OFFSET] ...

OFFSET (in samples) places a continued schedule after the one it started from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(out: Path, specs: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in specs:
        path, label, batch, *offset = spec.split(":")
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{path} holds no curve points.")
        start = int(offset[0]) if offset else 0
        ax.plot([start + r["step"] * int(batch) for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("loss (smoothed)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(plot(Path(sys.argv[1]), sys.argv[2:]))
