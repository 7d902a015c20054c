"""The load generator: publisher processes, each one connection with a window of QoS 1 in flight.

A publisher sends `count` readings for `devices` devices (reading i goes to device i % devices
with seq i // devices + 1), as fast as its window of unacknowledged messages allows, or paced at
`rate` per second. `count` 0 means "until told to stop". Each stamps `ts` with the send time.
Its own CPU time comes back with the result, so a report can show it is not the bottleneck.

It has to cost far less than the broker it loads, so it works in bulk on a bare link
(`bench.link`): a window's worth of PUBLISHes is minted with one `%` each from per-device
packet formats and written in one go, and PUBACKs are counted by comparing what arrived with
the run of plain successes expected next, not parsed one by one.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import resource
import select
import struct
import time
from dataclasses import dataclass
from typing import Any

from bench.link import open_link, recv_all, send_some
from bench.reading import ReadingTemplate, boot_id, device_id
from bench.worker import Worker, context
from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, message_id
from saltmarsh.contract.errors import ProtocolError
from saltmarsh.mqtt.codec import (
    DISCONNECT,
    DISCONNECT_PACKET,
    MAX_PACKET_ID,
    RC_FIRST_FAILURE,
    decode_disconnect,
    encode_publish,
    parse_stream,
    properties,
    user_property,
)

_U16 = struct.Struct(">H")

_IDLE_POLL_S = 0.05
_NAP_S = 0.001
_TS_DIGITS = 13  # milliseconds since 1970, from 2001 to 2286
_PACKET_IDS = [_U16.pack(i) for i in range(1, MAX_PACKET_ID + 1)]  # message i gets _PACKET_IDS[i % 65535]
# Mosquitto acknowledges one connection's PUBLISHes in order, with the 4-byte PUBACK of a plain
# success: so every PUBACK due next, back to back, is a slice of this (twice round the ids).
_ACK_STREAM = b"".join(b"\x40\x02" + packet_id for packet_id in _PACKET_IDS) * 2
_ACK_SPAN = MAX_PACKET_ID * 4


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
    numbered: bool = True  # as saltmarsh sensors publish: the forwarder confirms them to each device


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


def publish_format(template: ReadingTemplate, seq_digits: int, run: str | None = None) -> bytes:
    """A whole QoS 1 PUBLISH of `template` as a format: `%b` the packet id, `%d` seq (twice when
    numbered: in the `msg` property, as a saltmarsh sensor numbers its readings), `%d` ts.

    The remaining length depends on how many digits seq has (ts has 13), so there is one
    format per digit count; minting a packet is then one `%`.
    """
    seq = 10 ** (seq_digits - 1)
    payload = template.payload(seq, 10 ** (_TS_DIGITS - 1))
    props = b"\x00" if run is None else properties(user_property(MESSAGE_PROPERTY, message_id(run, seq)))
    head = encode_publish(template.topic, payload, 1, 1, props=props)[: -len(payload) - len(props) - 2]
    props_format = props.replace(b"%", b"%%") if run is None else props[:-seq_digits].replace(b"%", b"%%") + b"%d"
    return head.replace(b"%", b"%%") + b"%b" + props_format + template.payload_format


class PacketMint:
    """The load generator's PUBLISH packets: reading i goes to device i % devices, seq i // devices + 1."""

    def __init__(self, templates: list[ReadingTemplate], run: str | None = None) -> None:
        if not 0 < len(templates) <= MAX_PACKET_ID:
            raise ValueError(f"{len(templates)} devices: need 1 to {MAX_PACKET_ID}")
        self.templates = templates
        self.run = run  # numbered in the `msg` property: each device's seq, in this run
        self._formats: dict[int, list[bytes]] = {}
        self._ids = _PACKET_IDS * 2

    def packets(self, first: int, count: int, ts_ms: int) -> bytes:
        """Readings first .. first + count - 1, all stamped `ts_ms`, as one run of bytes."""
        if len(str(ts_ms)) != _TS_DIGITS:
            raise ValueError(f"ts {ts_ms} is not {_TS_DIGITS} digits")
        devices = len(self.templates)
        ids = self._ids
        parts: list[bytes] = []
        i, end = first, first + count
        while i < end:
            seq, d0 = divmod(i, devices)
            seq += 1
            d1 = min(devices, d0 + end - i)
            formats = self._formats.get(len(str(seq))) or self._add_formats(len(str(seq)))
            k = i % MAX_PACKET_ID
            pairs = zip(formats[d0:d1], ids[k : k + d1 - d0], strict=True)
            if self.run is None:
                parts += [fmt % (pid, seq, ts_ms) for fmt, pid in pairs]
            else:
                parts += [fmt % (pid, seq, seq, ts_ms) for fmt, pid in pairs]
            i += d1 - d0
        return b"".join(parts)

    def _add_formats(self, seq_digits: int) -> list[bytes]:
        formats = self._formats[seq_digits] = [publish_format(t, seq_digits, self.run) for t in self.templates]
        return formats


def count_pubacks(data: bytes, done: int) -> tuple[int, int, int]:
    """(successes, refusals, bytes consumed) for the PUBACKs at the front of `data`.

    `done` PUBACKs came before, so the next one is for reading `done`. The common case, a run of
    plain successes in order, is checked with one comparison per 65,535 PUBACKs; anything else
    goes through the codec's parser. A PUBACK out of order, or a DISCONNECT, raises.
    """
    ok = pos = 0
    whole = len(data) - len(data) % 4
    while pos < whole:
        span = min(whole - pos, _ACK_SPAN)
        offset = (done + ok) % MAX_PACKET_ID * 4
        if data[pos : pos + span] != _ACK_STREAM[offset : offset + span]:
            break
        ok += span // 4
        pos += span
    if pos == len(data):
        return ok, 0, pos
    _publishes, pubacks, others, consumed = parse_stream(data[pos:])
    refused = 0
    for packet_id, reason in pubacks:
        expected = (done + ok + refused) % MAX_PACKET_ID + 1
        if packet_id != expected:
            raise ProtocolError(f"PUBACK for packet id {packet_id}, expected {expected}: acks out of order")
        if reason >= RC_FIRST_FAILURE:
            refused += 1
        else:
            ok += 1
    for packet in others:
        if packet.kind == DISCONNECT:
            reason, text = decode_disconnect(packet.body)
            raise ConnectionError(f"broker disconnected: reason 0x{reason:02x} {text}".rstrip())
    return ok, refused, pos + consumed


def publish_loop(plan: PublishPlan, progress: Any, stop: Any) -> PublishResult:
    """The hot loop; `progress` is a shared counter of acked messages, `stop` an Event."""
    link = open_link(plan.host, plan.port, plan.client_id, clean_start=True)
    sock = link.sock
    window = max(1, min(plan.window, link.receive_maximum))
    boot = boot_id()
    mint = PacketMint(
        [ReadingTemplate.for_device(device_id(plan.device_prefix, i), boot) for i in range(plan.devices)],
        boot if plan.numbered else None,
    )
    count = plan.count or 2**62
    interval = 1.0 / plan.rate if plan.rate > 0 else 0.0
    # Top the window up in batches, not a few packets per wake-up: fewer, larger writes.
    min_batch = 1 if interval else max(1, window // 4)
    out = bytearray()
    data = link.early
    sent = acked = refused = 0
    cpu_start = _cpu_s()
    started = time.time()
    t0 = time.monotonic()
    stop_deadline = 0.0
    try:
        while acked + refused < count:
            inflight = sent - acked - refused
            if stop.is_set():
                # A counted run is aborted at once; an endless one stops sending and collects its acks.
                if plan.count or inflight == 0:
                    break
                stop_deadline = stop_deadline or time.monotonic() + 5.0
                if time.monotonic() > stop_deadline:
                    break
                room = 0
            else:
                room = min(window - inflight, count - sent)
                if interval:
                    room = min(room, int((time.monotonic() - t0) / interval) + 1 - sent)
            if room >= min_batch or (room > 0 and sent + room == count):
                out += mint.packets(sent, room, int(time.time() * 1000))
                sent += room
                send_some(sock, out)
            if interval:
                timeout = min(_IDLE_POLL_S, max(0.0, t0 + sent * interval - time.monotonic()))
                ready_r, ready_w, _ = select.select([sock], [sock] if out else [], [], timeout)
                if ready_w:
                    send_some(sock, out)
                readable = bool(ready_r)
            else:
                # Flat out, PUBACKs trickle in one per broker loop: waking for each would cost
                # more than the broker does. A nap lets a batch of them gather (the window,
                # 1000 at Mosquitto's default, lasts the broker several naps).
                time.sleep(_NAP_S)
                send_some(sock, out)
                readable = True
            if readable:
                chunks = [data] if data else []
                if not recv_all(sock, chunks):
                    raise ConnectionError(f"{plan.host}:{plan.port}: connection closed by the broker")
                data = b"".join(chunks)
                ok, bad, consumed = count_pubacks(data, acked + refused)
                data = data[consumed:]
                acked += ok
                refused += bad
                progress.value = acked
    finally:
        finished = time.time()
        cpu = _cpu_s() - cpu_start
        with contextlib.suppress(OSError):
            sock.send(DISCONNECT_PACKET)
        link.close()
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

    def wait_publishing(self, timeout_s: float = 20.0) -> None:
        """Block until every publisher has had a PUBACK: from then on, paced ones offer their full rate."""
        deadline = time.monotonic() + timeout_s
        while not all(p.value for p in self.progress):
            if time.monotonic() > deadline or not all(w.alive() for w in self.workers):
                raise TimeoutError(f"not every publisher was acknowledged within {timeout_s:.0f} s")
            time.sleep(0.01)

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
