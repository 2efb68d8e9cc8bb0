"""Progress of a long transfer, as log lines a user reads with `kubectl logs`.

A line every few seconds (bytes so far, of how many, and the rate), then one at the end.
`add` may be called from several threads at once (boto3's transfer callbacks are), and a
DirectoryMeter samples a directory that a library fills without telling us how far it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maap_api.units import human_size

log = logging.getLogger("maap.fetch")

REPORT_EVERY_SECONDS = 5.0


class TransferMeter:
    """Counts bytes of one transfer and logs how it goes."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        verb: str = "fetched",
        on_report: Callable[[str], None] | None = None,
        every: float = REPORT_EVERY_SECONDS,
    ) -> None:
        self.label, self.total, self.verb = label, total, verb
        self.done = 0
        self._on_report = on_report
        self._every = every
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = self._start

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if now - self._last < self._every:
                return
            self._last = now
        self._report(self.status())

    def set(self, done: int) -> None:
        with self._lock:
            delta = done - self.done
        self.add(max(delta, 0))

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self._start, 1e-6)

    def status(self) -> str:
        of = ""
        if self.total:
            of = f" of {human_size(self.total)} ({100 * self.done / self.total:.0f}%)"
        return f"{self.label}: {human_size(self.done)}{of}, {human_size(self.rate())}/s"

    def finish(self) -> None:
        seconds = time.monotonic() - self._start
        self._report(
            f"{self.label}: {self.verb} {human_size(self.done)} in {seconds:.1f} s "
            f"({human_size(self.rate())}/s)"
        )

    def _report(self, line: str) -> None:
        log.info("%s", line)
        if self._on_report is not None:
            self._on_report(line)


class DirectoryMeter:
    """Samples the bytes under a directory in a thread, for downloads a library runs."""

    def __init__(self, meter: TransferMeter, directory: Path) -> None:
        self.meter, self.directory = meter, directory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="maap-fetch-meter", daemon=True)

    def __enter__(self) -> DirectoryMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.meter.set(_bytes_under(self.directory))

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.meter.set(_bytes_under(self.directory))


def _bytes_under(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # a file renamed or removed while we looked
            continue
    return total
