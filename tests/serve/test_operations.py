"""Operations on real servers: metrics scraped over HTTP, request ids and JSON logs, tenant rate
limits and quotas, readiness that follows an S3 store, replicas sharing it, and SIGTERM mid-request."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.api import pb2
from serve.auth import TokenAuth, add_token
from serve.client import E4TClient
from serve.limits import RateLimiter, TenantLimits
from serve.logs import configure
from serve.metrics import start_metrics_server
from serve.store import ConceptStore

REPO = Path(__file__).resolve().parents[2]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def metrics_port():
    return start_metrics_server(0, "127.0.0.1")


def test_metrics_count_rpcs_stages_errors_and_tuned_concepts(served, png, metrics_port):
    before = scrape(metrics_port)
    concept = served.client.personalize(png(), "faces", steps=1)
    list(served.client.generate(f"{{{concept['id']}}}", num_images=1, steps=1))
    with pytest.raises(grpc.RpcError):
        served.client.get_concept("c_000000000000")
    # a streaming RPC is recorded when the server's side ends, a moment after the client's last message
    key = ("e4t_rpc_duration_seconds_count", (("code", "OK"), ("rpc", "Generate")))
    deadline = time.monotonic() + 10
    while (after := scrape(metrics_port)).get(key, 0) == before.get(key, 0) and time.monotonic() < deadline:
        time.sleep(0.05)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("e4t_rpc_duration_seconds_count", rpc="Personalize", code="OK") == 1
    assert delta("e4t_rpc_duration_seconds_count", rpc="Generate", code="OK") == 1
    assert delta("e4t_rpc_errors_total", rpc="GetConcept", code="NOT_FOUND") == 1
    assert delta("e4t_concepts_tuned_total", method="e4t", domain="faces") == 1
    for stage in ("wait", "tune", "save"):
        assert delta("e4t_stage_duration_seconds_count", rpc="Personalize", stage=stage) == 1, stage
    for stage in ("wait", "generate"):
        assert delta("e4t_stage_duration_seconds_count", rpc="Generate", stage=stage) == 1, stage
    assert after[("e4t_queue_depth", ())] == 0
    assert delta("e4t_batch_size_count") == 1  # one image: one UNet batch of one request
    assert (
        delta("e4t_concept_cache_lookups_total", result="hit") + delta("e4t_concept_cache_lookups_total", result="miss")
        >= 1
    )


def test_request_id_is_echoed_and_logged_as_json(served, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="serve.requests"):
        _, call = served.client.stub.ListDomains.with_call(
            pb2.ListDomainsRequest(), metadata=(("x-request-id", "req-42"),), timeout=10
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "req-42"
        with pytest.raises(grpc.RpcError) as error:
            served.client.stub.GetConcept(pb2.GetConceptRequest(id="nope"), timeout=10)
    generated = dict(error.value.trailing_metadata())["x-request-id"]
    assert len(generated) == 32  # the client's own uuid4, echoed even on an error
    records = {r.request_id: r for r in caplog.records if hasattr(r, "request_id")}
    assert records["req-42"].rpc == "ListDomains" and records["req-42"].code == "OK"
    assert records[generated].code == "INVALID_ARGUMENT" and records[generated].duration_ms >= 0
    # the JSON formatter turns such a record into one object a line
    configure("INFO", "json")
    try:
        logging.getLogger("serve.requests").info("rpc", extra={"request_id": "abc", "code": "OK"})
    finally:
        logging.getLogger().handlers.clear()
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line) | {"time": None} == {"time": None, "level": "INFO", "logger": "serve.requests",
                                                 "message": "rpc", "request_id": "abc", "code": "OK"}  # fmt: skip


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(TenantLimits(rate=2.0, burst=3), clock=lambda: now[0])
    for _ in range(3):
        limiter.acquire("a")
    with pytest.raises(Exception, match="retry after 0.50 s") as error:
        limiter.acquire("a")
    assert error.value.retry_after_s == pytest.approx(0.5)
    limiter.acquire("b")  # another tenant has its own bucket
    now[0] = 0.5
    limiter.acquire("a")


def test_rate_limit_and_quota_are_resource_exhausted_with_a_retry_hint(make_served, png, tmp_path):
    path = tmp_path / "tokens.json"
    acme, globex = add_token(path, "acme"), add_token(path, "globex")
    served = make_served(auth=TokenAuth(path), tenant_limits=TenantLimits(rate=0.5, burst=3, max_concepts=1))
    served.client.wait_ready(60)
    client, other = served.connect(token=acme), served.connect(token=globex)
    client.personalize(png(), "faces", steps=0)  # 1 of burst 3, and the whole quota
    with pytest.raises(grpc.RpcError) as quota:
        client.personalize(png(), "faces", steps=0)  # 2
    assert quota.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 1 concepts, its quota is 1" in quota.value.details()
    client.list_domains()  # 3
    with pytest.raises(grpc.RpcError) as rate:
        client.list_domains()
    assert rate.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry after" in rate.value.details()
    trailers = dict(rate.value.trailing_metadata())
    assert (
        0 < int(trailers["retry-after-ms"]) <= 2000 and trailers["grpc-retry-pushback-ms"] == trailers["retry-after-ms"]
    )
    assert other.list_domains()  # globex is not held back by acme's bucket
    time.sleep(int(trailers["retry-after-ms"]) / 1000 + 0.05)
    assert client.list_domains()  # the hint was right


def test_readiness_follows_the_store_and_replicas_share_it(make_served, s3_server, png):
    url = f"s3://{s3_server.new_bucket()}/concepts"
    first = make_served(ConceptStore(url, storage_options=s3_server.options), health_interval=0.2)
    second = make_served(ConceptStore(url, storage_options=s3_server.options), health_interval=0.2)
    first.client.wait_ready(60)
    second.client.wait_ready(60)
    concept = first.client.personalize(png(), "faces", steps=0)
    assert second.client.get_concept(concept["id"]) == concept
    assert [c["id"] for c in second.client.list_concepts()] == [concept["id"]]
    assert len(list(second.client.generate(f"{{{concept['id']}}}", num_images=1, steps=1))) == 1
    second.client.delete_concept(concept["id"])
    with pytest.raises(grpc.RpcError) as gone:
        first.client.get_concept(concept["id"])
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    s3_server.server.stop()
    try:
        deadline = time.monotonic() + 30
        while first.client.health() == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.client.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as down:
            first.client.list_concepts().__next__()
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE and "retry later" in down.value.details()
    finally:
        s3_server.server.start()
    first.client.wait_ready(30)


def test_sigterm_cancels_in_flight_work_within_the_grace_period_and_exits_0(
    tiny_base_dir, tiny_pack_path, tmp_path, png
):
    cmd = [sys.executable, "-m", "cli", "serve", "--base", str(tiny_base_dir), "--pack", str(tiny_pack_path),
           "--store", str(tmp_path / "store"), "--port", "0", "--grace", "1", "--metrics-port", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "e4t server on port" in line and "OPEN" in line, line + proc.stderr.read()
        port = int(line.split("port")[1].split()[0])
        after = [proc.stdout.readline() for _ in range(2)]  # the thread settings, then the metrics line
        metrics_port = int(next(x for x in after if "metrics" in x).split("port")[1].split()[0])
        assert ("e4t_queue_depth", ()) in scrape(metrics_port)
        with E4TClient(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_ready(60)
            # textual inversion at its most steps: far longer than the grace period
            stream = client.stub.Personalize(
                pb2.PersonalizeRequest(image=png(), domain="faces", method="textual_inversion", steps=3000),
                timeout=60,
            )
            assert next(stream).progress.stage == "queued"
            next(stream)
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as ended:
                list(stream)
            assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert proc.wait(30) == 0
        assert time.monotonic() - stopped < 15
        log = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert any("SIGTERM" in r["message"] for r in log)
        assert any(r.get("rpc") == "Personalize" and r.get("code") != "OK" for r in log)
        assert not list((tmp_path / "store").glob("c_*"))  # the cancelled concept was never acknowledged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
