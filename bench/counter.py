"""The counting subscriber: one WireClient in its own process that counts, dedups and times readings.

Every reading is identified by (device, seq) and checked against a per-device bitmap, so the
result says how many distinct readings arrived and how many were repeats: a bench figure is
only reported with its delivery count verified. Readings from devices whose id starts with
`live` are counted apart, with their latency (receive time - the `ts` stamped at send).

With `persistent` the subscriber keeps its session on the broker (so readings queue for it
while it is away) and reconnects when the broker goes down and comes back.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing.connection
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from bench.reading import LIVE_PREFIX, SITE, device_of, parse_seq_ts
from bench.worker import Worker, context
from saltmarsh.wire.client import WireClient
from saltmarsh.wire.codec import WireError

_POLL_S = 0.05
_TIMELINE_EVERY_S = 0.05
_RECONNECT_EVERY_S = 0.05
_SESSION_EXPIRY_S = 3600


@dataclass(frozen=True, slots=True)
class CountPlan:
    port: int
    client_id: str
    topic_filter: str = f"saltmarsh/v1/{SITE}/+/reading"
    expect: int = 0  # stop once this many distinct non-live readings arrived; 0: until stopped
    persistent: bool = False
    host: str = "127.0.0.1"


@dataclass(slots=True)
class CountResult:
    received: int = 0  # every PUBLISH, repeats included
    unique: int = 0  # distinct non-live readings
    duplicates: int = 0
    live_unique: int = 0
    first_s: float = math.nan  # wall clock of the first non-live reading
    last_s: float = math.nan  # ... and of the last new one
    done_s: float = math.nan  # when `expect` was reached
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (wall s, unique so far)
    live_latency: list[tuple[int, int]] = field(default_factory=list)  # (sent ms, latency ms)
    cpu_s: float = 0.0
    reconnects: int = 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connect(plan: CountPlan, deadline: float) -> WireClient:
    while True:
        client = WireClient(
            plan.host,
            plan.port,
            plan.client_id,
            clean_start=not plan.persistent,
            session_expiry_s=_SESSION_EXPIRY_S if plan.persistent else 0,
            receive_maximum=65_535,
        )
        try:
            client.connect(timeout_s=5.0)
            client.subscribe([(plan.topic_filter, 1)])
            return client
        except (OSError, TimeoutError, WireError):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(_RECONNECT_EVERY_S)


def count_loop(plan: CountPlan, progress: Any, ready: Any, stop: Any) -> CountResult:
    result = CountResult()
    seen: dict[str, bytearray] = {}
    client = _connect(plan, time.monotonic() + 10)
    ready.set()
    cpu_start = _cpu_s()
    next_sample = 0.0
    live_prefix = LIVE_PREFIX
    try:
        while not stop.is_set():
            try:
                publishes, _ = client.poll(_POLL_S)
            except (OSError, WireError):
                if not plan.persistent:
                    raise
                client.close()
                client = _connect(plan, time.monotonic() + 3600)
                result.reconnects += 1
                continue
            if publishes:
                now_s = time.time()
                now_ms = int(now_s * 1000)
                ack = client.ack
                for message in publishes:
                    if message.qos:
                        ack(message.packet_id)
                    device = device_of(message.topic)
                    seq, ts_ms = parse_seq_ts(message.payload)
                    bitmap = seen.get(device)
                    if bitmap is None:
                        bitmap = seen[device] = bytearray(1024)
                    if seq >= len(bitmap):
                        bitmap.extend(bytes(max(seq + 1, 2 * len(bitmap)) - len(bitmap)))
                    if bitmap[seq]:
                        result.duplicates += 1
                        continue
                    bitmap[seq] = 1
                    if device.startswith(live_prefix):
                        result.live_unique += 1
                        result.live_latency.append((ts_ms, now_ms - ts_ms))
                    else:
                        result.unique += 1
                        result.last_s = now_s
                        if math.isnan(result.first_s):
                            result.first_s = now_s
                result.received += len(publishes)
                client.flush()
                progress.value = result.unique
                if plan.expect and result.unique >= plan.expect and math.isnan(result.done_s):
                    result.done_s = now_s
                    result.timeline.append((now_s, result.unique))
                    break
            mono = time.monotonic()
            if mono >= next_sample:
                result.timeline.append((time.time(), result.unique))
                next_sample = mono + _TIMELINE_EVERY_S
    finally:
        result.cpu_s = _cpu_s() - cpu_start
        with contextlib.suppress(OSError):
            client.flush()
        client.close()
    return result


def _counter_main(
    plan: CountPlan, progress: Any, ready: Any, stop: Any, conn: multiprocessing.connection.Connection
) -> None:
    conn.send(count_loop(plan, progress, ready, stop))
    conn.close()


class Counter:
    """The counting subscriber as a process; `start` returns once it is subscribed."""

    def __init__(self, plan: CountPlan) -> None:
        ctx = context()
        self.plan = plan
        self.ready = ctx.Event()
        self.stop_event = ctx.Event()
        self.progress = ctx.Value("q", 0, lock=False)
        self.worker: Worker[CountResult] = Worker(
            f"counter-{plan.client_id}", _counter_main, (plan, self.progress, self.ready, self.stop_event)
        )

    def start(self, timeout_s: float = 20.0) -> Counter:
        self.worker.start()
        if not self.ready.wait(timeout_s):
            self.worker.stop()
            raise TimeoutError(f"counter {self.plan.client_id} did not subscribe within {timeout_s:.0f} s")
        return self

    @property
    def pid(self) -> int:
        return self.worker.pid

    def unique(self) -> int:
        return int(self.progress.value)

    def wait_for(self, count: int, timeout_s: float, progress_label: str = "", stall_s: float = 0.0) -> bool:
        """Block until `count` distinct readings arrived (True), or the timeout passed, or (with
        `stall_s`) nothing new arrived for that long (False): a hop that dropped readings."""
        from bench.progress import Progress

        meter = Progress(progress_label, count) if progress_label else None
        deadline = time.monotonic() + timeout_s
        last_got, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.unique()
            now = time.monotonic()
            if meter is not None:
                meter.update(got)
            if got >= count:
                return True
            if got != last_got:
                last_got, last_change = got, now
            elif stall_s and now - last_change > stall_s:
                return False
            if not self.worker.alive():
                return self.unique() >= count
            time.sleep(0.02)
        return False

    def finish(self, timeout_s: float = 30.0) -> CountResult:
        self.stop_event.set()
        return self.worker.result(timeout_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.worker.stop()
