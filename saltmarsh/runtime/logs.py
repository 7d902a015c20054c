"""Structured logs: one JSON object per line on stdout, which journald keeps as-is.

Fields passed through `extra=` land at the top level, so `journalctl -o cat | jq 'select(.event==...)'`
works. Secrets are never passed to a logger; config objects hide them in their repr.

`service` says whose record it is: the service's name for what the project's own loggers emit in
the service's process, otherwise the logger's top-level package (`salt`, `paho`, `urllib3`). A
library's record, or one relayed from another process (salt-factories relays its daemons' records
into the test process), never passes for the service that configured logging.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# The packages whose loggers speak for the service that runs them: the shared core and the services' own.
OWN_PACKAGES = frozenset({"saltmarsh", "gateway", "sensor", "cloud_ingester"})


def origin(record: logging.LogRecord, service: str) -> str:
    """Whose record this is: `service` if one of the project's loggers made it in this process, else
    the logger's top-level package."""
    package = record.name.partition(".")[0]
    return service if package in OWN_PACKAGES and record.process == os.getpid() else package


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": origin(record, self.service),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is when a record is emitted, not when the handler was made,
    so a replaced stdout (a test's capture, a daemon's redirect) never leaves a closed stream behind."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(service: str, level: str = "info") -> None:
    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_oversized(
    logger: logging.Logger, *, refused: str, event: str, topic: str, size_bytes: int, limit: int, total: int
) -> None:
    """The one line every edge writes when it refuses a message over `max_message_bytes`."""
    logger.warning(
        "%s: %d bytes on %s is over max_message_bytes %d",
        refused,
        size_bytes,
        topic,
        limit,
        extra={
            "event": event,
            "topic": topic,
            "size_bytes": size_bytes,
            "max_message_bytes": limit,
            "oversized_total": total,
        },
    )
