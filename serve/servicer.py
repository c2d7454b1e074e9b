"""The `e4t.v1.E4T` servicer: protobuf -> plain Python -> engine -> protobuf, nothing more.

Exceptions become status codes in ONE place, `_status_of`; anything unexpected
is INTERNAL with a generic message and a logged traceback (never the internals).
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from e4t.errors import InvalidInput, NotFound
from serve.api import pb2, pb2_grpc
from serve.engine import Engine, Job
from serve.errors import Cancelled, DeadlineExceeded, NotReady, QueueFull
from serve.store import ConceptRecord

logger = logging.getLogger(__name__)

_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),  # before Cancelled: it is a subclass
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
]


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in _STATUS:
        if isinstance(error, cls):
            # KeyError-like errors repr their message with quotes; show the text itself
            return code, str(error.args[0]) if error.args else str(error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log."


def _rpc(method: Callable) -> Callable:
    """Maps the exceptions of one RPC (unary or streaming) to a status on its context."""

    def fail(context: grpc.ServicerContext, error: BaseException) -> None:
        code, message = _status_of(error)
        if code == grpc.StatusCode.INTERNAL:
            logger.exception("%s failed", method.__name__, exc_info=error)
        context.abort(code, message)

    if method.__name__ in ("Personalize", "Generate"):

        @functools.wraps(method)
        def stream(self: E4TServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as e:  # every error becomes a status, here and only here
                fail(context, e)

        return stream

    @functools.wraps(method)
    def unary(self: E4TServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as e:  # every error becomes a status, here and only here
            fail(context, e)

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


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def _follow(job: Job, context: grpc.ServicerContext) -> Iterator[tuple[str, Any]]:
    # fires when the RPC ends for any reason (cancel, deadline, done): the worker then skips or stops the job
    if not context.add_callback(job.cancel):  # the RPC already ended
        job.cancel()
    return job.events()


class E4TServicer(pb2_grpc.E4TServicer):
    """Serves one engine; until `set_engine` is called every RPC is UNAVAILABLE."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine

    def set_engine(self, engine: Engine) -> None:
        self._engine = engine

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

    @_rpc
    def ListDomains(self, request: pb2.ListDomainsRequest, context: grpc.ServicerContext) -> pb2.ListDomainsResponse:
        engine = self.engine
        domains = [
            pb2.DomainInfo(name=d.name, class_word=d.class_word, pack_hash=d.pack_hash, methods=list(d.methods))
            for d in engine.domains()
        ]
        return pb2.ListDomainsResponse(domains=domains, base_hash=engine.base.hash)

    @_rpc
    def Personalize(self, request: pb2.PersonalizeRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        job = self.engine.submit_personalize(
            request.image,
            request.mask,
            request.domain,
            request.method,
            _optional(request, "steps"),
            _optional(request, "seed"),
            request.owner,
            timeout=self._timeout(context),
        )
        for kind, payload in _follow(job, context):
            if kind == "progress":
                step, total, loss, stage = payload
                yield pb2.PersonalizeEvent(progress=pb2.Progress(step=step, total=total, loss=loss, stage=stage))
            elif kind == "done":
                yield pb2.PersonalizeEvent(concept=concept_info(payload))

    @_rpc
    def Generate(self, request: pb2.GenerateRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        job = self.engine.submit_generate(
            request.prompt,
            request.negative_prompt,
            _optional(request, "num_images"),
            _optional(request, "steps"),
            _optional(request, "guidance"),
            _optional(request, "seed"),
            timeout=self._timeout(context),
        )
        for kind, payload in _follow(job, context):
            if kind == "image":
                index, seed, image = payload
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                yield pb2.GeneratedImage(index=index, seed=seed, png=buf.getvalue(), prompt=request.prompt)

    @_rpc
    def GetConcept(self, request: pb2.GetConceptRequest, context: grpc.ServicerContext) -> pb2.ConceptInfo:
        return concept_info(self.engine.get_concept(request.id))

    @_rpc
    def ListConcepts(self, request: pb2.ListConceptsRequest, context: grpc.ServicerContext) -> pb2.ListConceptsResponse:
        records, token = self.engine.list_concepts(request.domain, request.page_size, request.page_token)
        return pb2.ListConceptsResponse(concepts=[concept_info(r) for r in records], next_page_token=token)

    @_rpc
    def DeleteConcept(
        self, request: pb2.DeleteConceptRequest, context: grpc.ServicerContext
    ) -> pb2.DeleteConceptResponse:
        self.engine.delete_concept(request.id)
        return pb2.DeleteConceptResponse()
