"""bench/guidance.py on the committed artifacts, one subject: every row at every scale, drawn at that scale,
and the concept also with identity guidance."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import guidance as bench  # noqa: E402

from pretrain.embedded import SHIPPED  # noqa: E402


def test_every_row_is_scored_at_every_scale(tmp_path):
    argv = ["--out", str(tmp_path), "--domains", "cats", "--subjects", "1", "--images", "1", "--steps", "0"]
    scales = (1.5, SHIPPED.guidance, 12.0)  # the committed base records the shipped world's scale
    assert bench.main([*argv, "--scales", ",".join(map(str, scales)), "--identity-scales", "6"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["row"], r["guidance"], r["identity_guidance"]) for r in rows] == [
        (name, scale, identity)
        for scale in scales
        for name, identity in (("e4t", None), ("e4t", 6.0), (bench.WORDS, None), (bench.CLASS_WORD, None))
    ]
    # the scale reaches the images: the same concept scores differently at 1.5 and at 12, and with identity guidance
    plain = [r["id_sim"] for r in rows if r["row"] == "e4t" and r["identity_guidance"] is None]
    guided = [r["id_sim"] for r in rows if r["row"] == "e4t" and r["identity_guidance"] is not None]
    assert plain[0] != plain[2] and guided[1] != plain[1]
    # every row is compared with itself at the base's scale without identity guidance, subject by subject
    # (one subject: no error)
    for r in rows:
        assert r["id_sim_subjects"] == [r["id_sim"]]
        same = next(
            x
            for x in rows
            if x["row"] == r["row"] and x["guidance"] == SHIPPED.guidance and x["identity_guidance"] is None
        )
        assert r["vs_base_scale"] == {"mean": round(r["id_sim"] - same["id_sim"], 4), "stderr": None}
    assert (tmp_path / "guidance.png").stat().st_size > 0 and (tmp_path / "identity_guidance.png").stat().st_size > 0
