"""Reading the Salt master's event bus, for ever: reconnects, health events, a deafness watchdog.

In: events from a listener (`salt.utils.event.get_master_event(..., listen=True)` in the engine).
Out: every event handed to `Relay.offer`; every `health_interval_s` a `saltmarsh/relay/health`
event fired on the bus with the relay's counters.

No error ends the loop: when `get_event` raises, the listener is destroyed and made again after
a capped backoff. A listener can also go deaf without raising (the master's publisher restarted
under it); the relay hears its own health events, so two of them fired and never heard mean the
listener is replaced. Health events are relayed like any other `saltmarsh/*` event, once each:
relaying an event never fires one, so there is no loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from saltmarsh.relay.sender import HEALTH_TAG, Relay
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy

log = logging.getLogger(__name__)

POLL_S = 0.2  # how long one get_event waits: the reader's tick when the bus is quiet
DEAF_AFTER_UNHEARD = 2
# Capped doubling, reset once the bus works again. No jitter: there is one relay per master, so
# no herd to spread out.
BUS_BACKOFF = BackoffPolicy(base_s=0.5, cap_s=30.0, jitter=False)


class Listener(Protocol):
    def get_event(self, wait: float = ..., tag: str = ..., full: bool = ..., auto_reconnect: bool = ...) -> Any: ...

    def destroy(self) -> None: ...


class Firer(Protocol):
    def fire_event(self, data: dict[str, Any], tag: str, timeout: int = ...) -> Any: ...

    def destroy(self) -> None: ...


def _close(handle: Listener | Firer | None) -> None:
    if handle is None:
        return
    try:
        handle.destroy()
    except Exception:  # a half-dead socket may fail to close; it is dropped either way
        log.debug("closing a salt event handle failed", exc_info=True)


class BusReader:
    """The engine's main loop; `run` returns only when `stop` is set."""

    def __init__(
        self,
        relay: Relay,
        open_listener: Callable[[], Listener],
        open_firer: Callable[[], Firer],
        health_interval_s: float,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.relay = relay
        self.open_listener = open_listener
        self.open_firer = open_firer
        self.health_interval_s = health_interval_s
        self.stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._backoff = backoff if backoff is not None else Backoff(BUS_BACKOFF)
        self._listener: Listener | None = None
        self._firer: Firer | None = None
        self._next_health = clock() + health_interval_s
        self._unheard = 0  # health events fired since we last heard one of ours

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.poll()
        finally:
            _close(self._listener)
            _close(self._firer)
            self._listener = self._firer = None

    def poll(self) -> None:
        """One get_event, its hand-over, and the periodic duties."""
        event = self._read()
        if isinstance(event, Mapping):
            tag, data = event.get("tag"), event.get("data")
            if isinstance(tag, str) and isinstance(data, Mapping):
                if tag == HEALTH_TAG:
                    self._unheard = 0
                self.relay.offer(tag, data)
        self.relay.tick()
        if self._clock() >= self._next_health:
            self._next_health = self._clock() + self.health_interval_s
            self.fire_health()

    def _read(self) -> Any:
        try:
            if self._listener is None:
                self._listener = self.open_listener()
            event = self._listener.get_event(wait=POLL_S, full=True, auto_reconnect=True)
        except Exception as err:  # the loop outlives any bus failure
            self._reconnect(f"{type(err).__name__}: {err}")
            return None
        self._backoff.reset()
        return event

    def _reconnect(self, why: str) -> None:
        delay = self._backoff.next_delay()
        log.warning(
            "salt event bus lost; reconnecting",
            extra={"event": "relay_bus_reconnect", "why": why[:300], "delay_s": delay},
        )
        self.relay.note(bus_reconnects=1)
        self.relay.note_error(f"bus: {why}")
        _close(self._listener)
        self._listener = None
        self.stop.wait(delay)

    def fire_health(self) -> None:
        if self._unheard >= DEAF_AFTER_UNHEARD:
            self._unheard = 0
            self._reconnect(f"{DEAF_AFTER_UNHEARD} health events fired and never heard back")
        try:
            if self._firer is None:
                self._firer = self.open_firer()
            sent = self._firer.fire_event(self.relay.health(), HEALTH_TAG)
        except Exception as err:  # reported next time; the relay goes on
            sent = False
            self.relay.note_error(f"health event: {type(err).__name__}: {err}")
        if sent is False:
            _close(self._firer)
            self._firer = None
            return
        self._unheard += 1
