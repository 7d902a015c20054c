"""The reading loop in-process: envelopes minted right, spooled before anything else, on schedule."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from saltmarsh.config import BrokerConfig, DriverConfig, SensorConfig
from saltmarsh.contract.envelope import Location, parse
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.contract.topics import ID_PATTERN
from saltmarsh.runtime.spool import Lane, Spool
from sensor.agent import Agent
from sensor.drivers import Driver, ReplayDriver, Sample, parse_replay


def config(tmp_path: Path, **overrides: object) -> SensorConfig:
    fields: dict[str, object] = {
        "device": "pi-7",
        "site": "marsh",
        "broker": BrokerConfig("127.0.0.1", 1, "sensor-pi-7"),
        "state_dir": tmp_path / "state",
        "status_dir": tmp_path / "status",
        "driver": DriverConfig(),
        "interval_s": 0.001,
        "model": "DHT22",
        "firmware": "1.2.3",
        "location": Location(52.1, 4.3, "garden"),
    }
    fields.update(overrides)
    return SensorConfig(**fields)  # type: ignore[arg-type]


class Scripted(Driver):
    """Answers from a list: a Sample, or None for a tick with nothing."""

    def __init__(self, script: list[Sample | None]) -> None:
        super().__init__()
        self.script = list(script)

    def read(self, now_s: float) -> Sample | None:
        return self.script.pop(0) if self.script else Sample({"temperature": 1.0})


def spooled(spool: Spool) -> list[tuple[str, bytes]]:
    out = []
    for seg in spool.pending():
        assert seg.lane is Lane.BULK and seg.count == 1  # one reading, one durable segment
        records = spool.lease(seg)
        assert records is not None
        out += records
    return out


def test_boot_ids_are_valid_and_unique() -> None:
    boots = {new_boot_id() for _ in range(100)}
    assert len(boots) == 100
    assert all(ID_PATTERN.match(b) for b in boots)


def test_every_reading_is_spooled_as_a_valid_envelope_with_consecutive_seq(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_readings=5)
    hot = Sample({"temperature": 30.0, "humidity": 20.0}, {"temperature": "°C", "humidity": "%"})
    driver = Scripted([hot, None, None, hot, None, hot])  # ticks without a sample use no seq
    spool = Spool.open(cfg.spool_dir)
    notified = []
    agent = Agent(cfg, driver, spool, "boot-1", on_spooled=lambda: notified.append(agent.last_seq))
    agent.produce(threading.Event())

    envelopes = [parse(topic, payload, now_ms=int(time.time() * 1000)) for topic, payload in spooled(spool)]
    assert [e.seq for e in envelopes] == [1, 2, 3, 4, 5]
    assert notified == [1, 2, 3, 4, 5]  # the sender hears only after the reading is durable
    assert agent.last_seq == 5 and agent.done
    first = envelopes[0]
    assert (first.device, first.site, first.boot) == ("pi-7", "marsh", "boot-1")
    assert dict(first.metrics) == {"temperature": 30.0, "humidity": 20.0}
    assert dict(first.units) == {"temperature": "°C", "humidity": "%"}
    assert (first.model, first.firmware, first.location) == ("DHT22", "1.2.3", Location(52.1, 4.3, "garden"))
    assert str(first.topic) == "saltmarsh/v1/marsh/pi-7/reading"
    assert abs(first.ts_ms - time.time() * 1000) < 5000
    spool.close()


def test_replay_by_timestamps_paces_the_loop_and_ends_with_the_file(tmp_path: Path) -> None:
    cfg = config(tmp_path, interval_s=5.0)  # the file's own pacing must win over the interval
    rows = parse_replay("timestamp,temperature\n0,20\n1,21\n3,22\n")
    spool = Spool.open(cfg.spool_dir)
    agent = Agent(cfg, ReplayDriver(rows, mode="timestamps", speed=10.0), spool, "b")
    started = time.monotonic()
    agent.produce(threading.Event())
    elapsed = time.monotonic() - started

    assert elapsed == pytest.approx(0.3, abs=0.15)
    now_ms = int(time.time() * 1000)
    envelopes = [parse(t, p, now_ms) for t, p in spooled(spool)]
    assert [(e.seq, e.metrics["temperature"]) for e in envelopes] == [(1, 20.0), (2, 21.0), (3, 22.0)]
    gaps = [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(envelopes)]
    assert gaps[0] == pytest.approx(100, abs=60) and gaps[1] == pytest.approx(200, abs=60)
    spool.close()


def test_stop_ends_production_promptly(tmp_path: Path) -> None:
    cfg = config(tmp_path, interval_s=60.0)
    spool = Spool.open(cfg.spool_dir)
    agent = Agent(cfg, Scripted([]), spool, "b")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    agent.produce(stop)
    assert time.monotonic() - started < 2.0
    assert agent.last_seq == 1  # the first tick is immediate, the next was 60 s away
    spool.close()
