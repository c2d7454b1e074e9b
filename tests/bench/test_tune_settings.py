"""bench/tune_settings.py on the committed artifacts, one subject: each setting tunes with its own rates."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import tune_settings as bench  # noqa: E402


def test_each_setting_tunes_its_own_concepts(tmp_path):
    grid = [{}, {"lr_offsets": 0.3}]  # a rate far too high: the offsets overwrite what the base draws
    argv = ["--out", str(tmp_path), "--domains", "cats", "--subjects", "2", "--images", "1", "--grid", json.dumps(grid)]
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == grid
    assert rows[0]["id_sim"] != rows[1]["id_sim"]
    assert all(r["domain"] == "cats" and r["steps"] == 5 and r["seconds"] > 0 for r in rows)
    # one score per subject, whose mean is the row's (every subject draws the same number of images)
    for r in rows:
        assert len(r["id_sim_subjects"]) == 2
        assert abs(sum(r["id_sim_subjects"]) / 2 - r["id_sim"]) < 1e-3
    assert rows[0]["vs_shipped"] == {"mean": 0.0, "stderr": 0.0}
    diffs = [a - b for a, b in zip(rows[1]["id_sim_subjects"], rows[0]["id_sim_subjects"], strict=True)]
    assert rows[1]["vs_shipped"]["mean"] == round(sum(diffs) / 2, 4)
