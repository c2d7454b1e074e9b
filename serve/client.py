"""Python client of the e4t gRPC service.

    with E4TClient("localhost:50051") as client:
        client.wait_ready(60)
        concept = client.personalize(Path("me.png"), "faces")
        for index, seed, image in client.generate(f"a photo of {{{concept['id']}}} on the beach", num_images=2):
            image.save(f"{index}.png")

    # a server with tokens and TLS (the token may also come from $E4T_TOKEN)
    E4TClient("e4t.example.com:443", token="e4t_...", tls_ca="ca.pem")

Errors are `grpc.RpcError`s carrying the server's status code and message; every call sends
an `x-request-id` (the server echoes it in the trailing metadata and logs it).
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from serve.api import SERVICE_NAME, pb2, pb2_grpc


def _image_bytes(image: bytes | str | Path | Image.Image) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    raise TypeError(f"`image` has to be bytes, a path or a PIL image but is {type(image).__name__}.")


def concept_dict(info: pb2.ConceptInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "domain": info.domain,
        "method": info.method,
        "steps": info.steps,
        "base_hash": info.base_hash,
        "pack_hash": info.pack_hash,
        "created_unix": info.created_unix,
        "owner": info.owner,
        "size_bytes": info.size_bytes,
    }


def operation_dict(op: pb2.Operation) -> dict[str, Any]:
    """An Operation as plain data; `state` by name ("QUEUED" ... "CANCELLED"), `error` None unless FAILED."""
    return {
        "id": op.id,
        "state": pb2.Operation.State.Name(op.state),
        "progress": {"step": op.progress.step, "total": op.progress.total, "loss": op.progress.loss,
                     "stage": op.progress.stage},
        "method": op.method,
        "domain": op.domain,
        "steps": op.steps,
        "seed": op.seed,
        "created_unix": op.created_unix,
        "updated_unix": op.updated_unix,
        "error": {"code": op.error.code, "message": op.error.message} if op.HasField("error") else None,
        "concepts": [concept_dict(c) for c in op.concepts],
        "cancel_requested": op.cancel_requested,
    }  # fmt: skip


DONE_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
TOKEN_ENV = "E4T_TOKEN"


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _personalize_request(
    image: bytes | str | Path | Image.Image,
    domain: str,
    steps: int | None,
    seed: int,
    mask: bytes | str | Path | Image.Image | None,
    method: str,
    owner: str,
    masks: Sequence[bytes | str | Path | Image.Image] = (),
    mask_domains: Sequence[str] = (),
) -> pb2.PersonalizeRequest:
    request = pb2.PersonalizeRequest(
        image=_image_bytes(image),
        mask=b"" if mask is None else _image_bytes(mask),
        masks=[_image_bytes(m) for m in masks],
        mask_domains=list(mask_domains),
        domain=domain,
        method=method,
        seed=seed,
        owner=owner,
    )
    if steps is not None:
        request.steps = steps
    return request


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token and a fresh request id to every call of the E4T service."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or [])
        if not any(k == "x-request-id" for k, _ in metadata):
            metadata.append(("x-request-id", uuid.uuid4().hex))
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class E4TClient:
    """One channel to an e4t server; `timeout` (seconds) is the deadline of every call.

    `token`: bearer token (default: $E4T_TOKEN); `tls_ca`: the CA (PEM) that signed the server's
    certificate, which turns TLS on; `tls_cert`/`tls_key`: this client's certificate for mTLS.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = 300.0,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        self.address = address
        self.timeout = timeout
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("Give `tls_cert` and `tls_key` together (a client certificate needs its key).")
        if tls_ca is not None or tls_cert is not None:
            credentials = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        self._raw_channel = channel
        self.channel = grpc.intercept_channel(channel, _Metadata(token))
        self.stub = pb2_grpc.E4TStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, service: str = SERVICE_NAME) -> str:
        """Health of `service` ("" for the whole server): "SERVING", "NOT_SERVING", ..."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0, poll: float = 0.2) -> None:
        """Blocks until health says SERVING; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        status = "UNREACHABLE"
        while time.monotonic() < deadline:
            try:
                status = self.health()
                if status == "SERVING":
                    return
            except grpc.RpcError as e:
                status = e.code().name
            time.sleep(poll)
        raise TimeoutError(f"e4t server at {self.address} was not SERVING after {timeout} s (last: {status}).")

    def list_domains(self) -> list[dict[str, Any]]:
        response = self.stub.ListDomains(pb2.ListDomainsRequest(), timeout=self.timeout)
        return [
            {"name": d.name, "class_word": d.class_word, "pack_hash": d.pack_hash, "methods": list(d.methods)}
            for d in response.domains
        ]

    def personalize(
        self,
        image: bytes | str | Path | Image.Image,
        domain: str,
        *,
        steps: int | None = None,
        seed: int = 0,
        mask: bytes | str | Path | Image.Image | None = None,
        method: str = "e4t",
        owner: str = "",
        on_progress: Callable[[int, int, float, str], None] | None = None,
    ) -> dict[str, Any]:
        """Tunes a concept from one image; returns its metadata. `on_progress(step, total, loss, stage)`.

        `method`: "e4t", "textual_inversion", "dreambooth" or "two_stage" (break_a_scene: `personalize_scene`);
        `steps` None: the method's default.
        """
        request = _personalize_request(image, domain, steps, seed, mask, method, owner)
        concepts = self._personalize_stream(request, on_progress)
        if len(concepts) != 1:
            raise RuntimeError(f"the server ended the Personalize stream with {len(concepts)} concepts, not 1.")
        return concepts[0]

    def personalize_scene(
        self,
        image: bytes | str | Path | Image.Image,
        masks: list[bytes | str | Path | Image.Image],
        domain: str = "",
        *,
        mask_domains: list[str] | None = None,
        steps: int | None = None,
        seed: int = 0,
        method: str = "break_a_scene",
        owner: str = "",
        on_progress: Callable[[int, int, float, str], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Break-A-Scene: one concept per mask of `image` (white = subject); returns their metadata in mask order.

        `mask_domains`: the domain of each mask's subject; None: all in `domain`.
        """
        request = _personalize_request(image, domain, steps, seed, None, method, owner, masks, mask_domains or ())
        concepts = self._personalize_stream(request, on_progress)
        if len(concepts) != len(masks):
            raise RuntimeError(f"the server sent {len(concepts)} concepts for {len(masks)} masks.")
        return concepts

    def _personalize_stream(
        self, request: pb2.PersonalizeRequest, on_progress: Callable[[int, int, float, str], None] | None
    ) -> list[dict[str, Any]]:
        """The concepts of a Personalize stream, read to its end (leaving early would cancel an RPC that succeeded)."""
        concepts = []
        for event in self.stub.Personalize(request, timeout=self.timeout):
            if event.HasField("concept"):
                concepts.append(concept_dict(event.concept))
            elif on_progress is not None:
                p = event.progress
                on_progress(p.step, p.total, p.loss, p.stage)
        return concepts

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        num_images: int = 4,
        steps: int = 25,
        guidance: float | None = None,
        seed: int = 0,
        identity_guidance: float | None = None,
    ) -> Iterator[tuple[int, int, Image.Image]]:
        """Yields (index, seed, image) as each image is done. `guidance=None` leaves it to the server's base;
        `identity_guidance=None` is plain classifier-free guidance."""
        request = pb2.GenerateRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_images=num_images,
            steps=steps,
            guidance=guidance,
            seed=seed,
            identity_guidance=identity_guidance,
        )
        for reply in self.stub.Generate(request, timeout=self.timeout):
            image = Image.open(io.BytesIO(reply.png))
            image.load()
            yield reply.index, reply.seed, image

    def get_concept(self, concept_id: str) -> dict[str, Any]:
        return concept_dict(self.stub.GetConcept(pb2.GetConceptRequest(id=concept_id), timeout=self.timeout))

    def list_concepts(self, domain: str = "", page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every stored concept (of `domain` if given), oldest first, fetched page by page."""
        token = ""
        while True:
            response = self.stub.ListConcepts(
                pb2.ListConceptsRequest(page_size=page_size, page_token=token, domain=domain), timeout=self.timeout
            )
            for info in response.concepts:
                yield concept_dict(info)
            token = response.next_page_token
            if not token:
                return

    def delete_concept(self, concept_id: str) -> None:
        self.stub.DeleteConcept(pb2.DeleteConceptRequest(id=concept_id), timeout=self.timeout)

    # ---- long jobs as operations

    def start_personalize(
        self,
        image: bytes | str | Path | Image.Image,
        domain: str,
        *,
        steps: int | None = None,
        seed: int = 0,
        mask: bytes | str | Path | Image.Image | None = None,
        method: str = "e4t",
        owner: str = "",
        masks: Sequence[bytes | str | Path | Image.Image] = (),
        mask_domains: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Starts a Personalize as an operation and returns it at once (see `operation_dict`); a bad request raises.

        `masks`/`mask_domains`: for break_a_scene, as in `personalize_scene`.
        """
        request = _personalize_request(image, domain, steps, seed, mask, method, owner, masks, mask_domains)
        return operation_dict(self.stub.StartPersonalize(request, timeout=self.timeout))

    def get_operation(self, operation_id: str) -> dict[str, Any]:
        return operation_dict(self.stub.GetOperation(pb2.GetOperationRequest(id=operation_id), timeout=self.timeout))

    def watch_operation(self, operation_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yields the operation now, then at each change (every tuning step), ending with the one that is done.

        `timeout`: deadline of the whole watch in seconds (None: none, a long job takes minutes).
        """
        for op in self.stub.WatchOperation(pb2.WatchOperationRequest(id=operation_id), timeout=timeout):
            yield operation_dict(op)

    def wait_operation(
        self, operation_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Watches until the operation is done and returns it; `on_update(operation)` sees every snapshot."""
        last = None
        for last in self.watch_operation(operation_id, timeout):
            if on_update is not None:
                on_update(last)
        if last is None or last["state"] not in DONE_STATES:
            raise RuntimeError(f"the server ended the watch of {operation_id} before the operation was done.")
        return last

    def cancel_operation(self, operation_id: str) -> dict[str, Any]:
        """Cancels at the next tuning step; returns the operation (CANCELLED, or still ending: `cancel_requested`)."""
        request = pb2.CancelOperationRequest(id=operation_id)
        return operation_dict(self.stub.CancelOperation(request, timeout=self.timeout))

    def list_operations(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The caller's operations, newest first, fetched page by page."""
        token = ""
        while True:
            request = pb2.ListOperationsRequest(page_size=page_size, page_token=token)
            response = self.stub.ListOperations(request, timeout=self.timeout)
            for op in response.operations:
                yield operation_dict(op)
            token = response.next_page_token
            if not token:
                return
