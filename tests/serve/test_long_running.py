"""Long jobs as operations on real servers: start returns at once, any connection watches and
cancels, tenants are kept apart, and records survive SIGKILL and restarts on the same store."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from serve import client_cli
from serve.auth import TokenAuth, add_token
from serve.client import E4TClient
from serve.operation_store import HOST, OperationRecord, OperationStore
from serve.operations import RESTART, SHUTDOWN, OperationOptions, parse_duration
from serve.server import stop_server
from serve.store import ConceptStore
from tests.serve.test_faults import ServerProcess  # `e4t serve` in its own process, for SIGKILL


def code_of(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        result = call(*args)
        if hasattr(result, "__next__"):  # a stream fails on its first message
            next(result)
    return error.value.code()


def wait_for_step(client: E4TClient, operation_id: str, step: int = 1) -> dict:
    for op in client.watch_operation(operation_id, timeout=120):
        if op["state"] == "RUNNING" and op["progress"]["step"] >= step:
            return op
    raise AssertionError(f"{operation_id} ended before step {step}: {op}")


def ended(client: E4TClient, operation_id: str) -> dict:
    """The operation once done: CancelOperation waits a few seconds for it, a loaded machine may need more."""
    return client.wait_operation(operation_id, timeout=120)


def test_start_returns_at_once_with_the_concept_a_streamed_personalize_makes(served, png):
    client = served.client
    image = png()  # the fixture draws new noise at every call
    succeeded = REGISTRY.get_sample_value("e4t_operations_done_total", {"state": "succeeded"}) or 0.0
    op = client.start_personalize(image, "faces", steps=2, seed=7)
    assert re.fullmatch(r"op_[0-9a-f]{16}", op["id"])
    assert (op["method"], op["domain"], op["steps"], op["seed"]) == ("e4t", "faces", 2, 7)
    assert op["created_unix"] > 0 and op["error"] is None
    done = client.wait_operation(op["id"])
    assert done["state"] == "SUCCEEDED" and done["progress"]["stage"] == "saving"
    [concept] = done["concepts"]
    assert client.get_concept(concept["id"]) == concept and client.get_operation(op["id"]) == done
    assert REGISTRY.get_sample_value("e4t_operations_done_total", {"state": "succeeded"}) == succeeded + 1

    streamed = client.personalize(image, "faces", steps=2, seed=7)
    store = ConceptStore(served.store)
    a, b = store.load(concept["id"]), store.load(streamed["id"])
    assert torch.equal(a.embedding, b.embedding)
    assert a.offset_deltas.keys() == b.offset_deltas.keys()
    assert all(torch.equal(a.offset_deltas[k], b.offset_deltas[k]) for k in a.offset_deltas)
    assert {k: v for k, v in concept.items() if k not in ("id", "created_unix")} == {
        k: v for k, v in streamed.items() if k not in ("id", "created_unix")
    }


def test_another_connection_watches_every_step_and_cancels(served, png):
    starter, watcher, canceller = served.client, served.connect(), served.connect()
    # a long job holds the one model worker, so the watched one is QUEUED when the watch begins
    blocker = starter.start_personalize(png(), "faces", method="textual_inversion", steps=3000)
    watched = starter.start_personalize(png(seed=61), "faces", method="textual_inversion", steps=5, seed=1)
    assert blocker["state"] in ("QUEUED", "RUNNING") and watched["state"] == "QUEUED"
    stream = watcher.watch_operation(watched["id"], timeout=120)
    assert next(stream)["state"] == "QUEUED"

    running = wait_for_step(canceller, blocker["id"])
    assert running["progress"]["stage"] == "tuning" and running["progress"]["total"] == 3000
    assert canceller.cancel_operation(blocker["id"])["cancel_requested"]
    cancelled = ended(canceller, blocker["id"])
    assert cancelled["state"] == "CANCELLED" and cancelled["cancel_requested"]
    assert cancelled["progress"]["step"] < 3000 and cancelled["concepts"] == []
    assert code_of(canceller.cancel_operation, blocker["id"]) == grpc.StatusCode.FAILED_PRECONDITION

    rest = list(stream)
    tuning = [op["progress"] for op in rest if op["progress"]["stage"] == "tuning" and op["state"] == "RUNNING"]
    steps = [p["step"] for p in tuning]
    assert steps[0] == 0 and [s for s in steps if s] == [1, 2, 3, 4, 5]  # 0: taken up, before the first step
    assert all(p["loss"] > 0 for p in tuning if p["step"])
    assert rest[-1]["state"] == "SUCCEEDED" and rest[-2]["progress"]["stage"] == "saving"
    assert [op["state"] for op in rest].count("SUCCEEDED") == 1
    # the server keeps serving what the cancelled and the finished operations left behind
    [concept] = rest[-1]["concepts"]
    assert len(list(canceller.generate(f"a photo of {{{concept['id']}}}", num_images=1, steps=1))) == 1
    assert code_of(canceller.cancel_operation, "op_0000000000000000") == grpc.StatusCode.NOT_FOUND
    assert code_of(canceller.get_operation, "c_0123456789ab") == grpc.StatusCode.INVALID_ARGUMENT
    listed = [op["id"] for op in canceller.list_operations(page_size=1)]  # newest first, page by page
    assert listed.index(watched["id"]) < listed.index(blocker["id"])


def test_invalid_requests_fail_at_start_and_make_no_operation(served, png):
    client = served.client
    before = [op["id"] for op in client.list_operations()]
    cases = [
        (dict(image=b"not an image", domain="faces"), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(image=png(), domain="dogs"), grpc.StatusCode.NOT_FOUND),
        (dict(image=png(), domain="faces", steps=51), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(image=png(), domain="faces", method="warp"), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(image=png(), domain="faces", method="dreambooth", steps=1001), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for kwargs, code in cases:
        assert code_of(lambda kw=kwargs: client.start_personalize(**kw)) == code, kwargs
    assert [op["id"] for op in client.list_operations()] == before
    assert code_of(client.list_operations(page_size=1001).__next__) == grpc.StatusCode.INVALID_ARGUMENT


def test_another_tenant_gets_not_found(make_served, png, tmp_path):
    path = tmp_path / "tokens.json"
    acme_token, globex_token = add_token(path, "acme"), add_token(path, "globex")
    served = make_served(auth=TokenAuth(path))
    served.client.wait_ready(60)
    acme, globex = served.connect(token=acme_token), served.connect(token=globex_token)
    op = acme.start_personalize(png(), "faces", method="textual_inversion", steps=3000)
    for call in (globex.get_operation, globex.cancel_operation, globex.watch_operation):
        with pytest.raises(grpc.RpcError) as error:
            result = call(op["id"])
            if hasattr(result, "__next__"):
                next(result)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error.value.details() == f"operation {op['id']} does not exist."  # as a missing one: no probing
    assert list(globex.list_operations()) == []
    assert [o["id"] for o in acme.list_operations()] == [op["id"]]
    acme.cancel_operation(op["id"])
    assert ended(acme, op["id"])["state"] == "CANCELLED"  # not stopped by globex's attempt before


def test_sigkill_mid_operation_then_restart_on_the_same_store(
    tiny_base_dir, tiny_pack_path, png, tmp_path, make_served
):
    store = tmp_path / "store"
    server = ServerProcess(tiny_base_dir, tiny_pack_path, store)
    try:
        finished = server.client.wait_operation(server.client.start_personalize(png(), "faces", steps=1)["id"])
        assert finished["state"] == "SUCCEEDED"
        running = server.client.start_personalize(png(seed=9), "faces", method="textual_inversion", steps=3000)
        wait_for_step(server.client, running["id"])
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    finally:
        server.client.close()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(30)

    restarted = make_served(store)
    restarted.client.wait_ready(60)
    client = restarted.client
    failed = client.get_operation(running["id"])
    assert failed["state"] == "FAILED" and failed["error"] == {"code": "UNAVAILABLE", "message": RESTART}
    assert failed["progress"]["step"] < 3000 and failed["concepts"] == []
    assert list(client.watch_operation(running["id"])) == [failed]  # a done operation: one snapshot
    assert client.get_operation(finished["id"]) == finished
    [concept] = finished["concepts"]
    assert [c["id"] for c in client.list_concepts()] == [concept["id"]]  # nothing of the killed one
    assert len(list(client.generate(f"a photo of {{{concept['id']}}}", num_images=1, steps=1))) == 1
    assert {op["id"] for op in client.list_operations()} == {finished["id"], running["id"]}


def test_graceful_stop_ends_running_operations_failed_and_tells_their_watchers(make_served, png, tmp_path):
    served = make_served(tmp_path / "store")
    served.client.wait_ready(60)
    op = served.client.start_personalize(png(), "faces", method="textual_inversion", steps=3000)
    snapshots: list[dict] = []
    with E4TClient(served.address) as watcher:  # its own channel: the server's stop must not close it
        follower = threading.Thread(target=lambda: snapshots.extend(watcher.watch_operation(op["id"], timeout=60)))
        follower.start()
        wait_for_step(served.client, op["id"])
        stop_server(served.server, grace=5.0)
        follower.join(30)
    last = snapshots[-1]
    assert last["state"] == "FAILED" and last["error"] == {"code": "UNAVAILABLE", "message": SHUTDOWN}
    restarted = make_served(tmp_path / "store")
    restarted.client.wait_ready(60)
    assert restarted.client.get_operation(op["id"]) == last


def test_restart_resolves_every_crash_window_and_prunes_old_records(make_served, png, tmp_path):
    store_dir = tmp_path / "store"
    first = make_served(store_dir)
    first.client.wait_ready(60)
    concept = first.client.personalize(png(), "faces", steps=0)
    first.close()

    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    operations = OperationStore(ConceptStore(store_dir))

    def record(n: int, **fields) -> OperationRecord:
        base = dict(id=f"op_{n:016x}", state="RUNNING", method="e4t", domain="faces", steps=5, seed=0, tenant=None,
                    created=now - 100 + n, updated=now - 1, server="gone", host=HOST, pid=dead.pid,
                    heartbeat=now - 1)  # fmt: skip
        r = OperationRecord(**(base | fields))
        operations.write(r)
        return r

    stored = record(1, pending_concepts=[concept["id"]], stage="saving")  # killed after its concept was stored
    lost = record(2, pending_concepts=["c_000000000000"], stage="saving")  # killed while storing it
    queued = record(3, state="QUEUED")
    replica = record(4, host="another-host", pid=1)  # another replica's, its heartbeat fresh: left alone
    silent = record(5, host="another-host", pid=1, heartbeat=now - 3600)  # another host, past its lease
    expired = record(6, state="SUCCEEDED", updated=now - 7200)  # done long ago: past retention
    kept = record(7, state="CANCELLED", updated=now - 60)

    second = make_served(store_dir, operation_options=OperationOptions(retention_s=3600))
    second.client.wait_ready(60)
    client = second.client
    ok = client.get_operation(stored.id)
    assert ok["state"] == "SUCCEEDED" and ok["concepts"] == [client.get_concept(concept["id"])]
    for r in (lost, queued, silent):
        op = client.get_operation(r.id)
        assert op["state"] == "FAILED" and op["error"]["message"] == RESTART, r.id
    assert client.get_operation(replica.id)["state"] == "RUNNING"
    assert client.get_operation(kept.id)["state"] == "CANCELLED"
    assert code_of(client.get_operation, expired.id) == grpc.StatusCode.NOT_FOUND
    assert not (store_dir / f"{expired.id}.json").exists()
    listed = [op["id"] for op in client.list_operations()]
    assert listed == [kept.id, silent.id, replica.id, queued.id, lost.id, stored.id]  # newest first


def test_another_replica_on_the_store_watches_and_cancels(make_served, png, tmp_path):
    options = OperationOptions(persist_every_s=0.1, lease_s=5)
    runner = make_served(tmp_path / "store", operation_options=options)
    other = make_served(tmp_path / "store", operation_options=options)
    runner.client.wait_ready(60)
    other.client.wait_ready(60)
    op = runner.client.start_personalize(png(), "faces", method="textual_inversion", steps=3000)
    seen = wait_for_step(other.client, op["id"], step=2)  # followed through the store, at its write rate
    assert seen["progress"]["total"] == 3000
    assert other.client.cancel_operation(op["id"])["cancel_requested"]  # a marker that the runner picks up
    assert ended(other.client, op["id"])["state"] == "CANCELLED"
    assert runner.client.get_operation(op["id"])["state"] == "CANCELLED"
    marker = tmp_path / "store" / f"{op['id']}.cancel"
    deadline = time.monotonic() + 30
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not marker.exists()  # cleared once the record is done


def test_operations_on_an_s3_store_are_seen_by_another_replica(make_served, s3_server, png):
    url = f"s3://{s3_server.new_bucket()}/concepts"
    first = make_served(ConceptStore(url, storage_options=s3_server.options))
    second = make_served(ConceptStore(url, storage_options=s3_server.options))
    first.client.wait_ready(60)
    second.client.wait_ready(60)
    op = first.client.wait_operation(first.client.start_personalize(png(), "faces", steps=0)["id"])
    assert op["state"] == "SUCCEEDED"
    assert second.client.get_operation(op["id"]) == op
    assert [o["id"] for o in second.client.list_operations()] == [op["id"]]
    assert [c["id"] for c in second.client.list_concepts()] == [op["concepts"][0]["id"]]  # no op_ blob among them


def test_client_cli_detach_watch_get_list_cancel(served, png, tmp_path, capsys):
    image = tmp_path / "me.png"
    image.write_bytes(png())
    server = ["--address", served.address]
    assert client_cli.main([*server, "personalize", str(image), "--domain", "faces", "--steps", "1", "--detach"]) == 0
    operation_id = capsys.readouterr().out.strip()
    assert re.fullmatch(r"op_[0-9a-f]{16}", operation_id)
    assert client_cli.main([*server, "operations", "watch", operation_id]) == 0
    out = capsys.readouterr()
    [concept_id] = out.out.split()
    assert re.fullmatch(r"c_[0-9a-f]{12}", concept_id) and operation_id in out.err  # the bar names it
    assert client_cli.main([*server, "operations", "get", operation_id]) == 0
    op = json.loads(capsys.readouterr().out)
    assert op["state"] == "SUCCEEDED" and [c["id"] for c in op["concepts"]] == [concept_id]
    assert client_cli.main([*server, "operations", "list"]) == 0
    assert operation_id in [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert client_cli.main([*server, "operations", "cancel", operation_id]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_durations_and_options():
    assert [parse_duration(t) for t in ("90", "45s", "30m", "12h", "7d")] == [90, 45, 1800, 43200, 604800]
    with pytest.raises(ValueError, match="--operation-retention has to be a number"):
        parse_duration("a week", "--operation-retention")
    with pytest.raises(ValueError, match="has to be at least 0 and finite"):
        parse_duration("-1d")
    with pytest.raises(ValueError, match="heartbeats renew the lease"):
        OperationOptions(persist_every_s=5, lease_s=5)
    with pytest.raises(ValueError, match="`persist_every_s` has to be more than 0"):
        OperationOptions(persist_every_s=0)
