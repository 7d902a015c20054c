"""Each command's terminal state announced on the master's bus, for reactors: the relay's `[commands]`.

In: the commander's rollout store and the sink's per-target states (`commander_config`).
Out: one `saltmarsh/cmd/<rollout>/<state>` event per target that reaches a terminal state, with
rollout, cmd_id, site, device, minion, op, state, hop, reason and `send_to_result_s` (None when
either time is unknown); the target is then marked announced in the store.

Here, in the relay, rather than in saltmarsh.commands: it runs only inside the relay engine, with
the relay's firer and lifecycle, and saltmarsh.commands (which devices import too) stays free of
the Salt bus. What a state means, and how the sink's states reach the store, stay there
(`RolloutStore`, `dispatch.collect`).

Every `poll_s`, for each rollout with a target not yet announced in its present state: the sink's
states are collected into the store, the store times out what is overdue (the dispatcher's own
rule; the CLI may have exited long ago), and each terminal target not yet announced is fired,
then marked. So an event is delivered at least once: a crash between the fire and the mark fires
it again after the restart, and reactors must be idempotent (Salt reactors usually are). A
TIMED_OUT that a late result replaces is announced again in its new state, if the result is
collected while the rollout is still polled (or later by `saltmarsh cmd status`, which puts the
rollout back among those polled). A rollout whose every target is announced is no longer read.

A store, sink or bus that fails is logged (once per new error), counted, and tried again at the
next poll; nothing here ends the engine.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saltmarsh.commands.dispatch import collect
from saltmarsh.commands.rollout import RolloutStore, Unannounced
from saltmarsh.commands.states import ReadStates, state_reader
from saltmarsh.config.commander import load_commander_config
from saltmarsh.config.relay import CommandsConfig
from saltmarsh.relay.bus import Firer

log = logging.getLogger(__name__)

TAG_PREFIX = "saltmarsh/cmd"


def event_tag(announced: Unannounced) -> str:
    return f"{TAG_PREFIX}/{announced.rollout}/{announced.state.value}"


def event_data(announced: Unannounced) -> dict[str, Any]:
    target = announced.target
    return {
        "rollout": announced.rollout,
        "cmd_id": announced.cmd_id,
        "site": target.site,
        "device": target.device,
        "minion": target.minion,
        "op": announced.op,
        "state": announced.state.value,
        "hop": announced.hop,
        "reason": announced.reason,
        "send_to_result_s": announced.send_to_result_s,
    }


@dataclass
class AnnounceCounters:
    announced_total: int = 0
    errors_total: int = 0
    last_error: str | None = None


class CommandAnnouncer:
    """See the module docstring; `poll` is one pass, `start` runs it every `poll_s` on a thread."""

    def __init__(
        self,
        cfg: CommandsConfig,
        open_firer: Callable[[], Firer],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.open_firer = open_firer
        self.counters = AnnounceCounters()
        self._clock = clock
        self._store: RolloutStore | None = None
        self._read_states: ReadStates | None = None
        self._firer: Firer | None = None
        self._logged: str | None = None  # the last error logged, so a lasting one is logged once
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="saltmarsh-relay-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.close()

    def _run(self) -> None:
        while not self._stopping.wait(self.cfg.poll_s):
            self.poll()

    def poll(self) -> int:
        """One pass over the rollouts still to announce; how many events it fired. Never raises."""
        failed_before = self.counters.errors_total
        try:
            fired = self._poll()
        except Exception as err:  # the store's file or the commander's config: opened again next poll
            self._failed("store", err)
            self._close_store()
            return 0
        if self.counters.errors_total == failed_before and self._logged is not None:
            log.info("command events flowing again", extra={"event": "relay_commands_recovered"})
            self._logged = None
        return fired

    def _poll(self) -> int:
        store = self._open_store()
        if store is None:
            return 0
        fired = 0
        for rollout in store.rollouts_to_announce():
            if self._collect(store, rollout):
                store.time_out(rollout, int(self._clock() * 1000))
            pending = store.unannounced(rollout)
            announced = self._fire_all(pending)
            store.mark_announced(announced)
            fired += len(announced)
            if len(announced) < len(pending):
                break  # the bus failed: the rest wait for the next poll
        return fired

    def _open_store(self) -> RolloutStore | None:
        if self._store is None:
            commander = load_commander_config(self.cfg.commander_config)
            if not commander.store.exists():
                return None  # no rollout yet; opening would create the commander's file as ours
            self._read_states = state_reader(commander.sink)
            self._store = RolloutStore.open(commander.store)
        return self._store

    def _collect(self, store: RolloutStore, rollout: str) -> bool:
        """The sink's states into the store; False when the sink could not be read. Then the
        store's own terminal states (canceled, expired at the cloud) are still announced, but
        nothing is timed out on states it could not see."""
        assert self._read_states is not None
        try:
            records = self._read_states(rollout)
        except Exception as err:  # the sink is the ingesters': locked, moved, damaged
            self._failed("sink", err)
            return False
        collect(store, rollout, records)
        return True

    def _fire_all(self, pending: list[Unannounced]) -> list[Unannounced]:
        """Fire each in turn; those the bus took. The first failure ends the batch."""
        fired: list[Unannounced] = []
        for announced in pending:
            try:
                if self._firer is None:
                    self._firer = self.open_firer()
                sent = self._firer.fire_event(event_data(announced), event_tag(announced))
            except Exception as err:  # reported below; the target stays unannounced
                self._failed("bus", err)
                sent = False
            else:
                if sent is False:
                    self._failed("bus", RuntimeError(f"fire_event refused {event_tag(announced)}"))
            if sent is False:
                self._close_firer()
                break
            fired.append(announced)
        self.counters.announced_total += len(fired)
        return fired

    def _failed(self, what: str, err: Exception) -> None:
        text = f"{what}: {type(err).__name__}: {err}"[:500]
        self.counters.errors_total += 1
        self.counters.last_error = text
        if text != self._logged:
            log.warning(
                "command events: %s unavailable; trying again next poll",
                what,
                extra={"event": "relay_commands_failed", "why": text},
            )
            self._logged = text

    def health(self) -> dict[str, Any]:
        """For the relay's health event, beside its own counters."""
        return {
            "cmd_announced_total": self.counters.announced_total,
            "cmd_announce_errors_total": self.counters.errors_total,
            "cmd_last_error": self.counters.last_error,
        }

    def _close_firer(self) -> None:
        if self._firer is not None:
            with contextlib.suppress(Exception):  # a half-dead socket may fail to close
                self._firer.destroy()
            self._firer = None

    def _close_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        self._store = self._read_states = None

    def close(self) -> None:
        self._close_firer()
        self._close_store()
