"""ConceptStore on a folder: durable writes, checksums, restart, corrupt files, id validation, pagination."""

import json
import os

import pytest
import torch

from e4t.concept import Concept
from e4t.errors import InvalidInput, NotFound
from e4t.safetensors_io import write_file as atomic_write
from serve.errors import StoreCorrupt
from serve.store import ConceptStore


def make_concept(domain: str = "faces", created: float | None = None) -> Concept:
    concept = Concept(
        embedding=torch.randn(8),
        offset_deltas={"down.q": torch.randn(4, 2)},
        domain=domain,
        pack_hash="p" * 16,
        base_hash="b" * 16,
        steps=5,
        owner="alice",
    )
    if created is not None:
        concept.created = created
    return concept


def test_put_get_load_delete(tmp_path):
    store = ConceptStore(tmp_path)
    concept = make_concept()
    record = store.put(concept)
    assert record.id == concept.id and record.owner == "alice" and record.steps == 5
    assert record.size_bytes == (tmp_path / f"{concept.id}.safetensors").stat().st_size
    assert store.get(concept.id) == record
    loaded = store.load(concept.id)
    assert torch.equal(loaded.embedding, concept.embedding)
    assert torch.equal(loaded.offset_deltas["down.q"], concept.offset_deltas["down.q"])
    store.delete(concept.id)
    assert not (tmp_path / f"{concept.id}.safetensors").exists()
    with pytest.raises(NotFound, match=concept.id):
        store.get(concept.id)
    with pytest.raises(NotFound):
        store.delete(concept.id)


def test_no_temp_files_left_and_survives_restart(tmp_path):
    store = ConceptStore(tmp_path)
    ids = {store.put(make_concept()).id for _ in range(3)}
    names = sorted(f"{i}.{suffix}" for i in ids for suffix in ("json", "safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    reopened = ConceptStore(tmp_path)
    assert {r.id for r in reopened.list(page_size=10)[0]} == ids


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(path, b"old")
    with pytest.raises(TypeError):
        atomic_write(path, object())  # a write that fails must leave the old file and no temp file
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_unreadable_entries_and_data_without_entry_are_skipped_not_deleted(tmp_path, caplog):
    store = ConceptStore(tmp_path)
    good = store.put(make_concept())
    bad = tmp_path / "c_0123456789ab.json"
    bad.write_bytes(b"\x00not json")
    orphan = tmp_path / "c_ba9876543210.safetensors"  # a crash between data and entry leaves this
    orphan.write_bytes(make_concept().to_bytes())
    with caplog.at_level("WARNING"):
        reopened = ConceptStore(tmp_path)
    assert [r.id for r in reopened.list()[0]] == [good.id]
    assert set(reopened.skipped) == {bad.name, orphan.name}
    assert bad.exists() and orphan.exists()
    assert "c_0123456789ab" in caplog.text and "no .json entry" in caplog.text


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_concept_that_fails_its_checksum_is_never_served(tmp_path, damage):
    store = ConceptStore(tmp_path)
    record = store.put(make_concept())
    path = tmp_path / f"{record.id}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x01  # one bit in the tensor data: safetensors itself would load it
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-8]))
    else:
        path.unlink()
    message = "fails its checksum" if damage != "remove" else "has an entry but no data"
    with pytest.raises(StoreCorrupt, match=f"{record.id} {message}"):
        store.load(record.id)
    assert store.get(record.id) == record  # its metadata is intact; only its bytes are refused


def test_entry_records_the_sha256_of_the_data(tmp_path):
    import hashlib

    store = ConceptStore(tmp_path)
    record = store.put(make_concept())
    entry = json.loads((tmp_path / f"{record.id}.json").read_text())
    data = (tmp_path / f"{record.id}.safetensors").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["record"]["id"] == record.id


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "c_0123", "c_0123456789AB", "c_0123456789ab/..", "", "x" * 14])
def test_ids_are_validated(tmp_path, bad_id):
    store = ConceptStore(tmp_path)
    for op in (store.get, store.load, store.delete):
        with pytest.raises(InvalidInput, match="c_"):
            op(bad_id)


def test_list_pages_and_domain_filter(tmp_path):
    store = ConceptStore(tmp_path)
    ids = [store.put(make_concept("faces" if i % 2 else "cats", created=1000.0 + i)).id for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [r.id for r in page]
        pages += 1
        if not token:
            break
    assert seen == ids and pages == 3
    faces = store.list(domain="faces", page_size=100)[0]
    assert [r.id for r in faces] == ids[1::2]
    # a deletion between pages neither skips nor repeats a concept
    first, token = store.list(page_size=2)
    store.delete(ids[2])
    rest, _ = store.list(page_size=100, page_token=token)
    assert [r.id for r in first + rest] == ids[:2] + ids[3:]
    with pytest.raises(InvalidInput, match="page_token"):
        store.list(page_token="garbage!")


def test_concept_written_or_deleted_by_another_replica_is_seen(tmp_path):
    store = ConceptStore(tmp_path)
    other = ConceptStore(tmp_path)
    record = other.put(make_concept())
    assert store.get(record.id).id == record.id
    assert os.path.exists(tmp_path / f"{record.id}.safetensors")
    assert [r.id for r in store.list()[0]] == [record.id]
    other.delete(record.id)
    with pytest.raises(NotFound):
        store.get(record.id)
    assert store.list()[0] == []


def test_list_by_owner(tmp_path):
    store = ConceptStore(tmp_path)
    mine = store.put(make_concept())
    theirs = make_concept()
    theirs.owner = "bob"
    store.put(theirs)
    assert [r.id for r in store.list(owner="alice")[0]] == [mine.id]
    assert {r.id for r in store.list()[0]} == {mine.id, theirs.id}
