"""One line per failure: the field, the location, and what went wrong, in the server's words.

Every fetch or publish failure is a FetchError (a UserError: the stage exits 2 and the
operator shows the line in the job's condition and Event). Network failures are described
by their root cause (connection refused, name not resolved, timed out), found by walking
the exception chain, since each client library wraps the socket error differently.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from maap_api.errors import UserError
from maap_api.sources import shown_location


class FetchError(UserError):
    """A source could not be fetched (or an output not published); the message is one line."""


def fetch_error(field: str, location: str, what: str) -> FetchError:
    return FetchError(f"{field}: {shown_location(location)}: {one_line(what)}")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def host_of(url: str) -> str:
    """host:port of a URL, as a user would recognise it in an error."""
    parts = urlsplit(url)
    if parts.port:
        return f"{parts.hostname}:{parts.port}"
    return parts.hostname or url


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and every exception it wraps (__cause__, __context__, botocore's `error` kwarg)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__])
        kwargs = getattr(current, "kwargs", None)  # botocore keeps the socket error there
        wrapped = kwargs.get("error") if isinstance(kwargs, dict) else None
        if isinstance(wrapped, BaseException):
            todo.append(wrapped)
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
    return seen


def network_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: `connection refused`, `timed out`, ..."""
    chain = _chain(exc)
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return "name not resolved"
        if isinstance(err, ssl.SSLError):
            return f"TLS error: {err.reason or err}"
        if isinstance(err, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(err, ConnectionResetError):
            return "connection reset"
    for err in chain:
        name = type(err).__name__.lower()
        text = one_line(str(err)).lower()
        if "timeout" in name or "timed out" in text:
            return "timed out"
        if "refused" in text:
            return "connection refused"
        if "name or service not known" in text or "nodename nor servname" in text:
            return "name not resolved"
    for err in chain:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror.lower()
    return one_line(str(exc)) or type(exc).__name__


def unreachable(field: str, location: str, url: str, exc: BaseException) -> FetchError:
    return fetch_error(field, location, f"cannot reach {host_of(url)} ({network_reason(exc)})")
