"""A real gRPC server on port 0 with the tiny models: health, reflection, the RPCs, restart."""

import io

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from serve.api import pb2


def test_health_goes_from_not_serving_to_serving(make_served):
    served = make_served(gated=True)
    health = health_pb2_grpc.HealthStub(served.client.channel)
    for service in ("", "e4t.v1.E4T"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        served.client.list_domains()
        raise AssertionError("expected UNAVAILABLE while loading")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "loading" in e.details()
    served.gate.set()
    served.client.wait_ready(60)
    assert served.client.health("") == "SERVING"
    assert [d["name"] for d in served.client.list_domains()] == ["faces"]


def test_reflection_lists_the_services(served):
    db = ProtoReflectionDescriptorDatabase(served.client.channel)
    services = set(db.get_services())
    assert {"e4t.v1.E4T", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert db.FindFileContainingSymbol("e4t.v1.E4T").name == "e4t/v1/e4t.proto"


def test_list_domains(served):
    (domain,) = served.client.list_domains()
    assert (
        domain["name"] == "faces"
        and domain["class_word"] == "face"
        and domain["methods"] == ["e4t", "textual_inversion", "dreambooth", "two_stage", "break_a_scene"]
    )
    assert domain["pack_hash"]


def test_personalize_generate_get_list_delete(served, png):
    client = served.client
    events = []
    concept = client.personalize(
        png(), "faces", steps=2, seed=3, owner="alice", on_progress=lambda *e: events.append(e)
    )
    stages = [e[3] for e in events]
    assert stages[0] == "queued" and stages.count("tuning") == 2 and stages[-1] == "saving"
    assert [e[0] for e in events if e[3] == "tuning"] == [1, 2]
    assert concept["id"].startswith("c_") and concept["domain"] == "faces" and concept["method"] == "e4t"
    assert concept["steps"] == 2 and concept["owner"] == "alice" and concept["size_bytes"] > 0
    assert (served.store / f"{concept['id']}.safetensors").stat().st_size == concept["size_bytes"]

    images = list(client.generate(f"a photo of {{{concept['id']}}} on the beach", num_images=2, steps=2, seed=7))
    assert [(i, s) for i, s, _ in images] == [(0, 7), (1, 8)]
    for _, _, image in images:
        assert image.format == "PNG" and image.mode == "RGB" and min(image.size) > 0
    # identity guidance reaches the server: at the prompt's scale it is plain guidance, above it another image
    prompt = f"a photo of {{{concept['id']}}} on the beach"
    draw = dict(num_images=1, steps=2, seed=7, guidance=3.0)
    (_, _, plain), *_ = client.generate(prompt, **draw)
    for identity, same in ((3.0, True), (6.0, False)):
        (_, _, image), *_ = client.generate(prompt, **draw, identity_guidance=identity)
        assert (np.abs(np.asarray(image, float) - np.asarray(plain, float)).max() <= 2) == same, identity

    assert client.get_concept(concept["id"]) == concept
    ids = [c["id"] for c in client.list_concepts(page_size=1)]
    assert concept["id"] in ids
    assert [c["id"] for c in client.list_concepts(domain="cats")] == []
    client.delete_concept(concept["id"])
    assert concept["id"] not in [c["id"] for c in client.list_concepts()]
    assert not (served.store / f"{concept['id']}.safetensors").exists()


def test_list_concepts_pages(served, png):
    client = served.client
    made = [client.personalize(png(seed=s), "faces", steps=0)["id"] for s in (1, 2, 3)]  # 0: encoder only, fast
    first = client.stub.ListConcepts(pb2.ListConceptsRequest(page_size=2), timeout=30)
    assert len(first.concepts) == 2 and first.next_page_token
    assert [c["id"] for c in client.list_concepts(page_size=2)][-3:] == made


def test_generate_without_concepts_and_without_deadline(served):
    # no deadline on the call: the server must not treat "infinite" as a timeout
    replies = list(served.client.stub.Generate(pb2.GenerateRequest(prompt="a face", num_images=1, steps=2)))
    assert len(replies) == 1 and replies[0].prompt == "a face"
    assert Image.open(io.BytesIO(replies[0].png)).format == "PNG"


def test_concept_survives_a_restart(make_served, tmp_path, png):
    store = tmp_path / "shared-store"
    first = make_served(store)
    first.client.wait_ready(60)
    concept = first.client.personalize(png(), "faces", steps=0, owner="bob")
    first.close()

    second = make_served(store)
    second.client.wait_ready(60)
    assert second.client.get_concept(concept["id"]) == concept
    (_, _, image), *_ = second.client.generate(f"{{{concept['id']}}}", num_images=1, steps=2)
    assert image.size[0] > 0
