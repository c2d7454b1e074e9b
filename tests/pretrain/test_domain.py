"""Domain pretraining under DeepSpeed on CPU: 2 processes killed mid-run, then resumed.

The one-process run and the skip-when-current check are in tests/test_end_to_end.py.
"""

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from e4t import load_base, load_pack
from pretrain.domain import DomainTrainConfig, stale_checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from shards.synth import synthesize

    out = tmp_path_factory.mktemp("shards")
    synthesize("faces", 60, 2, 64, 0, out, progress=False)
    return out


def popen(cmd):
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.mark.slow
def test_two_processes_resume_after_a_kill(tiny_base_dir, tiny_shards, tmp_path, pretrain_domain_cmd):
    out = tmp_path / "faces.safetensors"
    steps = ["--steps", "40", "--checkpoint-every", "2"]
    cmd = pretrain_domain_cmd(tiny_base_dir, tiny_shards, out, *steps, num_procs=2)
    proc = popen(cmd)
    work = out.with_suffix(".work")
    deadline = time.time() + 300
    while not (work / "fingerprint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (work / "latest").exists(), "no checkpoint was written before the kill"
    assert not out.exists()
    cfg = replace(DomainTrainConfig.preset("tiny"), steps=40, checkpoint_every=2)
    assert not stale_checkpoints(work, tiny_base_dir, [tiny_shards], cfg, "faces")

    resumed = popen(cmd)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert "resuming from step" in log
    pack = load_pack(out, load_base(tiny_base_dir))
    assert pack.step == 40 and pack.training["world_size"] == 2


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
