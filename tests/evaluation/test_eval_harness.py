"""`e4t eval --quick` end to end on the tiny base, pack and judges; CLIP-I / CLIP-T / DINO on tiny random folders."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from evaluation import metrics, protocol
from evaluation.cli import main
from evaluation.references import REFERENCE_ROWS
from shards.splits import split_of


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory):
    from pretrain.judges import train_judges

    out = tmp_path_factory.mktemp("judges")
    train_judges(out, preset="tiny", domains=["faces"], progress=False)
    return out


@pytest.fixture(scope="module")
def quick_run(tiny_base_dir, tiny_pack_path, tiny_judges, tiny_real_models, tmp_path_factory):
    clip_dir, dino_dir = tiny_real_models
    out = tmp_path_factory.mktemp("eval")
    argv = [
        "--out",
        str(out),
        "--base",
        str(tiny_base_dir),
        "--pack",
        str(tiny_pack_path),
        "--judges",
        str(tiny_judges),
        "--quick",
        "--steps",
        "0,1",
        "--baselines",
        "textual_inversion@2,dreambooth@1,two_stage@2,break_a_scene@2",
        "--clip",
        str(clip_dir),
        "--dino",
        str(dino_dir),
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_metrics_json_has_every_row_in_range(quick_run):
    out, result = quick_run
    rows = result["rows"]
    assert [r["steps"] for r in rows if r["method"] == "e4t"] == [0, 1]
    assert [
        (r["method"], r["steps"])
        for r in rows
        if r["method"] in ("textual_inversion", "dreambooth", "two_stage", "break_a_scene")
    ] == [
        ("textual_inversion", 2),
        ("dreambooth", 1),
        ("two_stage", 2),
        ("break_a_scene", 2),  # a scene tuner, given the subject's exact mask (protocol.input_mask)
    ]
    assert {r["method"] for r in rows if r["steps"] is None} == set(REFERENCE_ROWS)
    for r in rows:
        assert r["domain"] == "faces" and r["n_images"] == 2 * 2 * 2  # subjects x prompts x images
        for key in ("id_sim", "clip_i", "clip_t", "dino"):
            assert -1.0001 <= r[key] <= 1.0001, (r["method"], key, r[key])
        assert 0.0 <= r["context_acc"] <= 1.0 and 0.0 <= r["diversity"] <= 2.0
        assert ("tune_s" in r) == (r["steps"] is not None)
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in r.values())
    # written when the domain finished, before the rest of the run: what a run cut off later keeps
    assert json.loads((out / "rows-faces.json").read_text())["rows"] == rows
    proto = result["protocol"]
    assert proto["base"]["hash"] and proto["packs"]["faces"]["hash"]
    assert set(proto["judges"]) == {"identity", "context"} and set(proto["real_models"]) == {"clip", "dino"}
    faces = proto["domains"]["faces"]
    assert len(faces["subjects"]) == 2 and len(faces["prompts"]) == 2
    assert not {s["identity"] for s in faces["subjects"]} & set(faces["distractors"])
    assert "identity judge" in proto["metrics"]["diversity"]


def test_method_rows_carry_their_language_drift(quick_run):
    _, result = quick_run
    rows = {(r["method"], r["steps"]): r for r in result["rows"]}
    # Textual Inversion leaves the base untouched; concepts with offsets may move the class word's images
    assert rows["textual_inversion", 2]["drift"] == 0.0 and rows["textual_inversion", 2]["drift_toward_subject"] == 0.0
    for key in (("e4t", 0), ("e4t", 1), ("dreambooth", 1), ("two_stage", 2), ("break_a_scene", 2)):
        assert 0.0 <= rows[key]["drift"] <= 2.0 and -2.0 <= rows[key]["drift_toward_subject"] <= 2.0, key
    assert all("drift" not in r for r in result["rows"] if r["steps"] is None)  # reference rows tune nothing
    assert "before and after tuning" in result["protocol"]["metrics"]["drift"]


def test_report_is_self_contained_with_images_and_plots(quick_run):
    out, _ = quick_run
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 * 2 * 6  # subjects x prompts x rows, plus inputs
    assert "<svg" in page and "real_same_identity" in page and "e4t@1" in page
    # no external assets: every src is inlined
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_protocol_is_fixed_and_held_out():
    full = protocol.prompts("faces")
    assert len(full) == 8 and {p.kind for p in full} == {"recontextualization", "accessorization", "medium"}
    assert [p.index for p in protocol.prompts("faces", quick=True)] == list(protocol.QUICK_PROMPTS)
    beach = full[0]
    assert beach.caption == "a photo of a face on the beach" and beach.named == {
        "medium": "photo",
        "background": "beach",
    }
    assert beach.for_concept("c_0123456789ab") == "a photo of {c_0123456789ab} on the beach"
    cats = protocol.prompts("cats")
    assert len(cats) == 8 and cats[6].caption == "a sketch of a cat"
    subjects = protocol.heldout_identities("faces", 3)
    assert all(split_of(s.identity) == "heldout" for s in subjects)
    assert protocol.heldout_identities("faces", 2, skip=1) == subjects[1:]
    a = protocol.truth_images(subjects[0], beach, 2, 64)
    b = protocol.truth_images(subjects[0], beach, 2, 64)
    assert a[0].tobytes() == b[0].tobytes() and a[0].tobytes() != a[1].tobytes()
    with pytest.raises(ValueError, match="renderer"):
        protocol.prompts("paintings")


def test_metric_functions():
    e = torch.eye(3)
    assert metrics.fidelity([(e[:1], e[:1])]) == pytest.approx(1.0)
    assert metrics.fidelity([(e[:1], e[1:2]), (e[:1], e[:1])]) == pytest.approx(0.5)
    assert metrics.diversity([e]) == pytest.approx(1.0)  # orthogonal images: fully diverse
    assert metrics.diversity([e[:1].expand(3, -1)]) == pytest.approx(0.0)
    assert metrics.diversity([e[:1]]) is None
    preds = [{"medium": "photo", "background": "beach"}, {"medium": "sketch", "background": "plain"}]
    assert metrics.context_accuracy(preds, [{"background": "beach"}, {"medium": "photo"}]) == 0.5
    assert metrics.context_accuracy(preds, [{}, {}]) is None
    assert metrics.text_alignment(e, e) == pytest.approx(1.0)
    # gains of 0.1 and 0.3 over the baseline's subjects: mean 0.2, standard error 0.2 / 2 (stdev / sqrt(n))
    assert metrics.paired_difference([0.5, 0.7], [0.4, 0.4]) == {"mean": 0.2, "stderr": 0.1}
    assert metrics.paired_difference([0.5], [0.4]) == {"mean": 0.1, "stderr": None}


def test_clear_errors(tiny_base_dir, tiny_pack_path, tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path),
        "--base",
        str(tiny_base_dir),
        "--pack",
        str(tiny_pack_path),
        "--judges",
        str(tmp_path),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--quick", "--no-progress"])
    assert exit_info.value.code == 2 and "e4t pretrain judges" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--steps", "a,b"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_domain_choice_and_config_checks():
    from evaluation.harness import EvalConfig, pick_domains

    packs = {"cats": None, "faces": None}
    assert pick_domains(packs, EvalConfig()) == ["faces", "cats"]
    assert pick_domains(packs, EvalConfig(domains=("cats",))) == ["cats"]
    with pytest.raises(ValueError, match="loaded packs"):
        pick_domains(packs, EvalConfig(domains=("art",)))
    with pytest.raises(ValueError, match="`steps`"):
        EvalConfig(steps=(-1,))
    with pytest.raises(ValueError, match="`baselines` must name methods of .*'break_a_scene'.* but names \\['sks'\\]"):
        EvalConfig(baselines=(("sks", 10),))
    assert ("break_a_scene", 2) in EvalConfig(baselines=(("break_a_scene", 2),)).baselines
    assert EvalConfig.quick_config().images_per_prompt == 2


def test_combined_rows_score_each_concept_of_a_pair(quick_run):
    out, result = quick_run
    (row,) = result["combined"]  # one loaded domain: the faces+faces pair only
    assert row["section"] == "combined" and row["domain"] == "faces+faces" and row["method"] == "e4t"
    assert row["steps"] == 5 and row["rule"] == "average" and row["n_images"] == 1 * 2 * 2  # pairs x prompts x images
    (a, b), (pa, pb) = row["concepts"], row["pairs"][0]
    assert (a["position"], a["domain"], b["position"], b["domain"]) == ("a", "faces", "b", "faces") and pa != pb
    for c in (a, b, row):
        for key in ("id_sim", "id_sim_alone", "id_sim_distractor"):
            assert -1.0001 <= c[key] <= 1.0001, (key, c[key])
    assert row["id_sim"] == pytest.approx((a["id_sim"] + b["id_sim"]) / 2, abs=1e-3)
    assert 0.0 <= row["context_acc"] <= 1.0 and 0.0 <= row["context_acc_alone"] <= 1.0
    assert "Prompts that combine concepts" in (out / "report.html").read_text()
