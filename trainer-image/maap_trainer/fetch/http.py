"""Download one file over http(s), streaming to disk, with bounded timeouts and retries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maap_api.sources import shown_location

from maap_trainer.fetch.errors import fetch_error, unreachable
from maap_trainer.fetch.meter import TransferMeter

CONNECT_TIMEOUT_SECONDS = 10.0
# Between two reads of the body: a stalled server fails the stage instead of hanging it.
READ_TIMEOUT_SECONDS = 60.0
CONNECT_RETRIES = 2
CHUNK_BYTES = 1 << 20


def download_http(
    field: str, url: str, target: Path, on_report: Callable[[str], None] | None = None
) -> int:
    """Stream `url` into `target` (which the caller discards on failure); returns its bytes."""
    import httpx

    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    transport = httpx.HTTPTransport(retries=CONNECT_RETRIES)
    # identity: the bytes on disk are the bytes the sha256 in the spec was computed over.
    headers = {"Accept-Encoding": "identity", "User-Agent": "maap-fetch"}
    try:
        with (
            httpx.Client(
                timeout=timeout, transport=transport, follow_redirects=True, headers=headers
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise fetch_error(field, url, f"{response.status_code} {response.reason_phrase}")
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            meter = TransferMeter(f"{field} {shown_location(url)}", expected, on_report=on_report)
            with target.open("wb") as handle:
                for chunk in response.iter_raw(CHUNK_BYTES):
                    handle.write(chunk)
                    meter.add(len(chunk))
            meter.finish()
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise unreachable(field, url, url, exc) from None
    except httpx.TimeoutException:
        raise fetch_error(
            field, url, f"read timed out (no data for {READ_TIMEOUT_SECONDS:.0f} s)"
        ) from None
    except httpx.TransportError as exc:
        raise fetch_error(field, url, f"connection broken ({exc})") from None
    except httpx.InvalidURL as exc:
        raise fetch_error(field, url, f"not a valid URL ({exc})") from None
    if expected is not None and meter.done != expected:
        raise fetch_error(field, url, f"truncated: got {meter.done} of {expected} bytes")
    return meter.done
