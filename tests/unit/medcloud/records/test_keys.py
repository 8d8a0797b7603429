"""Key hierarchy: data-key wrapping bound to its context, key rings, rotation, KEK re-wrap, shredding."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from medcloud.records.envelope import RecordIntegrityError, decrypt_bytes, encrypt_bytes
from medcloud.records.keys import (
    DATA_KEY_SIZE,
    KEK_SIZE,
    KeyContext,
    KeyRing,
    KeyShreddedError,
    KeyUnavailableError,
    KeyUnwrapError,
    UnknownKeyVersionError,
    generate_data_key,
    generate_kek,
    length_prefixed,
    unwrap_data_key,
    wrap_data_key,
)

CTX = KeyContext("city-hospital", "inpatient", 1, 1)


def _secret_spellings(key: bytes) -> list[str]:
    """Ways key bytes could show up in text: hex, base64, Python bytes repr."""
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)[2:-1]]


def _assert_no_key_material(text: str, *keys: bytes) -> None:
    for key in keys:
        for spelling in _secret_spellings(key):
            assert spelling not in text


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- primitives -----------------------------------------------------------------------


def test_generated_keys_are_256_bit_and_distinct() -> None:
    keys = {generate_kek() for _ in range(8)} | {generate_data_key() for _ in range(8)}
    assert len(keys) == 16
    assert {len(k) for k in keys} == {KEK_SIZE} == {DATA_KEY_SIZE}


def test_wrap_unwrap_round_trip_and_wrapping_is_randomised() -> None:
    kek, dk = generate_kek(), generate_data_key()
    first, second = wrap_data_key(kek, dk, CTX), wrap_data_key(kek, dk, CTX)
    assert first != second  # fresh nonce per wrap
    assert dk not in first
    assert unwrap_data_key(kek, first, CTX) == dk
    assert unwrap_data_key(kek, second, CTX) == dk


@pytest.mark.parametrize(
    "other",
    [
        KeyContext("county-hospital", "inpatient", 1, 1),
        KeyContext("city-hospital", "outpatient", 1, 1),
        KeyContext("city-hospital", "inpatient", 2, 1),
        KeyContext("city-hospital", "inpatient", 1, 2),
        # Field boundaries must matter: "city-hospital"/"inpatient" vs "city-hospitali"/"npatient".
        KeyContext("city-hospitali", "npatient", 1, 1),
    ],
    ids=["other-hospital", "other-store", "other-key-version", "other-kek-version", "shifted-boundary"],
)
def test_wrapped_key_cannot_move_to_another_context(other: KeyContext) -> None:
    kek = generate_kek()
    wrapped = wrap_data_key(kek, generate_data_key(), CTX)
    with pytest.raises(KeyUnwrapError, match="failed to unwrap"):
        unwrap_data_key(kek, wrapped, other)


def test_wrong_kek_fails() -> None:
    wrapped = wrap_data_key(generate_kek(), generate_data_key(), CTX)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(generate_kek(), wrapped, CTX)


def test_every_flipped_bit_of_a_wrapped_key_is_detected() -> None:
    kek = generate_kek()
    wrapped = wrap_data_key(kek, generate_data_key(), CTX)
    for bit in range(len(wrapped) * 8):
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(kek, _flip(wrapped, bit), CTX)


@pytest.mark.parametrize("cut", [0, 1, 12, 60])
def test_truncated_or_extended_wrapped_key_is_malformed(cut: int) -> None:
    kek = generate_kek()
    wrapped = wrap_data_key(kek, generate_data_key(), CTX)
    with pytest.raises(KeyUnwrapError, match="malformed"):
        unwrap_data_key(kek, wrapped[:cut], CTX)
    with pytest.raises(KeyUnwrapError, match="malformed"):
        unwrap_data_key(kek, wrapped + b"\0", CTX)


def test_key_sizes_are_checked_without_echoing_the_key() -> None:
    short = b"\x11" * 16
    with pytest.raises(ValueError, match="kek must be 32 bytes, got 16") as info:
        wrap_data_key(short, generate_data_key(), CTX)
    _assert_no_key_material(str(info.value), short)
    with pytest.raises(ValueError, match="data_key must be 32 bytes"):
        wrap_data_key(generate_kek(), b"\x22" * 31, CTX)


@pytest.mark.parametrize(
    ("hospital", "store", "version", "kek_version"),
    [("", "s", 1, 1), ("h", "", 1, 1), ("h", "s", 0, 1), ("h", "s", 1, 0), ("h", "s", 2**32, 1), ("h", "s", True, 1)],
)
def test_key_context_rejects_invalid_fields(hospital: str, store: str, version: int, kek_version: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        KeyContext(hospital, store, version, kek_version)


def test_length_prefixed_is_unambiguous() -> None:
    assert length_prefixed(b"ab", b"c") != length_prefixed(b"a", b"bc")
    assert length_prefixed(b"", b"x") != length_prefixed(b"x", b"")
    assert length_prefixed(b"abc") == b"\0\0\0\x03abc"


# -- key ring ---------------------------------------------------------------------------


def _ring(kek: bytes | None = None, **kwargs: Any) -> KeyRing:
    return KeyRing.create(hospital="city-hospital", store="inpatient", kek=kek or generate_kek(), **kwargs)


def test_new_ring_has_version_one_and_serialises_without_key_material() -> None:
    kek = generate_kek()
    when = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    ring = _ring(kek, kek_version=3, now=when)
    assert ring.current_version == 1
    assert ring.versions == (1,)
    data = ring.to_dict()
    text = json.dumps(data)  # must be JSON-able for a Secret
    _assert_no_key_material(text, kek, ring.data_key(1))
    assert data["format"] == "medcloud.io/keyring/v1"
    assert data["kekVersion"] == 3
    assert data["currentVersion"] == 1
    assert data["dataKeys"][0]["version"] == 1
    assert data["dataKeys"][0]["createdAt"] == "2025-03-01T08:30:00Z"


def test_ring_round_trips_through_its_dict() -> None:
    kek = generate_kek()
    ring = _ring(kek)
    ring.new_data_key_version()
    loaded = KeyRing.from_dict(json.loads(json.dumps(ring.to_dict())), kek=kek)
    assert loaded.versions == (1, 2)
    assert loaded.current_version == 2
    assert loaded.entries == ring.entries
    for version in (1, 2):
        assert loaded.data_key(version) == ring.data_key(version)


def test_loading_with_the_wrong_kek_fails_at_load() -> None:
    data = _ring().to_dict()
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict(data, kek=generate_kek())


def test_loading_a_tampered_ring_fails() -> None:
    kek = generate_kek()
    ring = _ring(kek)
    ring.new_data_key_version()
    data = ring.to_dict()

    swapped = json.loads(json.dumps(data))
    # Relabel version 1's wrapped key as version 2 and vice versa: the version is in the AAD.
    first, second = swapped["dataKeys"]
    first["wrapped"], second["wrapped"] = second["wrapped"], first["wrapped"]
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict(swapped, kek=kek)

    moved = json.loads(json.dumps(data))
    moved["store"] = "outpatient"
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict(moved, kek=kek)

    relabelled_kek = json.loads(json.dumps(data))
    relabelled_kek["kekVersion"] = 2
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict(relabelled_kek, kek=kek)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something/else"), "not a key ring"),
        (lambda d: d.pop("dataKeys"), "malformed key ring"),
        (lambda d: d["dataKeys"][0].update(wrapped="not base64!"), "malformed key ring"),
        (lambda d: d.update(currentVersion=7), "current data-key version 7 is not in the ring"),
        (lambda d: d["dataKeys"].append(dict(d["dataKeys"][0])), "duplicate data-key version 1"),
    ],
    ids=["format", "missing-keys", "bad-base64", "current-not-in-ring", "duplicate-version"],
)
def test_malformed_ring_dict_is_a_value_error(mutate: Any, message: str) -> None:
    kek = generate_kek()
    data = _ring(kek).to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        KeyRing.from_dict(data, kek=kek)


def test_unknown_version_is_a_lookup_error() -> None:
    ring = _ring()
    with pytest.raises(UnknownKeyVersionError, match="no data-key version 9") as info:
        ring.data_key(9)
    assert isinstance(info.value, KeyUnavailableError)
    assert isinstance(info.value, LookupError)


def test_data_key_rotation_keeps_old_versions_readable() -> None:
    ring = _ring()
    v1_key = ring.data_key(1)
    before = encrypt_bytes(b"admission note", v1_key, 1)

    assert ring.new_data_key_version() == 2
    assert ring.new_data_key_version() == 3
    assert ring.current_version == 3
    assert ring.versions == (1, 2, 3)
    version, current = ring.current_data_key()
    assert version == 3
    assert len({ring.data_key(1), ring.data_key(2), current}) == 3
    assert ring.data_key(1) == v1_key
    after = encrypt_bytes(b"discharge summary", current, version)

    assert decrypt_bytes(before, ring.data_key) == b"admission note"
    assert decrypt_bytes(after, ring.data_key) == b"discharge summary"


def test_kek_rotation_rewraps_without_touching_records() -> None:
    old_kek, new_kek = generate_kek(), generate_kek()
    ring = _ring(old_kek)
    ring.new_data_key_version()
    records = {v: encrypt_bytes(f"record under v{v}".encode(), ring.data_key(v), v) for v in ring.versions}
    data_keys = {v: ring.data_key(v) for v in ring.versions}
    old_dict = ring.to_dict()

    ring.rewrap(new_kek, 2)

    assert ring.kek_version == 2
    assert {v: ring.data_key(v) for v in ring.versions} == data_keys  # data keys unchanged
    new_dict = ring.to_dict()
    assert [e["wrapped"] for e in new_dict["dataKeys"]] != [e["wrapped"] for e in old_dict["dataKeys"]]
    # Records written before the rotation are the same bytes and still decrypt.
    for version, record in records.items():
        assert decrypt_bytes(record, ring.data_key) == f"record under v{version}".encode()
    # The persisted ring now opens with the new KEK only.
    assert KeyRing.from_dict(new_dict, kek=new_kek).data_key(1) == data_keys[1]
    with pytest.raises(KeyUnwrapError):
        KeyRing.from_dict(new_dict, kek=old_kek)
    # Data-key rotation keeps working under the new KEK.
    ring.new_data_key_version()
    assert KeyRing.from_dict(ring.to_dict(), kek=new_kek).versions == (1, 2, 3)


def test_rewrap_refuses_stale_version_or_same_kek_and_leaves_ring_unchanged() -> None:
    kek = generate_kek()
    ring = _ring(kek, kek_version=2)
    before = ring.to_dict()
    with pytest.raises(ValueError, match="must be greater"):
        ring.rewrap(generate_kek(), 2)
    with pytest.raises(ValueError, match="must be greater"):
        ring.rewrap(generate_kek(), 1)
    with pytest.raises(ValueError, match="identical"):
        ring.rewrap(kek, 3)
    assert ring.to_dict() == before


def test_shred_destroys_every_data_key() -> None:
    ring = _ring()
    ring.new_data_key_version()
    record = encrypt_bytes(b"to be forgotten", ring.data_key(2), 2)
    ring.shred(now=datetime(2030, 1, 1, tzinfo=UTC))

    assert ring.is_shredded
    data = ring.to_dict()
    assert data["dataKeys"] == []
    assert data["shreddedAt"] == "2030-01-01T00:00:00Z"
    with pytest.raises(KeyShreddedError, match="shredded"):
        ring.data_key(2)
    with pytest.raises(KeyShreddedError):
        ring.new_data_key_version()
    with pytest.raises(KeyShreddedError):
        ring.rewrap(generate_kek(), 5)
    # Shredded is not an integrity failure: the error says what happened.
    with pytest.raises(KeyShreddedError):
        decrypt_bytes(record, ring.data_key)

    loaded = KeyRing.from_dict(data, kek=None)
    assert loaded.is_shredded
    with pytest.raises(KeyShreddedError):
        loaded.data_key(1)


def test_unknown_version_in_a_record_is_an_integrity_error() -> None:
    ring = _ring()
    record = encrypt_bytes(b"x", generate_data_key(), 4)
    with pytest.raises(RecordIntegrityError, match="data-key version 4"):
        decrypt_bytes(record, ring.data_key)


def test_repr_and_str_never_show_key_material() -> None:
    kek = generate_kek()
    ring = _ring(kek)
    ring.new_data_key_version()
    secrets_ = [kek, ring.data_key(1), ring.data_key(2)]
    for text in (repr(ring), str(ring), repr(ring.entries)):
        _assert_no_key_material(text, *secrets_)
    assert "redacted" in repr(ring)
    # Wrapped bytes are kept out of the entry repr as well.
    assert base64.b64encode(ring.entries[0].wrapped).decode() not in repr(ring.entries[0])
    with pytest.raises(KeyUnwrapError) as info:
        KeyRing.from_dict(ring.to_dict(), kek=generate_kek())
    _assert_no_key_material(str(info.value) + repr(info.value), *secrets_)
