"""`maap gateway`: build the gateway for this machine or a cluster and run it."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from maap_api.errors import ConfigError

from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.file_urls import INTERNAL_PREFIX
from maap.gateway.files import FileStore
from maap.gateway.tenancy import KeyRing, OpenAccess, StaticKeys
from maap.gateway.webhooks import WebhookSender

log = logging.getLogger("maap.gateway")


@dataclass
class GatewayOptions:
    local: bool
    host: str
    port: int
    state_dir: Path
    keys_file: Path | None = None
    internal_url: str | None = None
    file_secret_env: str | None = None
    webhook_url: str | None = None
    webhook_secret_env: str | None = None
    namespace: str | None = None  # the gateway's own namespace (cluster: API-key Secrets)


def _env(name: str | None, flag: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{flag}: the environment variable {name} is unset or empty")
    return value


def run_gateway(options: GatewayOptions) -> None:
    files = FileStore(options.state_dir / "files")
    webhooks = None
    if options.webhook_url:
        secret = _env(options.webhook_secret_env, "--webhook-secret-env")
        if secret is None:
            raise ConfigError("--webhook-url: also set --webhook-secret-env (the HMAC secret)")
        webhooks = WebhookSender(options.webhook_url, secret)
    keys: KeyRing
    if options.local:
        from maap.gateway.local_backend import LocalBackend

        keys = StaticKeys.from_file(options.keys_file) if options.keys_file else OpenAccess()
        if isinstance(keys, OpenAccess):
            log.warning("no --keys-file: the gateway is open, every client is tenant 'default'")
        backend = LocalBackend(options.state_dir, files)
        file_secret = secrets.token_bytes(32)  # local jobs read files by path
    else:
        from kubernetes import config as kube_config

        from maap.gateway.kube_backend import KubeBackend
        from maap.gateway.kube_keys import SecretKeys

        if not options.internal_url:
            raise ConfigError("--internal-url: required in a cluster (how pods reach the gateway)")
        secret = _env(options.file_secret_env, "--file-secret-env")
        if secret is None:
            raise ConfigError("--file-secret-env: required in a cluster (signs file links)")
        file_secret = secret.encode()
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            kube_config.load_kube_config()
        from kubernetes import client

        api = client.ApiClient()
        namespace = options.namespace or _own_namespace()
        keys = (
            StaticKeys.from_file(options.keys_file)
            if options.keys_file
            else SecretKeys(api, namespace)
        )
        backend = KubeBackend(api, namespace, options.internal_url, file_secret)
    app = create_app(backend, keys, files, GatewaySettings(file_secret, webhooks))
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info")
    # After Config: it sets up uvicorn's loggers, replacing filters added before.
    logging.getLogger("uvicorn.access").addFilter(hide_signed_link_queries)
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    log.info("the web console: http://%s:%d/console/", shown, options.port)
    uvicorn.Server(config).run()


def hide_signed_link_queries(record: logging.LogRecord) -> bool:
    """Drop the query string of a signed file link (its signature is a credential) from an
    access-log line; uvicorn's record args are (client, method, path, http version, status)."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
        path = args[2]
        if path.startswith(f"{INTERNAL_PREFIX}/") and "?" in path:
            hidden = f"{path.split('?', 1)[0]}?<query hidden>"
            record.args = (*args[:2], hidden, *args[3:])
    return True


def _own_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else "default"
