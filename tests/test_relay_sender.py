"""The relay's queue, sender and spool with fake sinks and a real `saltmarsh.runtime.spool.Spool`;
and the bus reader with a fake bus."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.relay import RelayConfig, relay_config
from saltmarsh.contract.errors import KinesisUnavailable, SinkUnavailable
from saltmarsh.ops.localfleet.processes import free_port
from saltmarsh.relay.bus import DEAF_AFTER_UNHEARD, BusReader
from saltmarsh.relay.sender import ELASTICSEARCH, HEALTH_TAG, SPILL_BATCH, Pending, Relay
from saltmarsh.relay.service import run_until_signalled
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy
from saltmarsh.runtime.spool import Lane, Record, Spool
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc, BulkResult, Refusal
from saltmarsh.sinks.kinesis.sink import KinesisRecord, PutOutcome

STAMP = "2024-05-31T23:59:59.250000+00:00"
RECEIVED_MS = 1_717_200_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStore:
    """Create-only by id, like Elasticsearch; `down` refuses every request."""

    stored: dict[str, BulkDoc] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    down: bool = False
    refuse_tags: set[str] = field(default_factory=set)
    explode: bool = False

    def index_documents(self, docs: Sequence[BulkDoc]) -> BulkResult:
        if self.explode:
            raise RuntimeError("a bug")
        if self.down:
            raise SinkUnavailable("elasticsearch unreachable: test")
        self.calls.append([d.doc_id for d in docs])
        created = duplicates = 0
        refused: list[Refusal] = []
        for position, doc in enumerate(docs):
            if doc.source["tag"] in self.refuse_tags:
                refused.append(Refusal(position, doc, 400, "mapper_parsing_exception", "bad"))
            elif doc.doc_id in self.stored:
                duplicates += 1
            else:
                self.stored[doc.doc_id] = doc
                created += 1
        return BulkResult(created, duplicates, tuple(refused))

    def tags(self) -> list[str]:
        return sorted(str(doc.source["tag"]) for doc in self.stored.values())


@dataclass
class FakeForwarder:
    records: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    commit_then_fail: int | None = None  # commit this many, then fail the rest

    def put_all(self, records: Sequence[KinesisRecord]) -> PutOutcome:
        if self.down:
            raise KinesisUnavailable("kinesis down", [])
        if self.commit_then_fail is not None:
            n, self.commit_then_fail = self.commit_then_fail, None
            self.records += [json.loads(r.data) for r in records[:n]]
            raise KinesisUnavailable("kinesis failed part way", list(range(n)))
        self.records += [json.loads(r.data) for r in records]
        return PutOutcome(len(records), ())

    def tags(self) -> list[str]:
        return sorted(r["tag"] for r in self.records)


def config(tmp_path: Path, **overrides: Any) -> RelayConfig:
    doc: dict[str, Any] = {
        "relay_tags": ["saltmarsh/*", "salt/job/*/ret/*"],
        "forward_tags": ["salt/job/*/ret/*"],
        "kinesis": {"stream_name": "fleet", "region": "eu-west-1"},
        "queue_max": 100,
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval_ms": 1,
        "sink_retry_s": 5.0,
        "elasticsearch": {"batch_max_docs": 50},
    }
    doc.update(overrides)
    return relay_config(doc)


@dataclass
class Rig:
    relay: Relay
    store: FakeStore
    forwarder: FakeForwarder
    clock: Clock
    spool: Spool

    def drain(self, max_steps: int = 1000) -> None:
        """Step until the sender has nothing left to do."""
        for _ in range(max_steps):
            if not self.relay.step():
                return
        raise AssertionError("the sender never went idle")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(tmp_path)


def make_rig(tmp_path: Path, **overrides: Any) -> Iterator[Rig]:
    cfg = config(tmp_path, **overrides)
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    clock = Clock()
    store, forwarder = FakeStore(), FakeForwarder()
    try:
        yield Rig(
            Relay(cfg, store, forwarder, spool, clock=clock, wall_ms=lambda: RECEIVED_MS),
            store,
            forwarder,
            clock,
            spool,
        )
    finally:
        spool.close()


def record(tag: str, data: dict[str, Any]) -> Record:
    """An event as the relay spools it, received at the time the rig's relay uses."""
    return Pending(tag, data, RECEIVED_MS, {ELASTICSEARCH}).to_record()


def event(i: int, tag: str = "saltmarsh/test") -> tuple[str, dict[str, Any]]:
    return tag, {"i": i, "_stamp": f"2024-05-31T23:59:59.{i:06d}+00:00"}


def test_live_events_go_to_each_sink_they_are_selected_for(rig: Rig) -> None:
    rig.relay.offer("saltmarsh/door", {"id": "gw1", "_stamp": STAMP})
    rig.relay.offer("salt/job/1/ret/gw1", {"id": "gw1", "fun": "test.ping", "jid": "1", "_stamp": STAMP})
    rig.relay.offer("salt/job/1/new", {"jid": "1"})  # no glob selects it
    rig.drain()
    assert rig.store.tags() == ["salt/job/1/ret/gw1", "saltmarsh/door"]
    assert rig.forwarder.tags() == ["salt/job/1/ret/gw1"]
    assert rig.forwarder.records[0]["selected_by"]["rule"] == "forward_tags"
    health = rig.relay.health()
    assert (health["received"], health["ignored"], health["relayed"], health["forwarded"]) == (2, 1, 2, 1)
    assert (health["spooled"], health["spool_depth"], health["dropped"], health["sink_ok"]) == (0, 0, 0, True)


def test_a_full_queue_spills_to_the_spool_in_batches_and_nothing_is_lost(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path, queue_max=10):
        total = 10 + SPILL_BATCH + 7
        for i in range(total):
            rig.relay.offer(*event(i))
        # 10 queued, one full batch spilled; the last 7 wait for the reader's next tick.
        assert rig.spool.stats().depth_messages == SPILL_BATCH
        rig.clock.now += 1.0
        rig.relay.tick()
        assert rig.spool.stats().depth_messages == SPILL_BATCH + 7
        rig.drain()
        assert len(rig.store.stored) == total
        health = rig.relay.health()
        assert (health["spooled"], health["backfilled"], health["spool_depth"]) == (SPILL_BATCH + 7,) * 2 + (0,)


def test_an_outage_spools_then_backfills_in_spool_order_without_retrying_every_batch(rig: Rig) -> None:
    rig.store.down = True
    for i in range(5):
        rig.relay.offer(*event(i))
    rig.drain()
    assert rig.spool.stats().depth_messages == 5
    assert rig.relay.health()["sink_ok"] is False
    assert "unreachable" in str(rig.relay.health()["last_error"])

    rig.store.down = False  # back, but the relay waits out sink_retry_s before trying
    for i in range(5, 8):
        rig.relay.offer(*event(i))
    rig.drain()
    assert rig.store.stored == {}
    assert rig.spool.stats().depth_messages == 8

    rig.clock.now += 5.0
    rig.drain()
    assert [rig.store.stored[i].source["data"]["i"] for c in rig.store.calls for i in c] == list(range(8))
    health = rig.relay.health()
    assert (health["relayed"], health["backfilled"], health["spool_depth"], health["sink_ok"]) == (8, 8, 0, True)


def test_live_events_go_first_while_the_spool_drains(rig: Rig) -> None:
    rig.store.down = True
    rig.relay.offer(*event(0))
    rig.drain()
    rig.store.down = False
    rig.clock.now += 5.0
    rig.relay.offer(*event(1))
    rig.relay.step()
    assert [[rig.store.stored[i].source["data"]["i"] for i in call] for call in rig.store.calls] == [[1], [0]]


def test_an_event_owed_only_to_kinesis_is_not_stored_twice(rig: Rig) -> None:
    rig.forwarder.commit_then_fail = 1
    for i in range(3):
        rig.relay.offer(*event(i, f"salt/job/{i}/ret/gw1"))
    rig.drain()
    assert len(rig.store.stored) == 3 and len(rig.store.calls) == 1
    assert len(rig.forwarder.records) == 1
    assert rig.spool.stats().depth_messages == 2  # owed to Kinesis only

    rig.clock.now += 5.0
    rig.drain()
    assert rig.forwarder.tags() == ["salt/job/0/ret/gw1", "salt/job/1/ret/gw1", "salt/job/2/ret/gw1"]
    assert len(rig.store.calls) == 1  # Elasticsearch was not asked again
    assert rig.relay.health()["forwarded"] == 3


def test_the_same_event_delivered_live_and_from_the_spool_has_one_id(rig: Rig) -> None:
    tag, data = event(1)
    rig.relay.offer(tag, data)
    rig.drain()
    rig.spool.append([(Lane.BULK, [record(tag, data)])])  # a redelivery
    rig.clock.now += 5.0
    rig.drain()
    assert len(rig.store.stored) == 1
    assert rig.relay.health()["relayed"] == 2  # the second a duplicate, stored once


def test_refused_documents_are_counted_and_never_retried(rig: Rig) -> None:
    rig.store.refuse_tags = {"saltmarsh/bad"}
    rig.relay.offer("saltmarsh/bad", {"_stamp": STAMP})
    rig.relay.offer("saltmarsh/good", {"_stamp": STAMP})
    rig.drain()
    health = rig.relay.health()
    assert (health["rejected"], health["relayed"], health["spool_depth"]) == (1, 1, 0)


def test_a_bug_in_a_sink_costs_a_retry_not_the_events(rig: Rig) -> None:
    rig.store.explode = True
    rig.relay.offer(*event(0))
    rig.drain()
    assert rig.spool.stats().depth_messages == 1
    assert "RuntimeError" in str(rig.relay.health()["last_error"])
    rig.store.explode = False
    rig.clock.now += 5.0
    rig.drain()
    assert len(rig.store.stored) == 1


def test_drops_happen_only_over_the_spool_quota_and_are_counted_exactly(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path, spool_quota_bytes=10_000, queue_max=1000):
        rig.store.down = True
        for i in range(200):
            rig.relay.offer(*event(i))
        for _ in range(200):
            rig.relay.step()
        stats = rig.spool.stats()
        health = rig.relay.health()
        assert health["dropped"] == stats.evicted_messages > 0
        assert stats.depth_messages > 0
        rig.store.down = False
        rig.clock.now += 5.0
        rig.drain()
        assert len(rig.store.stored) + rig.relay.health()["dropped"] == 200
        # The oldest went first: what survived is the newest.
        assert max(doc.source["data"]["i"] for doc in rig.store.stored.values()) == 199


def test_stop_spools_what_is_queued_and_a_restart_sends_it(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path):
        for i in range(5):
            rig.relay.offer(*event(i))
        rig.relay.stop(timeout_s=0.1)
        assert rig.spool.stats().depth_messages == 5
    for rig in make_rig(tmp_path):
        rig.drain()
        assert len(rig.store.stored) == 5


def test_an_unreadable_spool_record_is_dropped_and_counted(rig: Rig) -> None:
    rig.spool.append([(Lane.BULK, [("saltmarsh/x", b"not json"), record(*event(1))])])
    rig.drain()
    assert len(rig.store.stored) == 1
    health = rig.relay.health()
    assert (health["dropped"], health["spool_depth"]) == (1, 0)


def test_the_sender_thread_runs_and_stops(rig: Rig) -> None:
    rig.relay.start()
    try:
        rig.relay.offer(*event(0))
        for _ in range(200):
            if rig.store.stored:
                break
            rig.relay._stopping.wait(0.01)
    finally:
        rig.relay.stop(timeout_s=5)
    assert len(rig.store.stored) == 1


# -- the bus reader ----------------------------------------------------------------------------


@dataclass
class FakeListener:
    script: list[Any]  # events to return, or exceptions to raise, in order; then None
    destroyed: bool = False

    def get_event(self, wait: float = 5, tag: str = "", full: bool = False, auto_reconnect: bool = False) -> Any:
        assert full and auto_reconnect
        if not self.script:
            return None
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def destroy(self) -> None:
        self.destroyed = True


@dataclass
class FakeFirer:
    fired: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def fire_event(self, data: dict[str, Any], tag: str, timeout: int = 1000) -> bool:
        if self.fail:
            raise OSError("publisher gone")
        self.fired.append((tag, data))
        return True

    def destroy(self) -> None:
        pass


class NoWait:
    """A stop event whose wait returns at once, recording the delays asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        return False


def reader(rig: Rig, listeners: list[FakeListener], firer: FakeFirer, stop: NoWait) -> BusReader:
    opened = iter(listeners)
    return BusReader(
        rig.relay,
        lambda: next(opened),
        lambda: firer,
        health_interval_s=10.0,
        stop=stop,  # type: ignore[arg-type]
        clock=rig.clock,
        backoff=Backoff(BackoffPolicy(base_s=0.5, cap_s=4.0, jitter=False)),
    )


def test_the_reader_survives_bus_errors_and_reconnects_with_backoff(rig: Rig) -> None:
    first = FakeListener([{"tag": "saltmarsh/a", "data": {}}, OSError("bus gone")])
    second = FakeListener([RuntimeError("still gone")])
    third = FakeListener([{"tag": "saltmarsh/b", "data": {}}, {"tag": 7, "data": {}}, {"tag": "x", "data": "y"}])
    stop = NoWait()
    bus = reader(rig, [first, second, third], FakeFirer(), stop)
    for _ in range(8):
        bus.poll()
    assert first.destroyed and second.destroyed and not third.destroyed
    assert stop.waits == [0.5, 1.0]  # doubling, reset once the bus answers again
    rig.drain()
    assert rig.store.tags() == ["saltmarsh/a", "saltmarsh/b"]  # malformed events skipped
    health = rig.relay.health()
    assert health["bus_reconnects"] == 2
    assert "still gone" in str(health["last_error"])


def test_health_events_are_fired_periodically_and_relayed_once(rig: Rig) -> None:
    listener = FakeListener([])
    firer = FakeFirer()
    bus = reader(rig, [listener], firer, NoWait())
    bus.poll()
    assert firer.fired == []
    rig.clock.now += 10.0
    bus.poll()
    [(tag, data)] = firer.fired
    assert tag == HEALTH_TAG
    assert set(data) >= {
        "received",
        "relayed",
        "forwarded",
        "spooled",
        "spool_depth",
        "dropped",
        "sink_ok",
        "last_error",
    }
    listener.script.append({"tag": tag, "data": {**data, "_stamp": STAMP}})  # the bus echoes it back
    bus.poll()
    bus.poll()
    rig.drain()
    assert rig.store.tags() == [HEALTH_TAG]
    assert len(firer.fired) == 1


def test_a_deaf_listener_is_replaced(rig: Rig) -> None:
    deaf, fresh = FakeListener([]), FakeListener([])
    stop = NoWait()
    bus = reader(rig, [deaf, fresh], FakeFirer(), stop)
    for _ in range(DEAF_AFTER_UNHEARD + 1):
        rig.clock.now += 10.0
        bus.poll()
    assert deaf.destroyed
    bus.poll()
    assert not fresh.destroyed
    assert rig.relay.health()["bus_reconnects"] == 1


def test_a_failing_publisher_does_not_stop_the_reader(rig: Rig) -> None:
    firer = FakeFirer(fail=True)
    bus = reader(rig, [FakeListener([{"tag": "saltmarsh/a", "data": {}}])], firer, NoWait())
    rig.clock.now += 10.0
    bus.poll()
    assert "publisher gone" in str(rig.relay.health()["last_error"])
    rig.drain()
    assert rig.store.tags() == ["saltmarsh/a"]


def test_sigterm_stops_the_service_and_nothing_queued_is_lost(tmp_path: Path) -> None:
    """Salt's engine process ends with os._exit on SIGTERM; the relay's handler runs first."""
    closed_port = free_port()
    cfg = relay_config(
        {
            "spool_dir": str(tmp_path / "spool"),
            "health_interval_s": 3600,
            "elasticsearch": {"hosts": [f"http://127.0.0.1:{closed_port}"], "retry_max": 0, "request_timeout_s": 1},
        }
    )
    events = [{"tag": "saltmarsh/x", "data": {"i": i}} for i in range(20)]
    listener = FakeListener(list(events))

    def signal_once_read() -> None:
        for _ in range(500):
            if not listener.script:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=signal_once_read)
    killer.start()
    run_until_signalled(cfg, lambda: listener, FakeFirer)
    killer.join()
    assert signal.getsignal(signal.SIGTERM) == before
    spool = Spool.open(cfg.spool_dir)
    try:
        assert spool.stats().depth_messages == len(events)
    finally:
        spool.close()
