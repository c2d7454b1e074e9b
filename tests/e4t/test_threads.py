"""Thread settings chosen at start: counts from flag, environment or the available CPUs; OpenMP set to sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e4t import threads
from serve import cli as serve_cli

REPO = Path(__file__).resolve().parents[2]


def test_auto_threads_is_half_the_cpus_at_least_one():
    assert [threads.auto_threads(c) for c in (1, 1.5, 2, 3, 16)] == [1, 1, 1, 1, 8]


@pytest.mark.parametrize(
    "value, expected", [(None, None), ("", None), ("auto", None), (" AUTO ", None), ("3", 3), (2, 2)]
)
def test_parse_threads(value, expected):
    assert threads.parse_threads(value, "--threads") == expected


@pytest.mark.parametrize("value, message", [("0", "at least 1 but is 0"), ("two", "a positive whole number or 'auto'")])
def test_parse_threads_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        threads.parse_threads(value, "--threads")


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None
    assert threads._cgroup_quota(tmp_path / "missing") is None


def _fresh_process(code: str, **env: str) -> dict:
    """Run `code` in a new interpreter (torch not yet imported there); it prints one JSON line."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", threads.ENV_THREADS)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_PROBE = """
import json, os, sys
import cli
cli.prepare_process()
policy = os.environ.get("OMP_WAIT_POLICY")
from e4t import threads
import torch
s = threads.configure({arg})
print(json.dumps(dict(policy=policy, env=os.environ.get("OMP_WAIT_POLICY"), torch=torch.get_num_threads(),
                      interop=torch.get_num_interop_threads(), source=s.source, line=s.describe())))
"""


def test_configure_in_a_fresh_process_flag_env_and_auto():
    auto = _fresh_process(_PROBE.format(arg="None"))
    assert auto["policy"] == auto["env"] == "PASSIVE"  # set before torch loaded OpenMP
    assert auto["torch"] == threads.auto_threads(threads.available_cores()) and auto["source"] == "auto"
    assert auto["interop"] == 1
    assert "OpenMP wait policy PASSIVE" in auto["line"]

    from_env = _fresh_process(_PROBE.format(arg="None"), E4T_THREADS="3", OMP_WAIT_POLICY="ACTIVE")
    assert (from_env["torch"], from_env["source"], from_env["env"]) == (3, "$E4T_THREADS", "ACTIVE")  # user's wins

    from_flag = _fresh_process(_PROBE.format(arg="'2'"), E4T_THREADS="3")
    assert (from_flag["torch"], from_flag["source"]) == (2, "--threads")


def test_prepare_process_leaves_the_wait_policy_alone_once_torch_is_loaded():
    code = "import json, os, torch, cli\ncli.prepare_process()\nprint(json.dumps(os.environ.get('OMP_WAIT_POLICY')))"
    assert _fresh_process(code) is None  # setting it now would claim a policy that OpenMP never read


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "0"], "--threads has to be at least 1 but is 0"),
        (["--max-batch", "0"], "--max-batch has to be at least 1 but is 0"),
        (["--batch-wait-ms", "-5"], "--batch-wait-ms has to be at least 0 but is -5"),
        (["--concept-cache-mb", "-1"], "--concept-cache-mb has to be at least 0 but is -1"),
    ],
)
def test_serve_rejects_bad_batching_and_thread_flags(flags, message, tmp_path, capsys):
    assert serve_cli.main([*flags, "--store", str(tmp_path / "store")]) == 2
    assert message in capsys.readouterr().err
