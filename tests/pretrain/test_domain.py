"""Domain pretraining under DeepSpeed on CPU: 2 processes killed mid-run, then resumed.

The one-process run and the skip-when-current check are in tests/test_end_to_end.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e4t import load_base, load_pack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from shards.synth import synthesize

    out = tmp_path_factory.mktemp("shards")
    synthesize("faces", 60, 2, 64, 0, out, progress=False)
    return out


def pretrain(base, shards, out, *extra, num_procs=1):
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "pretrain",
        "domain",
        "--base",
        str(base),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--num-procs",
        str(num_procs),
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.mark.slow
def test_two_processes_resume_after_a_kill(tiny_base_dir, tiny_shards, tmp_path):
    out = tmp_path / "faces.safetensors"
    steps = ["--steps", "40", "--checkpoint-every", "2"]
    proc = pretrain(tiny_base_dir, tiny_shards, out, *steps, num_procs=2)
    latest = out.with_suffix(".work") / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the kill"
    assert not out.exists()

    resumed = pretrain(tiny_base_dir, tiny_shards, out, *steps, num_procs=2)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert "resuming from step" in log
    pack = load_pack(out, load_base(tiny_base_dir))
    assert pack.step == 40 and pack.training["world_size"] == 2
