"""A real gRPC server on a free port, on the tiny base and pack of tests/conftest.py."""

from __future__ import annotations

import functools
import io
import socket
import threading
import uuid
from pathlib import Path

import pytest
from PIL import Image

from serve.client import E4TClient
from serve.engine import Engine
from serve.server import create_server, stop_server
from serve.store import ConceptStore


def _png(size: tuple[int, int] = (48, 48), seed: int = 60) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, seed).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def png():
    """png(size=(48, 48), seed=60) -> bytes of a noise image."""
    return _png


class Served:
    """A started server and a client to it; `gate` holds model loading back until set."""

    def __init__(
        self,
        base_dir: Path,
        pack_path: Path,
        store: Path | ConceptStore,
        *,
        queue_size: int = 4,
        gated: bool = False,
        client: dict | None = None,
        **server_kwargs,
    ):
        self.store = store
        self._clients: list[E4TClient] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        load = functools.partial(Engine.load, base_dir, [pack_path], store, queue_size=queue_size)

        def loader() -> Engine:
            if not self.gate.wait(60):
                raise TimeoutError("the test never opened the loading gate")
            return load()

        self.server, self.port = create_server(loader, "127.0.0.1:0", max_workers=8, **server_kwargs)
        self.address = f"127.0.0.1:{self.port}"
        self.client = self.connect(**(client or {}))

    def connect(self, **kwargs) -> E4TClient:
        """Another client to this server (`token=`, `tls_ca=`...); closed with the server."""
        client = E4TClient(self.address if "tls_ca" not in kwargs else f"localhost:{self.port}", timeout=120, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.gate.set()
        stop_server(self.server, grace=1.0)


@pytest.fixture
def make_served(tiny_base_dir, tiny_pack_path, tmp_path):
    """Factory of servers; all are stopped at the end of the test."""
    started: list[Served] = []

    def make(store: Path | None = None, **kwargs) -> Served:
        served = Served(tiny_base_dir, tiny_pack_path, store if store is not None else tmp_path / "store", **kwargs)
        started.append(served)
        return served

    yield make
    for served in started:
        served.close()


@pytest.fixture(scope="module")
def served(tiny_base_dir, tiny_pack_path, tmp_path_factory):
    """One ready server shared by a module's tests."""
    s = Served(tiny_base_dir, tiny_pack_path, tmp_path_factory.mktemp("store"))
    s.client.wait_ready(60)
    yield s
    s.close()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto in server mode) on a free port: its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:  # a fixed free port, so a test can stop the server and start it again there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3(server, f"http://127.0.0.1:{port}", port)
    server.stop()


class S3:
    def __init__(self, server, endpoint: str, port: int) -> None:
        self.server, self.endpoint, self.port = server, endpoint, port
        self.options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"concepts-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name
