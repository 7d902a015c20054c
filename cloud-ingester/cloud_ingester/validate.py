"""The ingester's validate stage: raw MQTT messages to `Delivery`s or `DeadLetter`s; pure, total over any input."""

from __future__ import annotations

import functools
import logging

from saltmarsh.contract.envelope import Limits, parse
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import ID_PATTERN
from saltmarsh.mqtt.codec import GATEWAY_PROPERTY
from saltmarsh.mqtt.wire import Publish
from saltmarsh.sinks.base import DeadLetter, Delivery

log = logging.getLogger(__name__)

Outcome = Delivery | DeadLetter


def validate_publishes(publishes: list[Publish], received_ms: int, limits: Limits) -> list[Outcome]:
    """One outcome per message, in order: what arrived in one read, all judged by one clock.

    A valid message that carries the retain flag is refused as `retained`: the ingester subscribes
    with Retain As Published, so the flag means the sender asked the broker to keep the message as
    a last value, which is wrong for a stream of readings. Retain Handling 2 on that subscription
    keeps the broker from sending its kept copy at every (re)subscribe, so the one live copy is
    the one counted. A message that is invalid anyway keeps its own reason.
    """
    outcomes: list[Outcome] = []
    append = outcomes.append
    for publish in publishes:
        outcome = validate(publish.topic, publish.payload, received_ms, gateway_of(publish), limits)
        if publish.retain and isinstance(outcome, Delivery):
            outcome = _retained(publish, received_ms)
        append(outcome)
    return outcomes


def gateway_of(publish: Publish) -> str | None:
    for name, value in publish.user_properties:
        if name == GATEWAY_PROPERTY:
            return value
    return None


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
        return DeadLetter.of(received_ms, topic, payload, reason=err.reason, field=err.field, detail=err.detail)
    except Exception as err:
        # parse is fuzzed to raise only ValidationError; this is the seatbelt for a bug in it.
        log.exception("validation crashed", extra={"event": "validate_bug", "topic": topic[:200]})
        detail = f"validator error: {err!r}"[:200]
        return DeadLetter.of(received_ms, topic, payload, reason=Reason.INVALID_VALUE, field="payload", detail=detail)
    return Delivery(envelope, received_ms, None if gateway is None else _checked_gateway(gateway))


def _retained(publish: Publish, received_ms: int) -> DeadLetter:
    return DeadLetter.of(
        received_ms,
        publish.topic,
        publish.payload,
        reason=Reason.RETAINED,
        field="retain",
        detail="published with the retain flag; clear it on the broker with an empty retained publish",
    )


@functools.lru_cache(maxsize=4096)  # a few gateway ids, on every message
def _checked_gateway(gateway: str) -> str | None:
    """The gateway id is transport metadata: a malformed one is dropped, the reading is kept."""
    return gateway if ID_PATTERN.match(gateway) else None
