"""One raw MQTT message to a `Delivery` or a `DeadLetter`; pure, and total over any input."""

from __future__ import annotations

import functools
import logging

from saltmarsh.contract.envelope import Limits, parse
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import ID_PATTERN
from saltmarsh.sinks.base import DeadLetter, Delivery

log = logging.getLogger(__name__)


def validate(
    topic: str, payload: bytes, received_ms: int, gateway: str | None, limits: Limits
) -> Delivery | DeadLetter:
    """Never raises: whatever a device or an attacker sends ends as a row, not a dead service.

    The future-timestamp check uses `received_ms`, the ingester's clock when the message arrived,
    so a batch that waits for a slow sink is not judged by a later clock.
    """
    try:
        envelope = parse(topic, payload, received_ms, limits)
    except ValidationError as err:
        return DeadLetter(received_ms, topic, err.reason, err.field, err.detail, payload)
    except Exception as err:
        # parse is fuzzed to raise only ValidationError; this is the seatbelt for a bug in it.
        log.exception("validation crashed", extra={"event": "validate_bug", "topic": topic[:200]})
        detail = f"validator error: {err!r}"[:200]
        return DeadLetter(received_ms, topic, Reason.INVALID_VALUE, "payload", detail, payload)
    return Delivery(envelope, received_ms, None if gateway is None else _checked_gateway(gateway))


@functools.lru_cache(maxsize=4096)  # a few gateway ids, on every message
def _checked_gateway(gateway: str) -> str | None:
    """The gateway id is transport metadata: a malformed one is dropped, the reading is kept."""
    return gateway if ID_PATTERN.match(gateway) else None
