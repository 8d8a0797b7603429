"""Encrypted records against raw objects on a real MinIO: put and get throughput, and their ratio.

Prints figures only; never passes or fails. Run: ``.venv/bin/python bench/bench_records.py``.

It starts its own MinIO (a LocalCluster without Kubernetes or broker) on
loopback, makes one bucket with object lock like a RecordStore's, and for
4 KiB, 1 MiB and 64 MiB objects measures:

- raw put: ``Minio.put_object`` of the bytes (known length, the SDK's own part size);
- encrypted put: ``RecordClient.put`` of the same bytes (segmented AES-256-GCM,
  fresh content key per object; same client, so same part size and connection pool);
- raw get: ``get_object`` streamed in 1 MiB chunks, the SDK's usual way to read;
- encrypted get: ``RecordClient.get`` into a sink (every segment authenticated before it is released);
- raw get*: ``get_object`` read the way ``RecordClient.get`` reads (straight into one
  reused buffer), without decrypting: the stricter baseline, what the reads alone cost;
- floor get: the encrypted object read like raw get*, plus only its AES-GCM work
  (unwrap the content key, open each segment): what any reader of this format pays
  at least, so its ratio to raw get* is the ceiling of ``enc get``'s.

Every operation runs on the same Minio client and bucket. The operations
alternate, in a rotating order, so that drift of the machine affects all
alike. Each round measures every size; a round's figure per cell is the
median over its repetitions, the ratio is encrypted/raw per round, and the
table shows the median over rounds with the range of the ratio across rounds.
The goal is at least 0.9 for 1 MiB and larger; at 1 MiB the floor itself is
about that on the 2-vCPU development VM (docs/record-encryption.md). Data keys
come from an in-process key ring: fetching them from the key service happens
once per process and version, not per object.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from minio import Minio

from medcloud.records import envelope
from medcloud.records.client import META_CONTENT_TYPE, InMemoryKeyProvider, RecordClient, _ResponseBody, record_context
from medcloud.records.envelope import HEADER_SIZE, MAX_SEGMENT_SIZE, TAG_SIZE
from medcloud.records.keys import KeyRing, generate_kek
from medcloud_cli.localcluster.cluster import ClusterOptions, LocalCluster

KIB = 1024
MIB = 1024 * KIB
# (label, size, repetitions per round): fewer for the large objects, enough for a stable median.
SIZES = [("4 KiB", 4 * KIB, 200), ("1 MiB", MIB, 40), ("64 MiB", 64 * MIB, 3)]
OPS = ("raw put", "enc put", "raw get", "enc get", "raw get*", "floor get")
GETS: tuple[str, ...] = ("raw get", "enc get", "raw get*", "floor get")


class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _raw_get(minio: Minio, bucket: str, name: str) -> None:
    response = minio.get_object(bucket, name)
    try:
        for _ in response.stream(MIB):
            pass
    finally:
        response.close()
        response.release_conn()


def _raw_get_into(minio: Minio, bucket: str, name: str, buffer: memoryview) -> None:
    response = minio.get_object(bucket, name)
    try:
        body = _ResponseBody(response, MIB)
        while body.readinto(buffer):
            pass
    finally:
        response.close()
        response.release_conn()


def _fill(body: _ResponseBody, view: memoryview) -> memoryview:
    got = 0
    while got < len(view):
        count = body.readinto(view[got:])
        if not count:
            raise EOFError("object shorter than its content length")
        got += count
    return view


def _floor_get(minio: Minio, bucket: str, name: str, buffer: memoryview, keys: InMemoryKeyProvider) -> None:
    response = minio.get_object(bucket, name)
    try:
        headers = response.headers
        context = record_context(keys.hospital, keys.store, name, headers["x-amz-meta-" + META_CONTENT_TYPE])
        body = _ResponseBody(response, MIB)
        left = int(headers["content-length"]) - HEADER_SIZE
        header = bytes(_fill(body, buffer[:HEADER_SIZE]))
        parsed, aead = envelope._open_header(header, keys.data_key, context, MAX_SEGMENT_SIZE)
        index = 0
        while left:
            ciphertext = _fill(body, buffer[: min(left, parsed.segment_size + TAG_SIZE)])
            left -= len(ciphertext)
            envelope._open_segment(aead, parsed, header, index, ciphertext, left == 0)
            index += 1
        body.readinto(buffer[:1])  # the end of the body: the connection goes back to the pool
    finally:
        response.close()
        response.release_conn()


def measure(
    minio: Minio, records: RecordClient, keys: InMemoryKeyProvider, bucket: str, size: int, reps: int
) -> dict[str, float]:
    """Median MiB/s of each operation for objects of ``size`` bytes."""
    data = os.urandom(size)
    buffer = memoryview(bytearray(MIB + 64))
    prefix = uuid.uuid4().hex[:8]
    times: dict[str, list[float]] = {op: [] for op in OPS}
    raw_name, enc_name = f"{prefix}/raw", f"{prefix}/enc"
    runs: dict[str, Callable[[], object]] = {
        "raw put": lambda: minio.put_object(bucket, raw_name, io.BytesIO(data), size),
        "enc put": lambda: records.put(enc_name, data),
        "raw get": lambda: _raw_get(minio, bucket, raw_name),
        "enc get": lambda: records.get(enc_name, _Sink()),
        "raw get*": lambda: _raw_get_into(minio, bucket, raw_name, buffer),
        "floor get": lambda: _floor_get(minio, bucket, enc_name, buffer, keys),
    }
    # Warm-up: connections, first-touch page faults, lazy imports, pooled buffers.
    for op in OPS:
        runs[op]()
    for i in range(reps):
        raw_name, enc_name = f"{prefix}/raw-{i}", f"{prefix}/enc-{i}"
        # Puts first (the gets read these objects), each pair in alternating order.
        puts = ("raw put", "enc put") if i % 2 == 0 else ("enc put", "raw put")
        gets = GETS[i % len(GETS) :] + GETS[: i % len(GETS)]
        for op in puts + gets:
            times[op].append(_seconds(runs[op]))
    return {op: size / MIB / statistics.median(samples) for op, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all sizes (the table shows their median)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the repetitions (e.g. 0.2 for a quick look)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medcloud-bench-") as state:
        servers = LocalCluster(Path(state), ClusterOptions(with_kubernetes=False, with_broker=False))
        info = servers.start().minio
        assert info is not None
        try:
            minio = Minio(info.endpoint, info.access_key, info.secret_key, secure=False)
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            minio.make_bucket(bucket, object_lock=True)
            ring = KeyRing.create(hospital="bench-hospital", store="bench", kek=generate_kek())
            keys = InMemoryKeyProvider(ring)
            records = RecordClient(minio, bucket, keys)

            load = os.getloadavg()[0]
            rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in SIZES}
            for _ in range(max(1, args.rounds)):
                for label, size, reps in SIZES:
                    rounds[label].append(measure(minio, records, keys, bucket, size, max(3, int(reps * args.scale))))

            print(f"MinIO {info.endpoint} (single node, loopback), bucket {bucket} with object lock")
            print(
                f"{len(next(iter(rounds.values())))} rounds, median per round, median of rounds; "
                f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
            )
            print(f"{'size':>7} {'op':>5} {'raw MiB/s':>10} {'enc MiB/s':>10} {'enc/raw':>8}  ratio range")
            for label, _, _ in SIZES:
                per_round = rounds[label]
                for op, raw_op, enc_op in (
                    ("put", "raw put", "enc put"),
                    ("get", "raw get", "enc get"),
                    ("get*", "raw get*", "enc get"),
                    ("floor", "raw get*", "floor get"),
                ):
                    raw = statistics.median(r[raw_op] for r in per_round)
                    enc = statistics.median(r[enc_op] for r in per_round)
                    ratios = [r[enc_op] / r[raw_op] for r in per_round]
                    print(
                        f"{label:>7} {op:>5} {raw:10.1f} {enc:10.1f} {statistics.median(ratios):8.2f}"
                        f"  {min(ratios):.2f}-{max(ratios):.2f}"
                    )
            print("get*: raw read straight into a reused buffer, as the record client reads (no decryption).")
            print("floor: that read of the record plus its AES-GCM alone, against get*: the ceiling of get*.")
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
