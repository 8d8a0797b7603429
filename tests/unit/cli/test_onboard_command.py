"""`medcloud onboard`: reading the file, and parsing the progress stream (no cluster)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from medcloud_api.plan import reference_errors, resolve
from medcloud_api.schemas import HospitalCreate
from medcloud_cli.commands.onboard import (
    OnboardFileError,
    ProgressView,
    iter_sse,
    request_from_documents,
    show_progress,
    verdict,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_example_manifests_become_a_valid_request() -> None:
    body = request_from_documents(yaml.safe_load_all((EXAMPLES / "hospital-township-maple.yaml").read_text()))

    assert body["name"] == "township-maple"
    assert [s["name"] for s in body["recordStores"]] == ["emr"]
    assert [g["name"] for g in body["deviceGateways"]] == ["clinic"]
    assert [a["name"] for a in body["apps"]] == ["appointments", "referrals", "insurance-card"]
    resolved = resolve(HospitalCreate.model_validate(body))
    assert reference_errors(resolved) == []


def test_a_hospital_alone_asks_for_the_tier_profile() -> None:
    hospital = {"apiVersion": "medcloud.io/v1alpha1", "kind": "Hospital", "metadata": {"name": "m"}, "spec": {"a": 1}}
    assert request_from_documents([hospital]) == {"name": "m", "spec": {"a": 1}}


def test_a_request_body_passes_through() -> None:
    assert request_from_documents([{"name": "m", "spec": {}}]) == {"name": "m", "spec": {}}


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([], "empty"),
        ([{"kind": "RecordStore", "metadata": {"name": "emr"}}], "exactly one Hospital"),
        (
            [
                {"kind": "Hospital", "metadata": {"name": "m"}},
                {"kind": "RecordStore", "metadata": {"name": "emr", "namespace": "hospital-other"}},
            ],
            "not hospital-m",
        ),
        (
            [{"kind": "Hospital", "metadata": {"name": "m"}}, {"kind": "Consortium", "metadata": {"name": "c"}}],
            "Consortium",
        ),
    ],
)
def test_files_that_are_not_one_hospital_are_refused(docs: list[dict[str, object]], message: str) -> None:
    with pytest.raises(OnboardFileError, match=message):
        request_from_documents(docs)


def test_server_sent_events_are_parsed_with_comments_and_multi_line_data() -> None:
    stream = [
        ": keep-alive",
        "",
        "id: 1",
        "event: layer",
        'data: {"kind":"RecordStore","name":"emr","state":"Ready","layer":"stores"}',
        "",
        "event: note",
        "data: one",
        "data: two",
        "",
        "data: trailing without blank line",
    ]
    events = list(iter_sse(stream))

    assert [(e.event, e.id) for e in events] == [("layer", "1"), ("note", "1"), ("message", "1")]
    assert events[0].json()["state"] == "Ready"
    assert events[1].data == "one\ntwo"

    view = ProgressView("maple")
    view.update(events[0])
    assert view.rows[("RecordStore", "emr")]["state"] == "Ready"


def test_the_last_line_is_the_verdict_once_and_ends_with_a_newline() -> None:
    """As a pipe or CI log shows it (stderr and stdout in one stream): no `...readyvillage-oak: Ready ...`."""
    stream = [
        "event: layer",
        'data: {"layer":"tenancy","kind":"Hospital","name":"village-oak","state":"Ready","message":"ok"}',
        "",
        "event: readiness",
        'data: {"state":"Provisioning","summary":"5 of 6 components are ready"}',
        "",
        "event: readiness",
        'data: {"state":"Ready","summary":"all 6 components are ready"}',
        "",
        "event: done",
        'data: {"result":"Ready","detail":"all 6 components are ready"}',
        "",
    ]
    merged = io.StringIO()
    stderr, stdout = Console(file=merged, width=160), Console(file=merged, width=160)

    result, detail = show_progress("village-oak", iter_sse(stream), stderr)
    stdout.print(verdict("village-oak", result, detail))

    text = merged.getvalue()
    assert (result, detail) == ("Ready", "all 6 components are ready")
    assert text.endswith("\n")
    assert text.count("all 6 components are ready") == 1, text
    assert text.splitlines()[-1] == "village-oak: Ready all 6 components are ready"
    assert "Onboarding village-oak" in text, "the table of components is still shown"
