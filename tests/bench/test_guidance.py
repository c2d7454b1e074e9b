"""bench/guidance.py on the committed artifacts, one subject: every row at every scale, drawn at that scale."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import guidance as bench  # noqa: E402

from pretrain.embedded import SHIPPED  # noqa: E402


def test_every_row_is_scored_at_every_scale(tmp_path):
    argv = ["--out", str(tmp_path), "--domains", "cats", "--subjects", "1", "--images", "1", "--steps", "0"]
    scales = (1.5, SHIPPED.guidance, 12.0)  # the committed base records the shipped world's scale
    assert bench.main([*argv, "--scales", ",".join(map(str, scales))]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["row"], r["guidance"]) for r in rows] == [
        (name, scale) for scale in scales for name in ("e4t", bench.WORDS, bench.CLASS_WORD)
    ]
    # the scale reaches the images: the same concept scores differently at 1.5 and at 12
    e4t = [r["id_sim"] for r in rows if r["row"] == "e4t"]
    assert e4t[0] != e4t[2]
    # every row is compared with itself at the base's scale, subject by subject (one subject: no error)
    for r in rows:
        assert r["id_sim_subjects"] == [r["id_sim"]]
        same = next(x for x in rows if x["row"] == r["row"] and x["guidance"] == SHIPPED.guidance)
        assert r["vs_base_scale"] == {"mean": round(r["id_sim"] - same["id_sim"], 4), "stderr": None}
    assert (tmp_path / "guidance.png").stat().st_size > 0
