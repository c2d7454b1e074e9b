"""The gRPC server: E4T service, standard health checking, reflection, TLS, graceful shutdown.

The server starts (and answers health checks with NOT_SERVING) before the
models are loaded; loading runs in a background thread and health turns
SERVING once the engine is ready, so an orchestrator can watch it happen.
Readiness then follows the concept store too: a monitor pings it every few
seconds, and health says NOT_SERVING while it cannot be reached.

A server without tokens or client certificates is open to anyone who can reach
it, so it binds only a loopback address unless told `insecure_open`.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serve.api import SERVICE_NAME, pb2_grpc
from serve.auth import TlsConfig, TokenAuth
from serve.engine import Engine
from serve.limits import Limits, TenantLimits
from serve.operations import OperationOptions
from serve.servicer import E4TServicer

logger = logging.getLogger(__name__)

# room for the other fields of a Personalize request next to its image and mask
_MESSAGE_OVERHEAD = 64 * 1024


@dataclass
class ServerState:
    """What `stop_server` and callers need besides the grpc.Server itself."""

    health: health.HealthServicer
    servicer: E4TServicer
    loaded: threading.Event = field(default_factory=threading.Event)
    load_error: BaseException | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    store_ok: bool = True

    @property
    def engine(self) -> Engine | None:
        return self.servicer.loaded_engine

    def set_status(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)


_states: weakref.WeakKeyDictionary[grpc.Server, ServerState] = weakref.WeakKeyDictionary()


def _check_store(state: ServerState) -> None:
    """SERVING only while the models are loaded AND the concept store answers."""
    engine = state.engine
    if engine is None:
        return
    try:
        engine.store.ping()
        ok = True
    except Exception as e:  # any failure to reach it means: do not route requests here
        ok = False
        if state.store_ok:
            logger.error("concept store unreachable; health NOT_SERVING until it answers: %s", e)
    if ok and not state.store_ok:
        logger.info("concept store reachable again; health SERVING")
    state.store_ok = ok
    ok_status, not_ok = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    state.set_status(ok_status if ok else not_ok)


# diffusers/transformers build models under process-global "empty weights" contexts: two loads at
# once in one process (two servers, as in tests) break each other, so loads take turns
_LOAD_LOCK = threading.Lock()


def _load(state: ServerState, loader: Callable[[], Engine], health_interval: float) -> None:
    try:
        with _LOAD_LOCK:
            engine = loader()
        state.servicer.set_engine(engine)
        _check_store(state)
        logger.info("models loaded; serving %s", ", ".join(d.name for d in engine.domains()))
    except BaseException as e:  # stay up and NOT_SERVING: the log and health say why, the process decides
        state.load_error = e
        logger.exception("loading the models failed; health stays NOT_SERVING")
        return
    finally:
        state.loaded.set()
    while not state.stopped.wait(health_interval):
        _check_store(state)


def is_loopback(host: str) -> bool:
    """True if every address `host` resolves to is a loopback one."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def create_server(
    engine_or_loader: Engine | Callable[[], Engine],
    address: str = "127.0.0.1:0",
    *,
    max_workers: int = 8,
    limits: Limits | None = None,
    auth: TokenAuth | None = None,
    tls: TlsConfig | None = None,
    tenant_limits: TenantLimits | None = None,
    insecure_open: bool = False,
    health_interval: float = 5.0,
    operation_options: OperationOptions | None = None,
) -> tuple[grpc.Server, int]:
    """Starts a server on `address` ("127.0.0.1:0" picks a free port) and returns it with its port.

    `engine_or_loader` is a ready Engine or a callable that builds one; a callable
    runs in a background thread after the server has started. `limits` sets the
    largest accepted message when a loader is given (an Engine brings its own).
    `auth`: bearer tokens to tenants; `tls`: a certificate (and a client CA for mTLS).
    Without either, only a loopback address is accepted unless `insecure_open`.
    `operation_options`: retention and persistence of long-running operations.
    """
    host = address.rsplit(":", 1)[0]
    authenticated = auth is not None or (tls is not None and tls.client_ca is not None)
    if not authenticated and not insecure_open and not is_loopback(host):
        raise ValueError(
            f"Refusing to serve {address} without authentication: give tokens (--tokens) or client "
            "certificates (--tls-client-ca), bind a loopback address, or pass --insecure-open."
        )
    if isinstance(engine_or_loader, Engine):
        limits = engine_or_loader.limits
    limits = limits or Limits()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="e4t-grpc"),
        options=[("grpc.max_receive_message_length", limits.max_request_bytes + _MESSAGE_OVERHEAD)],
    )
    servicer = E4TServicer(auth=auth, tenant_limits=tenant_limits, operation_options=operation_options)
    pb2_grpc.add_E4TServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    state = ServerState(health_servicer, servicer)
    state.set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"Could not bind the server to {address!r}: {e}") from e
    server.start()
    _states[server] = state
    loader = (lambda: engine_or_loader) if isinstance(engine_or_loader, Engine) else engine_or_loader
    threading.Thread(target=_load, args=(state, loader, health_interval), name="e4t-model-loader", daemon=True).start()
    logger.info(
        "e4t server listening on port %d (%s, %s%s)",
        port,
        "TLS" if tls else "plaintext",
        "bearer tokens" if auth else "no tokens",
        ", client certificates required" if tls and tls.client_ca else "",
    )
    if not authenticated:
        logger.warning("OPEN server: no tokens, no client certificates; anyone who reaches %s can use it", address)
    return server, port


def stop_server(server: grpc.Server, grace: float = 5.0) -> None:
    """Graceful shutdown: NOT_SERVING first (load balancers drain), then in-flight RPCs get `grace` seconds."""
    state = _states.get(server)
    if state is not None:
        state.stopped.set()
        state.health.enter_graceful_shutdown()
        state.servicer.close()  # operations end FAILED (shutdown) while their watchers can still hear it
    server.stop(grace).wait()
    if state is not None and state.engine is not None:
        state.engine.close(timeout=grace)


def serve_until_signal(server: grpc.Server, grace: float = 5.0) -> int:
    """Blocks until SIGTERM/SIGINT (or a failed model load), then shuts down gracefully; returns an exit code."""
    state = _states[server]
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s; shutting down with a %.1f s grace period", signal.Signals(signum).name, grace)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            if state.loaded.is_set() and state.load_error is not None:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_server(server, grace)
    return 1 if state.load_error is not None else 0
