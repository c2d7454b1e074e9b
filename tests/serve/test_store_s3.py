"""ConceptStore on object storage (fsspec/s3fs) against a real S3-compatible server (moto server mode)."""

import hashlib
import json

import pytest

from e4t.errors import NotFound
from serve.errors import StoreCorrupt, StoreUnavailable
from serve.store import ConceptStore
from tests.serve.test_store import make_concept


@pytest.fixture
def url(s3_server):
    return f"s3://{s3_server.new_bucket()}/prod/concepts"


def test_put_load_list_delete_on_s3(s3_server, url):
    store = ConceptStore(url, storage_options=s3_server.options)
    concept = make_concept()
    record = store.put(concept)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    objects = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in objects) == [f"{prefix}/{concept.id}.json", f"{prefix}/{concept.id}.safetensors"]
    data = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/{concept.id}.safetensors")["Body"].read()
    assert record.size_bytes == len(data) == len(concept.to_bytes())
    entry = json.loads(s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/{concept.id}.json")["Body"].read())
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    loaded = store.load(concept.id)
    assert loaded.embedding.equal(concept.embedding)
    assert loaded.offset_deltas["down.q"].equal(concept.offset_deltas["down.q"])
    assert [r.id for r in store.list()[0]] == [concept.id]
    store.delete(concept.id)
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)
    with pytest.raises(NotFound, match=concept.id):
        store.load(concept.id)


def test_two_replicas_share_one_bucket(s3_server, url):
    first = ConceptStore(url, storage_options=s3_server.options)
    second = ConceptStore(url, storage_options=s3_server.options)
    a = first.put(make_concept())
    b = second.put(make_concept())
    assert first.get(b.id) == b and second.load(a.id).id == a.id
    assert {r.id for r in first.list()[0]} == {r.id for r in second.list()[0]} == {a.id, b.id}
    second.delete(a.id)
    with pytest.raises(NotFound):
        first.get(a.id)
    assert [r.id for r in first.list()[0]] == [b.id]
    assert [r.id for r in ConceptStore(url, storage_options=s3_server.options).list()[0]] == [b.id]  # restart


def test_an_object_that_fails_its_checksum_is_never_served(s3_server, url):
    store = ConceptStore(url, storage_options=s3_server.options)
    record = store.put(make_concept())
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    key = f"{prefix}/{record.id}.safetensors"
    data = bytearray(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-3] ^= 0x01
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(StoreCorrupt, match=f"{record.id} fails its checksum"):
        ConceptStore(url, storage_options=s3_server.options).load(record.id)


def test_a_store_that_goes_away_is_unavailable_and_comes_back(s3_server, url):
    store = ConceptStore(url, storage_options=s3_server.options)
    record = store.put(make_concept())
    s3_server.server.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.ping()
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.load(record.id)
    finally:
        s3_server.server.start()  # same port; moto keeps its buckets in the process
    store.ping()
    assert store.load(record.id).id == record.id


def test_missing_bucket_is_unavailable_and_options_need_a_url(s3_server, tmp_path, caplog):
    store = ConceptStore("s3://no-such-bucket-e4t/x", storage_options=s3_server.options)
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        store.ping()
    assert "no-such-bucket-e4t" in caplog.text  # where and why: in the log, not in the client's message
    with pytest.raises(ValueError, match="storage options are for object-store URLs"):
        ConceptStore(tmp_path, storage_options={"endpoint_url": "http://x"})
