"""The operator's handlers, registered once the settings are read: :func:`build_registry`.

`medcloud operator` (``medcloud_operator.command``) reads the settings once,
builds the registry with them and runs Kopf on it. Importing this module
registers nothing and reads no environment: Kopf takes a timer's interval
when the handler is registered, so registering waits for the settings.
The startup handler tunes Kopf and builds the one context the handlers share.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import (
    APP_INSTANCE,
    CLUSTER_KOPF_PEERING,
    CONSORTIUM,
    DEVICE_GATEWAY,
    HOSPITAL,
    KOPF_PEERING,
    RECORD_STORE,
    load_configuration,
)
from medcloud_operator import OPERATOR_NAME, background, health, metrics
from medcloud_operator.brokertrust import ensure_broker_trust, withdraw_outlived_grants
from medcloud_operator.childwatch import ChildWatcher
from medcloud_operator.context import MEMO_KEY, OperatorContext, get_context
from medcloud_operator.handlers import appinstance, consortium, device, devicegateway, hospital, recordstore
from medcloud_operator.handlers.common import full_resync_due
from medcloud_operator.kube import Kube, new_api_client
from medcloud_operator.memorytrim import trim_after_bursts
from medcloud_operator.peeringpause import PeeringObject, PeeringPause, Self, own_identity
from medcloud_operator.settings import OperatorSettings
from medcloud_operator.storage import Storage
from medcloud_operator.workqueue import WorkQueue

# Each registers its kind's handlers (``register(registry, settings)``).
HANDLER_MODULES = (hospital, recordstore, devicegateway, device, appinstance, consortium, health)

SHARDED_KINDS = (HOSPITAL, RECORD_STORE, DEVICE_GATEWAY, APP_INSTANCE, CONSORTIUM)
# The work queue's controller names (the kind in lower case, as kubebuilder names controllers).
CONTROLLERS = tuple(kind.kind.lower() for kind in SHARDED_KINDS)

KOPF_DEFAULT_PEERING = "default"
STATE_PREFIX = "kopf.medcloud.io"
TRIM_CHECK_SECONDS = 15.0
"""How long the work queue stays idle after a burst before freed heap memory goes back (memorytrim.py)."""


def build_registry(
    settings: OperatorSettings, *, identity: str | None = None, namespaces: Sequence[str] = ()
) -> kopf.OperatorRegistry:
    """Every handler of the operator, registered with ``settings`` (read once, at start).

    ``identity`` is the one given to ``kopf.run`` (its peering identity) and ``namespaces`` the ones it
    serves (none: the cluster): the work outside Kopf follows the same peering.
    """
    registry = kopf.OperatorRegistry()
    kopf.on.login(id="login", registry=registry)(login)
    kopf.on.startup(id="configure", registry=registry)(functools.partial(configure, operator_settings=settings))
    # After configure (Kopf runs startup handlers in order), which builds the context it starts from.
    start = functools.partial(
        start_background,
        work=background.of(registry),
        identity=identity or own_identity(),
        namespaces=tuple(namespaces),
    )
    kopf.on.startup(id="background", registry=registry)(start)
    kopf.on.cleanup(id="background_stop", registry=registry)(stop_background)
    kopf.on.cleanup(id="shutdown", registry=registry)(shutdown)
    for module in HANDLER_MODULES:
        module.register(registry, settings)
    return registry


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials from the in-cluster service account or ``$KUBECONFIG``, read now.

    Kopf's own client-based login reads the kubeconfig path the kubernetes
    library captured at import; this one honours ``KUBECONFIG`` as set when
    the operator starts, so Kopf and the operator's client always agree.
    """
    try:
        configuration = load_configuration()
    except config.ConfigException as exc:
        raise kopf.LoginError(f"no in-cluster service account and no usable kubeconfig: {exc}") from exc
    header = configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: kopf.Logger,
    operator_settings: OperatorSettings,
    **_: Any,
) -> None:
    """Tune Kopf (``settings``) and build the handlers' one context from the operator's settings."""
    cfg = operator_settings
    logging.getLogger("medcloud_operator").setLevel(cfg.log_level)

    # Peering: replicas coordinate through a ClusterKopfPeering object so that
    # only the highest-priority one acts. Unless the command line chose
    # (--standalone or --peering), use ours and make it mandatory: a replica
    # that cannot see its peers must wait rather than act beside them.
    if cfg.standalone:
        settings.peering.standalone = True
    elif not settings.peering.standalone and settings.peering.name == KOPF_DEFAULT_PEERING:
        settings.peering.name = cfg.peering_name
        settings.peering.mandatory = True

    # Kopf's state lives in annotations: the CRDs' status schemas are
    # structural, so anything Kopf wrote under status.kopf would be pruned.
    settings.persistence.finalizer = "medcloud.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STATE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STATE_PREFIX, key="last-handled-configuration"
    )

    # Events are posted explicitly (one per change or failure), never from log
    # lines: an idle operator must not write Events, and logs may be verbose.
    settings.posting.loggers = False

    # Watch timeouts. The API server closes a watch after its own random
    # timeout, but a connection that dies silently (a NAT or load balancer
    # dropping an idle flow) would otherwise hang forever, with the operator
    # blind and every probe still green. A server-side timeout makes each
    # watch end cleanly within minutes and resume from its resourceVersion;
    # the client timeout is a little longer so the server's close wins.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    # Plain requests (reads, status patches) should fail fast and be retried
    # rather than hold a handler for Kopf's default of minutes.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30

    # Reconciles run in the work queue's own threads, changes first; Kopf's pool (the handlers
    # that are not reconciles: deletions' bookkeeping, indexes, member events) gets the same size.
    settings.execution.max_workers = cfg.max_concurrent_reconciles
    queue = WorkQueue(cfg.max_concurrent_reconciles)
    for controller in CONTROLLERS:
        metrics.MAX_CONCURRENT_RECONCILES.labels(controller=controller).set(cfg.max_concurrent_reconciles)

    # Sharding: of the MedCloud kinds, stream only this replica's shard (docs/operator.md#sharding).
    if cfg.shard_selector:
        for kind in SHARDED_KINDS:
            settings.watching.label_selectors[kind.api_version, kind.plural] = cfg.shard_selector

    storage = Storage(cfg) if cfg.configured else None
    ctx = OperatorContext(settings=cfg, kube=Kube(new_api_client()), storage=storage, queue=queue)
    if not settings.peering.standalone and settings.peering.clusterwide:
        _ensure_peering_object(ctx.kube, settings.peering.name, logger)
    if cfg.metrics_port:
        ctx.metrics_server = metrics.serve(cfg.metrics_port, cfg.metrics_address)
    memo[MEMO_KEY] = ctx
    logger.info(
        "%s started: operator namespace %s, metrics port %s, peering %s",
        OPERATOR_NAME,
        cfg.operator_namespace,
        cfg.metrics_port or "off",
        "off" if settings.peering.standalone else settings.peering.name,
    )
    if not cfg.storage_cidrs and not cfg.storage_namespace:
        logger.warning(
            "No record storage endpoint configured (MEDCLOUD_STORAGE_CIDRS / MEDCLOUD_STORAGE_NAMESPACE): "
            "tenant workloads will not be able to reach it"
        )
    if storage is None:
        logger.warning(
            "No MinIO configured (MEDCLOUD_MINIO_ENDPOINT, _ACCESS_KEY, _SECRET_KEY): "
            "RecordStores will report StorageNotConfigured"
        )
    else:
        logger.info("RecordStores on MinIO at %s (tenants use %s)", storage.endpoint.url, storage.public_endpoint.url)
    logger.info("Apps from %s/<app>:<version>; gateways run %s", cfg.app_image_prefix, cfg.gateway_image)


def _ensure_peering_object(kube: Kube, name: str, logger: kopf.Logger) -> None:
    """Create the ClusterKopfPeering object if missing.

    Kopf pauses when the peering CRDs are missing, but a missing peering
    *object* only makes its heartbeats fail quietly, and replicas would then
    act side by side. Creating it here also lets `kubectl apply -f deploy/`
    install the CRDs without a second pass for the object.
    """
    if kube.get(CLUSTER_KOPF_PEERING, name) is not None:
        return
    try:
        kube.create(
            {
                "apiVersion": CLUSTER_KOPF_PEERING.api_version,
                "kind": CLUSTER_KOPF_PEERING.kind,
                "metadata": {"name": name},
            }
        )
    except ApiException as exc:
        if exc.status != 409:  # another replica created it first
            raise
    logger.info("Created ClusterKopfPeering %s", name)


async def start_background(
    memo: kopf.Memo,
    settings: kopf.OperatorSettings,
    logger: kopf.Logger,
    work: background.Background,
    identity: str,
    namespaces: tuple[str, ...],
    **_: Any,
) -> None:
    """Start the child watches and the safety net, and the peering pause they follow, on Kopf's event loop."""
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        raise kopf.TemporaryError("waiting for the configure handler", delay=0.1)
    me = Self(identity, settings.peering.priority, sharded=bool(getattr(settings.watching, "shard_selectors", None)))
    peering = _peering_objects(settings, namespaces, logger)
    pause = PeeringPause(ctx.kube, peering, me, mandatory=settings.peering.mandatory)
    # Its own client: a connection per watch, held for minutes, apart from the reconciles' pool.
    watching = Kube(new_api_client(connections=len(work.child_watches) + 2))

    def borrowed() -> contextvars.Context | None:
        return work.kopf_context

    watcher = ChildWatcher(watching, work.child_watches, memo, pause, kopf_context=borrowed)
    full_period = ctx.settings.full_resync_seconds

    def due(uid: str, now: float, interval: float) -> bool:
        return full_resync_due(uid, now, interval, full_period)

    loop = asyncio.get_running_loop()
    ctx.background = [
        loop.create_task(pause.run(), name="peering-pause"),
        loop.create_task(watcher.run(), name="child-watches"),
        loop.create_task(
            work.safety_net.run(memo, ctx.queue, pause, due=due, kopf_context=borrowed),
            name="safety-net",
        ),
        loop.create_task(
            ctx.broker_grants.run(
                ctx.queue,
                pause,
                rebuild=functools.partial(
                    ensure_broker_trust, ctx.kube, ctx.settings, ctx.settings.operator_namespace, None
                ),
                withdraw_outlived=functools.partial(withdraw_outlived_grants, ctx.kube, ctx.settings),
                check_seconds=ctx.settings.resync_seconds,
            ),
            name="broker-grants",
        ),
        loop.create_task(
            trim_after_bursts(lambda: ctx.queue.completed, ctx.queue.idle, TRIM_CHECK_SECONDS), name="memory-trim"
        ),
    ]
    logger.info(
        "Watching %d child kinds outside Kopf; safety net over %s; peering identity %s",
        len(work.child_watches),
        ", ".join(work.safety_net.kinds),
        identity,
    )


def _peering_objects(
    settings: kopf.OperatorSettings, namespaces: tuple[str, ...], logger: kopf.Logger
) -> list[PeeringObject]:
    """The peering objects Kopf follows: none standalone, the cluster's, or one per namespace served."""
    if settings.peering.standalone:
        return []
    if settings.peering.clusterwide:
        return [PeeringObject(CLUSTER_KOPF_PEERING, settings.peering.name)]
    literal = [ns for ns in namespaces if not any(c in ns for c in "*?[")]
    if len(literal) < len(namespaces):
        logger.warning("Namespace globs: the child watches and safety net follow the peering of %s only", literal)
    return [PeeringObject(KOPF_PEERING, settings.peering.name, ns) for ns in literal]


async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        return
    for task in ctx.background:
        task.cancel()
    await asyncio.gather(*ctx.background, return_exceptions=True)


def shutdown(memo: kopf.Memo, **_: Any) -> None:
    ctx = get_context(memo)
    ctx.queue.close()
    if ctx.storage is not None:
        ctx.storage.close()
    if ctx.metrics_server is not None:
        ctx.metrics_server.shutdown()
        ctx.metrics_server.server_close()
    ctx.kube.api_client.close()  # type: ignore[no-untyped-call]  # unannotated in the kubernetes library
