"""`e4t serve` (a real process, stopped by SIGTERM) and `e4t client` against a real server."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from serve import cli as serve_cli
from serve import client_cli
from serve.client import E4TClient

REPO = Path(__file__).resolve().parents[2]


def test_client_cli_round_trip(served, png, tmp_path, capsys):
    address = ["--address", served.address]
    image = tmp_path / "me.png"
    image.write_bytes(png())

    assert client_cli.main([*address, "personalize", str(image), "--domain", "faces", "--steps", "1"]) == 0
    concept = json.loads(capsys.readouterr().out)
    assert concept["id"].startswith("c_") and concept["steps"] == 1

    out = tmp_path / "out"
    prompt = f"a photo of {{{concept['id']}}}"
    assert client_cli.main([*address, "generate", "--prompt", prompt, "--out", str(out), "--num-images", "2",
                            "--steps", "1", "--seed", "4"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["00-seed4.png", "01-seed5.png"]
    assert Image.open(out / "00-seed4.png").format == "PNG"
    guided = tmp_path / "guided"
    assert client_cli.main([*address, "generate", "--prompt", prompt, "--out", str(guided), "--num-images", "1",
                            "--steps", "1", "--seed", "4", "--identity-guidance", "6"]) == 0  # fmt: skip
    assert Image.open(guided / "00-seed4.png").tobytes() != Image.open(out / "00-seed4.png").tobytes()
    capsys.readouterr()

    assert client_cli.main([*address, "list", "--domain", "faces"]) == 0
    assert concept["id"] in [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert client_cli.main([*address, "get", concept["id"]]) == 0
    assert json.loads(capsys.readouterr().out) == concept
    assert client_cli.main([*address, "delete", concept["id"]]) == 0
    capsys.readouterr()
    assert client_cli.main([*address, "get", concept["id"]]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_serve_without_embedded_default_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("E4T_ARTIFACTS", str(tmp_path / "nothing-here"))
    assert serve_cli.main(["--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "base model at" in err and "--base and --pack" in err


def test_serve_process_serves_and_stops_on_sigterm(tiny_base_dir, tiny_pack_path, tmp_path):
    cmd = [sys.executable, "-m", "cli", "serve", "--base", str(tiny_base_dir), "--pack", str(tiny_pack_path),
           "--store", str(tmp_path / "store"), "--host", "127.0.0.1", "--port", "0", "--grace", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "e4t server on port" in line, line + proc.stderr.read()
        port = int(line.split("port")[1].split()[0])
        with E4TClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_ready(60)
            assert [d["name"] for d in client.list_domains()] == ["faces"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
