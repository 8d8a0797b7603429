"""The key service: hands a RecordStore's data keys to callers the cluster authorises, and audits every one.

The pattern of KMS and Vault transit: data keys are stored wrapped (by the
hospital's KEK, in the operator's namespace) and only this service unwraps
them, for a caller whose bearer token the cluster accepts (TokenReview) and
whom RBAC allows ``get`` on ``recordstores/keys`` for that store
(SubjectAccessReview). Why this design, and what it does and does not
protect against: ``docs/threat-model.md``.

- :func:`medcloud_keyservice.app.create_app` builds the FastAPI app;
- :class:`medcloud.records.keyclient.HttpKeyProvider` is the record client's
  :class:`~medcloud.records.client.KeyProvider` that calls it;
- ``medcloud keyservice`` (or ``python -m medcloud_keyservice``) serves it.
"""
