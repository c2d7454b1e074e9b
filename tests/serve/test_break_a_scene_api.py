"""Break-A-Scene through the real gRPC server: one concept per mask, streamed in mask order; bad masks
are INVALID_ARGUMENT naming the mask, and the server keeps serving."""

import io
import json

import grpc
import pytest
from PIL import Image

from e4t import break_a_scene
from serve import client_cli
from serve.api import pb2
from serve.limits import DEFAULT_METHOD_STEPS, Limits
from shards import faces
from shards.two_subjects import SceneSubject, render_scene


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scene():
    """(scene png, [mask pngs]) of two faces."""
    subjects = [SceneSubject("faces", faces.identity_attributes(i, 0)) for i in (1, 2)]
    s = render_scene(subjects)
    return _png(s.image), [_png(m) for m in s.masks]


def test_two_masks_give_two_stored_concepts_that_generate(served, scene):
    image, masks = scene
    request = pb2.PersonalizeRequest(image=image, masks=masks, domain="faces", method="break_a_scene", steps=2)
    events = list(served.client.stub.Personalize(request, timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["concept", "concept"] and kinds.count("concept") == 2  # the stream ends with them
    progress = [(e.progress.step, e.progress.total, e.progress.stage) for e in events if e.HasField("progress")]
    assert progress[0] == (0, 2, "queued") and (2, 2, "tuning") in progress and progress[-1][2] == "saving"
    concepts = [e.concept for e in events if e.HasField("concept")]
    assert len({c.id for c in concepts}) == 2
    assert all(c.method == "break_a_scene" and c.domain == "faces" and c.steps == 2 for c in concepts)
    for c in concepts:
        assert served.client.get_concept(c.id)["id"] == c.id  # stored
    prompt = f"a photo of {{{concepts[0].id}}} and {{{concepts[1].id}}}"
    images = list(served.client.generate(prompt, num_images=1, steps=2, seed=4))
    assert [(i, s) for i, s, _ in images] == [(0, 4)]


def test_an_operation_of_two_masks_ends_with_both_concepts(served, scene):
    image, masks = scene
    op = served.client.start_personalize(image, "faces", method="break_a_scene", masks=masks, steps=2, seed=5)
    done = served.client.wait_operation(op["id"], timeout=120)
    assert done["state"] == "SUCCEEDED", done
    assert len({c["id"] for c in done["concepts"]}) == 2
    assert [served.client.get_concept(c["id"]) for c in done["concepts"]] == done["concepts"]  # stored, in mask order
    with pytest.raises(grpc.RpcError) as e:  # checked at start: no operation for a bad mask
        served.client.start_personalize(image, "faces", method="break_a_scene", masks=[masks[0], masks[0]])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "overlap" in e.value.details()


def test_client_personalize_scene_with_mask_domains(served, scene):
    image, masks = scene
    concepts = served.client.personalize_scene(image, masks, mask_domains=["faces", "faces"], steps=1, seed=3)
    assert [c["method"] for c in concepts] == ["break_a_scene"] * 2


def _invalid(served, **fields) -> str:
    with pytest.raises(grpc.RpcError) as e:
        list(served.client.stub.Personalize(pb2.PersonalizeRequest(**fields), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details()


def test_bad_masks_are_invalid_argument_naming_the_mask_and_the_server_keeps_serving(served, scene, png):
    image, masks = scene
    empty = _png(Image.new("L", (64, 64), 0))
    small = _png(Image.new("L", (32, 32), 255))
    common = {"image": image, "domain": "faces", "method": "break_a_scene", "steps": 1}
    assert "mask 2 of 2 is empty" in _invalid(served, masks=[masks[0], empty], **common)
    assert "mask 1 of 2 is 32x32" in _invalid(served, masks=[small, masks[1]], **common)
    assert "masks 1 and 2 of 2 overlap" in _invalid(served, masks=[masks[0], masks[0]], **common)
    assert "mask 2 of 2 could not be decoded" in _invalid(served, masks=[masks[0], b"not an image"], **common)
    assert "needs `masks`" in _invalid(served, image=image, domain="faces", method="break_a_scene")
    assert "takes `mask`" in _invalid(served, image=image, masks=masks, domain="faces", method="e4t")
    assert "one domain per mask" in _invalid(served, masks=masks, mask_domains=["faces"], **common)
    # still serving: an ordinary request goes through
    assert served.client.personalize(png(), "faces", steps=1)["method"] == "e4t"
    assert "break_a_scene" in served.client.list_domains()[0]["methods"]


def test_client_cli_repeats_mask_and_prints_every_concept(served, scene, tmp_path, capsys):
    image, masks = scene
    paths = []
    for name, data in [("scene.png", image), ("a.png", masks[0]), ("b.png", masks[1])]:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    args = ["--address", served.address, "personalize", paths[0], "--domain", "faces", "--steps", "1"]
    assert client_cli.main([*args, "--method", "break_a_scene", "--mask", paths[1], "--mask", paths[2]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 2 and all(c["id"].startswith("c_") for c in printed)
    assert client_cli.main([*args, "--mask", paths[1], "--mask", paths[2]]) == 1  # e4t takes one mask
    assert "at most one --mask" in capsys.readouterr().err


def test_service_defaults_and_limits_match_the_method():
    assert DEFAULT_METHOD_STEPS["break_a_scene"] == break_a_scene.DEFAULT_STEPS
    assert Limits().max_steps("break_a_scene") == break_a_scene.MAX_STEPS
