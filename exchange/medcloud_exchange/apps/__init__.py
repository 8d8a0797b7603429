"""The catalog apps that are MedCloud's own code: each a hospital-side process in the hospital's namespace.

Every app is the same connector (``connector.py``: the exchange called as the hospital's service
account, the caller's practitioner and purpose of use forwarded) behind a FHIR facade for the
hospital's own systems (``facade.py``) that serves only that app's resources, plus the app's own
hospital-side job where it has one (referrals: inbox polling and notification; appointments: slot
publishing from the hospital's schedule). The rules stay in the exchange: an app forwards and
relays the exchange's answer, OperationOutcome included, and decides nothing itself.
"""
