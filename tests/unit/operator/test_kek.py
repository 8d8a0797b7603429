"""The tenant KEK's Secret layout (no cluster)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from medcloud.kube.client import SECRET, Kind, Manifest
from medcloud.tenancy import kek
from medcloud_operator.kek import KekMissingError, KekState, ensure_kek


def test_generated_keys_are_256_bits_and_distinct() -> None:
    a, b = kek.generate(), kek.generate()
    assert len(a.material) == 32
    assert a.material != b.material
    assert a.version == 1


def test_key_material_never_appears_in_repr() -> None:
    key = kek.generate()
    assert key.material.hex() not in repr(key)
    assert str(list(key.material)) not in repr(key)
    assert "material" not in repr(key)


def test_secret_round_trips_the_current_version() -> None:
    key = kek.generate()
    secret = kek.build_secret("riverton", "medcloud-system", key)
    assert secret["metadata"]["name"] == "kek-riverton"
    assert secret["metadata"]["namespace"] == "medcloud-system"
    assert secret["type"] == "medcloud.io/kek"
    assert secret["metadata"]["labels"]["medcloud.io/hospital"] == "riverton"
    assert kek.parse_secret(secret) == key


def test_a_secret_without_its_current_version_is_invalid_and_the_error_holds_no_key() -> None:
    key = kek.generate()
    secret = kek.build_secret("riverton", "medcloud-system", key)
    secret["data"]["current-version"] = base64.b64encode(b"2").decode()
    with pytest.raises(kek.KekInvalidError) as excinfo:
        kek.parse_secret(secret)
    assert secret["data"]["v1"] not in str(excinfo.value)


def test_a_short_key_is_invalid() -> None:
    secret = kek.build_secret("riverton", "medcloud-system", kek.generate())
    secret["data"]["v1"] = base64.b64encode(b"too short").decode()
    with pytest.raises(kek.KekInvalidError, match="256 bits"):
        kek.parse_secret(secret)


def test_every_version_parses_and_a_missing_one_says_so_without_the_key() -> None:
    key = kek.generate()
    secret = kek.build_secret("riverton", "medcloud-system", key)
    assert kek.versions(secret) == (1,)
    assert kek.parse_version(secret, 1) == key
    with pytest.raises(kek.KekVersionMissingError, match="version 2") as excinfo:
        kek.parse_version(secret, 2)
    assert secret["data"]["v1"] not in str(excinfo.value)


class FakeKube:
    """Secrets in a dict; records every write (the Kube methods kek uses, nothing more)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.writes: list[str] = []
        self.version = 0

    def _stamp(self, obj: Manifest) -> Manifest:
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(stored["metadata"]["namespace"], stored["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Manifest | None:
        assert kind is SECRET
        assert namespace is not None
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def create(self, obj: Manifest) -> Manifest:
        self.writes.append("create")
        return self._stamp(obj)

    def replace(self, obj: Manifest) -> Manifest:
        self.writes.append("replace")
        live = self.objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])]
        assert obj["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"], "a blind overwrite"
        return self._stamp(obj)

    def merge_patch(self, kind: Kind, name: str, patch: dict[str, Any], namespace: str | None = None) -> Manifest:
        self.writes.append("patch")
        assert namespace is not None
        live = self.objects[(namespace, name)]
        live["metadata"]["labels"] = {**live["metadata"].get("labels", {}), **patch["metadata"]["labels"]}
        return self._stamp(live)


def _ensure(kube: FakeKube, issued: int | None, rotate_now: int, observed: int = 0) -> KekState:
    return ensure_kek(
        kube,
        "riverton",
        "medcloud-system",
        issued,
        rotate_now=rotate_now,
        observed_rotate_now=observed,
    )


def test_rotation_adds_a_version_keeps_the_old_ones_and_happens_once_per_request() -> None:
    kube = FakeKube()
    first = _ensure(kube, None, rotate_now=0)
    assert (first.created, first.current.version, first.versions, first.observed_rotate_now) == (True, 1, (1,), 0)
    assert _ensure(kube, 1, rotate_now=0) == KekState(first.current, (1,), 0)
    assert kube.writes == ["create"], "nothing to do writes nothing"

    rotated = _ensure(kube, 1, rotate_now=1)
    assert (rotated.current.version, rotated.versions, rotated.rotated_from) == (2, (1, 2), 1)
    assert rotated.current.material != first.current.material
    # The same request seen again (a retry, a resync, a lost status write) does not rotate again.
    again = _ensure(kube, 2, rotate_now=1)
    assert (again.current, again.rotated_from, again.observed_rotate_now) == (rotated.current, None, 1)
    assert kube.writes == ["create", "replace"]

    secret = kube.objects[("medcloud-system", "kek-riverton")]
    assert kek.parse_secret(secret) == rotated.current
    assert kek.parse_version(secret, 1) == first.current, "the old version is kept, byte for byte"
    assert secret["metadata"]["annotations"][kek.OBSERVED_ROTATE_NOW] == "1"

    third = _ensure(kube, 2, rotate_now=2)
    assert (third.current.version, third.versions) == (3, (1, 2, 3))


def test_a_first_key_adopts_the_requested_counter_and_an_old_secret_falls_back_to_status() -> None:
    kube = FakeKube()
    first = _ensure(kube, None, rotate_now=4)
    assert (first.current.version, first.observed_rotate_now) == (1, 4)
    assert _ensure(kube, 1, rotate_now=4).rotated_from is None

    # A Secret written before the annotation existed: status says what was answered.
    del kube.objects[("medcloud-system", "kek-riverton")]["metadata"]["annotations"]
    assert _ensure(kube, 1, rotate_now=4, observed=4).rotated_from is None
    assert _ensure(kube, 1, rotate_now=5, observed=4).rotated_from == 1


def test_a_lost_kek_is_reported_and_not_rotated_into_existence() -> None:
    with pytest.raises(KekMissingError):
        _ensure(FakeKube(), 3, rotate_now=1)


def test_load_kek_reads_the_current_or_a_named_version() -> None:
    kube = FakeKube()
    first = _ensure(kube, None, rotate_now=0).current
    second = _ensure(kube, 1, rotate_now=1).current
    load = kek.load_kek
    assert load(kube, "riverton", "medcloud-system") == second
    assert load(kube, "riverton", "medcloud-system", 1) == first
    with pytest.raises(kek.KekVersionMissingError):
        load(kube, "riverton", "medcloud-system", 3)
    with pytest.raises(kek.KekVersionMissingError, match="does not exist"):
        load(kube, "lakeside", "medcloud-system")
