"""FHIR resources the workflow tests send, each built from a public example (tests/data/workflows/SOURCES.md).

One copy, the scenario driver's (cli/medcloud_cli/demo/fhir.py); named here for the tests that import it.
"""

from __future__ import annotations

from medcloud_cli.demo.fhir import INSURANCE_CARD, RESIDENT_ID, appointment, cbc_report, coverage, example, slot

__all__ = ["INSURANCE_CARD", "RESIDENT_ID", "appointment", "cbc_report", "coverage", "example", "slot"]
