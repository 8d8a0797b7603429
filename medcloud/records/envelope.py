"""Record envelope: streaming, segmented AES-256-GCM under a per-object content key.

Format version 1
----------------
A record is ``header || segment_0 || ... || segment_{n-1}`` with ``n >= 1``.

Header, 80 bytes, big-endian integers::

    offset size field
         0    4 magic  b"MCRE"
         4    1 format version (1)
         5    4 data-key version that wraps the content key
         9    4 segment size S (plaintext bytes per segment)
        13    7 nonce prefix (random per object)
        20   12 nonce of the content-key wrap (random)
        32   48 wrapped content key: AES-256-GCM(data key, 32-byte content key) ciphertext || tag

* The content key is 256 fresh random bits per object. It is wrapped with
  AES-256-GCM under the store's data key; the associated data of the wrap is
  header bytes 0..19 (magic, version, key version, segment size, nonce
  prefix) plus the caller's *associated data* (the record client binds
  hospital, store, object name and content type), length-prefixed.
* Segment ``i`` is ``AES-256-GCM(content key, nonce_i, plaintext_i, aad=header)``
  where ``nonce_i = prefix (7) || i (4, big-endian) || final (1: 0x01 for the
  last segment, else 0x00)``. Every segment but the last carries exactly S
  plaintext bytes; the last carries 1..S bytes (0 only for an empty record).
  This is the nonce-based STREAM construction (Hoang, Reyhanitabar, Rogaway,
  Vizar 2015), laid out as in Google Tink's AES-GCM-HKDF streaming AEAD.

What this detects: a flipped bit anywhere (header fields through the wrap's
associated data and every segment's AAD; segments through their tags),
reordered or swapped segments (the index is in the nonce), truncation at or
inside a segment and a dropped final segment (the last segment read must carry
the final flag), appended data (a segment carrying the final flag must be
last), a wrong data key, and a record moved to another name or store (the
caller's associated data).

Limits:

* Decryption releases each segment's plaintext as soon as that segment
  authenticates. A consumer that sees an exception has received a verified
  *prefix* only; it must discard what it got (the record client's file and
  bytes helpers do).
* Rollback to an older but genuine version of the same object is not
  detected: that needs state outside the object (S3 versioning, an index).
* The content-key wrap uses a random 96-bit nonce per object under the data
  key, so one data-key version should wrap well under 2^32 objects (NIST SP
  800-38D); rotating data keys keeps that bound far away.
* Object names, sizes (plaintext size is derivable from ciphertext size) and
  S3 metadata are not encrypted.
* At most 2^32 segments per record (4 PiB at 1 MiB segments).
"""

from __future__ import annotations

import secrets
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medcloud.records.keys import (
    DATA_KEY_SIZE,
    RecordCryptoError,
    UnknownKeyVersionError,
    length_prefixed,
)

__all__ = [
    "BUFFER_POOL_LIMIT",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "META_FORMAT",
    "META_KEY_VERSION",
    "META_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "TAG_SIZE",
    "ByteSource",
    "DataKeyLookup",
    "EncryptingReader",
    "RecordFormatError",
    "RecordHeader",
    "RecordIntegrityError",
    "SupportsRead",
    "SupportsWrite",
    "ciphertext_length",
    "decrypt_bytes",
    "decrypt_chunks",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_chunks",
    "encrypt_stream",
    "parse_header",
    "plaintext_length",
    "verify_metadata",
]

MAGIC = b"MCRE"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_SIZE = 1024 * 1024
MIN_SEGMENT_SIZE = 64
# Bounds what a reader allocates per segment, even before the header has
# authenticated (the header is authenticated only when the content key unwraps).
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
TAG_SIZE = 16
_CONTENT_KEY_SIZE = 32
_PREFIX_SIZE = 7
_NONCE_SIZE = 12
_MAX_SEGMENTS = 2**32
_FIXED = struct.Struct(">4sBII7s")  # magic, version, key version, segment size, nonce prefix
_WRAPPED_CK_SIZE = _CONTENT_KEY_SIZE + TAG_SIZE
HEADER_SIZE = _FIXED.size + _NONCE_SIZE + _WRAPPED_CK_SIZE
_WRAP_LABEL = b"medcloud.io/content-key-wrap/v1"

# S3 user-metadata keys (the SDK adds the x-amz-meta- prefix).
META_FORMAT = "medcloud-format"
META_KEY_VERSION = "medcloud-key-version"
META_SEGMENT_SIZE = "medcloud-segment-size"


class RecordIntegrityError(RecordCryptoError):
    """A record failed authentication or is malformed: tampered, truncated, or corrupted."""


class RecordFormatError(RecordIntegrityError):
    """The bytes are not a record of a format this code understands."""


@runtime_checkable
class SupportsRead(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> object: ...


# Plaintext or ciphertext input: bytes, a file-like object, or an iterable of chunks.
ByteSource = bytes | bytearray | memoryview | SupportsRead | Iterable[bytes]
# Maps a data-key version to the data key; a Mapping works as well.
DataKeyLookup = Callable[[int], bytes] | Mapping[int, bytes]


def _check_segment_size(segment_size: int) -> int:
    if not isinstance(segment_size, int) or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes")
    return segment_size


def ciphertext_length(plaintext_length: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Exact stored size of a record of ``plaintext_length`` bytes (for ``put_object``'s length)."""
    _check_segment_size(segment_size)
    if plaintext_length < 0:
        raise ValueError("plaintext length must not be negative")
    segments = max(1, -(-plaintext_length // segment_size))
    if segments > _MAX_SEGMENTS:
        raise ValueError("record too large for this segment size")
    return HEADER_SIZE + plaintext_length + segments * TAG_SIZE


def plaintext_length(ciphertext_length: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Inverse of :func:`ciphertext_length`; raises ``ValueError`` for an impossible size."""
    _check_segment_size(segment_size)
    body = ciphertext_length - HEADER_SIZE
    if body < TAG_SIZE:
        raise ValueError(f"{ciphertext_length} bytes is too short to be a record")
    segments = -(-body // (segment_size + TAG_SIZE))
    return body - segments * TAG_SIZE


@dataclass(frozen=True)
class RecordHeader:
    """The parsed header of a record. Holds no key material (the content key is wrapped)."""

    format_version: int
    key_version: int
    segment_size: int
    nonce_prefix: bytes = field(repr=False)
    wrap_nonce: bytes = field(repr=False)
    wrapped_content_key: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return (
            _FIXED.pack(MAGIC, self.format_version, self.key_version, self.segment_size, self.nonce_prefix)
            + self.wrap_nonce
            + self.wrapped_content_key
        )

    def metadata(self) -> dict[str, str]:
        """S3 user metadata describing this record (informational; the header is authoritative)."""
        return {
            META_FORMAT: str(self.format_version),
            META_KEY_VERSION: str(self.key_version),
            META_SEGMENT_SIZE: str(self.segment_size),
        }


def parse_header(data: bytes, *, max_segment_size: int = MAX_SEGMENT_SIZE) -> RecordHeader:
    """Parse (not authenticate) a record header; raises :class:`RecordIntegrityError` if malformed."""
    if len(data) < HEADER_SIZE:
        raise RecordIntegrityError(f"record truncated: header is {len(data)} bytes, expected {HEADER_SIZE}")
    magic, version, key_version, segment_size, prefix = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise RecordFormatError("not a MedCloud encrypted record: bad magic (plaintext object or corrupted header)")
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"unsupported record format version {version} (this code reads {FORMAT_VERSION})")
    if key_version == 0:
        raise RecordIntegrityError("header names data-key version 0, which never exists: header corrupted")
    if not MIN_SEGMENT_SIZE <= segment_size <= min(max_segment_size, MAX_SEGMENT_SIZE):
        raise RecordIntegrityError(f"header segment size {segment_size} out of range: header corrupted")
    rest = data[_FIXED.size : HEADER_SIZE]
    return RecordHeader(
        format_version=version,
        key_version=key_version,
        segment_size=segment_size,
        nonce_prefix=prefix,
        wrap_nonce=rest[:_NONCE_SIZE],
        wrapped_content_key=rest[_NONCE_SIZE:],
    )


def verify_metadata(header: RecordHeader, metadata: Mapping[str, str]) -> None:
    """Check S3 metadata against the authenticated header; a mismatch means someone edited one of them."""
    expected = header.metadata()
    for key, value in expected.items():
        found = metadata.get(key)
        if found is None:
            raise RecordIntegrityError(f"object metadata lacks {key!r}: not written by the record client")
        if found != value:
            raise RecordIntegrityError(
                f"object metadata {key}={found!r} contradicts the record header ({value!r}): metadata tampered"
            )


def _wrap_aad(header_fixed: bytes, associated_data: bytes) -> bytes:
    return length_prefixed(_WRAP_LABEL, header_fixed, associated_data)


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


# ``AESGCM.encrypt_into`` writes ciphertext into a caller's buffer (newer ``cryptography`` only).
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")


class _Sealer:
    """Encrypting half of one record: fresh content key, header, per-segment sealing."""

    __slots__ = ("_aead", "header", "header_bytes", "segment_size")

    def __init__(self, data_key: bytes, key_version: int, associated_data: bytes, segment_size: int) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
        if not isinstance(key_version, int) or not 1 <= key_version < 2**32:
            raise ValueError(f"key version must be between 1 and {2**32 - 1}")
        self.segment_size = _check_segment_size(segment_size)
        # One CSPRNG call for all three values: per-record overhead matters for small records.
        random = secrets.token_bytes(_CONTENT_KEY_SIZE + _PREFIX_SIZE + _NONCE_SIZE)
        content_key = random[:_CONTENT_KEY_SIZE]
        prefix = random[_CONTENT_KEY_SIZE : _CONTENT_KEY_SIZE + _PREFIX_SIZE]
        wrap_nonce = random[_CONTENT_KEY_SIZE + _PREFIX_SIZE :]
        fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, key_version, segment_size, prefix)
        wrapped = AESGCM(data_key).encrypt(wrap_nonce, content_key, _wrap_aad(fixed, associated_data))
        self.header_bytes = fixed + wrap_nonce + wrapped
        self.header = RecordHeader(FORMAT_VERSION, key_version, segment_size, prefix, wrap_nonce, wrapped)
        self._aead = AESGCM(content_key)

    def seal(self, index: int, plaintext: memoryview, final: bool) -> bytes:
        if index >= _MAX_SEGMENTS:
            raise ValueError("record too large: more than 2^32 segments")
        return self._aead.encrypt(_nonce(self.header.nonce_prefix, index, final), plaintext, self.header_bytes)

    def seal_into(self, index: int, plaintext: memoryview, final: bool, out: memoryview) -> None:
        """Like :meth:`seal`, writing ciphertext and tag into ``out`` (exactly ``len(plaintext) + TAG_SIZE``)."""
        if index >= _MAX_SEGMENTS:
            raise ValueError("record too large: more than 2^32 segments")
        nonce = _nonce(self.header.nonce_prefix, index, final)
        if _HAS_ENCRYPT_INTO:
            self._aead.encrypt_into(nonce, plaintext, self.header_bytes, out)
        else:  # older cryptography releases: same bytes, one more copy
            out[:] = self._aead.encrypt(nonce, plaintext, self.header_bytes)

    def __repr__(self) -> str:
        return f"_Sealer(key_version={self.header.key_version}, content_key=<redacted>)"


_EMPTY = memoryview(b"")
# Most bytes of buffers the process keeps between records (see _BufferPool).
BUFFER_POOL_LIMIT = 16 * 1024 * 1024
_PROBE_SIZE = 64 * 1024
# Largest staging buffer an EncryptingReader allocates; larger reads join fresh segments instead.
_MAX_STAGE = 64 * 1024 * 1024


class _ChunkSource:
    """Copies input into caller-owned buffers, from a file-like object or an iterable of chunks.

    Segments are assembled in one reused ``bytearray`` per stream and handed to
    AES-GCM as memoryviews, so each byte is copied once on the way in and
    memory stays O(segment size) whatever the chunking of the input.
    """

    __slots__ = ("_eof", "_iter", "_pending", "_read", "_readinto")

    def __init__(self, source: ByteSource) -> None:
        self._eof = False
        self._pending = _EMPTY
        self._read: Callable[[int], bytes] | None = None
        self._readinto: Callable[[memoryview], int | None] | None = None
        self._iter: Iterator[bytes] | None = None
        if isinstance(source, bytes | bytearray | memoryview):
            # Iterating bytes would yield ints; the whole object is one pending chunk.
            self._pending = memoryview(source).cast("B")
            self._eof = True
        elif callable(read := getattr(source, "read", None)):
            # What isinstance(source, SupportsRead) says, without the Protocol check's ~10 us per record.
            readinto = getattr(source, "readinto", None)
            if callable(readinto):
                self._readinto = readinto
            else:
                self._read = read
        else:
            self._iter = iter(cast(Iterable[bytes], source))

    def fill(self, view: memoryview) -> int:
        """Copy input into ``view`` until it is full or the input ends; returns the count."""
        want = len(view)
        got = 0
        while got < want:
            if self._pending:
                take = min(len(self._pending), want - got)
                view[got : got + take] = self._pending[:take]
                # An empty slice still pins the whole chunk it came from; drop it instead.
                self._pending = self._pending[take:] if take < len(self._pending) else _EMPTY
                got += take
                continue
            if self._eof:
                break
            if self._readinto is not None:
                count = self._readinto(view[got:])
                if count is None:
                    raise OSError("source is non-blocking and returned no data; give a blocking stream")
                if count == 0:
                    self._eof = True
                got += count
                continue
            chunk = self._next_chunk(want - got)
            if chunk is None:
                self._eof = True
            else:
                self._pending = memoryview(chunk).cast("B")
        return got

    def _next_chunk(self, want: int) -> bytes | None:
        if self._read is not None:
            chunk = self._read(want)
            if chunk is None:
                raise OSError("source is non-blocking and returned no data; give a blocking stream")
            return chunk or None
        assert self._iter is not None
        for chunk in self._iter:
            if chunk:
                return chunk
        return None


class _BufferPool:
    """Large buffers kept for reuse between records (at most ``_MAX_BYTES`` in total).

    Touching freshly mapped memory is what a 1 MiB record mostly cost: glibc
    maps and trims large allocations as they come and go, and every first
    touch of a page faults (measured on the 2-vCPU VM: about 1.5 ms per MiB,
    five times the AES-GCM work). Reusing buffers keeps those pages warm.
    ``take`` hands out the smallest pooled buffer at least as large as asked
    and at most twice that (callers slice it), so that small uses do not hold
    on to large buffers; buffers under ``_MIN_BYTES`` are not pooled (the
    allocator serves those from memory it keeps anyway). Buffers are not wiped
    on return: Python never wipes freed memory either, so pooling does not
    change what plaintext lingers in process memory.
    """

    _MAX_BYTES = BUFFER_POOL_LIMIT
    _MIN_BYTES = 128 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[bytearray] = []  # smallest first

    def take(self, size: int) -> bytearray:
        return self.take_pooled(size) or bytearray(size)

    def take_pooled(self, size: int) -> bytearray | None:
        """A pooled buffer of ``size`` to ``2 * size`` bytes, or None if there is none."""
        if size >= self._MIN_BYTES:
            with self._lock:
                for i, buf in enumerate(self._free):
                    if size <= len(buf) <= 2 * size:
                        return self._free.pop(i)
        return None

    def give(self, buf: bytearray) -> None:
        if not self._MIN_BYTES <= len(buf) <= self._MAX_BYTES:
            return
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=len)
            # Over budget: drop the smallest, the cheapest to allocate again.
            total = sum(map(len, self._free))
            while total > self._MAX_BYTES:
                total -= len(self._free.pop(0))


_POOL = _BufferPool()


def _segments(src: _ChunkSource, size: int) -> Iterator[tuple[memoryview, bool]]:
    """Split input into ``size``-byte pieces, each flagged final or not; the last may be shorter.

    One byte of lookahead beyond a full piece tells whether more follows. A
    yielded view is only valid until the next iteration (the buffer is reused).
    Without a pooled buffer at hand, the first piece is read through a small
    probe buffer so that small records do not pay for allocating (and zeroing)
    a full segment buffer.
    """
    have = 0
    buf = _POOL.take_pooled(size + 1)
    if buf is None:
        probe = bytearray(min(size + 1, _PROBE_SIZE))
        have = src.fill(memoryview(probe))
        if have < len(probe):
            yield memoryview(probe)[:have], True
            return
        buf = _POOL.take(size + 1)
    view = memoryview(buf)[: size + 1]
    if have:
        view[:have] = probe
    while True:
        have += src.fill(view[have:])
        if have <= size:
            yield view[:have], True
            break
        yield view[:size], False
        view[0] = view[size]
        have = 1
    # Only a stream read to its end returns the buffer: by then the caller has
    # finished with every view it was given.
    view.release()
    _POOL.give(buf)


def _memory_segments(data: memoryview, size: int) -> Iterator[tuple[memoryview, bool]]:
    """:func:`_segments` for input already in memory: views into it, nothing copied."""
    total = len(data)
    start = 0
    while True:
        end = start + size
        yield data[start:end], end >= total
        if end >= total:
            return
        start = end


def _plaintext_segments(
    source: ByteSource, size: int, plaintext_length: int | None
) -> Iterator[tuple[memoryview, bool]]:
    """Plaintext segments of ``source``, checked against the declared length if there is one."""
    if isinstance(source, bytes | bytearray | memoryview):
        pieces = _memory_segments(memoryview(source).cast("B"), size)
    else:
        pieces = _segments(_ChunkSource(source), size)
    consumed = 0
    for plaintext, final in pieces:
        consumed += len(plaintext)
        if plaintext_length is not None and (consumed > plaintext_length or final != (consumed == plaintext_length)):
            # A declared length is a promise to the storage layer (put_object reads exactly
            # that many bytes); a source that breaks it must fail the write instead of
            # storing a record cut short. The segment reaching the declared length must be
            # the final one: a reader read exactly to that length never asks for another.
            more = "more than" if consumed >= plaintext_length else f"only {consumed} bytes of"
            raise ValueError(f"source has {more} the declared {plaintext_length} bytes")
        yield plaintext, final


def _seal_segments(sealer: _Sealer, source: ByteSource, plaintext_length: int | None) -> Iterator[bytes]:
    for index, (plaintext, final) in enumerate(_plaintext_segments(source, sealer.segment_size, plaintext_length)):
        yield sealer.seal(index, plaintext, final)


def encrypt_chunks(
    source: ByteSource,
    data_key: bytes,
    key_version: int,
    *,
    associated_data: bytes = b"",
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    plaintext_length: int | None = None,
) -> Iterator[bytes]:
    """Yield the record: the header, then one ciphertext segment at a time.

    ``source`` is a file-like object (``read(n)``) or an iterable of byte
    chunks. ``associated_data`` is authenticated, not stored: decryption must
    present the same bytes. With ``plaintext_length`` the source must produce
    exactly that many bytes (``ValueError`` otherwise).
    """
    sealer = _Sealer(data_key, key_version, associated_data, segment_size)
    yield sealer.header_bytes
    yield from _seal_segments(sealer, source, plaintext_length)


def encrypt_stream(
    source: ByteSource,
    writer: SupportsWrite,
    data_key: bytes,
    key_version: int,
    *,
    associated_data: bytes = b"",
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    plaintext_length: int | None = None,
) -> int:
    """Encrypt ``source`` into ``writer``; returns the number of bytes written."""
    written = 0
    for chunk in encrypt_chunks(
        source,
        data_key,
        key_version,
        associated_data=associated_data,
        segment_size=segment_size,
        plaintext_length=plaintext_length,
    ):
        writer.write(chunk)
        written += len(chunk)
    return written


def encrypt_bytes(
    plaintext: bytes,
    data_key: bytes,
    key_version: int,
    *,
    associated_data: bytes = b"",
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    return b"".join(
        encrypt_chunks(
            plaintext,
            data_key,
            key_version,
            associated_data=associated_data,
            segment_size=segment_size,
            plaintext_length=len(plaintext),
        )
    )


class EncryptingReader:
    """A readable file-like object producing the encrypted record of a plaintext stream.

    Made for ``Minio.put_object(bucket, name, reader, reader.length or -1,
    metadata=reader.metadata, part_size=...)``: ``read(n)`` returns exactly
    ``n`` bytes until the end, memory stays O(segment size + n), and
    :attr:`header`/:attr:`metadata` are known before the first read.

    Each ``read(n)`` seals segments straight into one staging buffer (pooled
    between records) and returns a single copy of it, so a read costs the
    encryption plus one copy whatever its size; plaintext given as bytes is
    encrypted in place, never copied. The buffers go back to the pool once the
    record is read to its end or the reader is closed.
    """

    def __init__(
        self,
        source: ByteSource,
        data_key: bytes,
        key_version: int,
        *,
        associated_data: bytes = b"",
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        plaintext_length: int | None = None,
    ) -> None:
        sealer = _Sealer(data_key, key_version, associated_data, segment_size)
        self.header = sealer.header
        self.length = None if plaintext_length is None else ciphertext_length(plaintext_length, segment_size)
        self._sealer = sealer
        self._plain: Iterator[tuple[memoryview, bool]] | None = _plaintext_segments(
            source, segment_size, plaintext_length
        )
        self._index = 0
        # Ciphertext made but not returned yet: the header, then the tail of a segment that
        # did not fit the last read. ``_carry_in_front`` says it sits at the stage's start.
        self._carry = memoryview(sealer.header_bytes)
        self._carry_in_front = False
        self._stage: bytearray | None = None
        self._view = _EMPTY  # all of _stage
        self._produced = 0
        self._error: BaseException | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata()

    @property
    def produced(self) -> int:
        """Ciphertext bytes returned by :meth:`read` so far (the stored size once drained)."""
        return self._produced

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if self._error is not None:
            # Never let a reader that failed look like one that ended: the record is incomplete.
            raise ValueError("this EncryptingReader failed earlier; the record is incomplete") from self._error
        try:
            return self._read(size)
        except BaseException as exc:
            self._error = exc
            self.close()
            raise

    def _read(self, size: int | None) -> bytes:
        if size is None or size < 0:
            return self._read_joined(None)
        want = size if self.length is None else min(size, self.length - self._produced)
        carry = self._carry
        if len(carry) >= want or self._plain is None:
            n = min(want, len(carry))
            self._carry = carry[n:]
            self._carry_in_front = self._carry_in_front and n == 0
            return self._returned(carry[:n].tobytes())
        # The most this read can seal: ``want`` plus the rest of a segment straddling its end.
        room = want + self._sealer.segment_size + TAG_SIZE
        if self.length is not None:
            room = min(room, self.length - self._produced)
        if room > _MAX_STAGE:
            return self._read_joined(want)
        pos = len(carry)
        # A stream of unknown length may end within a segment: stage one until it shows it goes on.
        first = room if self.length is not None else min(room, pos + self._sealer.segment_size + TAG_SIZE)
        view = self._stage_view(first, carry, self._carry_in_front)
        while pos < want and self._plain is not None:
            segment = self._next_segment()
            if segment is None:
                break
            plaintext, final = segment
            end = pos + len(plaintext) + TAG_SIZE
            if end > len(view):
                view = self._stage_view(room, view[:pos], True)
            self._sealer.seal_into(self._index, plaintext, final, view[pos:end])
            self._index += 1
            pos = end
        n = min(want, pos)
        self._carry = view[n:pos]
        self._carry_in_front = n == 0
        return self._returned(view[:n].tobytes())

    def _next_segment(self) -> tuple[memoryview, bool] | None:
        assert self._plain is not None
        segment = next(self._plain, None)
        if segment is None or segment[1]:
            # After the final segment, run the generator to its end (it returns its buffer).
            if segment is not None:
                next(self._plain, None)
            self._plain = None
        return segment

    def _stage_view(self, capacity: int, keep: memoryview, in_front: bool) -> memoryview:
        """The staging buffer, at least ``capacity`` bytes, starting with ``keep`` (bytes not returned yet)."""
        if self._stage is None or len(self._stage) < capacity:
            old = self._stage
            self._stage = _POOL.take(capacity)
            self._view = memoryview(self._stage)
            self._view[: len(keep)] = keep
            # From here on nothing may point into the old buffer: another stream may take it.
            self._carry, self._carry_in_front = self._view[: len(keep)], True
            if old is not None:
                _POOL.give(old)
        elif not in_front:
            self._view[: len(keep)] = keep  # may overlap; memoryview assignment copies like memmove
            self._carry, self._carry_in_front = self._view[: len(keep)], True
        return self._view

    def _read_joined(self, limit: int | None) -> bytes:
        """Read everything (``limit`` None) or a read too large to stage: fresh bytes per segment, joined."""
        pieces = [self._carry.tobytes()]
        got = len(pieces[0])
        while self._plain is not None and (limit is None or got < limit):
            segment = self._next_segment()
            if segment is None:
                break
            pieces.append(self._sealer.seal(self._index, *segment))
            self._index += 1
            got += len(pieces[-1])
        self._carry, self._carry_in_front = _EMPTY, False
        if limit is not None and got > limit:
            last = pieces.pop()
            keep = len(last) - (got - limit)
            pieces.append(last[:keep])
            self._carry = memoryview(last)[keep:]
        return self._returned(b"".join(pieces))

    def _returned(self, data: bytes) -> bytes:
        self._produced += len(data)
        if self._plain is None and not self._carry:
            self._release()
        return data

    def _release(self) -> None:
        self._carry, self._carry_in_front, self._view = _EMPTY, False, _EMPTY
        if self._stage is not None:
            _POOL.give(self._stage)
            self._stage = None

    def close(self) -> None:
        self._plain = None
        self._release()

    def __enter__(self) -> EncryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EncryptingReader(key_version={self.header.key_version}, produced={self._produced})"


def _lookup(keys: DataKeyLookup, version: int) -> bytes:
    if isinstance(keys, Mapping):
        try:
            return keys[version]
        except KeyError:
            raise UnknownKeyVersionError(f"no data key for version {version}") from None
    return keys(version)


def _open_header(
    header_bytes: bytes, keys: DataKeyLookup, associated_data: bytes, max_segment_size: int
) -> tuple[RecordHeader, AESGCM]:
    header = parse_header(header_bytes, max_segment_size=max_segment_size)
    try:
        data_key = _lookup(keys, header.key_version)
    except UnknownKeyVersionError as exc:
        # The header is not authenticated yet: a version the store never had
        # is as likely a flipped bit as a genuinely missing key.
        raise RecordIntegrityError(
            f"record names data-key version {header.key_version}, which the store does not have: "
            f"header tampered or key never provided ({exc})"
        ) from exc
    try:
        content_key = AESGCM(data_key).decrypt(
            header.wrap_nonce,
            header.wrapped_content_key,
            _wrap_aad(header_bytes[: _FIXED.size], associated_data),
        )
    except InvalidTag:
        raise RecordIntegrityError(
            f"content key failed to unwrap with data-key version {header.key_version}: wrong data key, "
            "record moved to another name or store, metadata altered, or header tampered"
        ) from None
    return header, AESGCM(content_key)


def _open_segment(
    aead: AESGCM, header: RecordHeader, header_bytes: bytes, index: int, ct: memoryview, final: bool
) -> bytes:
    try:
        return aead.decrypt(_nonce(header.nonce_prefix, index, final), ct, header_bytes)
    except InvalidTag:
        pass
    # Failure path only: see whether the segment is intact but in the wrong
    # place relative to the end, to say "truncated"/"appended" instead of a
    # generic failure. Either way the record is rejected.
    try:
        aead.decrypt(_nonce(header.nonce_prefix, index, not final), ct, header_bytes)
    except InvalidTag:
        raise RecordIntegrityError(f"segment {index} failed authentication: record tampered or corrupted") from None
    if final:
        raise RecordIntegrityError(
            f"record truncated: input ends after segment {index}, which is not the final segment"
        )
    raise RecordIntegrityError(f"data appended after the final segment (segment {index}): record tampered")


def decrypt_chunks(
    source: ByteSource,
    keys: DataKeyLookup,
    *,
    associated_data: bytes = b"",
    metadata: Mapping[str, str] | None = None,
    max_segment_size: int = MAX_SEGMENT_SIZE,
) -> Iterator[bytes]:
    """Yield the plaintext of a record one authenticated segment at a time.

    ``keys`` maps the header's data-key version to the data key. If
    ``metadata`` is given it is checked against the header. Raises
    :class:`RecordIntegrityError` on any tampering; plaintext already yielded
    before the error is an authentic prefix, not the record.
    """
    src = _ChunkSource(source)
    header_buf = bytearray(HEADER_SIZE)
    header_len = src.fill(memoryview(header_buf))
    header_bytes = bytes(header_buf[:header_len])
    header, aead = _open_header(header_bytes, keys, associated_data, max_segment_size)
    if metadata is not None:
        verify_metadata(header, metadata)
    for index, (ct, final) in enumerate(_segments(src, header.segment_size + TAG_SIZE)):
        if len(ct) < TAG_SIZE:
            if index == 0 and not ct:
                raise RecordIntegrityError("record truncated: no segment after the header")
            raise RecordIntegrityError(f"record truncated: segment {index} has {len(ct)} bytes, shorter than its tag")
        if index >= _MAX_SEGMENTS:
            raise RecordIntegrityError("record has more than 2^32 segments: corrupted")
        yield _open_segment(aead, header, header_bytes, index, ct, final)


def decrypt_stream(
    source: ByteSource,
    writer: SupportsWrite,
    keys: DataKeyLookup,
    *,
    associated_data: bytes = b"",
    metadata: Mapping[str, str] | None = None,
    max_segment_size: int = MAX_SEGMENT_SIZE,
) -> int:
    """Decrypt into ``writer``; returns plaintext bytes written. See :func:`decrypt_chunks` for the prefix caveat."""
    written = 0
    for chunk in decrypt_chunks(
        source, keys, associated_data=associated_data, metadata=metadata, max_segment_size=max_segment_size
    ):
        writer.write(chunk)
        written += len(chunk)
    return written


def decrypt_bytes(
    record: bytes,
    keys: DataKeyLookup,
    *,
    associated_data: bytes = b"",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Decrypt a whole record; returns only if every segment authenticated."""
    return b"".join(decrypt_chunks(record, keys, associated_data=associated_data, metadata=metadata))
