"""Ports: check a listening port before spending minutes on work that needs it, or pick a
free one (the rendezvous port of a one-node run; tests and benchmarks use it too)."""

from __future__ import annotations

import socket

from maap_api.errors import ConfigError


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError(
                f"serving.port: port {port} on {host} is already in use; "
                "stop what holds it or choose another port (--port)"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
