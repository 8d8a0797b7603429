"""The consortium exchange: a FHIR R4 server (IHE MHD) through which members share records under consent.

See ``docs/exchange.md``. One exchange serves one Consortium; its index lives in
PostgreSQL, the payloads in each publisher's RecordStore, its AuditEvents in an
object-locked bucket.
"""

FIELD_MANAGER = "medcloud-exchange"
