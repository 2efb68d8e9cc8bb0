"""API keys from Secrets in the gateway's namespace: one Secret per key.

The platform team creates a Secret labelled `maap.dev/gateway-api-key=true` with the data
keys `apiKey` (the key clients send as their bearer token) and `namespace` (the tenant it
opens):

    kubectl -n maap-system create secret generic team-a-key \\
        --from-literal=apiKey=sk-team-a-... --from-literal=namespace=team-a
    kubectl -n maap-system label secret team-a-key maap.dev/gateway-api-key=true

The Secrets are listed again every few seconds in a background thread, so a new key works
and a deleted one stops working without a restart. A malformed Secret is logged by name
(once per version) and skipped; the other keys keep working.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kubernetes import client
from maap_api.errors import ConfigError

from maap.gateway.errors import APIError
from maap.gateway.kube_backend import decode_secret_value, kube_errors
from maap.gateway.tenancy import StaticKeys, check_namespace

log = logging.getLogger("maap.gateway.keys")

API_KEY_LABEL = "maap.dev/gateway-api-key"
KEY_FIELD = "apiKey"
NAMESPACE_FIELD = "namespace"
MIN_KEY_LENGTH = 16
REFRESH_SECONDS = 10.0


@dataclass(frozen=True)
class KeySecret:
    """One Secret's key, or why it is not one."""

    name: str
    key: str | None = None
    namespace: str | None = None
    problem: str | None = None


def read_key_secret(secret: client.V1Secret) -> KeySecret:
    name = secret.metadata.name
    data = secret.data or {}
    missing = [f for f in (KEY_FIELD, NAMESPACE_FIELD) if not data.get(f)]
    if missing:
        return KeySecret(name, problem=f"no data key {' or '.join(missing)}")
    key = decode_secret_value(data[KEY_FIELD])
    namespace = decode_secret_value(data[NAMESPACE_FIELD])
    if key is None or namespace is None:
        return KeySecret(name, problem=f"{KEY_FIELD} and {NAMESPACE_FIELD} must be UTF-8 text")
    if len(key) < MIN_KEY_LENGTH:
        return KeySecret(name, problem=f"{KEY_FIELD}: at least {MIN_KEY_LENGTH} characters")
    try:
        check_namespace(namespace, NAMESPACE_FIELD)
    except ConfigError as exc:
        return KeySecret(name, problem=str(exc))
    return KeySecret(name, key=key, namespace=namespace)


def key_map(found: list[KeySecret]) -> tuple[dict[str, str], list[KeySecret]]:
    """key -> namespace of the well-formed Secrets, and the ones skipped (with why). One key
    in two Secrets opens neither: which tenant it means is not for us to guess."""
    keys: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    skipped = [s for s in found if s.problem]
    for secret in found:
        if secret.key is not None and secret.namespace is not None:
            keys[secret.key] = secret.namespace
            owners.setdefault(secret.key, []).append(secret.name)
    for key, names in owners.items():
        if len(names) > 1:
            del keys[key]
            for name in names:
                others = ", ".join(sorted(set(names) - {name}))
                skipped.append(KeySecret(name, problem=f"the same {KEY_FIELD} as {others}"))
    return keys, skipped


class SecretKeys:
    """A KeyRing over the labelled Secrets of one namespace, refreshed in the background."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        refresh_seconds: float = REFRESH_SECONDS,
        start: bool = True,
    ) -> None:
        """`start`: read the keys now and keep them fresh from here on (see start())."""
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.refresh_seconds = refresh_seconds
        self._ring = StaticKeys({})
        self._reported: set[tuple[str, str]] = set()  # (name, resourceVersion) logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def namespace_for(self, key: str) -> str | None:
        return self._ring.namespace_for(key)

    def __len__(self) -> int:
        return len(self._ring.keys)

    def refresh(self) -> None:
        """List the Secrets now; raises APIError when the API cannot be read."""
        with kube_errors(f"list the API-key Secrets in namespace {self.namespace}"):
            listed = self.core.list_namespaced_secret(
                self.namespace, label_selector=f"{API_KEY_LABEL}=true"
            )
        keys, skipped = key_map([read_key_secret(s) for s in listed.items])
        versions = {s.metadata.name: s.metadata.resource_version or "" for s in listed.items}
        for secret in skipped:
            seen = (secret.name, versions.get(secret.name, ""))
            if seen not in self._reported:
                self._reported.add(seen)
                log.warning(
                    "API-key Secret %s/%s skipped: %s", self.namespace, secret.name, secret.problem
                )
        self._ring = StaticKeys(keys)  # one assignment: a reader sees the old or the new set

    def start(self) -> SecretKeys:
        """Read the keys once (failing loudly: no RBAC, no API server), then keep them fresh
        in a daemon thread. Starting a started ring does nothing."""
        if self._thread is not None:
            return self
        try:
            self.refresh()
        except APIError as exc:
            raise ConfigError(f"API keys: {exc.message}") from None
        log.info("%d API key(s) from Secrets in namespace %s", len(self), self.namespace)
        self._thread = threading.Thread(target=self._loop, name="api-key-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_seconds + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except APIError as exc:
                # Keep the keys last read: a short API outage must not lock every tenant out.
                log.warning("API keys not refreshed: %s", exc.message)
            except Exception:
                log.exception("API keys not refreshed")
