"""`e4t export diffusers` and `e4t export onnx` as a user types them (the `e4t` dispatcher)."""

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import cli
from e4t import load_base, load_pack
from e4t.concept import Concept
from e4t.export import EMBEDDING_FILE, INFO_FILE, LORA_FILE
from e4t.onnx_encoder import MODEL_FILE, OnnxEncoder


def make_concept(base_dir, pack_path) -> Concept:
    base = load_base(base_dir)
    pack = load_pack(pack_path, base)
    generator = torch.Generator().manual_seed(2)
    return Concept(
        embedding=torch.randn(base.text_encoder.get_input_embeddings().weight.shape[1], generator=generator),
        offset_deltas={k: 0.1 * torch.randn(v.shape, generator=generator) for k, v in pack.offsets.items()},
        domain=pack.domain,
        pack_hash=pack.hash,
        base_hash=base.hash,
    )


def test_export_diffusers_by_id_from_the_store_and_by_file(tiny_base_dir, tiny_tuned_pack_path, tmp_path, capsys):
    concept = make_concept(tiny_base_dir, tiny_tuned_pack_path)
    store = tmp_path / "store"
    concept.save(store / f"{concept.id}.safetensors")
    models = ["--base", str(tiny_base_dir), "--pack", str(tiny_tuned_pack_path)]

    by_id = [concept.id, "--store", str(store), "--out", str(tmp_path / "a")]
    assert cli.main(["export", "diffusers", *by_id, *models]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["token"] == f"<{concept.id}>" and info == json.loads((tmp_path / "a" / INFO_FILE).read_text())
    with safe_open(str(tmp_path / "a" / EMBEDDING_FILE), framework="pt") as f:
        assert list(f.keys()) == [f"<{concept.id}>"]
    assert (tmp_path / "a" / LORA_FILE).is_file()

    by_file = store / f"{concept.id}.safetensors"
    assert cli.main(["export", "diffusers", str(by_file), "--out", str(tmp_path / "b"), *models]) == 0
    capsys.readouterr()
    for name in (EMBEDDING_FILE, LORA_FILE):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_diffusers_errors_are_clear(tiny_base_dir, tiny_tuned_pack_path, tiny_pack_path, tmp_path, capsys):
    concept = make_concept(tiny_base_dir, tiny_tuned_pack_path)
    concept.save(tmp_path / "c.safetensors")
    out = ["--out", str(tmp_path / "out"), "--base", str(tiny_base_dir)]

    assert cli.main(["export", "diffusers", "c_000000000000", "--store", str(tmp_path), *out]) == 2
    assert "is not in the store" in capsys.readouterr().err
    assert cli.main(["export", "diffusers", "nonsense", *out]) == 2
    assert "neither a concept file nor a concept id" in capsys.readouterr().err
    wrong_pack = ["--pack", str(tiny_pack_path)]
    assert cli.main(["export", "diffusers", str(tmp_path / "c.safetensors"), *out, *wrong_pack]) == 2
    assert f"made with pack {concept.pack_hash}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_onnx_writes_a_checked_model(tiny_base_dir, tiny_tuned_pack_path, tmp_path, capsys):
    out = tmp_path / "onnx"
    args = ["export", "onnx", "--pack", str(tiny_tuned_pack_path), "--base", str(tiny_base_dir), "--out", str(out)]
    assert cli.main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_abs_error"] <= 1e-4 and info["opset"] >= 17
    assert (out / MODEL_FILE).is_file() and OnnxEncoder(out).info["pack_hash"] == info["pack_hash"]
