"""`e4t personalize` on both runtimes: the ONNX Runtime guess is PyTorch's 0-step concept."""

import io
import json

import pytest
import torch

import cli
from e4t.concept import Concept


@pytest.fixture
def image(tmp_path):
    from shards.synth import render_sample

    _, png, _ = render_sample("faces", 5, 0, 64, 0)
    path = tmp_path / "face.png"
    path.write_bytes(io.BytesIO(png).getvalue())
    return path


def test_onnx_and_torch_runtimes_give_one_embedding(tiny_base_dir, tiny_tuned_pack_path, tiny_onnx_dir, image, tmp_path,
                                                      capsys):  # fmt: skip
    models = ["--pack", str(tiny_tuned_pack_path), "--base", str(tiny_base_dir), "--seed", "4"]
    onnx_args = ["--runtime", "onnx", "--onnx", str(tiny_onnx_dir), "--out", str(tmp_path / "onnx.safetensors")]
    assert cli.main(["personalize", str(image), *models, *onnx_args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runtime"] == "onnx" and printed["steps"] == 0
    torch_args = ["--runtime", "torch", "--steps", "0", "--out", str(tmp_path / "torch.safetensors")]
    assert cli.main(["personalize", str(image), *models, *torch_args]) == 0
    capsys.readouterr()

    from_onnx, from_torch = Concept.load(tmp_path / "onnx.safetensors"), Concept.load(tmp_path / "torch.safetensors")
    assert printed["id"] == from_onnx.id
    assert (from_onnx.embedding - from_torch.embedding).abs().max().item() <= 1e-4
    assert all(torch.equal(from_onnx.offset_deltas[k], d) for k, d in from_torch.offset_deltas.items())


def test_torch_runtime_tunes_and_onnx_refuses_steps(tiny_base_dir, tiny_tuned_pack_path, image, tmp_path, capsys):
    models = ["--pack", str(tiny_tuned_pack_path), "--base", str(tiny_base_dir)]
    assert cli.main(["personalize", str(image), *models, "--steps", "2", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert any(d.abs().sum() > 0 for d in Concept.load(tmp_path / "c.safetensors").offset_deltas.values())

    out = ["--out", str(tmp_path / "x.safetensors")]
    assert cli.main(["personalize", str(image), *models, "--runtime", "onnx", "--steps", "3", *out]) == 2
    assert "0-step guess only" in capsys.readouterr().err
    assert cli.main(["personalize", str(tmp_path / "missing.png"), *models, *out]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
