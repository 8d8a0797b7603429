"""ServiceRequests the workflow tests send (orders, referrals, consultations), in FHIR R4.

One copy, the scenario driver's (cli/medcloud_cli/demo/fhir.py); named here for the tests that import it.
"""

from __future__ import annotations

from medcloud_cli.demo.fhir import CATEGORY, SNOMED, recognition_task, service_request

__all__ = ["CATEGORY", "SNOMED", "recognition_task", "service_request"]
