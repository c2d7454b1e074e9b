"""bench/tune_settings.py on the committed artifacts, one subject: each setting tunes with its own rates."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import tune_settings as bench  # noqa: E402


def test_each_setting_tunes_its_own_concepts(tmp_path):
    grid = [{}, {"lr_offsets": 0.3}]  # a rate far too high: the offsets overwrite what the base draws
    argv = ["--out", str(tmp_path), "--domains", "cats", "--subjects", "1", "--images", "1", "--grid", json.dumps(grid)]
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == grid
    assert rows[0]["id_sim"] != rows[1]["id_sim"]
    assert all(r["domain"] == "cats" and r["steps"] == 5 and r["seconds"] > 0 for r in rows)
