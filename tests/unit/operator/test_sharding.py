"""A shard's selector, judged locally exactly as the API server judges it (equality-based forms only)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medcloud_operator.settings import OperatorSettings
from medcloud_operator.sharding import SelectorError, matches, parse


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("medcloud.io/shard=east", {"medcloud.io/shard": "east"}, True),
        ("medcloud.io/shard==east", {"medcloud.io/shard": "west"}, False),
        ("medcloud.io/shard!=east", {}, True),
        ("medcloud.io/shard!=east", {"medcloud.io/shard": "east"}, False),
        ("medcloud.io/shard", {"medcloud.io/shard": ""}, True),
        ("!medcloud.io/shard", {"medcloud.io/shard": "east"}, False),
        ("tier=county, medcloud.io/shard=east", {"tier": "county", "medcloud.io/shard": "east"}, True),
        ("tier=county,medcloud.io/shard=east", {"medcloud.io/shard": "east"}, False),
        (None, None, True),
    ],
)
def test_a_selector_picks_the_objects_of_its_shard(
    selector: str | None, labels: dict[str, str] | None, expected: bool
) -> None:
    assert matches(selector, labels) is expected


@pytest.mark.parametrize("selector", ["tier in (county,city)", "a=b,,c=d", "!a=b", "=east", "a=b c"])
def test_anything_but_the_equality_based_forms_is_refused(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse(selector)


def test_the_operator_refuses_to_start_with_a_selector_it_cannot_judge() -> None:
    with pytest.raises(ValidationError, match="equality-based"):
        OperatorSettings(shard_selector="medcloud.io/shard in (east,west)")
    assert OperatorSettings(shard_selector="").shard_selector is None
