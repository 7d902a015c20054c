"""The counting subscriber: one connection in its own process that counts, dedups and times readings.

Every reading is identified by (device, seq) and checked against a per-device bitmap, so the
result says how many distinct readings arrived and how many were repeats: a bench figure is
only reported with its delivery count verified. Readings from devices whose id starts with
`live` are counted apart, with their latency (receive time - the `ts` stamped at send).

With `confirm` it also plays the sink's part in saltmarsh's end-to-end acknowledgement: every
message numbered in the `msg` user property is confirmed once counted, to the `ack` topic of
the gateway its `gw` property names (or, without one, of the device its topic names), one
confirmation per read (`saltmarsh.contract.confirmation`). An ideal sink: it confirms on receipt.

With `persistent` the subscriber keeps its session on the broker (so readings queue for it
while it is away) and reconnects when the broker goes down and comes back.

It has to cost far less than the broker it reads from, so it scans what arrives in bulk on a
bare link (`bench.link`), without an object per message (`Tally.scan`), and acknowledges each
read's PUBLISHes in one write.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing.connection
import resource
import select
import time
from dataclasses import dataclass, field
from typing import Any

from bench.link import Link, next_packet, open_link, recv_all, send_some
from bench.reading import LIVE_PREFIX, SITE, device_of, parse_seq_ts
from bench.worker import Worker, context
from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, ConfirmationBatch, ack_topic, parse_message_id
from saltmarsh.contract.errors import WireError
from saltmarsh.mqtt.codec import (
    DISCONNECT,
    DISCONNECT_PACKET,
    GATEWAY_PROPERTY,
    PUBLISH,
    QOS_AT_MOST_ONCE,
    decode_disconnect,
    encode_publish,
    read_properties,
    read_varint,
)

_POLL_S = 0.05
_TIMELINE_EVERY_S = 0.05
_RECONNECT_EVERY_S = 0.05
_SESSION_EXPIRY_S = 3600
_NAP_S = 0.001
_NAP_BELOW_BYTES = 64 * 1024  # about 170 readings
_SEQ_KEY = b'"seq":'
_TS_KEY = b'"ts":'
_PUBACK = b"\x40\x02"


@dataclass(frozen=True, slots=True)
class CountPlan:
    port: int
    client_id: str
    topic_filter: str = f"saltmarsh/v1/{SITE}/+/reading"
    expect: int = 0  # stop once this many distinct non-live readings arrived; 0: until stopped
    persistent: bool = False
    host: str = "127.0.0.1"
    confirm: bool = False  # confirm numbered messages, as the ingester does once they are stored
    # 0: confirm on every read (an ideal sink); else gather them this long, as the forwarder
    # confirms its site's devices (`confirm_interval_ms`, 5 s by default).
    confirm_interval_s: float = 0.0


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


def _seq_ts_slow(payload: bytes) -> tuple[int, int]:
    try:
        return parse_seq_ts(payload)
    except ValueError:
        doc = json.loads(payload)
        return int(doc["seq"]), int(doc["ts"])


class Tally:
    """Counts, dedups and times the PUBLISHes in a byte stream; the counter's hot path."""

    def __init__(self, result: CountResult, confirm: bool = False) -> None:
        self.result = result
        self.confirm = confirm
        self.confirmations = ConfirmationBatch()
        self._ack_topics: dict[tuple[bytes, str | None], str] = {}
        # By topic (one per device): a bitmap of the seqs seen, where the seq key sits in the
        # device's payloads, and whether it is a live device.
        self.seen: dict[bytes, tuple[bytearray, int, bool]] = {}

    def _first_sight(self, topic: bytes, payload: bytes) -> tuple[bytearray, int, bool]:
        # A device's readings differ only in seq and ts, which come after device and boot: the
        # seq key sits at the same offset in all of them (scan checks it for every reading).
        entry = self.seen[topic] = (
            bytearray(1024),
            payload.find(_SEQ_KEY),
            device_of(topic.decode()).startswith(LIVE_PREFIX),
        )
        return entry

    def scan(self, data: bytes, now_ms: int) -> tuple[int, list[bytes], int]:
        """(bytes consumed, the packet ids to PUBACK, new non-live readings) for the packets in `data`.

        Each PUBLISH costs a handful of operations: its framing, its topic as the device's key,
        and seq read at the offset it had in that device's first reading. Anything unusual (a
        payload laid out differently) takes the slow path; only the last, incomplete packet is
        left for the next call. Raises ConnectionError on the broker's DISCONNECT.
        """
        result = self.result
        seen_get = self.seen.get
        startswith = data.startswith
        index = data.index
        live_latency = result.live_latency
        ids: list[bytes] = []
        add_id = ids.append
        new = dups = live = received = 0
        pos, end = 0, len(data)
        while end - pos >= 2:
            first = data[pos]
            length = data[pos + 1]
            if length < 0x80:
                start = pos + 2
            elif end - pos >= 3 and data[pos + 2] < 0x80:
                length = (length & 0x7F) | (data[pos + 2] << 7)
                start = pos + 3
            else:
                found = next_packet(data, pos)
                if found is None:
                    break
                _kind, start, stop = found
                length = stop - start
            stop = start + length
            if stop > end:
                break
            if first >> 4 != PUBLISH:
                if first >> 4 == DISCONNECT:
                    reason, text = decode_disconnect(data[start:stop])
                    raise ConnectionError(f"broker disconnected: reason 0x{reason:02x} {text}".rstrip())
                pos = stop  # a PINGRESP or a stray SUBACK: nothing to do
                continue
            at = start + 2 + ((data[start] << 8) | data[start + 1])
            topic = data[start + 2 : at]
            if first & 0x06:
                add_id(data[at : at + 2])
                at += 2
            if data[at]:
                props_len, props_at = read_varint(data, at)
                at = props_at + props_len
                if self.confirm:
                    self._note(topic, data, props_at, at)
            else:
                at += 1
            pos = stop
            received += 1
            bitmap, seq_at, is_live = seen_get(topic) or self._first_sight(topic, data[at:stop])
            seq_at += at
            if startswith(_SEQ_KEY, seq_at):
                comma = index(b",", seq_at + 6, stop)
                seq = int(data[seq_at + 6 : comma])
            else:
                seq, _ts = _seq_ts_slow(data[at:stop])
                comma = -1
            if seq >= len(bitmap):
                bitmap.extend(bytes(max(seq + 1, 2 * len(bitmap)) - len(bitmap)))
            if bitmap[seq]:
                dups += 1
                continue
            bitmap[seq] = 1
            if not is_live:
                new += 1
                continue
            live += 1
            if comma >= 0 and startswith(_TS_KEY, comma + 1):
                ts_ms = int(data[comma + 6 : index(b",", comma + 6, stop)])
            else:
                _seq, ts_ms = _seq_ts_slow(data[at:stop])
            live_latency.append((ts_ms, now_ms - ts_ms))
        result.received += received
        result.duplicates += dups
        result.live_unique += live
        result.unique += new
        return pos, ids, new

    def _note(self, topic: bytes, data: bytes, start: int, end: int) -> None:
        """Remember whom to confirm a numbered message to (a property walk: costs a few us)."""
        gateway = number = None
        for name, value in read_properties(data, start, end)[1]:
            if name == MESSAGE_PROPERTY:
                number = parse_message_id(value)
            elif name == GATEWAY_PROPERTY:
                gateway = value
        if number is None:
            return
        key = (topic, gateway)
        ack = self._ack_topics.get(key)
        if ack is None:
            _, _, site, device, _ = topic.decode().split("/")
            ack = self._ack_topics[key] = ack_topic(site, gateway or device)
        self.confirmations.add(ack, *number)

    def take_confirmations(self) -> bytes:
        """The confirmations of everything counted so far, as QoS 0 PUBLISH packets."""
        if not self.confirmations:
            return b""
        batch, self.confirmations = self.confirmations, ConfirmationBatch()
        return b"".join(
            encode_publish(topic.encode(), payload, QOS_AT_MOST_ONCE) for topic, payload in batch.messages()
        )


def _connect(plan: CountPlan, deadline: float) -> Link:
    while True:
        try:
            return open_link(
                plan.host,
                plan.port,
                plan.client_id,
                clean_start=not plan.persistent,
                session_expiry_s=_SESSION_EXPIRY_S if plan.persistent else 0,
                receive_maximum=65_535,
                subscribe=plan.topic_filter,
                timeout_s=5.0,
            )
        except (OSError, TimeoutError, WireError):
            if time.monotonic() > deadline:
                raise
            time.sleep(_RECONNECT_EVERY_S)


def count_loop(plan: CountPlan, progress: Any, ready: Any, stop: Any) -> CountResult:
    result = CountResult()
    tally = Tally(result, plan.confirm)
    link = _connect(plan, time.monotonic() + 10)
    data = link.early
    out = bytearray()
    ready.set()
    cpu_start = _cpu_s()
    next_sample = 0.0
    next_confirm = 0.0
    try:
        while not stop.is_set():
            try:
                readable, writable, _ = select.select([link.sock], [link.sock] if out else [], [], _POLL_S)
                if writable:
                    send_some(link.sock, out)
                chunks = [data] if data else []
                if readable and not recv_all(link.sock, chunks):
                    raise ConnectionError(f"{plan.host}:{plan.port}: connection closed by the broker")
                data = b"".join(chunks)
                if not data:
                    consumed = new = read = 0
                    if plan.confirm and time.monotonic() >= next_confirm:
                        # Quiet now: what was gathered goes anyway, so the senders' spools empty.
                        out += tally.take_confirmations()
                        next_confirm = time.monotonic() + plan.confirm_interval_s
                        send_some(link.sock, out)
                else:
                    now_s = time.time()
                    read = len(data)
                    consumed, ids, new = tally.scan(data, int(now_s * 1000))
                    data = data[consumed:]
                    confirmations = b""
                    if plan.confirm and time.monotonic() >= next_confirm:
                        confirmations = tally.take_confirmations()
                        next_confirm = time.monotonic() + plan.confirm_interval_s
                    if ids or confirmations:
                        if ids:
                            out += _PUBACK
                            out += _PUBACK.join(ids)
                        out += confirmations
                        send_some(link.sock, out)
            except (OSError, WireError):
                if not plan.persistent:
                    raise
                link.close()
                link = _connect(plan, time.monotonic() + 3600)
                data, out = link.early, bytearray()
                result.reconnects += 1
                continue
            if new:
                result.last_s = now_s
                if math.isnan(result.first_s):
                    result.first_s = now_s
            if consumed:
                progress.value = result.unique
                if plan.expect and result.unique >= plan.expect and math.isnan(result.done_s):
                    result.done_s = now_s
                    result.timeline.append((now_s, result.unique))
                    break
            mono = time.monotonic()
            if mono >= next_sample:
                result.timeline.append((time.time(), result.unique))
                next_sample = mono + _TIMELINE_EVERY_S
            if 0 < read < _NAP_BELOW_BYTES:
                # A trickle: the broker writes one PUBLISH per loop, and waking for each would
                # cost more than it does. A nap lets a batch gather, far below its in-flight cap.
                time.sleep(_NAP_S)
    finally:
        result.cpu_s = _cpu_s() - cpu_start
        with contextlib.suppress(OSError):
            send_some(link.sock, out)
            link.sock.send(DISCONNECT_PACKET)
        link.close()
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
