"""Check a listening port before spending minutes on work that needs it."""

from __future__ import annotations

import socket

from maap_trainer.errors import ConfigError


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError(
                f"serving.port: port {port} on {host} is already in use; "
                "stop what holds it or choose another port (--port)"
            ) from None
