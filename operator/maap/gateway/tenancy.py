"""API keys map to namespaces: a key sees and touches only its namespace's objects.

Keys come from a file (`maap gateway --keys-file`, for one machine) or from Secrets the
platform team creates in the gateway's namespace (a cluster; see kube_keys). With no
keys configured on one machine the gateway is open and every client is the `default`
tenant, which is what a laptop needs and is said loudly at startup.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Protocol

import yaml
from maap_api.errors import ConfigError

from maap.gateway.errors import APIError

DEFAULT_TENANT = "default"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KeyRing(Protocol):
    def namespace_for(self, key: str) -> str | None:
        """The namespace of a key, or None for an unknown key."""


class OpenAccess:
    """No keys configured: every client is the default tenant."""

    def namespace_for(self, key: str) -> str | None:
        return DEFAULT_TENANT


class StaticKeys:
    def __init__(self, keys: dict[str, str]) -> None:
        for key, namespace in keys.items():
            check_namespace(namespace, f"the namespace of key {key[:6]}…")
        self.keys = dict(keys)

    def namespace_for(self, key: str) -> str | None:
        # Compare every key in constant time, so timing does not tell a near miss.
        found = None
        for known, namespace in self.keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = namespace
        return found

    @classmethod
    def from_file(cls, path: Path) -> StaticKeys:
        """YAML or JSON: `{keys: [{key: sk-..., namespace: team-a}, ...]}`."""
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"--keys-file: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--keys-file: {path} is not YAML: {exc}") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"--keys-file: {path}: expected `keys:` with a list of entries")
        keys: dict[str, str] = {}
        for i, entry in enumerate(entries):
            where = f"--keys-file: {path}: keys[{i}]"
            if not isinstance(entry, dict) or not {"key", "namespace"} <= set(entry):
                raise ConfigError(f"{where}: expected `key` and `namespace`")
            key, namespace = str(entry["key"]).strip(), str(entry["namespace"])
            if len(key) < 16:
                raise ConfigError(f"{where}.key: at least 16 characters")
            if key in keys:
                raise ConfigError(f"{where}.key: the same key is listed twice")
            check_namespace(namespace, f"{where}.namespace")
            keys[key] = namespace
        return cls(keys)


def check_namespace(namespace: str, where: str) -> None:
    if not _NAMESPACE.match(namespace) or len(namespace) > 63:
        raise ConfigError(f"{where}: {namespace!r} is not a namespace name (a DNS label)")


def tenant_of(authorization: str | None, keys: KeyRing) -> str:
    """The namespace of the request's bearer key; 401 for a missing or unknown one."""
    scheme, _, value = (authorization or "").partition(" ")
    key = value.strip() if scheme.lower() == "bearer" else ""
    if isinstance(keys, OpenAccess):
        return DEFAULT_TENANT
    if not key:
        raise APIError(
            401,
            "missing API key; send 'Authorization: Bearer <key>' (the openai client's api_key)",
            code="invalid_api_key",
        )
    namespace = keys.namespace_for(key)
    if namespace is None:
        raise APIError(401, "invalid API key", code="invalid_api_key")
    return namespace
