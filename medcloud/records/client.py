"""RecordClient: client-side encrypted records in a RecordStore bucket on MinIO (or any S3).

Every object is a record in the format of :mod:`medcloud.records.envelope`,
encrypted before it leaves the process with the store's current data key;
MinIO only ever sees ciphertext. The associated data of each record binds
``(hospital, store, object name, content type)``, so a record copied to
another name or store, or whose content-type metadata was edited, fails to
decrypt with :class:`RecordIntegrityError` instead of being served as
another patient's document.

What stays in clear on the server: object names, sizes, timestamps and the
user metadata written here (format, data-key version, segment size, content
type). Names must therefore be opaque identifiers, never patient names.

Memory: ``put`` holds the part being sealed plus about one segment, and the SDK's
multipart buffers, about five parts (read, sliced, three uploading in parallel);
parts are 5 MiB when the length is known (larger only past 50 GB) and
``part_size`` (8 MiB) otherwise. ``get`` holds one segment of ciphertext (the body
is read straight into it) and one of plaintext. Measured against MinIO with 5 MiB
parts, for 64 and 256 MiB records alike: put 20-30 MiB, get 2 MiB (traced peak).

Throughput: an object that fits one part goes to MinIO as one ``bytes`` sealed in
place (bytes given as plaintext are not copied first), and a GET is read into a
pooled segment buffer without intermediate chunks, so next to the SDK's own work
a record costs AES-GCM and one copy on put, AES-GCM on get (``bench/bench_records.py``).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from minio import Minio

from medcloud.records.envelope import (
    DEFAULT_SEGMENT_SIZE,
    META_FORMAT,
    META_KEY_VERSION,
    META_SEGMENT_SIZE,
    ByteSource,
    EncryptingReader,
    RecordIntegrityError,
    SupportsWrite,
    decrypt_chunks,
    plaintext_length,
)
from medcloud.records.keys import KeyRing, length_prefixed

__all__ = [
    "META_CONTENT_TYPE",
    "InMemoryKeyProvider",
    "KeyProvider",
    "RecordClient",
    "RecordInfo",
    "record_context",
]

META_CONTENT_TYPE = "medcloud-content-type"
FHIR_CONTENT_TYPE = "application/fhir+json"
# What S3 is told about every object: it is ciphertext, whatever the record is.
STORED_CONTENT_TYPE = "application/vnd.medcloud.record"
_META_PREFIX = "x-amz-meta-"
_CONTEXT_LABEL = b"medcloud.io/record/v1"
# Multipart part size when the length is unknown: caps such an object at 10,000 parts (80 GiB)
# and bounds memory to about 5 parts (reader, SDK slicing, 3 parallel uploads).
_DEFAULT_PART_SIZE = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class KeyProvider(Protocol):
    """Source of a store's data keys: the operator's key service, or a local key ring in tests.

    ``data_key`` raises :class:`~medcloud.records.keys.UnknownKeyVersionError`
    for a version the store never had and
    :class:`~medcloud.records.keys.KeyShreddedError` once the store was shredded.
    """

    @property
    def hospital(self) -> str: ...

    @property
    def store(self) -> str: ...

    def current_version(self) -> int: ...

    def data_key(self, version: int) -> bytes: ...


class InMemoryKeyProvider:
    """A :class:`KeyProvider` over a :class:`KeyRing` held in this process (tests, CLI with a local key)."""

    def __init__(self, keyring: KeyRing) -> None:
        self._ring = keyring
        # Unwrapped data keys by version, like the key service client keeps them: a version's
        # key never changes (a KEK rotation re-wraps the same key). The ring holds the KEK
        # that unwraps them all in this process anyway; a shredded ring empties the cache.
        self._keys: dict[int, bytes] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, kek: bytes) -> InMemoryKeyProvider:
        return cls(KeyRing.from_dict(data, kek=kek))

    @property
    def keyring(self) -> KeyRing:
        return self._ring

    @property
    def hospital(self) -> str:
        return self._ring.hospital

    @property
    def store(self) -> str:
        return self._ring.store

    def current_version(self) -> int:
        return self._ring.current_version

    def data_key(self, version: int) -> bytes:
        key = self._keys.get(version)
        if key is None or self._ring.is_shredded:
            self._keys.clear()
            key = self._keys[version] = self._ring.data_key(version)
        return key

    def __repr__(self) -> str:
        return f"InMemoryKeyProvider({self._ring!r})"


def record_context(hospital: str, store: str, name: str, content_type: str) -> bytes:
    """Associated data binding a record to where it lives and what it claims to be."""
    return length_prefixed(_CONTEXT_LABEL, hospital.encode(), store.encode(), name.encode(), content_type.encode())


def _user_metadata(headers: Mapping[str, str] | None) -> dict[str, str]:
    """S3 user metadata as lower-case keys without the ``x-amz-meta-`` prefix."""
    out: dict[str, str] = {}
    for key, value in (headers or {}).items():
        lower = str(key).lower()
        if lower.startswith(_META_PREFIX):
            out[lower[len(_META_PREFIX) :]] = str(value)
    return out


# The user metadata a record carries; a GET reads just these from its response headers.
_RECORD_META_KEYS = (META_FORMAT, META_KEY_VERSION, META_SEGMENT_SIZE, META_CONTENT_TYPE)


def _record_metadata(headers: Any) -> dict[str, str]:
    """:func:`_user_metadata` of a response's headers, limited to :data:`_RECORD_META_KEYS`."""
    out: dict[str, str] = {}
    for key in _RECORD_META_KEYS:
        value = headers.get(_META_PREFIX + key)
        if value is not None:
            out[key] = str(value)
    return out


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _check_content_type(content_type: str) -> str:
    # It travels as an HTTP header: printable ASCII only, or the request is malformed or smuggles headers.
    if not content_type or not content_type.isascii() or not content_type.isprintable():
        raise ValueError(f"content type must be printable ASCII, got {content_type!r}")
    return content_type


@dataclass(frozen=True)
class RecordInfo:
    """What the store says about a record. ``None`` fields mean the object is not a MedCloud record."""

    name: str
    size: int | None
    stored_size: int | None
    key_version: int | None
    content_type: str | None
    last_modified: datetime | None = None
    version_id: str | None = None
    etag: str | None = None

    @property
    def is_record(self) -> bool:
        return self.key_version is not None

    @classmethod
    def from_object(cls, obj: Any, metadata: Mapping[str, str]) -> RecordInfo:
        stored = _int_or_none(None if obj.size is None else str(obj.size))
        key_version = _int_or_none(metadata.get(META_KEY_VERSION))
        segment = _int_or_none(metadata.get(META_SEGMENT_SIZE))
        size: int | None = None
        if stored is not None and segment is not None and key_version is not None:
            with contextlib.suppress(ValueError):
                size = plaintext_length(stored, segment)
        return cls(
            name=str(obj.object_name),
            size=size,
            stored_size=stored,
            key_version=key_version,
            content_type=metadata.get(META_CONTENT_TYPE),
            last_modified=obj.last_modified,
            version_id=obj.version_id,
            etag=obj.etag,
        )


class RecordClient:
    """Put/get/list/delete encrypted records in one RecordStore bucket.

    ``minio`` is a :class:`minio.Minio` client holding the store's own
    credentials; ``keys`` provides the store's data keys.
    """

    def __init__(
        self,
        minio: Minio,
        bucket: str,
        keys: KeyProvider,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        part_size: int = _DEFAULT_PART_SIZE,
        read_chunk: int = _READ_CHUNK,
    ) -> None:
        self._minio = minio
        self._bucket = bucket
        self._keys = keys
        self._segment_size = segment_size
        self._part_size = part_size
        self._read_chunk = read_chunk

    @classmethod
    def connect(
        cls,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        keys: KeyProvider,
        *,
        secure: bool = True,
        **options: int,
    ) -> RecordClient:
        return cls(
            Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure), bucket, keys, **options
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    def _context(self, name: str, content_type: str) -> bytes:
        return record_context(self._keys.hospital, self._keys.store, name, content_type)

    # -- writing -------------------------------------------------------------------

    def put(
        self,
        name: str,
        data: ByteSource,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> RecordInfo:
        """Encrypt ``data`` (bytes, a file-like object or an iterable of chunks) into record ``name``.

        Pass ``length`` when known (always known for bytes): the object is then
        uploaded with its exact size and a source that produces a different
        amount fails the upload instead of storing a short record.
        """
        _check_content_type(content_type)
        if isinstance(data, bytes | bytearray | memoryview):
            length = memoryview(data).nbytes
        version = self._keys.current_version()
        reader = EncryptingReader(
            data,
            self._keys.data_key(version),
            version,
            associated_data=self._context(name, content_type),
            segment_size=self._segment_size,
            plaintext_length=length,
        )
        # The SDK's annotation wants this exact dict type (dict is invariant).
        metadata: dict[str, str | list[str] | tuple[str]] = {**reader.metadata, META_CONTENT_TYPE: content_type}
        with reader:
            result = self._minio.put_object(
                self._bucket,
                name,
                # The SDK only calls read(n); EncryptingReader is not a full BinaryIO.
                cast(BinaryIO, reader),
                reader.length if reader.length is not None else -1,
                content_type=STORED_CONTENT_TYPE,
                metadata=metadata,
                part_size=0 if reader.length is not None else self._part_size,
            )
        return RecordInfo(
            name=name,
            size=plaintext_length(reader.produced, self._segment_size),
            stored_size=reader.produced,
            key_version=version,
            content_type=content_type,
            version_id=result.version_id,
            etag=result.etag,
        )

    def put_json(self, name: str, document: Any, *, content_type: str = "application/json") -> RecordInfo:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return self.put(name, body, content_type=content_type)

    def put_fhir(self, resource: Mapping[str, Any], name: str | None = None) -> RecordInfo:
        """Store a FHIR R4 resource as ``fhir/<resourceType>/<id>.json`` unless ``name`` is given."""
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            raise ValueError("a FHIR resource needs a resourceType")
        if name is None:
            resource_id = resource.get("id")
            if not isinstance(resource_id, str) or not resource_id:
                raise ValueError("a FHIR resource without an id needs an explicit record name")
            name = f"fhir/{resource_type}/{resource_id}.json"
        return self.put_json(name, resource, content_type=FHIR_CONTENT_TYPE)

    def put_file(
        self, name: str, path: str | os.PathLike[str], *, content_type: str = "application/octet-stream"
    ) -> RecordInfo:
        with open(path, "rb") as handle:
            return self.put(name, handle, length=os.fstat(handle.fileno()).st_size, content_type=content_type)

    # -- reading -------------------------------------------------------------------

    def _open(self, name: str, version_id: str | None) -> tuple[Any, RecordInfo, Iterator[bytes]]:
        response = self._minio.get_object(self._bucket, name, version_id=version_id)
        try:
            metadata = _record_metadata(response.headers)
            if META_KEY_VERSION not in metadata:
                raise RecordIntegrityError(f"object {name!r} has no record metadata: not written by the record client")
            content_type = metadata.get(META_CONTENT_TYPE, "")
            info = RecordInfo.from_object(_HeaderObject(name, response.headers), metadata)
            chunks = decrypt_chunks(
                _ResponseBody(response, self._read_chunk),
                self._keys.data_key,
                associated_data=self._context(name, content_type),
                metadata=metadata,
            )
        except BaseException:
            response.close()
            response.release_conn()
            raise
        return response, info, chunks

    def get(self, name: str, writer: SupportsWrite, *, version_id: str | None = None) -> RecordInfo:
        """Decrypt record ``name`` into ``writer`` one verified segment at a time.

        On :class:`RecordIntegrityError` the writer already holds an authentic
        prefix and must be discarded; :meth:`get_bytes` and :meth:`get_file`
        do that for you.
        """
        response, info, chunks = self._open(name, version_id)
        try:
            for chunk in chunks:
                writer.write(chunk)
        finally:
            response.close()
            response.release_conn()
        return info

    def get_bytes(self, name: str, *, version_id: str | None = None) -> bytes:
        out: list[bytes] = []
        self.get(name, _ListWriter(out), version_id=version_id)
        return b"".join(out)

    def get_json(self, name: str, *, version_id: str | None = None) -> Any:
        return json.loads(self.get_bytes(name, version_id=version_id))

    def get_file(self, name: str, path: str | os.PathLike[str], *, version_id: str | None = None) -> RecordInfo:
        """Decrypt into ``path`` atomically: the file appears only if the whole record authenticated."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                info = self.get(name, handle, version_id=version_id)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    # -- listing and deleting -----------------------------------------------------------

    def stat(self, name: str, *, version_id: str | None = None) -> RecordInfo:
        obj = self._minio.stat_object(self._bucket, name, version_id=version_id)
        return RecordInfo.from_object(obj, _user_metadata(obj.metadata))

    def list(self, prefix: str = "") -> Iterator[RecordInfo]:
        """Records under ``prefix`` (recursive) with plaintext size and data-key version.

        Uses MinIO's user-metadata listing extension; where a listing entry
        lacks the metadata (other S3 servers) it falls back to one HEAD per object.
        """
        for obj in self._minio.list_objects(
            self._bucket, prefix=prefix or None, recursive=True, include_user_meta=True
        ):
            metadata = _user_metadata(obj.metadata)
            if META_KEY_VERSION not in metadata:
                yield self.stat(str(obj.object_name))
            else:
                yield RecordInfo.from_object(obj, metadata)

    def delete(self, name: str, *, version_id: str | None = None) -> None:
        """Delete a record (on a versioned bucket: add a delete marker; object lock may refuse)."""
        self._minio.remove_object(self._bucket, name, version_id=version_id)

    def __repr__(self) -> str:
        return f"RecordClient(bucket={self._bucket!r}, keys={self._keys!r})"


@dataclass(frozen=True)
class _HeaderObject:
    """The fields :meth:`RecordInfo.from_object` reads, taken from a GET response's headers."""

    object_name: str
    headers: Mapping[str, str]

    @property
    def size(self) -> int | None:
        return _int_or_none(self.headers.get("content-length"))

    @property
    def last_modified(self) -> datetime | None:
        value = self.headers.get("last-modified")
        if not value:
            return None
        try:
            return email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None

    @property
    def version_id(self) -> str | None:
        return self.headers.get("x-amz-version-id")

    @property
    def etag(self) -> str | None:
        value = self.headers.get("etag")
        return value.strip('"') if value else None


class _ResponseBody:
    """A GET response body as a file-like object whose ``readinto`` fills the caller's buffer.

    The decryptor reads each segment into one reused buffer. ``urllib3``'s own
    ``readinto`` would read into a fresh ``bytes`` and copy it over; the
    ``http.client`` response underneath it reads from the socket straight into
    the buffer, which is what a body sent as stored (no ``Content-Encoding``)
    is read with. Otherwise reads go through ``urllib3`` (decoding, at most
    ``chunk`` bytes a call) and are copied. Either way the response is closed
    and its connection released by the caller, as before.
    """

    def __init__(self, response: Any, chunk: int) -> None:
        self._response = response
        self._chunk = max(1, chunk)
        encoding = str(response.headers.get("content-encoding") or "identity").strip().lower()
        self._raw = getattr(response, "_fp", None)
        direct = getattr(self._raw, "readinto", None)
        self._direct = direct if encoding == "identity" and callable(direct) else None

    def read(self, size: int = -1, /) -> bytes:
        return bytes(self._response.read(None if size < 0 else size))

    def readinto(self, buffer: memoryview) -> int:
        if self._direct is not None:
            count = int(self._direct(buffer))
            if count == 0 and buffer and getattr(self._raw, "isclosed", lambda: False)():
                # The whole body is read: hand the connection back to the pool for the next
                # request, as urllib3 does when its own reads reach the end.
                self._response.release_conn()
            return count
        data = self._response.read(min(len(buffer), self._chunk))
        buffer[: len(data)] = data
        return len(data)


class _ListWriter:
    def __init__(self, out: list[bytes]) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.append(data)
        return len(data)
