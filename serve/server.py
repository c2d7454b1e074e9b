"""The gRPC server: E4T service, standard health checking, reflection, graceful shutdown.

The server starts (and answers health checks with NOT_SERVING) before the
models are loaded; loading runs in a background thread and health turns
SERVING once the engine is ready, so an orchestrator can watch it happen.
"""

from __future__ import annotations

import logging
import signal
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serve.api import SERVICE_NAME, pb2_grpc
from serve.engine import Engine
from serve.limits import Limits
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

    @property
    def engine(self) -> Engine | None:
        return self.servicer.loaded_engine

    def set_status(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)


_states: weakref.WeakKeyDictionary[grpc.Server, ServerState] = weakref.WeakKeyDictionary()


def server_state(server: grpc.Server) -> ServerState:
    """The state of a server made by `create_server`."""
    return _states[server]


def _load(state: ServerState, loader: Callable[[], Engine]) -> None:
    try:
        engine = loader()
        state.servicer.set_engine(engine)
        state.set_status(health_pb2.HealthCheckResponse.SERVING)
        logger.info("models loaded; serving %s", ", ".join(d.name for d in engine.domains()))
    except BaseException as e:  # stay up and NOT_SERVING: the log and health say why, the process decides
        state.load_error = e
        logger.exception("loading the models failed; health stays NOT_SERVING")
    finally:
        state.loaded.set()


def create_server(
    engine_or_loader: Engine | Callable[[], Engine],
    address: str = "[::]:0",
    *,
    max_workers: int = 8,
    limits: Limits | None = None,
) -> tuple[grpc.Server, int]:
    """Starts a server on `address` ("[::]:0" picks a free port) and returns it with its port.

    `engine_or_loader` is a ready Engine or a callable that builds one; a callable
    runs in a background thread after the server has started. `limits` sets the
    largest accepted message when a loader is given (an Engine brings its own).
    """
    if isinstance(engine_or_loader, Engine):
        limits = engine_or_loader.limits
    limits = limits or Limits()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="e4t-grpc"),
        options=[("grpc.max_receive_message_length", limits.max_request_bytes + _MESSAGE_OVERHEAD)],
    )
    servicer = E4TServicer()
    pb2_grpc.add_E4TServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    state = ServerState(health_servicer, servicer)
    state.set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"Could not bind the server to {address!r}: {e}") from e
    server.start()
    _states[server] = state
    loader = (lambda: engine_or_loader) if isinstance(engine_or_loader, Engine) else engine_or_loader
    threading.Thread(target=_load, args=(state, loader), name="e4t-model-loader", daemon=True).start()
    logger.info("e4t server listening on port %d", port)
    return server, port


def stop_server(server: grpc.Server, grace: float = 5.0) -> None:
    """Graceful shutdown: NOT_SERVING first (load balancers drain), then in-flight RPCs get `grace` seconds."""
    state = _states.get(server)
    if state is not None:
        state.health.enter_graceful_shutdown()
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
