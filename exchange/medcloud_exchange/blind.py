"""The patient blind index: a keyed hash of an identifier, so the index finds a patient without holding the number.

HMAC-SHA-256 under the consortium key of ``system|value``. Without the key the
stored digests cannot be tested against guessed identity card numbers (a plain
hash could: the space of such numbers is small). Systems and values are
trimmed, never case-folded: identifier values are case-sensitive in FHIR.
"""

from __future__ import annotations

import hashlib
import hmac

_LABEL = b"medcloud.io/exchange/patient-identifier/v1\x00"


def blind_index(key: bytes, system: str, value: str) -> bytes:
    """The 32-byte digest stored for identifier ``system|value``."""
    if len(key) != 32:
        raise ValueError("the blind index key must be 32 bytes")
    system, value = system.strip(), value.strip()
    if not system or not value:
        raise ValueError("an identifier needs a system and a value")
    return hmac.new(key, _LABEL + system.encode() + b"|" + value.encode(), hashlib.sha256).digest()
