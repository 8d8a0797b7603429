"""`medcloud records put/get/ls`: encrypted records in a RecordStore, from the command line.

The store's S3 endpoint, bucket and credentials come from its credentials
Secret (``status.secretRef``), read with your kubeconfig: you need ``get`` on
that RecordStore and that Secret in the hospital namespace. Data keys come
from one of two places:

- the key service (the default): ``--key-service`` or the URL the Secret
  names, with a bearer token (``--token``/``--token-file``) issued for the
  key service's audience, e.g. ``kubectl create token app -n hospital-x
  --audience medcloud-keyservice``; RBAC must grant ``get`` on
  ``recordstores/keys`` for the store;
- ``--direct-keys``, for the local development cluster only: the key ring
  and the hospital KEK are read straight from the operator's namespace with
  your kubeconfig, which therefore has to be a cluster administrator's.

Either way records are encrypted and decrypted here, in this process;
MinIO only ever sees ciphertext.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO, cast

import typer
import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from medcloud.kube.client import Kube
from medcloud.models import GROUP, VERSION
from medcloud.records.batches import select_resource
from medcloud.records.client import InMemoryKeyProvider, KeyProvider, RecordClient
from medcloud.records.keyclient import HttpKeyProvider
from medcloud.tenancy import keyring
from medcloud.tenancy.credentials import ACCESS_KEY_FIELD, KEY_SERVICE_URL_FIELD, SECRET_KEY_FIELD, Endpoint, decoded
from medcloud.tenancy.store import StoreNames
from medcloud_cli import environment as env
from medcloud_cli.commands.record_errors import EXIT_RETRYABLE, RecordsCommandError, explain, retryable

app = typer.Typer(
    help=(
        "Put, get and list encrypted records in a RecordStore. Keys come from the key service "
        "(--key-service and a token), or with --direct-keys from the cluster itself (local dev cluster, "
        "admin kubeconfig only)."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@dataclass(frozen=True)
class StoreAccess:
    """Where a RecordStore is and the credentials its Secret holds."""

    namespace: str
    store: str
    bucket: str
    endpoint: Endpoint
    access_key: str
    secret_key: str = ""
    key_service_url: str | None = None

    def __repr__(self) -> str:
        return f"StoreAccess({self.namespace}/{self.store}, bucket={self.bucket}, endpoint={self.endpoint.url})"


def store_access(api_client: client.ApiClient, namespace: str, store: str) -> StoreAccess:
    """The store's bucket and credentials, from its status and its credentials Secret."""
    custom = client.CustomObjectsApi(api_client)
    try:
        raw = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recordstores", store)
        body = cast(dict[str, Any], raw)
    except ApiException as exc:
        raise RecordsCommandError(f"cannot read RecordStore {namespace}/{store}: {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise RecordsCommandError(f"cannot reach the Kubernetes API: {exc}") from None
    status = body.get("status") or {}
    secret_name = (status.get("secretRef") or {}).get("name")
    if not secret_name or not status.get("bucket"):
        phase = status.get("phase")
        raise RecordsCommandError(f"RecordStore {namespace}/{store} is not provisioned yet (phase {phase})")
    try:
        secret = client.CoreV1Api(api_client).read_namespaced_secret(secret_name, namespace)
    except ApiException as exc:
        raise RecordsCommandError(f"cannot read Secret {namespace}/{secret_name}: {exc.reason}") from None
    manifest = {"data": secret.data or {}}
    endpoint, access, secret_key = (
        decoded(manifest, "COSI_S3_ENDPOINT"),
        decoded(manifest, ACCESS_KEY_FIELD),
        decoded(manifest, SECRET_KEY_FIELD),
    )
    if not (endpoint and access and secret_key):
        raise RecordsCommandError(f"Secret {namespace}/{secret_name} lacks the S3 endpoint or credentials")
    return StoreAccess(
        namespace=namespace,
        store=store,
        bucket=str(status["bucket"]),
        endpoint=Endpoint.parse(endpoint),
        access_key=access,
        secret_key=secret_key,
        key_service_url=decoded(manifest, KEY_SERVICE_URL_FIELD),
    )


def direct_key_provider(
    api_client: client.ApiClient, namespace: str, store: str, operator_namespace: str = "medcloud-system"
) -> InMemoryKeyProvider:
    """The store's keys read straight from the operator namespace (cluster administrators, local dev)."""
    names = StoreNames.of(namespace, store)
    try:
        return InMemoryKeyProvider(
            keyring.load(Kube(api_client, field_manager="medcloud-cli"), names, operator_namespace)
        )
    except ApiException as exc:
        raise RecordsCommandError(
            f"cannot read the keys of {namespace}/{store} from namespace {operator_namespace} ({exc.reason}); "
            "--direct-keys needs a cluster administrator's kubeconfig. Use the key service instead."
        ) from None
    except (keyring.KeyRingMissingError, keyring.KeyRingInvalidError, keyring.KekVersionMissingError) as exc:
        raise RecordsCommandError(str(exc)) from None


def open_client(access: StoreAccess, keys: KeyProvider) -> RecordClient:
    return RecordClient.connect(
        access.endpoint.address,
        access.access_key,
        access.secret_key,
        access.bucket,
        keys,
        secure=access.endpoint.secure,
    )


# --------------------------------------------------------------------------- options

StoreArg = Annotated[str, typer.Argument(help="Name of the RecordStore.")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="The hospital namespace of the store.")]
KubeconfigOpt = Annotated[
    Path | None, typer.Option(help="Kubeconfig to read the store with; default: $KUBECONFIG or ~/.kube/config.")
]
KeyServiceOpt = Annotated[
    str | None,
    typer.Option(
        envvar=env.KEY_SERVICE_URL,
        help="URL of the key service; default: the one the store's Secret names.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(envvar=env.KEY_SERVICE_TOKEN, help="Bearer token for the key service (its audience)."),
]
TokenFileOpt = Annotated[Path | None, typer.Option(help="File holding the bearer token (re-read on every request).")]
DirectOpt = Annotated[
    bool,
    typer.Option(
        "--direct-keys",
        help="Local dev cluster only: read the keys from the operator namespace with an admin kubeconfig.",
    ),
]
OperatorNamespaceOpt = Annotated[str, typer.Option(help="Operator namespace, for --direct-keys.")]
CAOpt = Annotated[Path | None, typer.Option(help="CA bundle to verify the key service's certificate.")]


@dataclass(frozen=True)
class KeySource:
    key_service: str | None
    token: str | None
    token_file: Path | None
    direct: bool
    operator_namespace: str
    ca_file: Path | None


def _option(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=default)


# In KeySource's field order: the wrapper hands them to KeySource positionally.
_KEY_SOURCE_OPTIONS = (
    _option("key_service", KeyServiceOpt, None),
    _option("token", TokenOpt, None),
    _option("token_file", TokenFileOpt, None),
    _option("direct_keys", DirectOpt, False),
    _option("operator_namespace", OperatorNamespaceOpt, "medcloud-system"),
    _option("ca_file", CAOpt, None),
)


def with_key_source(command: Callable[..., None]) -> Callable[..., None]:
    """The command's ``keys: KeySource`` parameter offered as the key-source options every keyed command takes.

    Typer reads a command's options from its signature, so the wrapper shows the command's own
    parameters followed by the six key-source options, and folds those into one KeySource.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for parameter in signature.parameters.values() if parameter.name != "keys"]

    @functools.wraps(command)
    def keyed(**options: Any) -> None:
        keys = KeySource(*(options.pop(option.name) for option in _KEY_SOURCE_OPTIONS))
        command(keys=keys, **options)

    parameters = [*own, *_KEY_SOURCE_OPTIONS]
    keyed.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    keyed.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return keyed


def _api_client(kubeconfig: Path | None) -> client.ApiClient:
    # The kubernetes package leaves its config loaders unannotated.
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)  # type: ignore[no-untyped-call]
    return api


def _keys(api_client: client.ApiClient, access: StoreAccess, source: KeySource) -> KeyProvider:
    if source.direct:
        return direct_key_provider(api_client, access.namespace, access.store, source.operator_namespace)
    url = source.key_service or access.key_service_url
    if not url:
        raise RecordsCommandError(
            f"no key service: pass --key-service (or {env.KEY_SERVICE_URL}), or --direct-keys on a dev cluster"
        )
    if not (source.token or source.token_file):
        raise RecordsCommandError(
            f"the key service needs a bearer token: --token, --token-file or {env.KEY_SERVICE_TOKEN}"
        )
    return HttpKeyProvider(
        url,
        access.namespace,
        access.store,
        token=source.token if source.token_file is None else None,
        token_file=source.token_file,
        verify=str(source.ca_file) if source.ca_file else True,
    )


def _run(kubeconfig: Path | None, namespace: str, store: str, source: KeySource) -> RecordClient:
    api_client = _api_client(kubeconfig)
    access = store_access(api_client, namespace, store)
    return open_client(access, _keys(api_client, access, source))


@contextlib.contextmanager
def _reported(namespace: str, store: str, record: str | None = None) -> Iterator[None]:
    """Print what went wrong as one ``error:`` line and exit 1 (75 if worth retrying); only a bug shows a traceback."""
    try:
        yield
    except Exception as exc:
        message = explain(exc, store=f"{namespace}/{store}", record=record)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=EXIT_RETRYABLE if retryable(exc) else 1) from None


# --------------------------------------------------------------------------- commands


@app.command()
@with_key_source
def put(
    store: StoreArg,
    name: Annotated[str, typer.Argument(help="Record name: an opaque identifier, never a patient's name.")],
    source_file: Annotated[str, typer.Argument(metavar="FILE", help="File to store, or - for standard input.")],
    namespace: NamespaceOpt,
    keys: KeySource,
    content_type: Annotated[str, typer.Option(help="Content type of the record.")] = "application/octet-stream",
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Encrypt FILE into record NAME under the store's current data key."""
    with _reported(namespace, store, name):
        records = _run(kubeconfig, namespace, store, keys)
        if source_file == "-":
            info = records.put(name, cast(BinaryIO, sys.stdin.buffer), content_type=content_type)
        else:
            info = records.put_file(name, source_file, content_type=content_type)
    typer.echo(f"{info.name}\t{info.size} bytes\tkey version {info.key_version}\tversion id {info.version_id}")


@app.command()
@with_key_source
def get(
    store: StoreArg,
    name: Annotated[str, typer.Argument(help="Record name.")],
    target: Annotated[str, typer.Argument(metavar="FILE", help="Where to write the record, or - for standard output.")],
    namespace: NamespaceOpt,
    keys: KeySource,
    version_id: Annotated[str | None, typer.Option(help="An older version of the record (S3 version id).")] = None,
    resource: Annotated[
        str | None,
        typer.Option(help="Only the resource with this id, from an NDJSON batch (fhir/<type>/<batch>.ndjson)."),
    ] = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Decrypt record NAME into FILE; the file appears only if every byte authenticated."""
    with _reported(namespace, store, name):
        records = _run(kubeconfig, namespace, store, keys)
        if resource is not None:
            try:
                found = select_resource(records.get_bytes(name, version_id=version_id), resource)
            except (KeyError, ValueError):
                raise RecordsCommandError(f"record {name} holds no resource {resource!r}") from None
            _write(target, json.dumps(found, ensure_ascii=False).encode() + b"\n")
        elif target == "-":
            _write(target, records.get_bytes(name, version_id=version_id))
        else:
            records.get_file(name, target, version_id=version_id)


def _write(target: str, data: bytes) -> None:
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(target).write_bytes(data)


@app.command("ls")
def list_records(
    store: StoreArg,
    namespace: NamespaceOpt,
    prefix: Annotated[str, typer.Argument(help="Only records whose names start with this.")] = "",
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """List records: name, size, data-key version, content type, last modified. Needs no keys."""
    with _reported(namespace, store):
        access = store_access(_api_client(kubeconfig), namespace, store)
        records = open_client(access, _NoKeys(namespace, store))
        rows = list(records.list(prefix))
    for info in rows:
        modified = info.last_modified.isoformat() if isinstance(info.last_modified, datetime) else "-"
        size = "-" if info.size is None else str(info.size)
        key = "-" if info.key_version is None else str(info.key_version)
        typer.echo(f"{info.name}\t{size}\tkey {key}\t{info.content_type or '-'}\t{modified}")


class _NoKeys:
    """Listing reads metadata only: a key provider that is never asked for a key."""

    def __init__(self, namespace: str, store: str) -> None:
        self._namespace, self._store = namespace, store

    @property
    def hospital(self) -> str:
        return StoreNames.of(self._namespace, self._store).hospital

    @property
    def store(self) -> str:
        return self._store

    def current_version(self) -> int:
        raise RecordsCommandError("listing needs no key")

    def data_key(self, version: int) -> bytes:
        raise RecordsCommandError("listing needs no key")
