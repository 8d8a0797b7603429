"""Catalog apps with MedCloud's own code, run from MedCloud's image as ``medcloud app <name>`` (docs/catalog.md).

``emr_sharing.py`` is the hospital-side connector of the exchange. The five workflow apps are the
same connector shape (``connector.py``: the exchange called as the app's service account, the
caller's practitioner and purpose of use forwarded) behind a FHIR facade for the hospital's own
systems (``facade.py``) that serves only that app's resources, plus the app's own hospital-side job
where it has one (referrals: inbox polling and notification; appointments: slot publishing from the
hospital's schedule). The rules stay in the exchange: an app relays the exchange's answer,
OperationOutcome included, and decides nothing itself.
"""
