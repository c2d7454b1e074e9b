"""Domain pretraining under DeepSpeed on CPU: what `launch` checks before any rank starts.

A 2-process run killed mid-run and resumed is in tests/pretrain/test_job.py; the one-process run
and the skip-when-current check are in tests/test_end_to_end.py.
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from shards.synth import synthesize

    out = tmp_path_factory.mktemp("shards")
    synthesize("faces", 60, 2, 64, 0, out, progress=False)
    return out


def test_checkpoints_of_other_inputs_are_refused_before_any_rank_starts(
    tiny_base_dir, tiny_shards, tmp_path, pretrain_domain_cmd
):
    out = tmp_path / "faces.safetensors"
    work = out.with_suffix(".work")
    work.mkdir()
    (work / "latest").write_text("step2")
    (work / "fingerprint").write_text("of-another-base")
    run = subprocess.run(pretrain_domain_cmd(tiny_base_dir, tiny_shards, out), cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--restart-stale" in run.stderr
    assert (work / "latest").read_text() == "step2", "refusing must leave the checkpoints alone"
