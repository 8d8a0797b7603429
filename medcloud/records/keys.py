"""Key hierarchy of a RecordStore: tenant KEK -> versioned data keys -> per-record content keys.

Construction
------------
* The **KEK** (key-encryption key) belongs to a Hospital: 256 random bits from
  ``secrets.token_bytes``, identified by an integer *KEK version*.
* Each RecordStore has **data keys**, 256 random bits each, identified by an
  integer *data-key version* (1, 2, ...). A data key is only ever stored
  *wrapped* by the KEK: AES-256-GCM with a random 96-bit nonce, the 32-byte
  key as plaintext and, as associated data, a canonical encoding of
  ``(hospital, store, data-key version, KEK version)`` (see
  :class:`KeyContext`). Because the context is authenticated, a wrapped key
  copied to another store, relabelled as another version, or presented under
  another KEK version fails to unwrap.
* Records are encrypted with a fresh content key per object that is wrapped by
  a data key (see :mod:`medcloud.records.envelope`).

Wrapped data key layout (61 bytes): ``0x01 || nonce (12) || GCM(ciphertext 32 || tag 16)``.

AES-GCM is used rather than AES-KWP (RFC 5649) because KWP has no associated
data, and binding the context is the point. Random GCM nonces are safe here
because a KEK wraps a handful of data keys over its life (far below the
2^32-messages-per-key guidance of NIST SP 800-38D).

Limits
------
* Python cannot reliably erase memory: ``bytes`` objects holding keys are
  dropped, not zeroised. :meth:`KeyRing.shred` destroys the *persisted*
  wrapped keys (what crypto-shredding relies on); copies of the Secret in
  etcd history or backups stay decryptable for whoever also holds the KEK, so
  offboarding must destroy the KEK too.
* A :class:`KeyRing` is not thread-safe; callers serialise mutations (the
  operator reconciles one store at a time).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DATA_KEY_SIZE",
    "KEK_SIZE",
    "KEYRING_FORMAT",
    "DataKeyEntry",
    "KeyContext",
    "KeyRing",
    "KeyShreddedError",
    "KeyUnavailableError",
    "KeyUnwrapError",
    "RecordCryptoError",
    "UnknownKeyVersionError",
    "generate_data_key",
    "generate_kek",
    "length_prefixed",
    "unwrap_data_key",
    "wrap_data_key",
]

KEK_SIZE = 32
DATA_KEY_SIZE = 32
KEYRING_FORMAT = "medcloud.io/keyring/v1"

_WRAP_FORMAT = 1
_NONCE_SIZE = 12
_TAG_SIZE = 16
WRAPPED_DATA_KEY_SIZE = 1 + _NONCE_SIZE + DATA_KEY_SIZE + _TAG_SIZE
_MAX_U32 = 2**32 - 1
# Domain separation: this label never appears in the associated data of any
# other MedCloud AEAD use, so a data-key wrap cannot be confused with another
# ciphertext produced under the same KEK.
_WRAP_LABEL = b"medcloud.io/data-key-wrap/v1"


class RecordCryptoError(Exception):
    """Base of every error raised by the record crypto core."""


class KeyUnwrapError(RecordCryptoError):
    """A wrapped key failed to authenticate: wrong KEK, wrong context, or tampered bytes."""


class KeyUnavailableError(RecordCryptoError, LookupError):
    """A data-key version cannot be provided."""


class UnknownKeyVersionError(KeyUnavailableError):
    """The key ring never had the requested data-key version."""


class KeyShreddedError(KeyUnavailableError):
    """The key ring was crypto-shredded; no data key can be provided any more."""


def length_prefixed(*parts: bytes) -> bytes:
    """Encode byte strings unambiguously: each as a 4-byte big-endian length then its bytes.

    Plain concatenation would make ("ab", "c") and ("a", "bc") collide; with
    length prefixes distinct tuples always encode differently.
    """
    out = bytearray()
    for part in parts:
        if len(part) > _MAX_U32:
            raise ValueError("field too long to encode")
        out += struct.pack(">I", len(part))
        out += part
    return bytes(out)


def _check_version(name: str, value: int) -> int:
    # bool is an int subclass; a True "version" is a bug, not version 1.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_U32:
        raise ValueError(f"{name} must be an integer between 1 and {_MAX_U32}, got {value!r}")
    return value


def _check_key(name: str, key: bytes, size: int) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes")
    key = bytes(key)
    if len(key) != size:
        # Only the length is reported: the message must never carry key bytes.
        raise ValueError(f"{name} must be {size} bytes, got {len(key)}")
    return key


@dataclass(frozen=True)
class KeyContext:
    """What a wrapped data key is bound to: the AES-GCM associated data of the wrap."""

    hospital: str
    store: str
    key_version: int
    kek_version: int

    def __post_init__(self) -> None:
        for name in ("hospital", "store"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        _check_version("key_version", self.key_version)
        _check_version("kek_version", self.kek_version)

    def associated_data(self) -> bytes:
        return length_prefixed(
            _WRAP_LABEL,
            self.hospital.encode(),
            self.store.encode(),
            struct.pack(">I", self.key_version),
            struct.pack(">I", self.kek_version),
        )


def generate_kek() -> bytes:
    """A fresh 256-bit key-encryption key from the OS CSPRNG."""
    return secrets.token_bytes(KEK_SIZE)


def generate_data_key() -> bytes:
    """A fresh 256-bit data key from the OS CSPRNG."""
    return secrets.token_bytes(DATA_KEY_SIZE)


def wrap_data_key(kek: bytes, data_key: bytes, context: KeyContext) -> bytes:
    """Encrypt ``data_key`` under ``kek`` bound to ``context``; returns the 61-byte wrapped key."""
    kek = _check_key("kek", kek, KEK_SIZE)
    data_key = _check_key("data_key", data_key, DATA_KEY_SIZE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(kek).encrypt(nonce, data_key, context.associated_data())
    return bytes([_WRAP_FORMAT]) + nonce + sealed


def unwrap_data_key(kek: bytes, wrapped: bytes, context: KeyContext) -> bytes:
    """Recover a data key wrapped by :func:`wrap_data_key` with the same KEK and context.

    Raises :class:`KeyUnwrapError` if the KEK is wrong, the context differs
    (key moved to another store/version) or a byte of ``wrapped`` changed.
    """
    kek = _check_key("kek", kek, KEK_SIZE)
    if len(wrapped) != WRAPPED_DATA_KEY_SIZE or wrapped[0] != _WRAP_FORMAT:
        raise KeyUnwrapError(
            f"wrapped data key for {context.hospital}/{context.store} version {context.key_version} "
            f"is malformed ({len(wrapped)} bytes)"
        )
    nonce = wrapped[1 : 1 + _NONCE_SIZE]
    try:
        return AESGCM(kek).decrypt(nonce, wrapped[1 + _NONCE_SIZE :], context.associated_data())
    except InvalidTag:
        raise KeyUnwrapError(
            f"data key {context.hospital}/{context.store} version {context.key_version} failed to "
            f"unwrap under KEK version {context.kek_version}: wrong KEK, key moved to another "
            "store or version, or wrapped key tampered"
        ) from None


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class DataKeyEntry:
    """One data-key version as stored: wrapped by the ring's KEK, never in clear."""

    version: int
    created_at: datetime
    # Ciphertext only, but kept out of repr anyway: logs have no use for it.
    wrapped: bytes = field(repr=False)


class KeyRing:
    """The data-key versions of one RecordStore plus the KEK that unwraps them.

    The KEK is held in memory only; :meth:`to_dict` (what goes into the
    store's Kubernetes Secret) contains the KEK *version* and the wrapped data
    keys, never the KEK or an unwrapped data key.

    Rotation semantics:

    * :meth:`new_data_key_version`: a new random data key becomes current;
      new records use it; every older version stays in the ring and readable.
    * :meth:`rewrap`: KEK rotation. Every data key is unwrapped with the old
      KEK and wrapped with the new one. Data keys do not change, so records
      (whose content keys are wrapped by data keys) are untouched.
    * :meth:`shred`: crypto-shredding. Wrapped keys and the KEK reference are
      dropped; once the persisted copies are replaced, no record of the store
      can be decrypted again.
    """

    __slots__ = ("_current", "_entries", "_hospital", "_kek", "_kek_version", "_shredded_at", "_store")

    def __init__(
        self,
        *,
        hospital: str,
        store: str,
        kek: bytes | None,
        kek_version: int,
        entries: Iterable[DataKeyEntry],
        current_version: int,
        shredded_at: datetime | None = None,
    ) -> None:
        # Validate names through KeyContext so the same rules apply everywhere.
        KeyContext(hospital, store, 1, kek_version)
        self._hospital = hospital
        self._store = store
        self._kek_version = kek_version
        self._shredded_at = shredded_at
        self._entries: dict[int, DataKeyEntry] = {}
        for entry in entries:
            _check_version("data-key version", entry.version)
            if entry.version in self._entries:
                raise ValueError(f"duplicate data-key version {entry.version}")
            self._entries[entry.version] = entry
        if shredded_at is None:
            self._kek: bytes | None = _check_key("kek", kek, KEK_SIZE) if kek is not None else None
            if self._kek is None:
                raise ValueError("a key ring that is not shredded needs its KEK")
            if current_version not in self._entries:
                raise ValueError(f"current data-key version {current_version} is not in the ring")
            # Unwrap every entry once: a wrong KEK or a tampered Secret fails
            # here, when the ring is loaded, not later on some record read.
            for entry in self._entries.values():
                self._unwrap(entry)
        else:
            self._kek = None
            if self._entries:
                raise ValueError("a shredded key ring holds no data keys")
        self._current = current_version

    # -- construction and serialisation ------------------------------------

    @classmethod
    def create(
        cls, *, hospital: str, store: str, kek: bytes, kek_version: int = 1, now: datetime | None = None
    ) -> KeyRing:
        """A new ring whose data-key version 1 is a fresh random key."""
        created = now or _now()
        context = KeyContext(hospital, store, 1, kek_version)
        entry = DataKeyEntry(1, created, wrap_data_key(kek, generate_data_key(), context))
        return cls(hospital=hospital, store=store, kek=kek, kek_version=kek_version, entries=[entry], current_version=1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for the store's Secret: wrapped keys and versions, no key material."""
        data: dict[str, Any] = {
            "format": KEYRING_FORMAT,
            "hospital": self._hospital,
            "store": self._store,
            "kekVersion": self._kek_version,
            "currentVersion": self._current,
            "dataKeys": [
                {
                    "version": e.version,
                    "createdAt": _format_time(e.created_at),
                    "wrapped": base64.b64encode(e.wrapped).decode("ascii"),
                }
                for e in sorted(self._entries.values(), key=lambda e: e.version)
            ],
        }
        if self._shredded_at is not None:
            data["shreddedAt"] = _format_time(self._shredded_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, kek: bytes | None) -> KeyRing:
        """Load a ring written by :meth:`to_dict`; ``kek`` must be the KEK of ``kekVersion``.

        Raises :class:`KeyUnwrapError` if ``kek`` does not unwrap every stored
        data key, ``ValueError`` if the dict is malformed.
        """
        if data.get("format") != KEYRING_FORMAT:
            raise ValueError(f"not a key ring of format {KEYRING_FORMAT}: {data.get('format')!r}")
        try:
            entries = [
                DataKeyEntry(
                    int(item["version"]),
                    _parse_time(str(item["createdAt"])),
                    base64.b64decode(str(item["wrapped"]), validate=True),
                )
                for item in data["dataKeys"]
            ]
            shredded = data.get("shreddedAt")
            return cls(
                hospital=str(data["hospital"]),
                store=str(data["store"]),
                kek=kek,
                kek_version=int(data["kekVersion"]),
                entries=entries,
                current_version=int(data["currentVersion"]),
                shredded_at=_parse_time(str(shredded)) if shredded is not None else None,
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed key ring: {type(exc).__name__}: {exc}") from None

    # -- read access ----------------------------------------------------------

    @property
    def hospital(self) -> str:
        return self._hospital

    @property
    def store(self) -> str:
        return self._store

    @property
    def kek_version(self) -> int:
        return self._kek_version

    @property
    def current_version(self) -> int:
        self._require_live()
        return self._current

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._entries))

    @property
    def entries(self) -> tuple[DataKeyEntry, ...]:
        return tuple(self._entries[v] for v in self.versions)

    @property
    def is_shredded(self) -> bool:
        return self._shredded_at is not None

    @property
    def shredded_at(self) -> datetime | None:
        return self._shredded_at

    def context(self, version: int) -> KeyContext:
        return KeyContext(self._hospital, self._store, version, self._kek_version)

    def data_key(self, version: int) -> bytes:
        """The unwrapped data key of ``version``.

        Raises :class:`KeyShreddedError` after :meth:`shred` and
        :class:`UnknownKeyVersionError` for a version the ring never had.
        """
        self._require_live()
        entry = self._entries.get(version)
        if entry is None:
            raise UnknownKeyVersionError(
                f"store {self._hospital}/{self._store} has no data-key version {version} "
                f"(versions: {', '.join(map(str, self.versions))})"
            )
        return self._unwrap(entry)

    def current_data_key(self) -> tuple[int, bytes]:
        """``(version, key)`` of the data key new records must use."""
        return self.current_version, self.data_key(self.current_version)

    # -- mutations ------------------------------------------------------------

    def new_data_key_version(self, *, now: datetime | None = None) -> int:
        """Rotate: add a fresh data key as the new current version and return that version."""
        kek = self._require_live()
        version = max(self._entries) + 1
        _check_version("data-key version", version)
        wrapped = wrap_data_key(kek, generate_data_key(), self.context(version))
        self._entries[version] = DataKeyEntry(version, now or _now(), wrapped)
        self._current = version
        return version

    def rewrap(self, new_kek: bytes, new_kek_version: int) -> None:
        """KEK rotation: re-wrap every data key under ``new_kek``; data keys and records stay as they are.

        All-or-nothing: if any entry fails to unwrap the ring is left unchanged.
        """
        old_kek = self._require_live()
        new_kek = _check_key("new_kek", new_kek, KEK_SIZE)
        _check_version("new_kek_version", new_kek_version)
        if new_kek_version <= self._kek_version:
            # Versions only move forward so a stale Secret can never pass for a newer one.
            raise ValueError(f"new KEK version {new_kek_version} must be greater than {self._kek_version}")
        if hmac.compare_digest(new_kek, old_kek):
            raise ValueError("new KEK is identical to the current KEK")
        rewrapped: dict[int, DataKeyEntry] = {}
        for version, entry in self._entries.items():
            data_key = self._unwrap(entry)
            context = KeyContext(self._hospital, self._store, version, new_kek_version)
            rewrapped[version] = DataKeyEntry(version, entry.created_at, wrap_data_key(new_kek, data_key, context))
        self._entries = rewrapped
        self._kek = new_kek
        self._kek_version = new_kek_version

    def shred(self, *, now: datetime | None = None) -> None:
        """Crypto-shred: drop every wrapped data key and the KEK reference.

        The caller must persist :meth:`to_dict` (which then carries no wrapped
        keys) over the old Secret and destroy the KEK for the shred to be
        effective beyond this process.
        """
        self._entries = {}
        self._kek = None
        self._shredded_at = now or _now()

    # -- internals --------------------------------------------------------------

    def _require_live(self) -> bytes:
        if self._shredded_at is not None or self._kek is None:
            raise KeyShreddedError(
                f"key ring of store {self._hospital}/{self._store} was shredded at "
                f"{_format_time(self._shredded_at or _now())}; its records can no longer be decrypted"
            )
        return self._kek

    def _unwrap(self, entry: DataKeyEntry) -> bytes:
        kek = self._require_live()
        return unwrap_data_key(kek, entry.wrapped, self.context(entry.version))

    def __repr__(self) -> str:
        # Explicit so that no future attribute (the KEK above all) leaks into logs.
        state = "shredded" if self.is_shredded else f"current={self._current}"
        return (
            f"KeyRing(hospital={self._hospital!r}, store={self._store!r}, kek_version={self._kek_version}, "
            f"versions={list(self.versions)}, {state}, kek=<redacted>)"
        )

    __str__ = __repr__
