"""bench/fidelity_vs_time.py without tuning: Break-A-Scene rows in its options, summary and figure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fidelity_vs_time as bench  # noqa: E402


def _row(method: str, steps: int, seconds: float, id_sim: float) -> dict:
    return dict(
        domain="faces", method=method, steps=steps, seconds=seconds, id_sim=id_sim, context_acc=0.5, peak_rss_mb=500.0
    ) | {"drift": 0.3, "drift_toward_subject": 0.1}


def test_break_a_scene_rows_are_summarized_and_plotted(tmp_path):
    args = bench.build_parser().parse_args(["--out", "x", "--methods", "e4t,break_a_scene", "--bas-steps", "50,150"])
    assert args.bas_steps == (50, 150)
    rows = [_row("e4t", 5, 1.0, 0.05), _row("break_a_scene", 100, 30.0, 0.06), _row("break_a_scene", 300, 70.0, 0.27)]
    summary = bench.summarize(rows, {"faces": {"peak_rss_mb": 400.0}})["faces"]
    assert summary["break_a_scene_best"] == {
        "steps": 300,
        "seconds": 70.0,
        "id_sim": 0.27,
        "context_acc": 0.5,
        "drift": 0.3,
    }
    assert summary["e4t5_minus_break_a_scene_best_id_sim"] == -0.22
    assert summary["break_a_scene_best_time_over_e4t5"] == 70.0
    bench.plot(rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_the_recorded_options_are_json_whatever_paths_they_hold():
    import json

    args = bench.build_parser().parse_args(["--out", "x", "--judges", "artifacts/judges"])
    assert json.loads(json.dumps(bench.run_config(args)))["judges"] == "artifacts/judges"


def test_a_later_run_of_one_method_replaces_it_and_a_labelled_run_joins_beside_it(tmp_path):
    import json

    def run(name: str, rows: list[dict]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        result = {"rows": rows, "generate": {"faces": {"peak_rss_mb": 400.0}}, "summary": {"wall_s": 9.0}, "config": {}}
        (folder / "results.json").write_text(json.dumps(result))
        return folder

    earlier = run("all", [_row("e4t", 0, 0.1, 0.2), _row("e4t", 5, 1.0, 0.3), _row("textual_inversion", 50, 10.0, 0.5)])
    later = run("e4t", [_row("e4t", 5, 1.5, 0.6)])
    assert bench.merge(tmp_path / "merged", [earlier, later]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [(r["method"], r["steps"], r["id_sim"]) for r in merged["rows"]] == [
        ("textual_inversion", 50, 0.5),
        ("e4t", 5, 0.6),
    ]
    assert merged["summary"]["faces"]["e4t5_minus_textual_inversion_best_id_sim"] == 0.1

    # a labelled run joins as a variant beside the method's own rows, and stays out of the summary
    variant = run("ti-lr", [_row("textual_inversion", 50, 10.0, 0.9)])
    assert bench.merge(tmp_path / "variants", [earlier, f"{variant}=lr 1e-2"]) == 0
    joined = json.loads((tmp_path / "variants" / "results.json").read_text())
    assert [(r["method"], r["id_sim"]) for r in joined["rows"]][-2:] == [
        ("textual_inversion", 0.5),
        ("textual_inversion (lr 1e-2)", 0.9),
    ]
    assert joined["summary"]["faces"]["textual_inversion_best"]["id_sim"] == 0.5
    assert (tmp_path / "variants" / "fidelity_vs_time.png").stat().st_size > 1000


def test_a_methods_settings_reach_its_tuner(tiny_base_dir, tiny_pack_path):
    # --db-config / --ts-config: a run with lr 0 must keep DreamBooth's offsets where a default run moves them
    import io

    from PIL import Image

    from e4t import load_base, load_pack
    from shards.synth import render_sample

    base = load_base(tiny_base_dir)
    pack = load_pack(tiny_pack_path, base)
    image = Image.open(io.BytesIO(render_sample("faces", 0, 0, 64, 0)[1]))
    fast = {"batch": 1, "prior_images": 1, "prior_steps": 2}

    def offsets(settings: dict) -> list:
        (result,), _ = bench.tune("dreambooth", (2,), base, pack, image, settings)
        return [t for name, t in sorted(result[2].offset_deltas.items()) if "lora_B" in name]

    assert all(t.abs().max() == 0 for t in offsets(fast | {"lr": 0.0}))
    assert any(t.abs().max() > 0 for t in offsets(fast | {"lr": 1e-2}))
