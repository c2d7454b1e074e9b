"""Each bad request gets the right status and message, and the server keeps serving afterwards."""

import struct
import zlib

import grpc
import pytest

from serve.api import pb2
from serve.store import ConceptStore

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def status_of(call) -> tuple[grpc.StatusCode, str]:
    """Runs a unary or streaming call to the end; returns its status code and details."""
    try:
        result = call()
        if hasattr(result, "__next__"):  # a stream: drain it
            list(result)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def bomb() -> bytes:
    """A PNG header claiming 60000x60000 pixels with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


PERSONALIZE_CASES = {
    "non-image bytes": (dict(image=b"hello, not an image"), INVALID, "image could not be decoded"),
    "decompression bomb": (dict(image=bomb()), INVALID, "pixels"),
    "no image": (dict(image=b""), INVALID, "`image` is required"),
    "unknown domain": (dict(domain="dragons"), NOT_FOUND, "domain 'dragons' does not exist; available: faces"),
    "unknown method": (
        dict(method="warp"),
        INVALID,
        "method warp is not available; available: e4t, textual_inversion, dreambooth",
    ),
    "steps -1": (dict(steps=-1), INVALID, "`steps` has to be in [0, 50] but is -1"),
    "steps 51": (dict(steps=51), INVALID, "`steps` has to be in [0, 50] but is 51"),
    "ti steps 3001": (
        dict(method="textual_inversion", steps=3001),
        INVALID,
        "`steps` has to be in [0, 3000] but is 3001",
    ),
    "dreambooth steps 1001": (
        dict(method="dreambooth", steps=1001),
        INVALID,
        "`steps` has to be in [0, 1000] but is 1001",
    ),
    "two_stage steps 1001": (
        dict(method="two_stage", steps=1001),
        INVALID,
        "`steps` has to be in [0, 1000] but is 1001",
    ),
    "negative seed": (dict(seed=-1), INVALID, "`seed`"),
    "bad mask": (dict(mask=b"nope"), INVALID, "mask could not be decoded"),
}

GENERATE_CASES = {
    "empty prompt": (dict(prompt="  "), INVALID, "`prompt` has to be a non-empty string"),
    "overlong prompt": (dict(prompt="a photo of a face " * 40), INVALID, "tokens but has"),
    "overlong negative": (dict(negative_prompt="blurry " * 100), INVALID, "`negative_prompt` has to be at most"),
    "num_images 0": (dict(num_images=0), INVALID, "`num_images` has to be in [1, 8] but is 0"),
    "num_images 100": (dict(num_images=100), INVALID, "`num_images` has to be in [1, 8] but is 100"),
    "steps 0": (dict(steps=0), INVALID, "`steps` has to be in [1, 100] but is 0"),
    "steps 101": (dict(steps=101), INVALID, "`steps` has to be in [1, 100]"),
    "guidance 31": (dict(guidance=31.0), INVALID, "`guidance` has to be in [0.0, 30.0]"),
    "guidance -1": (dict(guidance=-1.0), INVALID, "`guidance`"),
    "seed 2**32": (dict(seed=2**32), INVALID, "`seed`"),
    "identity guidance 31": (dict(identity_guidance=31.0), INVALID, "`identity_guidance` has to be in [0.0, 30.0]"),
    "identity guidance, no concept": (dict(identity_guidance=6.0), INVALID, "needs a prompt that names a concept"),
    "unknown concept": (dict(prompt="a photo of {c_000000000000}"), NOT_FOUND, "c_000000000000 does not exist"),
    "malformed concept": (dict(prompt="a photo of {bob}"), NOT_FOUND, "{bob}"),
}


def check_still_serves(served, png) -> None:
    assert served.client.health() == "SERVING"
    assert [d["name"] for d in served.client.list_domains()] == ["faces"]
    (_, _, image), *_ = served.client.generate("a face", num_images=1, steps=1)
    assert image.size[0] > 0


@pytest.mark.parametrize("case", list(PERSONALIZE_CASES))
def test_bad_personalize(served, png, case):
    fields, code, message = PERSONALIZE_CASES[case]
    request = pb2.PersonalizeRequest(**{"image": png(), "domain": "faces", "steps": 1, **fields})
    got_code, details = status_of(lambda: served.client.stub.Personalize(request, timeout=60))
    assert got_code == code and message in details, (got_code, details)


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_bad_generate(served, case):
    fields, code, message = GENERATE_CASES[case]
    request = pb2.GenerateRequest(**{"prompt": "a face", "num_images": 1, "steps": 1, **fields})
    got_code, details = status_of(lambda: served.client.stub.Generate(request, timeout=60))
    assert got_code == code and message in details, (got_code, details)


def test_bad_concept_requests(served):
    stub = served.client.stub
    cases = [
        (lambda: stub.GetConcept(pb2.GetConceptRequest(id="../../etc/passwd")), INVALID, "`c_` followed by 12"),
        (lambda: stub.GetConcept(pb2.GetConceptRequest(id="c_000000000000")), NOT_FOUND, "does not exist"),
        (lambda: stub.DeleteConcept(pb2.DeleteConceptRequest(id="c_000000000000")), NOT_FOUND, "does not exist"),
        (lambda: stub.ListConcepts(pb2.ListConceptsRequest(page_size=5000)), INVALID, "`page_size`"),
        (lambda: stub.ListConcepts(pb2.ListConceptsRequest(page_token="garbage")), INVALID, "`page_token`"),
    ]
    for call, code, message in cases:
        got_code, details = status_of(call)
        assert got_code == code and message in details, (got_code, details)


def test_oversized_message_is_refused(served):
    request = pb2.PersonalizeRequest(image=b"\0" * (9 * 1024 * 1024), domain="faces")
    got_code, _ = status_of(lambda: served.client.stub.Personalize(request, timeout=60))
    assert got_code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_still_serves_after_bad_requests(served, png):
    check_still_serves(served, png)


def test_full_queue_cancel_and_deadline(make_served, png):
    served = make_served(queue_size=1)
    served.client.wait_ready(60)
    stub = served.client.stub
    # 1. a slow job runs (its first tuning step proves the worker took it), a second one waits in the queue
    slow = stub.Personalize(pb2.PersonalizeRequest(image=png(), domain="faces", steps=50), timeout=120)
    assert next(slow).progress.stage == "queued"
    assert next(slow).progress.stage == "tuning"
    waiting = stub.Personalize(pb2.PersonalizeRequest(image=png(seed=5), domain="faces", steps=1), timeout=120)
    assert next(waiting).progress.stage == "queued"
    # 2. the queue is full
    code, details = status_of(lambda: stub.Personalize(pb2.PersonalizeRequest(image=png(), domain="faces", steps=1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in details
    code, _ = status_of(lambda: stub.Generate(pb2.GenerateRequest(prompt="a face", num_images=1, steps=1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # 3. cancelling the slow call frees the worker: the waiting call finishes, the slow concept is not kept
    slow.cancel()
    events = list(waiting)
    assert events[-1].HasField("concept") and events[-1].concept.steps == 1
    # 4. a deadline shorter than the job: DEADLINE_EXCEEDED, and the worker is freed again
    code, _ = status_of(
        lambda: stub.Personalize(pb2.PersonalizeRequest(image=png(), domain="faces", steps=50), timeout=1.5)
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    check_still_serves(served, png)
    served.close()
    assert [r.steps for r in ConceptStore(served.store).list()[0]] == [1]


def test_broken_stored_concept_is_data_loss_and_never_served(served, png, caplog):
    concept = served.client.personalize(png(), "faces", steps=0)
    (served.store / f"{concept['id']}.safetensors").write_bytes(b"\0" * 64)  # the disk broke, not the request
    request = pb2.GenerateRequest(prompt=f"{{{concept['id']}}}", num_images=1, steps=1)
    with caplog.at_level("ERROR"):
        code, details = status_of(lambda: served.client.stub.Generate(request))
    assert code == grpc.StatusCode.DATA_LOSS
    assert details.startswith(f"stored concept {concept['id']} fails its checksum") and "not served" in details
    assert str(served.store) not in details and concept["id"] in caplog.text  # where it lives: in the log only
    served.client.delete_concept(concept["id"])
    check_still_serves(served, png)
