"""Many FHIR resources to one record: the NDJSON layout, its stable name, and reading it back (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from medcloud.records.batches import Batch, batch_name, decode_batch, encode_batch, select_resource


def observation(n: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"obs-{n}", "status": "final", "valueQuantity": {"value": n + 0.5}}


def test_a_batch_is_ndjson_in_order_named_after_its_ids() -> None:
    resources = [observation(n) for n in range(5)]
    batch = Batch(resources)
    assert decode_batch(batch.body) == resources
    assert batch.body.count(b"\n") == 5
    assert batch.name == batch_name("Observation", [f"obs-{n}" for n in range(5)])
    assert batch.name.startswith("fhir/Observation/")
    assert batch.name.endswith(".ndjson")
    assert "obs-" not in batch.name  # opaque: nothing of the resources shows in the name


def test_the_same_batch_has_the_same_name_and_another_order_another() -> None:
    resources = [observation(n) for n in range(3)]
    assert Batch(resources).name == Batch([dict(r) for r in resources]).name
    assert Batch(resources).name != Batch(resources[::-1]).name


def test_a_resource_sent_twice_in_a_batch_is_one_line() -> None:
    batch = Batch([observation(1), observation(2), observation(1)])
    assert batch.ids == ["obs-1", "obs-2"]
    assert [r["id"] for r in decode_batch(batch.body)] == ["obs-1", "obs-2"]


def test_a_batch_holds_one_type_and_at_least_one_resource() -> None:
    with pytest.raises(ValueError, match="one type"):
        Batch([observation(1), {"resourceType": "Patient", "id": "p"}])
    with pytest.raises(ValueError, match="at least one"):
        Batch([])


def test_one_resource_is_selected_by_id() -> None:
    body = encode_batch(observation(n) for n in range(3))
    assert select_resource(body, "obs-2") == observation(2)
    with pytest.raises(KeyError):
        select_resource(body, "obs-9")
