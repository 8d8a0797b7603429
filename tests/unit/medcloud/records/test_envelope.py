"""Record envelope: round trips, tamper detection (bits, truncation, reordering, appending), bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from medcloud.records import envelope
from medcloud.records.envelope import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    EncryptingReader,
    RecordFormatError,
    RecordIntegrityError,
    ciphertext_length,
    decrypt_bytes,
    decrypt_chunks,
    decrypt_stream,
    encrypt_bytes,
    encrypt_chunks,
    encrypt_stream,
    parse_header,
    plaintext_length,
    verify_metadata,
)
from medcloud.records.keys import KeyShreddedError, UnknownKeyVersionError, generate_data_key
from tests.support import HashingWriter, PatternReader

S = 64  # small segments make multi-segment tamper tests cheap
KEY = generate_data_key()
KEYS = {1: KEY}
AD = b"hospital/store/patient-0001.json"


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def _seg(record: bytes, i: int, segment_size: int = S) -> slice:
    start = HEADER_SIZE + i * (segment_size + TAG_SIZE)
    return slice(start, start + segment_size + TAG_SIZE)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _record(n: int, segment_size: int = S) -> tuple[bytes, bytes]:
    plaintext = os.urandom(n)
    return plaintext, encrypt_bytes(plaintext, KEY, 1, associated_data=AD, segment_size=segment_size)


def _decrypt(record: bytes, segment_size: int = S) -> bytes:
    return decrypt_bytes(record, KEYS, associated_data=AD)


# -- round trips -----------------------------------------------------------------------------

SIZES = [0, 1, S - 1, S, S + 1, 2 * S, 5 * S + 3]
BIG = DEFAULT_SEGMENT_SIZE
BIG_SIZES = [0, 1, BIG - 1, BIG, BIG + 1, 3 * BIG + 5]


@pytest.mark.parametrize(("n", "segment_size"), [(n, S) for n in SIZES] + [(n, BIG) for n in BIG_SIZES])
def test_round_trip_all_apis(n: int, segment_size: int) -> None:
    plaintext = os.urandom(n)
    record = encrypt_bytes(plaintext, KEY, 1, associated_data=AD, segment_size=segment_size)
    assert len(record) == ciphertext_length(n, segment_size)
    assert plaintext_length(len(record), segment_size) == n
    assert record.startswith(MAGIC)
    if n >= 16:
        assert plaintext[:16] not in record
    assert decrypt_bytes(record, KEYS, associated_data=AD) == plaintext

    # Streams: file-like in, writer out; odd-sized iterables both ways.
    sink = io.BytesIO()
    written = encrypt_stream(io.BytesIO(plaintext), sink, KEY, 1, associated_data=AD, segment_size=segment_size)
    assert written == len(record) == len(sink.getvalue())
    out = io.BytesIO()
    assert decrypt_stream(_chunks(sink.getvalue(), 13), out, KEYS, associated_data=AD) == n
    assert out.getvalue() == plaintext

    pieces = encrypt_chunks(_chunks(plaintext, 7), KEY, 1, associated_data=AD, segment_size=segment_size)
    assert b"".join(decrypt_chunks(b"".join(pieces), KEYS, associated_data=AD)) == plaintext


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("read_size", [1, 7, S + TAG_SIZE, 1000, -1])
@pytest.mark.parametrize("declared", [True, False])
def test_encrypting_reader(n: int, read_size: int, declared: bool) -> None:
    plaintext = os.urandom(n)
    reader = EncryptingReader(
        io.BytesIO(plaintext),
        KEY,
        1,
        associated_data=AD,
        segment_size=S,
        plaintext_length=n if declared else None,
    )
    assert reader.length == (ciphertext_length(n, S) if declared else None)
    assert reader.metadata == {"medcloud-format": "1", "medcloud-key-version": "1", "medcloud-segment-size": str(S)}
    parts = []
    while True:
        part = reader.read(read_size)
        if not part:
            break
        # put_object relies on read(n) returning n bytes until the end.
        if read_size > 0:
            assert len(part) == read_size or reader.read(1) == b""
        parts.append(part)
    record = b"".join(parts)
    assert len(record) == ciphertext_length(n, S) == reader.produced
    assert record[:HEADER_SIZE] == reader.header.to_bytes()
    assert decrypt_bytes(record, KEYS, associated_data=AD) == plaintext


@pytest.mark.parametrize(("actual", "declared"), [(10, 11), (S, S + 1), (S + 1, S), (0, 1), (3 * S, 2 * S)])
def test_declared_length_must_match_the_source(actual: int, declared: int) -> None:
    reader = EncryptingReader(io.BytesIO(b"x" * actual), KEY, 1, segment_size=S, plaintext_length=declared)
    with pytest.raises(ValueError, match="declared"):
        reader.read(-1)


@pytest.mark.parametrize(("actual", "declared"), [(S + 1, S), (2 * S + 1, 2 * S), (1, 0), (3 * S, 2 * S)])
def test_a_longer_source_fails_even_when_read_exactly_to_the_declared_length(actual: int, declared: int) -> None:
    # put_object reads exactly reader.length bytes and stops: the segment that reaches the
    # declared length must be the final one, or the upload would store a record cut short.
    reader = EncryptingReader(io.BytesIO(b"x" * actual), KEY, 1, segment_size=S, plaintext_length=declared)
    assert reader.length is not None
    with pytest.raises(ValueError, match="more than the declared"):
        reader.read(reader.length)
    # A reader that failed never reads as one that ended (b"" would look like a complete record).
    with pytest.raises(ValueError, match="failed earlier"):
        reader.read(1)


@pytest.mark.parametrize("n", [0, 1, S, S + 1, 5 * S + 3])
@pytest.mark.parametrize("read_size", [7, S + TAG_SIZE, 3 * S, 10**9, "whole"])
def test_encrypting_reader_over_bytes_matches_a_stream(n: int, read_size: int | str) -> None:
    # Bytes are encrypted in place (no copy into a segment buffer); the record is the same
    # whatever the source type, read size, or whether the read covers the whole record at once.
    plaintext = os.urandom(n)
    for source in (
        plaintext,
        bytearray(plaintext),
        memoryview(plaintext),
        io.BytesIO(plaintext),
        _chunks(plaintext, 5),
    ):
        reader = EncryptingReader(source, KEY, 1, associated_data=AD, segment_size=S, plaintext_length=n)
        assert reader.length is not None
        size = reader.length if read_size == "whole" else int(read_size)
        record = b"".join(iter(lambda: reader.read(size), b""))  # noqa: B023 (used at once)
        assert len(record) == reader.length == reader.produced
        assert decrypt_bytes(record, KEYS, associated_data=AD) == plaintext


def test_encrypting_readers_with_pooled_buffers_do_not_share_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Readers stage ciphertext in pooled segment-sized buffers: readers alive at once,
    # one closed half-way, and readers started after it must never see each other's bytes.
    monkeypatch.setattr(envelope, "_POOL", envelope._BufferPool())
    texts = [os.urandom(2 * BIG + 1000 * i) for i in range(3)]

    def reader(text: bytes, declared: bool = True) -> EncryptingReader:
        return EncryptingReader(
            io.BytesIO(text), KEY, 1, associated_data=AD, plaintext_length=len(text) if declared else None
        )

    abandoned = reader(os.urandom(3 * BIG))
    abandoned.read(BIG // 2)
    readers: list[EncryptingReader | None] = [reader(texts[0]), reader(texts[1], declared=False), reader(texts[2])]
    parts: list[list[bytes]] = [[] for _ in readers]
    abandoned.close()
    while any(r is not None for r in readers):
        for i, r in enumerate(readers):
            if r is None:
                continue
            part = r.read(BIG // 3 + 7)
            if part:
                parts[i].append(part)
            else:
                readers[i] = None
    for text, chunks in zip(texts, parts, strict=True):
        assert decrypt_bytes(b"".join(chunks), KEYS, associated_data=AD) == text
    # Buffers went back to the pool and the next record through them is intact too.
    assert envelope._POOL._free
    assert decrypt_bytes(reader(texts[0]).read(-1), KEYS, associated_data=AD) == texts[0]


def test_each_record_gets_a_fresh_content_key_and_nonce_prefix() -> None:
    a = encrypt_bytes(b"same text", KEY, 1)
    b = encrypt_bytes(b"same text", KEY, 1)
    assert a != b
    ha, hb = parse_header(a), parse_header(b)
    assert ha.nonce_prefix != hb.nonce_prefix
    assert ha.wrapped_content_key != hb.wrapped_content_key


def test_header_fields_and_metadata() -> None:
    record = encrypt_bytes(b"abc", KEY, 7, segment_size=4096)
    header = parse_header(record)
    assert (header.format_version, header.key_version, header.segment_size) == (1, 7, 4096)
    assert header.metadata() == {
        "medcloud-format": "1",
        "medcloud-key-version": "7",
        "medcloud-segment-size": "4096",
    }
    verify_metadata(header, header.metadata())
    with pytest.raises(RecordIntegrityError, match="contradicts"):
        verify_metadata(header, {**header.metadata(), "medcloud-key-version": "6"})
    with pytest.raises(RecordIntegrityError, match="lacks"):
        verify_metadata(header, {})
    with pytest.raises(RecordIntegrityError, match="contradicts"):
        decrypt_bytes(record, {7: KEY}, metadata={**header.metadata(), "medcloud-segment-size": "1024"})


@pytest.mark.parametrize("segment_size", [0, 63, 64 * 1024 * 1024 + 1])
def test_segment_size_bounds(segment_size: int) -> None:
    with pytest.raises(ValueError, match="segment size"):
        encrypt_bytes(b"x", KEY, 1, segment_size=segment_size)


# -- tampering ------------------------------------------------------------------------------


def test_every_flipped_header_bit_is_detected() -> None:
    _, record = _record(3 * S)
    for bit in range(HEADER_SIZE * 8):
        with pytest.raises(RecordIntegrityError):
            _decrypt(_flip(record, bit))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0, "bad magic"),
        (4, "unsupported record format version"),
        (9, "segment size"),  # top byte of the segment size: out of range
        (13, "content key failed to unwrap"),  # nonce prefix: in the wrap's AAD
        (20, "content key failed to unwrap"),  # wrap nonce
        (40, "content key failed to unwrap"),  # wrapped key
        (HEADER_SIZE - 1, "content key failed to unwrap"),  # wrap tag
    ],
)
def test_header_tampering_messages(offset: int, message: str) -> None:
    _, record = _record(2 * S)
    with pytest.raises(RecordIntegrityError, match=message):
        _decrypt(_flip(record, offset * 8 + 7))


def test_flipped_key_version_is_an_integrity_error_not_a_key_error() -> None:
    _, record = _record(10)
    tampered = _flip(record, 8 * 8 + 7)  # top bit of the key version's low byte: 1 -> 0x81
    with pytest.raises(RecordIntegrityError, match="data-key version 129"):
        _decrypt(tampered)


def test_flipped_bit_in_each_segment_body_and_tag() -> None:
    n = 4 * S + 10  # five segments, the last one short
    _, record = _record(n)
    segments = 5
    for i in range(segments):
        part = _seg(record, i)
        end = min(part.stop, len(record))
        for offset in (part.start, part.start + 17, end - TAG_SIZE, end - 1):  # body start/middle, tag start/end
            with pytest.raises(RecordIntegrityError, match=f"segment {i} failed authentication"):
                _decrypt(_flip(record, offset * 8))


def test_truncation_at_every_segment_boundary() -> None:
    _, record = _record(4 * S + 10)
    with pytest.raises(RecordIntegrityError, match="no segment after the header"):
        _decrypt(record[:HEADER_SIZE])
    for kept in range(1, 5):
        cut = HEADER_SIZE + kept * (S + TAG_SIZE)
        with pytest.raises(RecordIntegrityError, match=f"truncated: input ends after segment {kept - 1}"):
            _decrypt(record[:cut])


@pytest.mark.parametrize("cut", [1, 15, 16, 17, S, S + TAG_SIZE - 1])
def test_truncation_inside_a_segment(cut: int) -> None:
    _, record = _record(3 * S)
    with pytest.raises(RecordIntegrityError):
        _decrypt(record[: HEADER_SIZE + (S + TAG_SIZE) + cut])


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE - 1])
def test_truncated_header(cut: int) -> None:
    _, record = _record(S)
    with pytest.raises(RecordIntegrityError, match="header"):
        _decrypt(record[:cut])


def test_dropped_final_segment_with_exact_multiple() -> None:
    # Length an exact multiple of S: the last full segment is the final one.
    _, record = _record(3 * S)
    assert len(record) == HEADER_SIZE + 3 * (S + TAG_SIZE)
    with pytest.raises(RecordIntegrityError, match="truncated: input ends after segment 1"):
        _decrypt(record[: _seg(record, 2).start])


def test_swapped_segments() -> None:
    _, record = _record(4 * S)
    s1, s2 = record[_seg(record, 1)], record[_seg(record, 2)]
    swapped = record[: _seg(record, 1).start] + s2 + s1 + record[_seg(record, 3).start :]
    assert len(swapped) == len(record)
    with pytest.raises(RecordIntegrityError, match="segment 1 failed authentication"):
        _decrypt(swapped)


def test_replayed_segment() -> None:
    _, record = _record(4 * S)
    replayed = record[: _seg(record, 2).start] + record[_seg(record, 1)] + record[_seg(record, 3).start :]
    with pytest.raises(RecordIntegrityError, match="segment 2 failed authentication"):
        _decrypt(replayed)


def test_final_segment_moved_earlier() -> None:
    _, record = _record(3 * S)
    # Keep segments 0 and 2 (the final one): the final segment now sits at index 1.
    spliced = record[: _seg(record, 1).start] + record[_seg(record, 2)]
    with pytest.raises(RecordIntegrityError, match="segment 1 failed authentication"):
        _decrypt(spliced)


@pytest.mark.parametrize("extra", [b"\0", b"x" * TAG_SIZE, b"y" * (S + TAG_SIZE), b"z" * (3 * S)])
@pytest.mark.parametrize("n", [3 * S, 3 * S + 5])
def test_appended_data(extra: bytes, n: int) -> None:
    _, record = _record(n)
    with pytest.raises(RecordIntegrityError):
        _decrypt(record + extra)


def test_appended_copy_of_a_segment_is_reported_as_appended() -> None:
    _, record = _record(2 * S)
    with pytest.raises(RecordIntegrityError, match="data appended after the final segment"):
        _decrypt(record + record[_seg(record, 0)])


def test_segment_from_another_record_under_the_same_data_key() -> None:
    _, a = _record(3 * S)
    _, b = _record(3 * S)
    spliced = a[: _seg(a, 1).start] + b[_seg(b, 1)] + a[_seg(a, 2).start :]
    with pytest.raises(RecordIntegrityError, match="segment 1 failed authentication"):
        _decrypt(spliced)


def test_header_from_another_record() -> None:
    _, a = _record(2 * S)
    _, b = _record(2 * S)
    with pytest.raises(RecordIntegrityError, match="segment 0 failed authentication"):
        _decrypt(b[:HEADER_SIZE] + a[HEADER_SIZE:])


def test_wrong_associated_data_means_moved_record() -> None:
    _, record = _record(10)
    with pytest.raises(RecordIntegrityError, match="moved to another name or store"):
        decrypt_bytes(record, KEYS, associated_data=b"hospital/store/patient-0002.json")
    with pytest.raises(RecordIntegrityError):
        decrypt_bytes(record, KEYS)


def test_wrong_key_for_the_version() -> None:
    _, record = _record(10)
    with pytest.raises(RecordIntegrityError, match="content key failed to unwrap with data-key version 1"):
        decrypt_bytes(record, {1: generate_data_key()}, associated_data=AD)


def test_missing_key_version() -> None:
    v2 = generate_data_key()
    record = encrypt_bytes(b"new", v2, 2, associated_data=AD)
    with pytest.raises(RecordIntegrityError, match="data-key version 2") as info:
        decrypt_bytes(record, KEYS, associated_data=AD)
    assert isinstance(info.value.__cause__, UnknownKeyVersionError)
    assert decrypt_bytes(record, {1: KEY, 2: v2}, associated_data=AD) == b"new"


def test_shredded_key_propagates_as_shredded() -> None:
    _, record = _record(10)

    def shredded(version: int) -> bytes:
        raise KeyShreddedError("store shredded")

    with pytest.raises(KeyShreddedError):
        decrypt_bytes(record, shredded, associated_data=AD)


def test_plaintext_object_is_a_format_error() -> None:
    document = b'{"resourceType": "Observation", "id": "bp-1", "status": "final"}' * 3
    with pytest.raises(RecordFormatError, match="bad magic"):
        decrypt_bytes(document, KEYS)


def test_decryption_yields_only_authenticated_segments() -> None:
    plaintext, record = _record(4 * S)
    tampered = _flip(record, _seg(record, 2).start * 8)
    got: list[bytes] = []
    with pytest.raises(RecordIntegrityError, match="segment 2"):
        got.extend(decrypt_chunks(tampered, KEYS, associated_data=AD))
    assert b"".join(got) == plaintext[: 2 * S]


def _round_robin(streams: list[Iterator[bytes]]) -> list[list[bytes]]:
    """Advance every stream one chunk at a time, in turn, until all are exhausted."""
    out: list[list[bytes]] = [[] for _ in streams]
    pending = set(range(len(streams)))
    while pending:
        for i in sorted(pending):
            chunk = next(streams[i], None)
            if chunk is None:
                pending.discard(i)
            else:
                out[i].append(chunk)
    return out


def test_interleaved_and_concurrent_streams_do_not_share_buffers() -> None:
    # Segment buffers are pooled between records; streams alive at the same time,
    # in one thread or several, must never see each other's bytes.
    texts = [os.urandom(3 * S + i) for i in range(4)]
    encryptors = [encrypt_chunks(t, KEY, 1, associated_data=AD, segment_size=S) for t in texts]
    records = [b"".join(chunks) for chunks in _round_robin(encryptors)]
    decryptors = [decrypt_chunks(r, KEYS, associated_data=AD) for r in records]
    assert [b"".join(chunks) for chunks in _round_robin(decryptors)] == texts

    def round_trip(seed: int) -> bool:
        for n in (0, 10, BIG, BIG + 1, 2 * BIG + 3):
            data = hashlib.sha256(f"{seed}-{n}".encode()).digest() * (n // 32 + 1)
            data = data[:n]
            if decrypt_bytes(encrypt_bytes(data, KEY, 1), KEYS) != data:
                return False
        return True

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(round_trip, range(16)))


def test_reprs_hold_no_key_material() -> None:
    reader = EncryptingReader(io.BytesIO(b"secret"), KEY, 1)
    header = parse_header(reader.read(HEADER_SIZE))
    for text in (repr(reader), repr(header), str(reader)):
        assert KEY.hex() not in text
        assert repr(KEY)[2:-1] not in text
        assert header.wrapped_content_key.hex() not in text


# -- bounded memory ---------------------------------------------------------------------------

MIB = 1024 * 1024
STREAM_SIZE = 256 * MIB
PEAK_LIMIT = 16 * MIB


# A 256 MiB plaintext is produced on the fly from this block, hashed as it is read.
SEED_BLOCK = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB, not all-zero


def _measure_peak(run: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> int:
    # Start from an empty segment-buffer pool so buffers pooled by earlier tests
    # (allocated before tracing started) cannot hide from the measurement.
    monkeypatch.setattr(envelope, "_POOL", envelope._BufferPool())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(600)
def test_256_mib_stream_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    source = PatternReader(STREAM_SIZE, SEED_BLOCK)
    sink = HashingWriter()

    def run() -> None:
        ciphertext = encrypt_chunks(source, KEY, 1, associated_data=AD)
        decrypt_stream(ciphertext, sink, KEYS, associated_data=AD)

    peak = _measure_peak(run, monkeypatch)
    print(f"\n256 MiB encrypt->decrypt pipeline: peak traced memory {peak / MIB:.2f} MiB")
    assert sink.count == STREAM_SIZE
    assert sink.digest.digest() == source.digest.digest()
    assert peak < PEAK_LIMIT


@pytest.mark.timeout(600)
def test_256_mib_through_encrypting_reader_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # The put path: the S3 SDK reads the EncryptingReader in 5 MiB parts. Budget: each read
    # assembles its part and copies it out as bytes (2 x 5 MiB), plus about one segment per
    # stage on both sides; the same 16 MiB bound still fails by far if anything buffers the stream.
    source = PatternReader(STREAM_SIZE, SEED_BLOCK)
    sink = HashingWriter()
    part = 5 * MIB

    def run() -> None:
        reader = EncryptingReader(source, KEY, 1, associated_data=AD, plaintext_length=STREAM_SIZE)
        parts = iter(lambda: reader.read(part), b"")
        decrypt_stream(parts, sink, KEYS, associated_data=AD)

    peak = _measure_peak(run, monkeypatch)
    print(f"\n256 MiB via EncryptingReader (5 MiB reads): peak traced memory {peak / MIB:.2f} MiB")
    assert sink.count == STREAM_SIZE
    assert sink.digest.digest() == source.digest.digest()
    assert peak < PEAK_LIMIT
