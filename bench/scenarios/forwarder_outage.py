"""The site broker's queue while the forwarder is down: ours (the sensors keep what is unconfirmed) vs plain QoS 1.

With end-to-end confirmations a sensor deletes a reading only when the forwarder's spool has it,
and has at most `confirmations.max_messages` (1,000) out unconfirmed; past that it keeps new
readings in its own spool. So while the forwarder is down the gateway Mosquitto holds at most
one window per sensor, plus one probe per silent round, however long the outage. With plain
QoS 1 (a PUBACK deletes, as every MQTT sensor does), everything published during the outage
waits in the broker's memory for the forwarder's session, and Mosquitto's default
max_queued_messages (1,000) would drop the rest.

- ours: sensor agents -> gateway Mosquitto -> (forwarder stopped) -> cloud Mosquitto -> ingester
  -> SQLite. After the outage the forwarder starts again and every reading must be stored.
- plain: paced QoS 1 publishers at the same rate -> a gateway Mosquitto with the same settings
  and a persistent QoS 1 session that is away (the bench counter, started once, then stopped).

Both run at once: each offers tens of messages a second. Sampled every 10 s from Mosquitto's own
`$SYS/broker/store/messages/count`, and its RSS.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.results import BenchReport, environment, figures_from_table, ratio
from bench.scenarios.ingester import SINK_BENCHES
from bench.scenarios.site_rate import broker_pid
from bench.scenarios.topology import OURS, start_hop
from bench.services import GATEWAY_ID, start_forwarder, start_ingester, start_sensor
from saltmarsh.contract.errors import WireError
from saltmarsh.mqtt.wire import WireClient
from saltmarsh.ops.localfleet.mosquitto import Mosquitto

NAME = "forwarder_outage"
TITLE = "The gateway broker's queue during a forwarder outage: ours vs plain QoS 1 sensors"
SENSORS = 10
SENSOR_HZ = 5.0
SAMPLE_S = 10.0  # Mosquitto's $SYS interval
STORE_COUNT = "$SYS/broker/store/messages/count"
DRAIN_TIMEOUT_S = 900.0


def stored_messages(broker: Mosquitto) -> float:
    """What the broker holds now, as it last published it on $SYS (retained); NaN if it said nothing."""
    client = WireClient("127.0.0.1", broker.port, f"bench-sys-{time.monotonic_ns()}", clean_start=True)
    try:
        client.connect()
        client.subscribe([(STORE_COUNT, 0)])
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            publishes, _ = client.poll(0.1)
            for publish in publishes:
                return float(publish.payload)
    except (OSError, WireError, ValueError):
        pass
    finally:
        client.close()
    return math.nan


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class Samples:
    stored: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    def take(self, broker: Mosquitto) -> None:
        self.stored.append(stored_messages(broker))
        self.rss.append(rss_mb(broker_pid(broker)))

    def peak(self) -> float:
        return max((v for v in self.stored if not math.isnan(v)), default=math.nan)


def sensor_counter(lab: Lab, device: str, key: str) -> int:
    status = lab.status("sensor", device)
    return int(status.counters.get(key, 0)) if status is not None else 0


def measure_run(outage_s: float) -> dict[str, float]:
    rate = SENSORS * SENSOR_HZ
    with Lab(f"{NAME}-ours") as ours, Lab(f"{NAME}-plain") as plain:
        cloud = ours.broker("cloud")
        ingester = start_ingester(ours, cloud.port, SINK_BENCHES["sqlite"].sink_table(ours))
        hop = start_hop(ours, OURS, cloud.port)
        assert hop.forwarder is not None
        devices = [f"outage-s{i:03d}" for i in range(SENSORS)]
        sensors = [start_sensor(ours, hop.gateway.port, device, 1.0 / SENSOR_HZ) for device in devices]
        plain_broker = plain.broker("gateway")
        away = Counter(CountPlan(plain_broker.port, "bench-away-forwarder", persistent=True)).start()
        away.stop()  # its session stays, and everything published to it queues
        publishers = plain.track(Publishers(plain_broker.port, "plain", processes=1, devices=SENSORS, rate=rate))
        publishers.start()
        time.sleep(SAMPLE_S)
        before_ours, before_plain = Samples(), Samples()
        before_ours.take(hop.gateway)
        before_plain.take(plain_broker)
        resent_before = sum(sensor_counter(ours, d, "resent_total") for d in devices)
        hop.forwarder.stop()
        during_ours, during_plain = Samples(), Samples()
        ends = time.monotonic() + outage_s
        while time.monotonic() < ends:
            time.sleep(min(SAMPLE_S, max(0.0, ends - time.monotonic())))
            during_ours.take(hop.gateway)
            during_plain.take(plain_broker)
        unconfirmed = sum(sensor_counter(ours, d, "unconfirmed") for d in devices)
        sensor_spools = sum(sensor_counter(ours, d, "spool_depth") for d in devices)
        resent = sum(sensor_counter(ours, d, "resent_total") for d in devices) - resent_before
        published_plain = publishers.acked()
        publishers.stop()
        restarted = time.monotonic()
        start_forwarder(ours, hop.gateway.port, cloud.port, 5000.0)
        # The sensors go on producing while their backlog drains; they stop only once their
        # spools are empty (a sensor stopped earlier would keep its backlog, not lose it).
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and sum(sensor_counter(ours, d, "spool_depth") for d in devices) > SENSORS:
            time.sleep(1.0)
        drain_s = time.monotonic() - restarted
        for sensor in sensors:
            sensor.stop()
        produced = sum(sensor_counter(ours, d, "last_seq") for d in devices)
        stored = 0
        settle = time.monotonic() + 30
        while time.monotonic() < settle and ingester.alive():
            stored = SINK_BENCHES["sqlite"].stored(ours)
            if stored >= produced:
                break
            time.sleep(0.5)
    return {
        "offered msg/s": rate,
        "ours broker stored before": before_ours.stored[0],
        "ours broker stored peak": during_ours.peak(),
        "ours broker stored at the end": during_ours.stored[-1],
        "ours broker RSS growth": max(during_ours.rss) - before_ours.rss[0],
        "ours sensors unconfirmed at the end": unconfirmed,
        "ours sensors' spools at the end": sensor_spools,
        "ours resent during the outage": resent,
        "plain broker stored peak": during_plain.peak(),
        "plain broker RSS growth": max(during_plain.rss) - before_plain.rss[0],
        "plain published during the run": published_plain,
        "ours stored after the forwarder returned": stored,
        "ours lost": produced - stored,
        "ours drain after the outage": drain_s,
    }


UNITS = {
    "offered msg/s": ("msg/s", f"{SENSORS} sensor agents at {SENSOR_HZ:.0f} Hz; the same rate from plain publishers"),
    "ours broker stored before": ("messages", "gateway Mosquitto, $SYS/broker/store/messages/count"),
    "ours broker stored peak": ("messages", f"bounded by {SENSORS} sensors x their 1,000-message window"),
    "ours broker stored at the end": ("messages", ""),
    "ours broker RSS growth": ("MB", "peak during the outage minus before"),
    "ours sensors unconfirmed at the end": ("readings", "sent, not yet confirmed by the forwarder's spool"),
    "ours sensors' spools at the end": ("readings", "kept on the devices: where the backlog belongs"),
    "ours resent during the outage": ("readings", "probes only: nothing is doubled in the broker"),
    "plain broker stored peak": ("messages", "everything published waits for the away session"),
    "plain broker RSS growth": ("MB", ""),
    "plain published during the run": ("messages", ""),
    "ours stored after the forwarder returned": ("readings", ""),
    "ours lost": ("readings", "produced by the sensors, not in SQLite"),
    "ours drain after the outage": ("s", "forwarder restart to the sensors' spools empty, producing live meanwhile"),
}


def run(options: BenchOptions) -> BenchReport:
    outage_s = options.seconds(600, 30)
    rows = [measure_run(outage_s) for _ in range(options.runs)]
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_table(rows, UNITS))

    report.ratios.append(
        ratio(
            "plain/ours broker queue at peak",
            report.value("plain broker stored peak"),
            report.value("ours broker stored peak"),
            f"how much more a {outage_s / 60:.0f}-minute forwarder outage leaves in the broker with plain QoS 1",
        )
    )
    report.notes += [
        f"A {outage_s:.0f} s outage of the forwarder ({GATEWAY_ID}), {SENSORS} devices at {SENSOR_HZ:.0f} Hz on "
        "each side, both sides at once (tens of messages a second each).",
        "The sensors' window is their default, confirmations.max_messages = 1000: the gateway broker holds at "
        "most that much of each device's traffic; the rest waits in the device's own spool.",
    ]
    return report
