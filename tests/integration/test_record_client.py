"""RecordClient against the real MinIO server: no plaintext at rest, round trips, rotation, tampering."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import urllib3.connection
from minio import Minio

from medcloud.records import client as client_module
from medcloud.records.client import RecordClient
from medcloud.records.envelope import (
    BUFFER_POOL_LIMIT,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    RecordIntegrityError,
    ciphertext_length,
)
from medcloud.records.keys import KeyRing, generate_kek
from tests.support import HashingWriter, PatternReader, connect_records

pytestmark = pytest.mark.minio

MIB = 1024 * 1024
MARKER = b"MEDCLOUD-PLAINTEXT-MARKER-3f9c2a"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.create(hospital="city-hospital", store="inpatient", kek=generate_kek())


@pytest.fixture
def records(minio_server: Any, bucket: str, ring: KeyRing) -> RecordClient:
    return connect_records(minio_server, bucket, ring)


def _raw(root: Minio, bucket: str, name: str) -> tuple[bytes, dict[str, str]]:
    """The object exactly as stored, and its user metadata (as sent back to a PUT)."""
    response = root.get_object(bucket, name)
    try:
        body = response.read()
        meta = {
            k.lower()[len("x-amz-meta-") :]: v
            for k, v in response.headers.items()
            if k.lower().startswith("x-amz-meta-")
        }
    finally:
        response.close()
        response.release_conn()
    return body, meta


def _put_raw(root: Minio, bucket: str, name: str, body: bytes, meta: dict[str, str]) -> None:
    root.put_object(bucket, name, io.BytesIO(body), len(body), metadata=dict(meta))


def _marked_block() -> bytes:
    """One MiB of pattern with a known marker in it."""
    block = bytearray(hashlib.sha256(b"pattern").digest() * (MIB // 32))
    block[1000 : 1000 + len(MARKER)] = MARKER
    return bytes(block)


def _pattern(total: int) -> PatternReader:
    """``total`` bytes made on the fly (a known marker in every MiB), hashed as they are read."""
    return PatternReader(total, _marked_block())


def _observation(marker: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "bp-0001",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/p-0001"},
        "note": [{"text": marker}],
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 128, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org"},
            }
        ],
    }


def test_no_plaintext_at_rest(records: RecordClient, root: Minio, bucket: str) -> None:
    fhir = records.put_fhir(_observation(MARKER.decode()))
    assert fhir.name == "fhir/Observation/bp-0001.json"
    records.put("notes/small.txt", b"note: " + MARKER, content_type="text/plain")
    # Several segments, the marker in each; one known-length and one streamed of unknown length.
    records.put("scans/known.bin", _pattern(3 * MIB + 7), length=3 * MIB + 7)
    records.put("scans/streamed.bin", iter(_pattern(3 * MIB + 7).read, b""))

    names = {"fhir/Observation/bp-0001.json", "notes/small.txt", "scans/known.bin", "scans/streamed.bin"}
    assert {info.name for info in records.list()} == names
    for name in names:
        body, meta = _raw(root, bucket, name)
        assert body.startswith(MAGIC)
        assert MARKER not in body
        assert all(MARKER.decode() not in value for value in meta.values())
        # The client does get the marker back: the records are intact, only encrypted at rest.
        assert MARKER in records.get_bytes(name)
    assert records.get_json(fhir.name)["note"][0]["text"] == MARKER.decode()


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("size", "known_length"),
    [(64 * MIB, True), (64 * MIB, False), (256 * MIB, True)],
    ids=["64MiB-known-length", "64MiB-streamed", "256MiB-known-length"],
)
def test_large_round_trip_in_bounded_memory(
    minio_server: Any, bucket: str, ring: KeyRing, size: int, known_length: bool
) -> None:
    part = 5 * MIB  # the SDK's minimum part, what it picks itself for a known length this size
    records = connect_records(minio_server, bucket, ring, part_size=part)
    source = _pattern(size)
    sink = HashingWriter()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = records.put("big/scan.dcm", source, length=size if known_length else None)
        put_peak = tracemalloc.get_traced_memory()[1]
        # What the put left allocated: the envelope's buffer pool keeps staging buffers for the
        # next record (bounded, whatever the records' sizes). The get is charged only its own peak.
        held_after_put = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        got = records.get("big/scan.dcm", sink)
        held_after_get, peak = tracemalloc.get_traced_memory()
        get_peak = peak - held_after_put
    finally:
        tracemalloc.stop()
    label = f"{size // MIB} MiB, {'known' if known_length else 'unknown'} length"
    print(f"\n{label}: put peak {put_peak / MIB:.1f} MiB, ", end="")
    print(f"get peak {get_peak / MIB:.1f} MiB, held between records {held_after_get / MIB:.1f} MiB")
    assert sink.count == size
    assert sink.digest.digest() == source.digest.digest()
    assert info.key_version == got.key_version == 1
    assert info.size == size
    stat = records.stat("big/scan.dcm")
    assert stat.size == size
    assert stat.stored_size == info.stored_size == ciphertext_length(size)
    # Bounded by parts, not by the object. Worst case: the reader's part being assembled and
    # the copy it returns, the part the SDK holds while waiting for an upload slot, three
    # parts uploading in parallel, plus a few segment buffers.
    assert put_peak < 7 * part + 8 * MIB
    assert get_peak < 8 * MIB
    assert max(held_after_put, held_after_get) <= BUFFER_POOL_LIMIT + MIB, "pooled buffers stay within the pool's cap"


def test_list_rotation_and_kek_rewrap(records: RecordClient, ring: KeyRing) -> None:
    records.put("r/before.json", b'{"v": 1}', content_type="application/json")
    ring.new_data_key_version()
    records.put("r/after.json", b'{"v": 22}', content_type="application/json")

    listing = {info.name: info for info in records.list("r/")}
    assert {n: (i.size, i.key_version, i.content_type) for n, i in listing.items()} == {
        "r/before.json": (8, 1, "application/json"),
        "r/after.json": (9, 2, "application/json"),
    }
    assert records.get_bytes("r/before.json") == b'{"v": 1}'
    assert records.get_bytes("r/after.json") == b'{"v": 22}'

    # KEK rotation: only the key ring changes; both records, not rewritten, still read.
    ring.rewrap(generate_kek(), 2)
    assert records.get_bytes("r/before.json") == b'{"v": 1}'
    assert records.get_bytes("r/after.json") == b'{"v": 22}'

    records.delete("r/before.json")
    assert [info.name for info in records.list("r/")] == ["r/after.json"]


def test_tampering_in_storage_is_detected(records: RecordClient, root: Minio, bucket: str, tmp_path: Path) -> None:
    records.put("p/a.bin", b"A" * (2 * MIB + 100))
    records.put("p/b.bin", b"B" * (2 * MIB + 100))
    body, meta = _raw(root, bucket, "p/a.bin")

    flipped = bytearray(body)
    flipped[HEADER_SIZE + MIB + TAG_SIZE + 5] ^= 0x01  # inside segment 1
    _put_raw(root, bucket, "p/a.bin", bytes(flipped), meta)
    with pytest.raises(RecordIntegrityError, match="segment 1 failed authentication"):
        records.get_bytes("p/a.bin")
    # get_file leaves nothing behind when the record fails.
    with pytest.raises(RecordIntegrityError):
        records.get_file("p/a.bin", tmp_path / "a.bin")
    assert list(tmp_path.iterdir()) == []

    _put_raw(root, bucket, "p/a.bin", body[: HEADER_SIZE + 2 * (MIB + TAG_SIZE)], meta)
    with pytest.raises(RecordIntegrityError, match="truncated"):
        records.get_bytes("p/a.bin")

    # A's intact bytes and metadata under B's name: bound to the name, so refused.
    _put_raw(root, bucket, "p/b.bin", body, meta)
    with pytest.raises(RecordIntegrityError, match="moved to another name"):
        records.get_bytes("p/b.bin")

    # Editing metadata is caught too: content type is in the AAD, the key version is checked.
    _put_raw(root, bucket, "p/a.bin", body, {**meta, "medcloud-content-type": "text/plain"})
    with pytest.raises(RecordIntegrityError):
        records.get_bytes("p/a.bin")
    _put_raw(root, bucket, "p/a.bin", body, {**meta, "medcloud-key-version": "2"})
    with pytest.raises(RecordIntegrityError, match="contradicts"):
        records.get_bytes("p/a.bin")

    _put_raw(root, bucket, "p/a.bin", body, meta)
    assert records.get_bytes("p/a.bin") == b"A" * (2 * MIB + 100)
    records.get_file("p/a.bin", tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"A" * (2 * MIB + 100)


def test_gets_reuse_connections_and_fall_back_to_urllib3_reads(
    records: RecordClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GET bodies are read straight into the segment buffer from the http.client response under
    # urllib3; reading to the end hands the connection back to the pool, as urllib3's own reads do.
    data = os.urandom(2 * MIB + 5)
    records.put("r/direct.bin", data)
    assert records.get_bytes("r/direct.bin") == data
    connects = 0
    connect = urllib3.connection.HTTPConnection.connect

    def counting_connect(self: urllib3.connection.HTTPConnection) -> None:
        nonlocal connects
        connects += 1
        connect(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counting_connect)
    for _ in range(3):
        assert records.get_bytes("r/direct.bin") == data
    assert connects == 0

    # Without that response (another HTTP stack, an encoded body) reads go through urllib3.
    class _Urllib3Reads(client_module._ResponseBody):
        def __init__(self, response: Any, chunk: int) -> None:
            super().__init__(response, chunk)
            self._direct = None

    monkeypatch.setattr(client_module, "_ResponseBody", _Urllib3Reads)
    assert records.get_bytes("r/direct.bin") == data
    records.put("r/small.txt", b"tiny")
    assert records.get_bytes("r/small.txt") == b"tiny"


def test_plaintext_object_in_the_bucket_is_refused(records: RecordClient, root: Minio, bucket: str) -> None:
    document = json.dumps(_observation("plain")).encode()
    root.put_object(bucket, "stray.json", io.BytesIO(document), len(document))
    with pytest.raises(RecordIntegrityError, match="no record metadata"):
        records.get_bytes("stray.json")
    (info,) = list(records.list())
    assert info.name == "stray.json"
    assert not info.is_record


def test_another_store_cannot_read_the_records(
    records: RecordClient, minio_server: Any, bucket: str, ring: KeyRing
) -> None:
    records.put("x.txt", b"for inpatient only")
    other = KeyRing.create(hospital="city-hospital", store="outpatient", kek=generate_kek())
    intruder = connect_records(minio_server, bucket, other)
    with pytest.raises(RecordIntegrityError, match="content key failed to unwrap"):
        intruder.get_bytes("x.txt")
