"""bench/guidance.py on the committed artifacts, one subject: every row at every scale, drawn at that scale."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import guidance as bench  # noqa: E402


def test_every_row_is_scored_at_every_scale(tmp_path):
    argv = ["--out", str(tmp_path), "--domains", "cats", "--subjects", "1", "--images", "1", "--steps", "0"]
    assert bench.main([*argv, "--scales", "1.5,12"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["row"], r["guidance"]) for r in rows] == [
        (name, scale) for scale in (1.5, 12.0) for name in ("e4t", bench.WORDS, bench.CLASS_WORD)
    ]
    # the scale reaches the images: the same concept scores differently at 1.5 and at 12
    e4t = [r["id_sim"] for r in rows if r["row"] == "e4t"]
    assert e4t[0] != e4t[1]
    assert (tmp_path / "guidance.png").stat().st_size > 0
