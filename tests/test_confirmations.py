"""End-to-end confirmations with real brokers and real processes: the brokers carry readings, never own them.

Each test kills a broker, drops confirmations, kills an ingester mid-batch or holds the sink,
and ends with the audit of every device's sequence numbers against what it produced: 0 lost,
0 duplicated in the sink. The senders' resends are counted by the sink as duplicates, and those
counts are asserted too, so a test cannot pass by never exercising the resend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from saltmarsh.config.ingester import load_ingester_config
from saltmarsh.ops.audit import AuditReport, run_audit
from saltmarsh.ops.localfleet.fleet import FleetPlan, LocalFleet
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.sinks import open_audit_source
from tests.confirm_support import (
    ACL_NO_CONFIRMATIONS,
    ACL_OPEN,
    FAST_CONFIRMATIONS,
    Acl,
    PacedPublisher,
    SinkHeld,
    rss_kb,
)
from tests.e2e import running_fleet, wait_until_audited

pytestmark = pytest.mark.slow

SENSORS = 3
RATE_HZ = 20.0


def assert_clean(
    fleet: LocalFleet, readings_per_sensor: int, timeout_s: float = 120.0, killed: tuple[ServiceProcess, ...] = ()
) -> AuditReport:
    report = wait_until_audited(fleet, timeout_s, killed)
    assert (report.lost, report.duplicated) == (0, 0), report
    assert report.readings == SENSORS * readings_per_sensor, report
    return report


def counter_sum(fleet: LocalFleet, service: str, key: str) -> int:
    return sum(int(s.counters.get(key, 0)) for s in fleet.status_of(service))


def kill9_restart(broker: Mosquitto, times: int, up_s: float) -> None:
    for _ in range(times):
        time.sleep(up_s)
        broker.kill9()
        time.sleep(0.3)
        broker.start()


@dataclass(frozen=True)
class BrokerCrash:
    """A broker killed five times; the consumer reading from it, and the sender that must hold on."""

    broker: Callable[[LocalFleet], Mosquitto]
    consumer: Callable[[LocalFleet], ServiceProcess]
    sender: str  # whose `unconfirmed` and `resent_total` show the holding on


GATEWAY_BROKER = BrokerCrash(lambda f: f.gateway_broker, lambda f: f.forwarder, "sensor")
CLOUD_BROKER = BrokerCrash(lambda f: f.cloud_broker, lambda f: f.ingester, "forwarder")


@pytest.mark.parametrize(
    ("crash", "consumer_down"),
    [
        pytest.param(GATEWAY_BROKER, False, id="gateway-broker-forwarder-running"),
        pytest.param(GATEWAY_BROKER, True, id="gateway-broker-forwarder-stopped"),
        pytest.param(CLOUD_BROKER, False, id="cloud-broker-ingester-running"),
        pytest.param(CLOUD_BROKER, True, id="cloud-broker-ingester-stopped"),
    ],
)
def test_broker_kill9_five_times(tmp_path: Path, crash: BrokerCrash, consumer_down: bool) -> None:
    """What a Mosquitto held dies with it; the sender before it still has it, unconfirmed."""
    readings = 300
    with running_fleet(
        tmp_path / "fleet",
        sensors=SENSORS,
        rate_hz=RATE_HZ,
        readings_per_sensor=readings,
        confirmations=FAST_CONFIRMATIONS,
    ) as fleet:
        time.sleep(2)
        consumer = crash.consumer(fleet)
        if consumer_down:
            consumer.kill9()
        kill9_restart(crash.broker(fleet), times=5, up_s=1.5)
        if consumer_down:
            assert counter_sum(fleet, crash.sender, "unconfirmed") > 0, "what no one confirmed should be held"
            fleet.restart(consumer)
        assert_clean(fleet, readings)
        assert counter_sum(fleet, crash.sender, "resent_total") > 0


def test_dropped_confirmations_are_resent_counted_and_lose_nothing(tmp_path: Path) -> None:
    """The cloud broker's ACL stops every confirmation for a while: the forwarder's window fills,
    its probe finds the ingester alive once they flow again, and it resends what is unconfirmed."""
    readings = 300
    plan = FleetPlan(
        base_dir=tmp_path / "fleet",
        sensors=SENSORS,
        rate_hz=RATE_HZ,
        readings_per_sensor=readings,
        confirmations=FAST_CONFIRMATIONS,
        forwarder_settings={"confirmations": {**FAST_CONFIRMATIONS, "max_messages": 200}},
    )
    fleet = LocalFleet.fresh(plan)
    acl = Acl(fleet.layout.brokers_dir / "cloud.acl", ACL_OPEN)
    cloud = fleet.cloud_broker
    cloud.spec = dataclasses.replace(cloud.spec, extra_lines=(*cloud.spec.extra_lines, acl.config_line))
    try:
        fleet.start()
        time.sleep(2)
        acl.flip(cloud, ACL_NO_CONFIRMATIONS)
        time.sleep(6)
        assert counter_sum(fleet, "forwarder", "window_full") == 1, "200 unconfirmed should have filled the window"
        acl.flip(cloud, ACL_OPEN)
        assert_clean(fleet, readings)
        assert counter_sum(fleet, "forwarder", "resent_total") >= 200
        assert counter_sum(fleet, "ingester", "duplicates_total") >= 200, "the sink counts the copies"
    finally:
        fleet.stop()


def test_two_ingesters_one_killed_mid_batch(tmp_path: Path) -> None:
    """One share group, two ingesters; one dies with a batch unacked and stays dead: what it held,
    and what the broker still queues for its session, is overtaken and resent to the other."""
    readings = 300
    with running_fleet(
        tmp_path / "fleet",
        sensors=SENSORS,
        rate_hz=RATE_HZ,
        readings_per_sensor=readings,
        ingesters=2,
        confirmations=FAST_CONFIRMATIONS,
        forwarder_settings={"confirmations": FAST_CONFIRMATIONS},
    ) as fleet:
        second = fleet.ingesters[1]
        time.sleep(4)
        assert counter_sum(fleet, "ingester", "written_total") > 0
        second.kill9()
        assert_clean(fleet, readings, killed=(second,))
        assert counter_sum(fleet, "forwarder", "resent_total") > 0
        second.start()  # back, with its session's copies: duplicates, not new rows
        time.sleep(3)
        report = fleet.audit()
        assert (report.lost, report.duplicated, report.readings) == (0, 0, SENSORS * readings)


def _audit(fleet: LocalFleet, publisher: PacedPublisher) -> AuditReport:
    source = open_audit_source(load_ingester_config(fleet.ingester_config_path).sink)
    try:
        return run_audit(source.stored_keys(), publisher.expectations(), source.dead_letter_counts())
    finally:
        source.close()


def _wait_audited(fleet: LocalFleet, publisher: PacedPublisher, timeout_s: float) -> AuditReport:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = _audit(fleet, publisher)
        if report.ok and report.readings == sum(publisher.last_seq.values()):
            return report
        time.sleep(1)
    return _audit(fleet, publisher)


def test_sink_down_two_minutes_at_500_per_second(tmp_path: Path) -> None:
    """The backlog of a sink outage waits in the gateway's spool, not in the cloud broker."""
    plan = FleetPlan(base_dir=tmp_path / "fleet", sensors=0, drain_rate_limit=5000.0)
    with running_fleet(tmp_path / "fleet", sensors=0, drain_rate_limit=5000.0) as fleet:
        publisher = PacedPublisher(fleet.gateway_broker.port, plan.site, tuple(f"ble-{i}" for i in range(5)), 500.0)
        publisher.start()
        time.sleep(5)  # warm: the brokers' pools and the sink's pages are in use
        cloud_pid = fleet.cloud_broker.process.pid if fleet.cloud_broker.process else 0
        rss_before = rss_kb(cloud_pid)
        held = SinkHeld(plan.sink_path)
        peak = rss_before
        outage_ends = time.monotonic() + 120
        while time.monotonic() < outage_ends:
            time.sleep(2)
            peak = max(peak, rss_kb(cloud_pid))
        spooled = counter_sum(fleet, "forwarder", "spool_depth")
        unconfirmed = counter_sum(fleet, "forwarder", "unconfirmed")
        held.release()
        publisher.stop()
        report = _wait_audited(fleet, publisher, 120)
        print(f"cloud broker RSS {rss_before / 1024:.1f} MB before, {peak / 1024:.1f} MB peak; spooled {spooled}")
        assert (report.lost, report.duplicated) == (0, 0), report
        assert report.readings == sum(publisher.last_seq.values()) > 60_000
        assert spooled > 30_000, "the outage's backlog should be in the gateway's spool"
        assert unconfirmed <= 20_000, "no more than the window may be out in the cloud broker"
        assert peak - rss_before < 20 * 1024, f"cloud broker RSS grew {(peak - rss_before) / 1024:.1f} MB"


def test_spool_quota_during_a_sink_outage_evicts_exactly_and_keeps_alerts(tmp_path: Path) -> None:
    """A sink outage longer than the gateway's disk: the oldest readings go, counted; no alert does."""
    quota = 600_000
    with running_fleet(
        tmp_path / "fleet",
        sensors=0,
        spool_quota_bytes=quota,
        forwarder_settings={"confirmations": {"max_messages": 500}},
    ) as fleet:
        publisher = PacedPublisher(
            fleet.gateway_broker.port, fleet.plan.site, ("ble-1", "ble-2"), 400.0, alert_every=50
        )
        time.sleep(1)
        held = SinkHeld(fleet.plan.sink_path)
        publisher.start()
        time.sleep(15)
        publisher.stop()
        assert fleet.status_of("forwarder")[0].counters["evicted_total"] > 0, "the quota should have been reached"
        held.release()
        deadline = time.monotonic() + 60
        report = _audit(fleet, publisher)
        produced = sum(publisher.last_seq.values())
        while time.monotonic() < deadline:
            evicted = counter_sum(fleet, "forwarder", "evicted_total")
            report = _audit(fleet, publisher)
            if report.readings + evicted == produced and counter_sum(fleet, "forwarder", "spool_depth") == 0:
                break
            time.sleep(1)
        evicted = counter_sum(fleet, "forwarder", "evicted_total")
        assert report.duplicated == 0, report
        assert report.lost == evicted > 0, f"audit lost {report.lost}, forwarder evicted {evicted}"
        assert report.readings + evicted == produced
        source = open_audit_source(load_ingester_config(fleet.ingester_config_path).sink)
        try:
            stored = {(k.device, k.seq) for k in source.stored_keys()}
        finally:
            source.close()
        assert publisher.alerts <= stored, "alerts are never evicted"
