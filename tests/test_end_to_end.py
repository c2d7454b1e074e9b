"""The whole flow on tiny models: shards -> base pretraining -> DeepSpeed domain pretraining ->
a real gRPC server -> personalize -> generate -> the concept survives a restart."""

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shards_to_served_concept(tmp_path, pretrain_domain_cmd):
    from pretrain.arch import TINY
    from pretrain.base import BaseTrainConfig, train_base
    from serve.client import E4TClient
    from serve.engine import Engine
    from serve.server import create_server, stop_server
    from shards.synth import render_sample, synthesize

    # 1. shards and the embedded base, tiny
    shards = tmp_path / "shards"
    synthesize("faces", 60, 2, 64, 0, shards, progress=False)
    base = train_base([shards], tmp_path / "base", arch=TINY, cfg=BaseTrainConfig.preset("tiny"), progress=False)

    # 2. domain pretraining under DeepSpeed (one process; tests/pretrain covers two and resuming)
    pack = tmp_path / "faces.safetensors"
    cmd = pretrain_domain_cmd(base, shards, pack)
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout

    # 3. serve, personalize, generate
    store = tmp_path / "store"
    image = Image.open(io.BytesIO(render_sample("faces", 3, 0, 64, 0)[1]))
    server, port = create_server(lambda: Engine.load(base, [pack], store), "127.0.0.1:0")
    try:
        client = E4TClient(f"127.0.0.1:{port}", timeout=120)
        client.wait_ready(timeout=120)
        assert client.health() == "SERVING"
        progress = []
        concept = client.personalize(image, "faces", steps=2, on_progress=lambda *p: progress.append(p))
        assert concept["domain"] == "faces" and any(p[2] for p in progress)
        images = list(client.generate(f"a photo of {{{concept['id']}}} on the beach", num_images=2, steps=2))
        assert [i for i, _, _ in images] == [0, 1] and images[0][2].size == (64, 64)
    finally:
        stop_server(server, grace=1)

    # 4. a new server on the same store still knows the concept and generates with it
    server, port = create_server(lambda: Engine.load(base, [pack], store), "127.0.0.1:0")
    try:
        client = E4TClient(f"127.0.0.1:{port}", timeout=120)
        client.wait_ready(timeout=120)
        assert client.get_concept(concept["id"])["id"] == concept["id"]
        again = list(client.generate(f"a sketch of {{{concept['id']}}}", num_images=1, steps=2))
        assert len(again) == 1
    finally:
        stop_server(server, grace=1)
