"""Exporting the built base: the pipeline folder without work files, with the world's default guidance."""

import json
import shutil

from e4t import load_base
from e4t.base import SD_GUIDANCE, folder_hash
from pretrain.embedded import _export_base


def test_export_copies_the_pipeline_and_records_the_guidance(tiny_base_dir, tmp_path):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_base_dir, trained)
    (trained / "work").mkdir()
    (trained / "work" / "checkpoint.pt").write_bytes(b"work files stay behind")
    if not (trained / "embedded.json").is_file():
        (trained / "embedded.json").write_text(json.dumps({"arch": {}}))
    target = tmp_path / "artifacts" / "base"

    _export_base(trained, target, 3.0)
    assert not (target / "work").exists() and folder_hash(target) == folder_hash(trained)
    assert json.loads((target / "embedded.json").read_text())["sampling"] == {"guidance": 3.0}
    assert load_base(target).default_guidance == 3.0

    # a new scale alone rewrites the record, not the weights; None goes back to Stable Diffusion's
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    written = weights.stat().st_mtime_ns
    _export_base(trained, target, None)
    assert weights.stat().st_mtime_ns == written
    assert load_base(target).default_guidance == SD_GUIDANCE
