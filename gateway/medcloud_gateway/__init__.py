"""The device gateway: readings from bedside and home devices, as encrypted FHIR R4 Observations in a RecordStore.

Pure parts (:mod:`readings`, :mod:`normalize`, :mod:`hl7v2`) decide; :mod:`ingest`
writes; :mod:`mqtt`, :mod:`mllp` and :mod:`http` are the transports; :mod:`service`
runs them together with the settings of :mod:`settings`. See ``docs/gateway.md``.
"""
