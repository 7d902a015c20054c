"""Service counters, exposed as one JSON file per running service in a shared status directory.

A file needs no port, survives the uplink being down, and is what `saltmarsh status` and the
Salt spool beacon read. Each write is atomic (write, fsync-free rename), so readers never see a
torn document. `updated_ms` lets a reader tell a live service from a stale file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saltmarsh.runtime.metrics import write_metrics

log = logging.getLogger(__name__)

STALE_AFTER_MS = 10_000


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str  # "sensor", "forwarder", "ingester", ...
    instance: str  # device id, gateway id, ingester client id
    pid: int
    updated_ms: int
    counters: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{self.service}-{self.instance}"

    def is_stale(self, now_ms: int) -> bool:
        return now_ms - self.updated_ms > STALE_AFTER_MS

    def state(self, now_ms: int) -> str:
        """live, stale (running but not writing: wedged?) or stopped (its PID is gone)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "stopped"
        except PermissionError:
            pass  # alive, under another user
        return "stale" if self.is_stale(now_ms) else "live"


def write_status(directory: Path, service: str, instance: str, counters: Mapping[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "service": service,
        "instance": instance,
        "pid": os.getpid(),
        "updated_ms": int(time.time() * 1000),
        "counters": dict(counters),
    }
    target = directory / f"{service}-{instance}.json"
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, sort_keys=True, default=str))
    os.replace(tmp, target)


def read_statuses(directory: Path) -> list[ServiceStatus]:
    return read_status_dir(directory)[0]


def read_status_dir(directory: Path) -> tuple[list[ServiceStatus], list[Path]]:
    """Every readable service status in `directory`, and the status files that were not."""
    out: list[ServiceStatus] = []
    skipped: list[Path] = []
    if not directory.is_dir():
        return out, skipped
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            out.append(
                ServiceStatus(
                    service=str(doc["service"]),
                    instance=str(doc["instance"]),
                    pid=int(doc["pid"]),
                    updated_ms=int(doc["updated_ms"]),
                    counters=dict(doc["counters"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            skipped.append(path)  # a file being replaced or not ours; the next read gets it
    return out, skipped


def find_status(directory: Path, service: str, instance: str | None = None) -> ServiceStatus | None:
    """The status file of `service` (and `instance`, if given) in `directory`, or None."""
    return next((s for s in read_statuses(directory) if s.service == service and instance in (None, s.instance)), None)


HEARTBEAT_S = STALE_AFTER_MS / 2000  # an unchanged file is rewritten this often, to show life
# The periodic metrics file is rewritten at most this often: a scraper reads it every 15 s or
# more, and each rewrite costs about 0.8 ms of CPU here, which at a site's 100 msg/s once a
# second would add 8 us to every message. Explicit writes (start, stop) always write it.
METRICS_INTERVAL_S = 10.0


class StatusPublisher:
    """Writes a service's counters every `interval_s` from a daemon thread, and once at stop.

    Counters that have not changed since the last write are written again only every
    `HEARTBEAT_S`: an idle service then costs a snapshot a second, not a file.
    """

    def __init__(
        self,
        directory: Path,
        service: str,
        instance: str,
        snapshot: Callable[[], Mapping[str, Any]],
        interval_s: float = 1.0,
        *,
        metrics_dir: Path | None = None,
    ) -> None:
        self.directory = directory
        self.metrics_dir = metrics_dir  # also as Prometheus text, for node_exporter (runtime.metrics)
        self._metrics_failed = False
        self._metrics_at = 0.0  # monotonic: the last metrics file written
        self.service = service
        self.instance = instance
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"status-{service}", daemon=True)
        self._last: Mapping[str, Any] | None = None
        self._last_at = 0.0

    def start(self) -> None:
        self.write()
        self._thread.start()

    def write(self, only_if_changed: bool = False) -> None:
        counters = self.snapshot()
        now = time.monotonic()
        if only_if_changed and counters == self._last and now - self._last_at < HEARTBEAT_S:
            return
        write_status(self.directory, self.service, self.instance, counters)
        if self.metrics_dir is not None and (not only_if_changed or now - self._metrics_at >= METRICS_INTERVAL_S):
            self._write_metrics(self.metrics_dir, counters)
            self._metrics_at = now
        self._last, self._last_at = counters, now

    def _write_metrics(self, directory: Path, counters: Mapping[str, Any]) -> None:
        # The metrics file is for a scraper: a full or read-only directory is reported, once,
        # and never stops the service or its status file.
        try:
            write_metrics(directory, self.service, self.instance, counters, time.time())
        except OSError as err:
            if not self._metrics_failed:
                log.warning(
                    "metrics file not written",
                    extra={"event": "metrics_write_failed", "metrics_dir": str(directory), "why": repr(err)},
                )
            self._metrics_failed = True
        else:
            self._metrics_failed = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write(only_if_changed=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.write()


class RateMeter:
    """Messages per second over a sliding window of one-second buckets; cheap to call per batch."""

    def __init__(self, window_s: int = 10) -> None:
        self.window_s = window_s
        self._buckets: dict[int, int] = {}

    def add(self, count: int, now_s: float | None = None) -> None:
        second = int(time.monotonic() if now_s is None else now_s)
        self._buckets[second] = self._buckets.get(second, 0) + count
        if len(self._buckets) > self.window_s + 2:
            for old in [s for s in self._buckets if s < second - self.window_s]:
                del self._buckets[old]

    def rate(self, now_s: float | None = None) -> float:
        now = int(time.monotonic() if now_s is None else now_s)
        # The current second is still filling; average the complete ones before it.
        total = sum(c for s, c in self._buckets.items() if now - self.window_s <= s < now)
        return total / self.window_s
