"""What the end-to-end confirmation tests do to a fleet: pace readings in, hold the sink, flip an ACL, watch RSS."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import Channel
from saltmarsh.mqtt.connect import wire_client
from saltmarsh.ops.localfleet.mosquitto import Mosquitto

# The fleet's timings, shortened: a resend within a second or two, not ten or sixty.
FAST_CONFIRMATIONS = {"overtaken_s": 1.0, "silence_s": 2.0, "silence_max_s": 4.0}

ACL_OPEN = "topic readwrite #\n"
# Everything but the `ack` channel: confirmations are neither delivered nor accepted.
ACL_NO_CONFIRMATIONS = "".join(
    f"topic readwrite saltmarsh/v1/+/+/{channel}\n" for channel in ("reading", "event", "alert", "status", "cmd")
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


class Acl:
    """A broker's ACL file, rewritten and reloaded (SIGHUP) while the broker runs."""

    def __init__(self, path: Path, text: str = ACL_OPEN) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    @property
    def config_line(self) -> str:
        return f"acl_file {self.path}"

    def flip(self, broker: Mosquitto, text: str) -> None:
        self.path.write_text(text)
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGHUP)
        time.sleep(0.5)  # Mosquitto reloads between two passes of its loop


class SinkHeld:
    """The SQLite sink made unavailable: another process holds its write lock, as a dead disk would."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


@dataclass
class PacedPublisher:
    """Readings (and every `alert_every`-th an alert) from `devices` at `rate` msg/s in all, at QoS 1.

    A plain MQTT publisher, as a BLE bridge or a third-party device would be: PUBACKed by the
    gateway broker, no confirmations. `last_seq` is each device's own record for the audit.
    """

    port: int
    site: str
    devices: tuple[str, ...]
    rate: float
    boot: str = "paced-1"
    alert_every: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    alerts: set[tuple[str, int]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> PacedPublisher:
        self._thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        assert self.error is None, repr(self.error)

    def expectations(self) -> dict[str, tuple[str, int]]:
        return {device: (self.boot, seq) for device, seq in self.last_seq.items()}

    def _envelope(self, device: str, seq: int) -> tuple[bytes, bytes]:
        alert = self.alert_every and seq % self.alert_every == 0
        env = Envelope(
            kind=Channel.ALERT if alert else Channel.READING,
            device=device,
            site=self.site,
            boot=self.boot,
            seq=seq,
            ts_ms=int(time.time() * 1000),
            metrics={"temperature": 20.0 + seq % 7},
            name="threshold" if alert else None,
        )
        if alert:
            self.alerts.add((device, seq))
        return str(env.topic).encode(), env.encode()

    def _run(self) -> None:
        try:
            client = wire_client(BrokerConfig("127.0.0.1", self.port, "paced-publisher"), clean_start=True)
            client.connect()
            started = time.monotonic()
            sent = 0
            unacked: set[int] = set()
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                while sent < due and len(unacked) < 500:
                    device = self.devices[sent % len(self.devices)]
                    seq = self.last_seq.get(device, 0) + 1
                    unacked.add(client.publish(*self._envelope(device, seq)))
                    self.last_seq[device] = seq
                    sent += 1
                client.flush()
                _, pubacks = client.poll(0.01)
                for packet_id, reason in pubacks:
                    assert reason < 0x80, f"the gateway broker refused a reading: {reason:#x}"
                    unacked.discard(packet_id)
            deadline = time.monotonic() + 10
            while unacked and time.monotonic() < deadline:
                client.flush()
                _, pubacks = client.poll(0.1)
                unacked -= {packet_id for packet_id, _ in pubacks}
            assert not unacked, f"{len(unacked)} readings never PUBACKed"
            client.close(linger_s=1.0)
        except BaseException as err:
            self.error = err
