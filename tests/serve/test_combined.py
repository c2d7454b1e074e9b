"""Prompts naming concepts of two domains on a real gRPC server; bad combinations are INVALID_ARGUMENT."""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest

from e4t.combine import MAX_CONCEPTS
from e4t.concept import new_concept_id
from serve.client import E4TClient
from serve.engine import Engine
from serve.server import create_server, stop_server
from serve.store import ConceptStore


def render_png(domain: str, identity: int) -> bytes:
    from shards.synth import render_sample

    return render_sample(domain, identity, 0, 64, 0)[1]


@pytest.fixture(scope="module")
def two_domains(tiny_base_dir, tiny_tuned_pack_path, tiny_cats_pack_path, tmp_path_factory):
    """A server with a faces and a cats pack, a client, its store folder, and one E4T concept per domain."""
    store = tmp_path_factory.mktemp("store")
    loader = lambda: Engine.load(tiny_base_dir, [tiny_tuned_pack_path, tiny_cats_pack_path], store)  # noqa: E731
    server, port = create_server(loader, "127.0.0.1:0")
    client = E4TClient(f"127.0.0.1:{port}", timeout=120)
    try:
        client.wait_ready(60)
        face = client.personalize(render_png("faces", 0), "faces", steps=1, seed=0)["id"]
        cat = client.personalize(render_png("cats", 0), "cats", steps=1, seed=0)["id"]
        yield client, store, face, cat
    finally:
        client.close()
        stop_server(server, grace=1.0)


def pixels(client: E4TClient, prompt: str) -> np.ndarray:
    ((_, _, image),) = client.generate(prompt, num_images=1, steps=2, seed=5)
    return np.asarray(image.convert("RGB"), float)


def test_a_prompt_naming_a_face_and_a_cat_generates_both(two_domains):
    client, _, face, cat = two_domains
    assert sorted(d["name"] for d in client.list_domains()) == ["cats", "faces"]
    both = pixels(client, f"a photo of {{{face}}} holding {{{cat}}}")
    assert both.shape == (64, 64, 3)
    assert np.abs(both - pixels(client, f"a photo of {{{face}}} holding a cat")).max() > 10
    assert np.abs(both - pixels(client, f"a photo of a face holding {{{cat}}}")).max() > 10


def test_bad_combinations_are_invalid_argument_and_the_server_keeps_serving(two_domains):
    client, store, face, cat = two_domains
    # more concepts than the limit: stored copies of the face concept under new ids
    shelf = ConceptStore(store)  # a second handle on the server's store, as another replica would have
    original = shelf.load(face)
    extra = [shelf.put(replace(original, id=new_concept_id())).id for _ in range(MAX_CONCEPTS)]
    prompt = "a photo of " + " and ".join("{" + i + "}" for i in [face, *extra])
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate(prompt, num_images=1, steps=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_CONCEPTS} concepts" in info.value.details() and extra[-1] in info.value.details()
    # a concept made for another base, next to one of this base: both named, with their hashes
    foreign = shelf.put(replace(shelf.load(cat), id=new_concept_id(), base_hash="0123456789abcdef")).id
    with pytest.raises(grpc.RpcError) as info:
        list(client.generate(f"a photo of {{{face}}} and {{{foreign}}}", num_images=1, steps=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        face in info.value.details() and foreign in info.value.details() and "0123456789abcdef" in info.value.details()
    )
    # still serving, combined prompts included
    assert len(list(client.generate(f"{{{face}}} and {{{cat}}} and {{{extra[0]}}}", num_images=1, steps=1))) == 1
