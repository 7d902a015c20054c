"""A sensor's commands: what arrives on its `cmd` topics in, its outcomes spooled as `cmdres` out.

paho's thread only queues a message (`CommandInbox.offer`): an op may take a while, and paho's
loop must go on acknowledging. One thread per process runs the queue through each device's
`CommandExecutor` (`saltmarsh.commands.executor`: signature, address, deadline, journal), whose
outcomes the device's agent spools like readings (`Agent.spool_outcome`), in the never-evicted
lane. A full queue refuses the command, counted: the gateway keeps it and delivers it again.

The sensor's ops (`saltmarsh.contract.ops`, role "sensor") are `SensorOps`: `set_interval`,
`read_now`, `identify` (the board's activity LED, if the agent may drive it) and
`restart_agent`, which exits with `EXIT_RESTART` once its result is spooled, so that the unit's
`Restart=on-failure` starts a new boot. In a swarm the process is every device's: it restarts them all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saltmarsh.commands.executor import Addressee, CommandExecutor, Handler, OpFailed
from saltmarsh.commands.journal import CommandJournal
from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.command import REMAINING_PROPERTY, parse_remaining
from saltmarsh.contract.command_state import CommandOutcome, Scalar
from saltmarsh.contract.ops import SENSOR
from saltmarsh.contract.topics import BROADCAST, Channel, Topic
from sensor.agent import Agent

log = logging.getLogger(__name__)

EXIT_RESTART = 75  # EX_TEMPFAIL: not a success, so Restart=on-failure brings the agent back
IDLE_S = 1.0
PRUNE_EVERY_S = 3600.0
# The activity LED of a Raspberry Pi: "ACT" on Bookworm kernels, "led0" before.
LED_DIRS = (Path("/sys/class/leds/ACT"), Path("/sys/class/leds/led0"))


def command_topics(cfg: SensorConfig) -> list[str]:
    """The topics a device takes commands on: its own, and its site's broadcast."""
    return [str(Topic(cfg.site, device, Channel.COMMAND)) for device in (cfg.device, BROADCAST)]


def remaining_of(user_properties: Sequence[tuple[str, str]], expiry_s: int | None) -> int | None:
    """The time left that the gateway handed over: its `remaining_ms` property, else the MQTT 5
    message expiry (whole seconds) the broker counted down, else None (the body's deadline rules)."""
    for name, value in user_properties:
        if name == REMAINING_PROPERTY:
            parsed = parse_remaining(value)
            if parsed is not None:
                return parsed
    return None if expiry_s is None else expiry_s * 1000


class Led:
    """The board's LED, blinked by the kernel's timer trigger and put back as it was."""

    def __init__(self, dirs: Sequence[Path] = LED_DIRS) -> None:
        self.dirs = dirs
        self._restore: threading.Timer | None = None
        self._was = "none"
        self._lock = threading.Lock()

    def _trigger(self) -> Path | None:
        for led in self.dirs:
            trigger = led / "trigger"
            if trigger.exists():
                return trigger
        return None

    def blink(self, duration_s: float) -> str | None:
        """Blink for `duration_s` (without blocking); the LED's name, or None if there is none we may drive."""
        trigger = self._trigger()
        if trigger is None:
            return None
        with self._lock:
            try:
                if self._restore is not None:
                    self._restore.cancel()  # blinking already: longer, and back to what was before
                else:
                    # The trigger file lists every trigger, the current one in brackets.
                    current = trigger.read_text().split()
                    self._was = next((t[1:-1] for t in current if t.startswith("[")), "none")
                trigger.write_text("timer")
            except OSError as err:
                raise OpFailed(f"{trigger.parent.name}: {err.strerror or err}") from None
            self._restore = threading.Timer(duration_s, self._put_back, args=(trigger,))
            self._restore.daemon = True
            self._restore.start()
        return trigger.parent.name

    def _put_back(self, trigger: Path) -> None:
        with self._lock:
            self._restore = None
            was = self._was
        try:
            trigger.write_text(was)
        except OSError as err:
            log.warning("LED not restored", extra={"event": "led_restore_failed", "why": str(err)})


@dataclass
class SensorOps:
    """The sensor role's ops, on one device's agent."""

    agent: Agent
    led: Led = field(default_factory=Led)
    restart_requested: bool = False

    def handlers(self) -> dict[str, Handler]:
        return {
            "set_interval": self.set_interval,
            "read_now": self.read_now,
            "identify": self.identify,
            "restart_agent": self.restart_agent,
        }

    def set_interval(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        interval_s = float(args["interval_s"])
        was = self.agent.set_interval(interval_s)
        return {"interval_s": interval_s, "was_s": was}

    def read_now(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        reading = self.agent.tick(time.time())
        if reading is None:
            raise OpFailed("no reading: the driver had none, or it was refused (see the agent's counters)")
        return {"seq": reading.seq}

    def identify(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        duration_s = float(args["duration_s"])
        led = self.led.blink(duration_s)
        log.warning(
            "identify: %s",
            f"blinking {led} for {duration_s:g} s" if led else "this board has no LED to blink",
            extra={"event": "identify", "device": self.agent.cfg.device, "duration_s": duration_s},
        )
        return {"led": led or "", "duration_s": duration_s}

    def restart_agent(self, args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        # Not now: first the journal records the result and the agent spools it (CommandInbox).
        self.restart_requested = True
        return {"restarting": True}


@dataclass(frozen=True, slots=True)
class Delivery:
    executor: CommandExecutor
    ops: SensorOps
    topic: str
    payload: bytes
    retained: bool
    remaining_ms: int | None


class CommandInbox:
    """The queue between paho's threads and the one thread that runs commands, for every device
    of this process; `restart` is called once a `restart_agent` result is spooled."""

    def __init__(self, queue_max: int, restart: Callable[[], None]) -> None:
        self.restart = restart
        self.overflow_total = 0
        self._queue: queue.Queue[Delivery] = queue.Queue(queue_max)
        self._executors: list[CommandExecutor] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-commands", daemon=True)

    def add(self, executor: CommandExecutor) -> None:
        self._executors.append(executor)

    def offer(self, delivery: Delivery) -> bool:
        """Queue one message (on paho's thread); False, counted, when the queue is full."""
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self.overflow_total += 1
            total = self.overflow_total
            extra = {"event": "command_queue_full", "topic": delivery.topic[:200], "overflow_total": total}
            log.warning("command queue full; the gateway will deliver it again", extra=extra)
            return False
        return True

    def start(self) -> None:
        self._prune()
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _prune(self) -> None:
        now_ms = int(time.time() * 1000)
        for executor in self._executors:
            executor.journal.prune(now_ms)

    def _run(self) -> None:
        pruned = time.monotonic()
        while not self._closing.is_set():
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                self._prune()
            try:
                delivery = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                continue
            try:
                delivery.executor.handle(
                    delivery.topic, delivery.payload, retained=delivery.retained, remaining_ms=delivery.remaining_ms
                )
            except Exception:
                # A journal that fails (a full disk) must not end every later command: the gateway
                # delivers this one again, and the journal decides then.
                extra = {"event": "command_error", "topic": delivery.topic[:200]}
                log.exception("command handling failed", extra=extra)
            if delivery.ops.restart_requested:
                log.warning("restarting the agent, as commanded", extra={"event": "restart_commanded"})
                self.restart()
                return


def command_inbox(cfg: SensorConfig, stop: threading.Event, restarting: threading.Event) -> CommandInbox | None:
    """The process's one command queue, if its config trusts a command key; a commanded restart
    sets `restarting`, then `stop`, so the agent stops as on SIGTERM."""
    if not cfg.commands.enabled:
        return None

    def restart() -> None:
        restarting.set()
        stop.set()

    return CommandInbox(cfg.commands.queue_max, restart)


def open_commands(cfg: SensorConfig, agent: Agent) -> tuple[CommandExecutor, SensorOps]:
    """One device's executor and ops, its journal opened (beside its spool)."""
    ops = SensorOps(agent)
    journal = CommandJournal.open(cfg.journal_path)

    def report(outcome: CommandOutcome) -> None:
        agent.spool_outcome(outcome, time.time())

    executor = CommandExecutor(
        Addressee(SENSOR, cfg.site, cfg.device),
        cfg.commands.keys(),
        journal,
        handlers=ops.handlers(),
        report=report,
    )
    return executor, ops


def message_delivery(executor: CommandExecutor, ops: SensorOps, message: Any) -> Delivery:
    """A paho message as a Delivery: its topic, payload, retain flag and the time left it carries."""
    props = getattr(message, "properties", None)
    user = list(getattr(props, "UserProperty", []) or [])
    expiry = getattr(props, "MessageExpiryInterval", None)
    return Delivery(
        executor,
        ops,
        message.topic,
        bytes(message.payload),
        bool(message.retain),
        remaining_of(user, expiry if isinstance(expiry, int) else None),
    )
