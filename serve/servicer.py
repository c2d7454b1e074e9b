"""The `e4t.v1.E4T` servicer: protobuf -> plain Python -> engine -> protobuf, plus the per-call policy.

Every RPC goes through `_rpc`, which in ONE place: takes or makes its request id (metadata
`x-request-id`, echoed in the trailing metadata), authenticates its tenant (when the server has
tokens), applies the tenant's rate limit, maps exceptions to status codes, records metrics, and
logs one JSON line. Anything unexpected is INTERNAL with a generic message and a logged traceback
(never the internals). Another tenant's concept is NOT_FOUND with the very message a missing one
gets, so ids cannot be probed.
"""

from __future__ import annotations

import functools
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

import e4t
from e4t.errors import InvalidInput, NotFound
from serve import metrics
from serve.api import pb2, pb2_grpc
from serve.auth import TokenAuth
from serve.engine import Engine, Job
from serve.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    NotReady,
    PermissionDenied,
    QueueFull,
    RateLimited,
    StoreCorrupt,
    StoreUnavailable,
    Unauthenticated,
)
from serve.limits import CONCEPT_ID_RE, RateLimiter, TenantLimits
from serve.operation_store import OperationRecord
from serve.operations import OperationOptions, Operations
from serve.store import ConceptRecord

logger = logging.getLogger(__name__)
request_log = logging.getLogger("serve.requests")

_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),  # before Cancelled: it is a subclass
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreCorrupt, grpc.StatusCode.DATA_LOSS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
]
REQUEST_ID = "x-request-id"
# the standard gRPC retry pushback trailer, and a plain one for clients without a retry policy
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
RETRY_AFTER = "retry-after-ms"
QUEUE_FULL_RETRY_MS = 1000


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in _STATUS:
        if isinstance(error, cls):
            # KeyError-like errors repr their message with quotes; show the text itself
            return code, str(error.args[0]) if error.args else str(error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log."


@dataclass
class Call:
    """What the policy knows about one RPC; the methods get it as their third argument."""

    rpc: str
    request_id: str
    start: float
    tenant: str | None = None  # None: an open server (no tokens), where every concept is visible
    code: str = "OK"


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == REQUEST_ID and 0 < len(value) <= 128 and value.isprintable():
            return value
    return uuid.uuid4().hex


def _rpc(method: Callable) -> Callable:
    """Wraps one RPC (unary or streaming) in the per-call policy."""
    name = method.__name__

    def begin(self: E4TServicer, context: grpc.ServicerContext) -> Call:
        call = Call(name, _request_id(context), time.monotonic())
        context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
        metrics.IN_FLIGHT.labels(name).inc()
        return call

    def admit(self: E4TServicer, call: Call, context: grpc.ServicerContext) -> None:
        if self.auth is not None:
            call.tenant = self.auth.authenticate(context)
        self.limiter.acquire(call.tenant or "")

    def fail(context: grpc.ServicerContext, call: Call, error: BaseException) -> None:
        code, message = _status_of(error)
        call.code = code.name
        if code == grpc.StatusCode.INTERNAL:
            logger.exception("%s failed (request %s)", name, call.request_id, exc_info=error)
        trailers = [(REQUEST_ID, call.request_id)]
        retry_s = getattr(error, "retry_after_s", None)
        if isinstance(error, QueueFull):
            retry_s = QUEUE_FULL_RETRY_MS / 1000
        if retry_s is not None:
            ms = str(max(1, round(retry_s * 1000)))
            trailers += [(RETRY_PUSHBACK, ms), (RETRY_AFTER, ms)]
        if isinstance(error, RateLimited):
            metrics.RATE_LIMITED.labels("rate" if retry_s is not None else "quota").inc()
        context.set_trailing_metadata(tuple(trailers))
        context.abort(code, message)

    def finish(call: Call) -> None:
        elapsed = time.monotonic() - call.start
        metrics.IN_FLIGHT.labels(name).dec()
        metrics.RPC_LATENCY.labels(name, call.code).observe(elapsed)
        if call.code != "OK":
            metrics.ERRORS.labels(name, call.code).inc()
        request_log.info(
            "rpc",
            extra={"rpc": name, "request_id": call.request_id, "tenant": call.tenant, "code": call.code,
                   "duration_ms": round(elapsed * 1000, 2)},
        )  # fmt: skip

    if name in ("Personalize", "Generate", "WatchOperation"):

        @functools.wraps(method)
        def stream(self: E4TServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = begin(self, context)
            try:
                admit(self, call, context)
                yield from method(self, request, context, call)
            except GeneratorExit:  # the client went away mid-stream
                call.code = "CANCELLED"
                raise
            except Exception as e:  # every error becomes a status, here and only here
                fail(context, call, e)
            finally:
                finish(call)

        return stream

    @functools.wraps(method)
    def unary(self: E4TServicer, request: Any, context: grpc.ServicerContext) -> Any:
        call = begin(self, context)
        try:
            admit(self, call, context)
            return method(self, request, context, call)
        except Exception as e:  # every error becomes a status, here and only here
            fail(context, call, e)
        finally:
            finish(call)

    return unary


def concept_info(record: ConceptRecord) -> pb2.ConceptInfo:
    return pb2.ConceptInfo(
        id=record.id,
        domain=record.domain,
        method=record.method,
        steps=record.steps,
        base_hash=record.base_hash,
        pack_hash=record.pack_hash,
        created_unix=record.created,
        owner=record.owner,
        size_bytes=record.size_bytes,
    )


def operation_message(record: OperationRecord) -> pb2.Operation:
    message = pb2.Operation(
        id=record.id,
        state=pb2.Operation.State.Value(record.state),
        progress=pb2.Progress(step=record.step, total=record.total, loss=record.loss, stage=record.stage),
        method=record.method,
        domain=record.domain,
        steps=record.steps,
        seed=record.seed,
        created_unix=record.created,
        updated_unix=record.updated,
        concepts=[concept_info(c) for c in record.concepts],
        cancel_requested=record.cancel_requested,
    )
    if record.error_code:
        message.error.code, message.error.message = record.error_code, record.error_message
    return message


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def _follow(job: Job, context: grpc.ServicerContext) -> Iterator[tuple[str, Any]]:
    # fires when the RPC ends for any reason (cancel, deadline, done): the worker then skips or stops the job
    if not context.add_callback(job.cancel):  # the RPC already ended
        job.cancel()
    return job.events()


class E4TServicer(pb2_grpc.E4TServicer):
    """Serves one engine; until `set_engine` is called every RPC is UNAVAILABLE.

    `auth`: tokens that map to tenants (None: open, one implicit tenant that sees everything);
    `tenant_limits`: each tenant's rate and concept quota; `operation_options`: retention and
    persistence of long-running operations.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        auth: TokenAuth | None = None,
        tenant_limits: TenantLimits | None = None,
        operation_options: OperationOptions | None = None,
    ) -> None:
        self._engine = None
        self.auth = auth
        self.tenant_limits = tenant_limits or TenantLimits()
        self.limiter = RateLimiter(self.tenant_limits)
        self.operation_options = operation_options
        self._operations: Operations | None = None
        if engine is not None:
            self.set_engine(engine)

    def set_engine(self, engine: Engine) -> None:
        # operations first: orphans of an earlier process are resolved before any call sees the engine
        self._operations = Operations(
            engine, self.operation_options, lambda e: (_status_of(e)[0].name, _status_of(e)[1])
        )
        self._engine = engine

    @property
    def operations(self) -> Operations:
        if self._operations is None:
            raise NotReady("the server is still loading its models; retry when health is SERVING.")
        return self._operations

    def close(self) -> None:
        """Records the operations still running as FAILED (shutdown); the engine is closed by its owner."""
        if self._operations is not None:
            self._operations.close()

    @property
    def loaded_engine(self) -> Engine | None:
        return self._engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise NotReady("the server is still loading its models; retry when health is SERVING.")
        return self._engine

    @staticmethod
    def _timeout(context: grpc.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        # without a deadline gRPC reports the distance to "infinite future": treat as none
        return None if remaining is None or remaining > 1e6 else remaining

    def _owned(self, call: Call, concept_id: str) -> ConceptRecord:
        """The record of a concept the caller's tenant may see; another tenant's is NotFound, word for word."""
        record = self.engine.get_concept(concept_id)
        if call.tenant is not None and record.owner != call.tenant:
            raise NotFound(f"concept {concept_id} does not exist.")
        return record

    @_rpc
    def ListDomains(
        self, request: pb2.ListDomainsRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.ListDomainsResponse:
        engine = self.engine
        domains = [
            pb2.DomainInfo(name=d.name, class_word=d.class_word, pack_hash=d.pack_hash, methods=list(d.methods))
            for d in engine.domains()
        ]
        return pb2.ListDomainsResponse(domains=domains, base_hash=engine.base.hash)

    def _personalize_owner(self, request: pb2.PersonalizeRequest, call: Call) -> str:
        """The owner a Personalize records (the caller's tenant where there are tokens), within its quota."""
        engine = self.engine
        owner = request.owner
        if call.tenant is not None:
            if owner not in ("", call.tenant):
                raise PermissionDenied(f"`owner` has to be empty or your tenant {call.tenant!r} but is {owner!r}.")
            owner = call.tenant
        quota = self.tenant_limits.max_concepts
        if quota:
            engine.store.refresh()  # other replicas' concepts count too
            held = engine.store.count(owner=call.tenant)
            if held >= quota:
                raise RateLimited(
                    f"tenant {call.tenant or '(open)'} holds {held} concepts, its quota is {quota}; "
                    "delete some before personalizing more."
                )
        return owner

    @_rpc
    def Personalize(self, request: pb2.PersonalizeRequest, context: grpc.ServicerContext, call: Call) -> Iterator[Any]:
        engine = self.engine
        owner = self._personalize_owner(request, call)
        job = engine.submit_personalize(
            request.image,
            request.mask,
            request.domain,
            request.method,
            _optional(request, "steps"),
            _optional(request, "seed"),
            owner,
            timeout=self._timeout(context),
            masks=list(request.masks),
            mask_domains=list(request.mask_domains),
        )
        submitted = time.monotonic()
        tuning_from = saving_from = None
        for kind, payload in _follow(job, context):
            now = time.monotonic()
            if kind == "progress":
                step, total, loss, stage = payload
                if (stage.startswith("tuning") or stage == "saving") and tuning_from is None:
                    tuning_from = now
                    metrics.STAGE_LATENCY.labels(call.rpc, "wait").observe(now - submitted)
                if stage == "saving" and saving_from is None:
                    saving_from = now
                    metrics.STAGE_LATENCY.labels(call.rpc, "tune").observe(now - tuning_from)
                yield pb2.PersonalizeEvent(progress=pb2.Progress(step=step, total=total, loss=loss, stage=stage))
            elif kind == "done":
                metrics.STAGE_LATENCY.labels(call.rpc, "save").observe(now - (saving_from or submitted))
                for record in payload if isinstance(payload, list) else [payload]:  # break_a_scene: one per mask
                    metrics.CONCEPTS_TUNED.labels(record.method, record.domain).inc()
                    yield pb2.PersonalizeEvent(concept=concept_info(record))

    @_rpc
    def Generate(self, request: pb2.GenerateRequest, context: grpc.ServicerContext, call: Call) -> Iterator[Any]:
        # another tenant's concept in a prompt is NOT_FOUND, before anything is queued
        for concept_id in dict.fromkeys(
            e4t.find_concept_ids(request.prompt) + e4t.find_concept_ids(request.negative_prompt)
        ):
            if CONCEPT_ID_RE.fullmatch(concept_id):
                self._owned(call, concept_id)
        job = self.engine.submit_generate(
            request.prompt,
            request.negative_prompt,
            _optional(request, "num_images"),
            _optional(request, "steps"),
            _optional(request, "guidance"),
            _optional(request, "seed"),
            identity_guidance=_optional(request, "identity_guidance"),
            timeout=self._timeout(context),
        )
        submitted = time.monotonic()
        first = True
        for kind, payload in _follow(job, context):
            if kind == "image":
                if first:
                    metrics.STAGE_LATENCY.labels(call.rpc, "wait").observe(time.monotonic() - submitted)
                    first = False
                index, seed, image = payload
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                yield pb2.GeneratedImage(index=index, seed=seed, png=buf.getvalue(), prompt=request.prompt)
        metrics.STAGE_LATENCY.labels(call.rpc, "generate").observe(time.monotonic() - submitted)

    @_rpc
    def GetConcept(self, request: pb2.GetConceptRequest, context: grpc.ServicerContext, call: Call) -> pb2.ConceptInfo:
        return concept_info(self._owned(call, request.id))

    @_rpc
    def ListConcepts(
        self, request: pb2.ListConceptsRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.ListConceptsResponse:
        records, token = self.engine.list_concepts(
            request.domain, request.page_size, request.page_token, owner=call.tenant
        )
        return pb2.ListConceptsResponse(concepts=[concept_info(r) for r in records], next_page_token=token)

    @_rpc
    def DeleteConcept(
        self, request: pb2.DeleteConceptRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.DeleteConceptResponse:
        self._owned(call, request.id)
        self.engine.delete_concept(request.id)
        return pb2.DeleteConceptResponse()

    # ---- long jobs as operations (serve/operations.py)

    @_rpc
    def StartPersonalize(
        self, request: pb2.PersonalizeRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.Operation:
        owner = self._personalize_owner(request, call)
        record = self.operations.start(
            request.image, request.mask, request.domain, request.method, _optional(request, "steps"),
            _optional(request, "seed"), owner, call.tenant, list(request.masks), list(request.mask_domains),
        )  # fmt: skip
        return operation_message(record)

    @_rpc
    def GetOperation(
        self, request: pb2.GetOperationRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.Operation:
        return operation_message(self.operations.get(request.id, call.tenant))

    @_rpc
    def WatchOperation(
        self, request: pb2.WatchOperationRequest, context: grpc.ServicerContext, call: Call
    ) -> Iterator[pb2.Operation]:
        for record in self.operations.watch(request.id, call.tenant, context.is_active):
            yield operation_message(record)

    @_rpc
    def CancelOperation(
        self, request: pb2.CancelOperationRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.Operation:
        return operation_message(self.operations.cancel(request.id, call.tenant))

    @_rpc
    def ListOperations(
        self, request: pb2.ListOperationsRequest, context: grpc.ServicerContext, call: Call
    ) -> pb2.ListOperationsResponse:
        records, token = self.operations.list(call.tenant, request.page_size, request.page_token)
        return pb2.ListOperationsResponse(operations=[operation_message(r) for r in records], next_page_token=token)
