"""The load generator: publisher processes, each one WireClient with a window of QoS 1 in flight.

A publisher sends `count` readings for `devices` devices (reading i goes to device i % devices
with seq i // devices + 1), as fast as its window of unacknowledged messages allows, or paced at
`rate` per second. `count` 0 means "until told to stop". Each stamps `ts` with the send time.
Its own CPU time comes back with the result, so a report can show it is not the bottleneck.
"""

from __future__ import annotations

import multiprocessing.connection
import resource
import time
from dataclasses import dataclass
from typing import Any

from bench.reading import ReadingTemplate, boot_id, device_id
from bench.worker import Worker, context
from saltmarsh.wire.client import WireClient
from saltmarsh.wire.codec import RC_FIRST_FAILURE

_IDLE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class PublishPlan:
    port: int
    client_id: str
    device_prefix: str
    devices: int = 100
    count: int = 0  # 0: until stopped
    window: int = 1000  # QoS 1 messages awaiting PUBACK
    rate: float = 0.0  # messages per second; 0: as fast as the window allows
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class PublishResult:
    sent: int
    acked: int
    refused: int  # PUBACK reason codes >= 0x80
    started_s: float  # wall clock of the first publish
    finished_s: float  # wall clock of the last PUBACK
    cpu_s: float  # this process's user + system time while publishing

    @property
    def rate(self) -> float:
        span = self.finished_s - self.started_s
        return self.acked / span if span > 0 else 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def publish_loop(plan: PublishPlan, progress: Any, stop: Any) -> PublishResult:
    """The hot loop; `progress` is a shared counter of acked messages, `stop` an Event."""
    client = WireClient(plan.host, plan.port, plan.client_id, clean_start=True)
    connack = client.connect()
    window = max(1, min(plan.window, connack.receive_maximum))
    boot = boot_id()
    templates = [ReadingTemplate.for_device(device_id(plan.device_prefix, i), boot) for i in range(plan.devices)]
    devices = plan.devices
    count = plan.count or 2**62
    interval = 1.0 / plan.rate if plan.rate > 0 else 0.0
    sent = acked = refused = 0
    cpu_start = _cpu_s()
    started = time.time()
    t0 = time.monotonic()
    stop_deadline = 0.0
    try:
        while acked + refused < count:
            if stop.is_set():
                # A counted run is aborted at once; an endless one stops sending and collects its acks.
                if plan.count or client.inflight == 0:
                    break
                stop_deadline = stop_deadline or time.monotonic() + 5.0
                if time.monotonic() > stop_deadline:
                    break
                room = 0
            else:
                room = min(window - client.inflight, count - sent)
                if interval:
                    room = min(room, int((time.monotonic() - t0) / interval) + 1 - sent)
            if room > 0:
                ts_ms = int(time.time() * 1000)
                publish = client.publish
                for i in range(sent, sent + room):
                    template = templates[i % devices]
                    publish(template.topic, template.payload_format % (i // devices + 1, ts_ms))
                sent += room
                client.flush()
            if interval:
                timeout = max(0.0, t0 + sent * interval - time.monotonic())
            else:
                timeout = 0.0 if sent < count and client.inflight < window else _IDLE_POLL_S
            _, pubacks = client.poll(min(timeout, _IDLE_POLL_S))
            for _packet_id, reason in pubacks:
                if reason >= RC_FIRST_FAILURE:
                    refused += 1
                else:
                    acked += 1
            progress.value = acked
    finally:
        finished = time.time()
        cpu = _cpu_s() - cpu_start
        client.close()
    return PublishResult(sent, acked, refused, started, finished, cpu)


def _publisher_main(plan: PublishPlan, progress: Any, stop: Any, conn: multiprocessing.connection.Connection) -> None:
    conn.send(publish_loop(plan, progress, stop))
    conn.close()


class Publishers:
    """`processes` publishers sharing `total` readings, each with its own device prefix."""

    def __init__(
        self,
        port: int,
        name: str,
        *,
        total: int = 0,
        processes: int = 1,
        devices: int = 100,
        window: int = 1000,
        rate: float = 0.0,
    ) -> None:
        ctx = context()
        self.stop_event = ctx.Event()
        self.plans = []
        per, extra = divmod(total, processes)
        for p in range(processes):
            count = per + (1 if p < extra else 0)
            if total and count == 0:
                continue
            self.plans.append(
                PublishPlan(
                    port=port,
                    client_id=f"bench-{name}-{p}",
                    device_prefix=f"{name}{p}",
                    devices=max(1, devices // processes),
                    count=count,
                    window=window,
                    rate=rate / processes,
                )
            )
        self.progress = [ctx.Value("q", 0, lock=False) for _ in self.plans]
        self.workers: list[Worker[PublishResult]] = [
            Worker(f"publisher-{plan.client_id}", _publisher_main, (plan, progress, self.stop_event))
            for plan, progress in zip(self.plans, self.progress, strict=True)
        ]

    @property
    def expected(self) -> int:
        return sum(plan.count for plan in self.plans)

    def start(self) -> Publishers:
        for worker in self.workers:
            worker.start()
        return self

    def acked(self) -> int:
        return sum(int(p.value) for p in self.progress)

    def results(self, timeout_s: float) -> list[PublishResult]:
        deadline = time.monotonic() + timeout_s
        return [w.result(max(1.0, deadline - time.monotonic())) for w in self.workers]

    def finish(self, timeout_s: float = 30.0) -> list[PublishResult]:
        """Ask paced or endless publishers to stop, and collect every result."""
        self.stop_event.set()
        return self.results(timeout_s)

    def stop(self) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.stop()
