"""Throughput of the pure record crypto (no storage): encrypt and decrypt, MiB/s.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_envelope.py``.

Two views per size: the streaming path (``encrypt_chunks``/``decrypt_chunks`` over a
file-like source, output consumed chunk by chunk, as the record client uses it) and the
in-memory convenience functions (``encrypt_bytes``/``decrypt_bytes``, which also build the
whole output). Raw single-shot AES-256-GCM over the same bytes is the ceiling.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medcloud.records.envelope import (
    DEFAULT_SEGMENT_SIZE,
    decrypt_bytes,
    decrypt_chunks,
    encrypt_bytes,
    encrypt_chunks,
)
from medcloud.records.keys import generate_data_key

KIB = 1024
MIB = 1024 * KIB
SIZES = [("4 KiB", 4 * KIB), ("1 MiB", MIB), ("64 MiB", 64 * MIB)]


def _best_rate(size: int, run: Callable[[], object], budget: float) -> float:
    """Best MiB/s over repetitions filling about ``budget`` seconds (best-of filters scheduler noise)."""
    run()  # warm-up: first-touch page faults, lazy imports
    best = float("inf")
    spent = 0.0
    reps = 0
    while spent < budget or reps < 3:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        reps += 1
    return size / MIB / best


def _drain(chunks: Iterable[bytes]) -> None:
    for _ in chunks:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds spent per measurement")
    parser.add_argument("--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE)
    args = parser.parse_args()

    key = generate_data_key()
    keys = {1: key}
    ad = b"bench/hospital/store/object"
    seg = args.segment_size
    print(f"segment size {seg // KIB} KiB, best of >= {args.budget:.1f}s per figure, MiB/s")
    header = (
        f"{'size':>7} | {'enc stream':>10} {'dec stream':>10} | {'enc bytes':>10} {'dec bytes':>10} | {'raw gcm':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, size in SIZES:
        plaintext = os.urandom(size)
        record = encrypt_bytes(plaintext, key, 1, associated_data=ad, segment_size=seg)
        assert decrypt_bytes(record, keys, associated_data=ad) == plaintext

        def enc_stream(p: bytes = plaintext) -> None:
            _drain(encrypt_chunks(io.BytesIO(p), key, 1, associated_data=ad, segment_size=seg))

        def dec_stream(r: bytes = record) -> None:
            _drain(decrypt_chunks(io.BytesIO(r), keys, associated_data=ad))

        def enc_bytes(p: bytes = plaintext) -> None:
            encrypt_bytes(p, key, 1, associated_data=ad, segment_size=seg)

        def dec_bytes(r: bytes = record) -> None:
            decrypt_bytes(r, keys, associated_data=ad)

        aead = AESGCM(key)
        nonce = os.urandom(12)

        def raw(p: bytes = plaintext, aead: AESGCM = aead, nonce: bytes = nonce) -> None:
            aead.encrypt(nonce, p, None)

        rates = [_best_rate(size, fn, args.budget) for fn in (enc_stream, dec_stream, enc_bytes, dec_bytes, raw)]
        print(
            f"{label:>7} | {rates[0]:>10.0f} {rates[1]:>10.0f} | {rates[2]:>10.0f} {rates[3]:>10.0f} | {rates[4]:>8.0f}"
        )


if __name__ == "__main__":
    main()
