"""Optional bearer-token auth for the API (token from an environment variable or a file),
and the admin API's own token."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from maap_api.errors import ConfigError


def load_token(env_name: str | None, file: Path | None) -> str | None:
    """The token clients must send, or None when auth is off. Bad settings are user errors."""
    if env_name and file:
        raise ConfigError(
            "--auth-token-file: set at most one of --auth-token-env or --auth-token-file"
        )
    if env_name:
        token = os.environ.get(env_name, "").strip()
        if not token:
            raise ConfigError(
                f"--auth-token-env: the environment variable {env_name} is unset or empty"
            )
        return token
    if file:
        try:
            token = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--auth-token-file: cannot read {file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"--auth-token-file: {file} is empty")
        return token
    return None


def load_admin_token(env_name: str | None, client_token: str | None) -> str | None:
    """The admin API's token (--admin-token-env), or None when the admin API is off."""
    if env_name is None:
        return None
    token = os.environ.get(env_name, "").strip()
    if not token:
        raise ConfigError(
            f"--admin-token-env: the environment variable {env_name} is unset or empty"
        )
    if client_token is not None and hmac.compare_digest(token.encode(), client_token.encode()):
        raise ConfigError(
            "--admin-token-env: the admin token must differ from the clients' token, or every "
            "client could load and unload adapters"
        )
    return token


def check_bearer(header: str | None, token: str) -> str | None:
    """None if the Authorization header carries the token, else what is wrong with it."""
    if not header:
        return "missing Authorization header; send 'Authorization: Bearer <token>'"
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return "the Authorization header must be 'Bearer <token>'"
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        return "invalid bearer token"
    return None
