"""The tenancy contract: what the operator creates and every other MedCloud program finds by name.

- :mod:`medcloud.tenancy.labels`: the labels and field manager on everything the operator writes;
- :mod:`medcloud.tenancy.store`: a RecordStore's derived names (bucket, user, policy, Secrets);
- :mod:`medcloud.tenancy.credentials`: the store's endpoint and its credentials Secret (COSI and OBC keys);
- :mod:`medcloud.tenancy.kek`: the hospital KEK Secret's format, and reading it;
- :mod:`medcloud.tenancy.keyring`: a store's key-ring Secret's format, and reading it;
- :mod:`medcloud.tenancy.gateway`: the environment the operator gives a device gateway's pod;
- :mod:`medcloud.tenancy.devicecrl`: the device CRL of a hospital's tenant CA: its format, building and reading it;
- :mod:`medcloud.tenancy.institutions`: which Hospital holds an institution code;
- :mod:`medcloud.tenancy.onboarding`: the children an unfinished onboarding asked for (a Hospital annotation).

Writing these objects is the operator's job; the key service, the device
gateway and the record CLI only read them.
"""
