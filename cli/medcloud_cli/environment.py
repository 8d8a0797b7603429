"""The environment variables `medcloud dev up` prints and the commands read: each name spelled once, here.

`eval "$(medcloud dev up)"` (or copying its ``export`` lines) is all a new
user needs for `medcloud onboard` and `medcloud records` to find the local
cluster's control API and key service.
"""

from __future__ import annotations

KUBECONFIG = "KUBECONFIG"
DEV_DIR = "MEDCLOUD_DEV_DIR"
"""The local cluster's state directory (`medcloud dev`); default ``$XDG_STATE_HOME/medcloud/dev``."""
API_URL = "MEDCLOUD_API_URL"
"""The control API's URL (`medcloud onboard`)."""
API_TOKEN = "MEDCLOUD_TOKEN"  # noqa: S105 - the name of a variable, not a token
"""A bearer token for the control API (`medcloud onboard`)."""
KEY_SERVICE_URL = "MEDCLOUD_KEY_SERVICE_URL"
"""The key service's URL (`medcloud records`; the stores' Secrets name the same URL)."""
KEY_SERVICE_TOKEN = "MEDCLOUD_KEY_SERVICE_TOKEN"  # noqa: S105 - the name of a variable, not a token
"""A bearer token for the key service's audience (`medcloud records`)."""
EXCHANGE_URL = "MEDCLOUD_EXCHANGE_URL"
"""The example consortium's exchange (FHIR R4 base: ``$MEDCLOUD_EXCHANGE_URL/fhir``; docs/exchange.md)."""
MQTT_URL = "MEDCLOUD_MQTT"
"""The local MQTT broker, for a device simulator (no command reads it)."""
MINIO_ENDPOINT = "MEDCLOUD_MINIO_ENDPOINT"
MINIO_ACCESS_KEY = "MEDCLOUD_MINIO_ACCESS_KEY"
MINIO_SECRET_KEY = "MEDCLOUD_MINIO_SECRET_KEY"  # noqa: S105 - the name of a variable, not a key
"""MinIO's endpoint and root credentials, as the operator's settings read them (to run it by hand)."""
