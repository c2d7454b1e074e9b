"""Textual Inversion, DreamBooth and two_stage through the real gRPC server: progress, the concept, generation."""

import functools
import json

import pytest

from e4t import dreambooth, textual_inversion, two_stage
from serve import client_cli, engine
from serve.api import pb2
from serve.limits import DEFAULT_METHOD_STEPS, Limits


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth", "two_stage"])
def test_personalize_with_a_baseline_then_generate(served, png, method, monkeypatch):
    # the server runs in this process: fewer, shorter prior images keep DreamBooth's start to a second
    small = dreambooth.DreamBoothConfig(prior_images=2, prior_steps=2)
    monkeypatch.setitem(engine.TUNERS, "dreambooth", functools.partial(dreambooth.dreambooth, config=small))
    client = served.client
    events = []
    concept = client.personalize(
        png(), "faces", method=method, steps=2, seed=5, on_progress=lambda *e: events.append(e)
    )
    stages = [e[3] for e in events]
    assert stages[0] == "queued" and stages[-1] == "saving"
    assert [(e[0], e[1]) for e in events if e[3].startswith("tuning")] == [(1, 2), (2, 2)]
    if method == "two_stage":  # one step on the embedding, one on the offsets, each stage named
        assert [e[3] for e in events if e[3].startswith("tuning")] == ["tuning:embedding", "tuning:unet"]
    assert concept["method"] == method and concept["steps"] == 2 and concept["domain"] == "faces"
    assert client.get_concept(concept["id"]) == concept

    images = list(client.generate(f"a photo of {{{concept['id']}}} on the beach", num_images=1, steps=2, seed=3))
    assert [(i, s) for i, s, _ in images] == [(0, 3)] and images[0][2].format == "PNG"


@pytest.mark.parametrize(("method", "default"), [("textual_inversion", 1000), ("dreambooth", 400), ("two_stage", 200)])
def test_unset_steps_take_the_methods_default(served, png, method, default):
    call = served.client.stub.Personalize(pb2.PersonalizeRequest(image=png(), domain="faces", method=method))
    first = next(call)  # "queued", sent before any work
    call.cancel()  # the worker drops the job at its next check
    assert first.progress.stage == "queued" and first.progress.total == default


def test_client_cli_takes_the_method(served, png, tmp_path, capsys):
    image = tmp_path / "me.png"
    image.write_bytes(png())
    args = ["--address", served.address, "personalize", str(image), "--domain", "faces", "--steps", "1"]
    assert client_cli.main([*args, "--method", "textual_inversion"]) == 0
    concept = json.loads(capsys.readouterr().out)
    assert concept["method"] == "textual_inversion" and concept["steps"] == 1
    assert client_cli.main([*args, "--method", "two_stage"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "two_stage"
    with pytest.raises(SystemExit):  # argparse names the choices
        client_cli.main([*args, "--method", "warp"])
    assert "textual_inversion" in capsys.readouterr().err


def test_service_defaults_and_limits_match_the_methods():
    for module in (textual_inversion, dreambooth, two_stage):
        assert DEFAULT_METHOD_STEPS[module.METHOD] == module.DEFAULT_STEPS
        assert Limits().max_steps(module.METHOD) == module.MAX_STEPS
    assert tuple(DEFAULT_METHOD_STEPS) == engine.METHODS


def test_list_domains_offers_two_stage(served):
    (domain,) = served.client.list_domains()
    assert "two_stage" in domain["methods"] and domain["methods"] == list(engine.METHODS)


def test_two_stage_beyond_its_limit_is_invalid_argument_and_the_server_goes_on(served, png):
    import grpc

    with pytest.raises(grpc.RpcError) as error:
        served.client.personalize(png(), "faces", method="two_stage", steps=two_stage.MAX_STEPS + 1)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "`steps`" in error.value.details()
    assert served.client.personalize(png(), "faces", method="two_stage", steps=1)["method"] == "two_stage"
