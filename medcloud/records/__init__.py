"""Client-side encryption of medical records: key hierarchy, record envelope, MinIO record client.

See ``docs/record-encryption.md`` for the format, the key hierarchy and rotation semantics.
The MinIO client lives in :mod:`medcloud.records.client` and is not imported here, so the pure
crypto core can be used without the S3 SDK.
"""

from medcloud.records.envelope import (
    DEFAULT_SEGMENT_SIZE,
    EncryptingReader,
    RecordFormatError,
    RecordHeader,
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
)
from medcloud.records.keys import (
    KeyContext,
    KeyRing,
    KeyShreddedError,
    KeyUnavailableError,
    KeyUnwrapError,
    RecordCryptoError,
    UnknownKeyVersionError,
    generate_data_key,
    generate_kek,
    unwrap_data_key,
    wrap_data_key,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "EncryptingReader",
    "KeyContext",
    "KeyRing",
    "KeyShreddedError",
    "KeyUnavailableError",
    "KeyUnwrapError",
    "RecordCryptoError",
    "RecordFormatError",
    "RecordHeader",
    "RecordIntegrityError",
    "UnknownKeyVersionError",
    "ciphertext_length",
    "decrypt_bytes",
    "decrypt_chunks",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_chunks",
    "encrypt_stream",
    "generate_data_key",
    "generate_kek",
    "parse_header",
    "plaintext_length",
    "unwrap_data_key",
    "wrap_data_key",
]
