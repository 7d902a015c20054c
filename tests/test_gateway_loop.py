"""The loop thread's own parts: the gather deadline, the waker, and the hand-offs with fake links."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from gateway.committer import GroupCommitter
from gateway.connector import Connector
from gateway.loop import IDLE_CYCLE_S, MIN_CYCLE_S, QUIET_S, ForwarderLoop, Waker, cycle_length, gather_deadline
from gateway.sender import Sender
from gateway.source import LocalSource
from saltmarsh.config.gateway import GatewayConfig, gateway_config
from saltmarsh.config.table import Table
from saltmarsh.mqtt.codec import Publish
from saltmarsh.mqtt.wire import ConnAck, WireClient
from saltmarsh.runtime.backoff import BackoffPolicy
from saltmarsh.runtime.spool import Spool

NOW = 100.0


@pytest.mark.parametrize(
    ("online", "size", "first_at", "last_local_data", "deadline"),
    [
        (True, 10, 99.0, 99.9, NOW),  # online: at once
        (False, 0, 0.0, 0.0, NOW),  # nothing gathered
        (False, 10, 99.9, 99.99, 99.99 + QUIET_S),  # offline, the site broker goes quiet first
        (False, 10, 99.0, 100.0, 99.5),  # offline, busy: half a second after the first message
    ],
)
def test_gather_deadline(online: bool, size: int, first_at: float, last_local_data: float, deadline: float) -> None:
    assert gather_deadline(
        online=online, size=size, first_at=first_at, last_local_data=last_local_data, offline_gather_s=0.5, now=NOW
    ) == pytest.approx(deadline)


@pytest.mark.parametrize(
    ("messages", "elapsed_s", "cycle_s", "idle", "length"),
    [
        pytest.param(100, 1.0, 1.0, False, 1.0, id="100 msg/s: the longest cycle"),
        pytest.param(1000, 1.0, 1.0, False, 0.5, id="1,000 msg/s: 500 a cycle, half the broker's inflight cap"),
        pytest.param(1000, 0.5, 1.0, False, 0.25, id="a cycle at the cap: the next is shorter, until it is not"),
        pytest.param(100_000, 1.0, 1.0, False, MIN_CYCLE_S, id="flat out: the shortest"),
        pytest.param(0, 1.0, 1.0, True, IDLE_CYCLE_S, id="idle: a long one"),
        pytest.param(0, 1.0, 0.2, False, 0.2, id="nothing came, something is on its way up"),
        pytest.param(5, 0.0, 1.0, False, 1.0, id="no time measured"),
        pytest.param(500, 1.0, 0.0, False, 1.0, id="cycles off: keepalive polls only"),
    ],
)
def test_cycle_length(messages: int, elapsed_s: float, cycle_s: float, idle: bool, length: float) -> None:
    assert cycle_length(messages, elapsed_s, cycle_s, idle=idle) == pytest.approx(length)


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_wake_ups_coalesce_until_the_loop_drains_them() -> None:
    waker = Waker()
    try:
        assert not _readable(waker.socket)
        waker.wake()
        waker.wake()
        assert waker.socket.recv(16) == b"\x01"  # one byte for both
        waker.drain()
        waker.wake()
        assert _readable(waker.socket)
        waker.drain()
        assert not _readable(waker.socket)
    finally:
        waker.close()


class FakeSiteBroker:
    """Stands in for the local WireClient: delivers its PUBLISHes on the first poll, records acks."""

    def __init__(self, publishes: list[Publish]) -> None:
        self._publishes = publishes
        self._sock, self._peer = socket.socketpair()
        self.acked: list[int] = []
        self.pending_out_bytes = 0
        self.closed = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def poll(self, timeout_s: float) -> tuple[list[Publish], list[tuple[int, int]]]:
        publishes, self._publishes = self._publishes, []
        return publishes, []

    def ack(self, packet_id: int) -> None:
        self.acked.append(packet_id)

    def flush(self) -> None:
        pass

    def close(self, linger_s: float = 0.0) -> None:
        self.closed = True
        self._sock.close()
        self._peer.close()


@pytest.fixture
def cfg(tmp_path: Path) -> GatewayConfig:
    return gateway_config(
        Table(
            {
                "gateway_id": "g",
                "site": "s",
                "state_dir": str(tmp_path / "state"),
                "status_dir": str(tmp_path / "status"),
                "offline_commit_interval_ms": 10,
                "local": {},
                "uplink": {},
            },
            "test",
        )
    )


@pytest.fixture
def spool(cfg: GatewayConfig) -> Iterator[Spool]:
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    yield spool
    spool.close()


def _uplink_down() -> tuple[WireClient, ConnAck]:
    raise ConnectionRefusedError("cloud down")


def test_offline_the_loop_spools_what_the_site_sends_and_acks_it_once_spooled(cfg: GatewayConfig, spool: Spool) -> None:
    site = FakeSiteBroker(
        [
            Publish(f"saltmarsh/v1/s/d/{ch}", b"x", 1, n, False, False, ())
            for n, ch in enumerate(["reading", "alert", "status", "reading"], start=1)
        ]
    )
    waker = Waker()
    fast = BackoffPolicy(base_s=0.01, cap_s=0.05)
    loop = ForwarderLoop(
        waker=waker,
        source=LocalSource(cfg),
        committer=GroupCommitter(spool, waker.wake, cfg.commit_interval_ms),
        sender=Sender(cfg, spool),
        local_link=Connector("local", lambda: cast(WireClient, site), waker.wake, WireClient.close, fast),
        uplink_link=Connector("uplink", _uplink_down, waker.wake, lambda link: link[0].close(), fast),
        commit_max_messages=cfg.commit_max_messages,
        offline_gather_s=cfg.offline_commit_interval_ms / 1000.0,
    )
    stop = threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(loop.run(stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(site.acked) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(20)
        waker.close()
    assert outcome == [True]
    assert sorted(site.acked) == [1, 2, 3, 4]  # status acked at once, the rest once spooled
    assert spool.stats().depth_messages == 3
    assert (loop.source.received_total, loop.source.skipped_total, loop.committer.spooled_total) == (3, 1, 3)
    assert site.closed, "stopping detaches the site link"
