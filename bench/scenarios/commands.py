"""Commands through store-and-forward, on real processes: latency at a site's rate, and the drain
after a gateway outage; ours vs plain MQTT request/response.

- ours: the master's `Dispatcher` and `RolloutStore` (what `saltmarsh cmd send --watch` runs)
  sign each command and publish it on the cloud Mosquitto -> the forwarder holds it (fsynced)
  and delivers it through the gateway Mosquitto -> one swarm sensor process of 100 simulated
  devices runs it through each device's journal and spools its outcome -> forwarder -> cloud
  Mosquitto -> ingester -> SQLite, where each target's state is kept; the master reads states
  back from there. Each device also sends a reading every 5 s (20 readings/s in all).
- peer: the same number of requests at the same rate through one Mosquitto to 100 paho
  responders, each answering its own request (`bench.rpc_peer`): ThingsBoard's RPC, or what a
  naive paho RPC does, with no store-and-forward, no journal and no signature.

1. Latency: 10 rollouts of 100 (one `set_interval` to every device each, so 1,000 commands and
   10 per device), published one after another, evenly paced by the bench at 10/s, then at 100/s.
   From the publish on the cloud broker to the ingester's receipt of the terminal `cmdres`
   (stored in that batch's transaction); the peer's from the publish to the answer's arrival
   at the requester. Every command must be SUCCEEDED, or the bench fails. Then both rates again
   with the forwarder's `cycle_ms` 0 (it reads both links as data comes, instead of once a
   cycle): what the quiet cycle costs a command.
2. Drain: the forwarder is stopped (SIGTERM) and its persistent session is held by the cloud
   broker, which queues everything for it; the site broker and the devices run on. 100 rollouts
   of 100 (10,000 commands, 100 per device) are published at once, and the master goes on
   stepping them as `cmd send --watch` does (a resend of every unanswered command every
   `resend_s`, 30 s as the formula renders it). After the outage the forwarder starts again;
   measured until the last terminal state reaches the sink. The peer's devices are away for
   the same time (their sessions persistent), with the same 10,000 requests queued, and come
   back once ours has drained.
3. Exactly once: every cmd_id has one terminal state in the sink, and exactly one `command run`
   in the swarm's log (the journal's word that it ran the op); duplicates answered from the
   journal without running are counted apart.
"""

from __future__ import annotations

import calendar
import json
import math
import sqlite3
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.lab import Lab
from bench.options import BenchOptions
from bench.reading import SITE
from bench.results import BenchReport, environment, figures_from_table, fmt, ratio
from bench.rpc_peer import Requester, peer_device
from bench.scenarios.forwarder_outage import rss_mb, stored_messages
from bench.scenarios.site_rate import broker_pid
from bench.services import GATEWAY_ID, start_forwarder, start_ingester, start_swarm
from bench.stats import percentile, rate_between
from saltmarsh.commands.dispatch import Dispatcher
from saltmarsh.commands.rollout import RolloutSpec, RolloutStore, Target
from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.sensor import swarm_device_id
from saltmarsh.contract.command_state import CommandState
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.contract.signature import generate_key, load_private_key
from saltmarsh.mqtt.paho import connect_client, make_client
from saltmarsh.ops.localfleet.configs import sqlite_sink
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
from saltmarsh.runtime.status import read_statuses
from saltmarsh.sinks.command_state import CommandRecord
from saltmarsh.sinks.sqlite import SqliteSink

NAME = "commands"
TITLE = "Commands to 100 devices through store-and-forward: latency and the drain after a gateway outage, vs plain RPC"
RATES = (10.0, 100.0)
HOST = "bench-cmd"  # the swarm host: its devices are bench-cmd-001...
OP = "set_interval"
READING_INTERVAL_S = 5.0  # each device's readings; set_interval sets it again to the same: idempotent, no side effect
ARGS: dict[str, float] = {"interval_s": READING_INTERVAL_S}
FULL_OUTAGE_S, QUICK_OUTAGE_S = 300.0, 10.0
DRAIN_RATE_LIMIT = 5000.0  # the formula's drain_rate_limit
RESEND_S = 30.0  # the formula's commander resend_s
RUN_TIMEOUT_S = 30.0  # `cmd send --run-timeout`'s default
POLL_S = 1.0  # `cmd send --watch` steps its rollout once a second
LATENCY_EXPIRES_S = 600.0  # `cmd send --expires-in`'s default, 10 minutes
LATENCY_TIMEOUT_S = 180.0  # after the last publish: past one redelivery by the gateway and one resend
DRAIN_TIMEOUT_S = 1800.0
PEER_TIMEOUT_S = 120.0
SETTLE_S = 1.0  # after a forwarder restart, before anything is timed
OURS, OURS_NO_CYCLE, PEER = "ours", "ours cycle_ms 0", "peer"


def at(rate: float) -> str:
    return f"at {rate:,.0f}/s"


class Pacer:
    """Spreads publishes evenly at `rate`; one that falls behind by more than a slot starts again
    from now, rather than catching up in a burst."""

    def __init__(self, rate: float) -> None:
        self.interval_s = 1.0 / rate
        self.next_at: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self.next_at is None or now - self.next_at > self.interval_s:
            self.next_at = now
        elif self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at += self.interval_s


class SinkStates:
    """Every target's state in the sink, read once a round.

    The dispatcher asks for one rollout at a time; `state_reader` opens the file for each, and at
    100 rollouts a round that would cost the bench's own process (on the same 2 cores) more than
    the master's work. The records are the same `command_states` read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_rollout: dict[str, list[CommandRecord]] = {}

    def refresh(self) -> None:
        if not self.path.exists():
            return
        try:
            db = SqliteSink(self.path, read_only=True)
        except SinkUnavailable:
            return
        try:
            records = db.command_states()
        finally:
            db.close()
        by_rollout: dict[str, list[CommandRecord]] = {}
        for record in records:
            by_rollout.setdefault(record.rollout, []).append(record)
        self.by_rollout = by_rollout

    def of(self, rollout: str) -> list[CommandRecord]:
        return self.by_rollout.get(rollout, [])

    def finals(self, rollouts: Sequence[str]) -> list[CommandRecord]:
        return [r for rollout in rollouts for r in self.of(rollout) if r.final]


class Master:
    """The master's side as `saltmarsh cmd send --watch` runs it: the rollout store, the dispatcher
    signing and publishing at QoS 1 with MQTT 5 message expiry (as `cmd_cli` does), and each
    target's state read back from the sink."""

    def __init__(self, lab: Lab, cloud_port: int, sink_path: Path, signing_pem: bytes) -> None:
        self.store = RolloutStore.open(lab.base / "master" / "rollouts.db")
        broker = BrokerConfig(host="127.0.0.1", port=cloud_port, client_id="bench-commander")
        self.client = make_client(broker)
        connect_client(self.client, broker, clean_start=True)
        self.client.loop_start()
        if not wait_until(self.client.is_connected, 30):
            self.stop()
            raise TimeoutError(f"the master could not connect to the cloud broker on {cloud_port}")
        self.states = SinkStates(sink_path)
        self.pacer: Pacer | None = None
        self.first_published_ms: dict[str, int] = {}  # cmd_id -> its first publish
        self.publishes_total = 0
        self.dispatcher = Dispatcher(
            self.store, load_private_key(signing_pem), self._publish, self.states.of, resend_s=RESEND_S
        )

    def _publish(self, topic: str, payload: bytes, seconds_left: int) -> None:
        if self.pacer is not None:
            self.pacer.wait()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = seconds_left
        self.first_published_ms.setdefault(json.loads(payload)["cmd_id"], int(time.time() * 1000))
        self.client.publish(topic, payload, qos=1, retain=False, properties=props).wait_for_publish(30)
        self.publishes_total += 1

    def create(self, rollout: str, devices: Sequence[str], expires_s: float) -> dict[str, str]:
        now_ms = int(time.time() * 1000)
        spec = RolloutSpec(
            rollout=rollout,
            op=OP,
            args=ARGS,
            target=f"{HOST}*",
            target_type="glob",
            created_ms=now_ms,
            not_after_ms=now_ms + int(expires_s * 1000),
            run_timeout_s=RUN_TIMEOUT_S,
        )
        return self.store.create(spec, [Target(HOST, SITE, d) for d in devices])

    def round(self, rollouts: Sequence[str]) -> int:
        """One read of the sink, then a step of each rollout: answers in, what is due out."""
        self.states.refresh()
        return sum(self.dispatcher.step(r) for r in rollouts)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.store.close()


@dataclass(slots=True)
class OurSite:
    lab: Lab
    cloud: Mosquitto
    gateway: Mosquitto
    forwarder: ServiceProcess
    swarm: ServiceProcess
    devices: list[str]
    sink_path: Path
    swarm_log: Path
    public_key: str

    def gateway_counters(self) -> Mapping[str, object]:
        status = self.lab.status("forwarder", GATEWAY_ID)
        return status.counters if status is not None else {}

    def swarm_counter(self, key: str) -> int:
        wanted = set(self.devices)
        return sum(
            int(s.counters.get(key, 0))
            for s in read_statuses(self.lab.status_dir)
            if s.service == "sensor" and s.instance in wanted
        )

    def restart_forwarder(self, cycle_ms: int | None) -> None:
        """Stop the forwarder and start it again with `cycle_ms` (None: the formula's default);
        returned once the new process says it is connected at both ends."""
        self.forwarder.stop()
        self.forwarder = start_site_forwarder(self.lab, self.gateway.port, self.cloud.port, self.public_key, cycle_ms)
        pid = self.forwarder.pid

        def connected() -> bool:
            status = self.lab.status("forwarder", GATEWAY_ID)
            return (
                status is not None
                and status.pid == pid
                and bool(status.counters.get("local_connected"))
                and bool(status.counters.get("uplink_connected"))
            )

        if not wait_until(connected, 30):
            raise TimeoutError(f"the forwarder did not connect again; see {self.lab.logs}")
        time.sleep(SETTLE_S)


def start_site_forwarder(
    lab: Lab, gateway_port: int, cloud_port: int, public_key: str, cycle_ms: int | None = None
) -> ServiceProcess:
    settings: dict[str, object] = {"commands": {"public_keys": [public_key]}}
    if cycle_ms is not None:
        settings["cycle_ms"] = cycle_ms
    return start_forwarder(lab, gateway_port, cloud_port, DRAIN_RATE_LIMIT, settings=settings)


@contextmanager
def our_site(devices: int, public_key: str, keep: bool) -> Iterator[OurSite]:
    with Lab(f"{NAME}-ours", keep=keep) as lab:
        sink_path = lab.base / "sink" / "saltmarsh.db"
        sink_path.parent.mkdir()
        cloud = lab.broker("cloud")
        start_ingester(lab, cloud.port, sqlite_sink(sink_path))
        gateway = lab.broker("gateway")
        forwarder = start_site_forwarder(lab, gateway.port, cloud.port, public_key)
        # The formula renders no queue_max (100), and a swarm's queue is its process's, shared by
        # all its devices (sensor.commands.command_inbox): 100 per device, as 100 agents would have.
        swarm_commands = {"public_keys": [public_key], "queue_max": min(10_000, 100 * devices)}
        swarm = start_swarm(
            lab, gateway.port, HOST, devices, interval_s=READING_INTERVAL_S, settings={"commands": swarm_commands}
        )
        names = [swarm_device_id(HOST, n) for n in range(1, devices + 1)]
        swarm_log = lab.layout.log_path(f"sensor-{HOST}")
        yield OurSite(lab, cloud, gateway, forwarder, swarm, names, sink_path, swarm_log, public_key)


@dataclass(frozen=True, slots=True)
class PeerSite:
    lab: Lab
    broker: Mosquitto
    responders: ServiceProcess
    requester: Requester
    devices: list[str]
    ready_file: Path

    def start_responders(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.responders.start()
        if not wait_until(self.ready_file.exists, 60, interval_s=0.1):
            raise TimeoutError(f"the peer's responders did not subscribe; see {self.lab.logs}")


@contextmanager
def peer_site(devices: int, keep: bool) -> Iterator[PeerSite]:
    with Lab(f"{NAME}-peer", keep=keep) as lab:
        # The same broker settings as ours (the formula's): the queue limit is not what is compared.
        broker = lab.broker("rpc")
        ready_file = lab.base / "responders.ready"
        responders = lab.track(
            ServiceProcess.python_module(
                "rpc-responders",
                "bench.rpc_peer",
                [str(broker.port), SITE, str(devices), str(ready_file)],
                lab.layout.log_path("rpc-responders"),
            )
        )
        requester = lab.track(Requester(broker.port, SITE))
        site = PeerSite(lab, broker, responders, requester, [peer_device(n) for n in range(1, devices + 1)], ready_file)
        site.start_responders()
        yield site


def state_counts(records: Sequence[CommandRecord]) -> dict[str, int]:
    return dict(sorted(Tally(r.state for r in records).items()))


def measure_ours_latency(
    site: OurSite, master: Master, rate: float, per_device: int, system: str = OURS
) -> dict[str, float]:
    """`per_device` rollouts of one command to every device, published back to back at `rate`;
    `system` names the figures (the forwarder's settings are the caller's)."""
    tag = "".join(ch for ch in system if ch.isalnum())
    rollouts = [f"lat-{tag}-{rate:.0f}-{i:02d}" for i in range(per_device)]
    ids = [c for r in rollouts for c in master.create(r, site.devices, LATENCY_EXPIRES_S).values()]
    master.pacer = Pacer(rate)
    first = time.time()
    for i in range(len(rollouts)):
        # The earlier rollouts too: their answers are collected, and what is overdue resent.
        master.round(rollouts[: i + 1])
    last = time.time()
    master.pacer = None
    total = len(ids)
    deadline = time.monotonic() + LATENCY_TIMEOUT_S
    while len(master.states.finals(rollouts)) < total and time.monotonic() < deadline:
        time.sleep(POLL_S)
        master.round(rollouts)
    finals = {r.cmd_id: r for r in master.states.finals(rollouts)}
    counts = state_counts(list(finals.values()))
    print(f"    {system} {at(rate)}: {len(finals):,}/{total:,} terminal, by state {counts}", flush=True)
    succeeded = counts.get(CommandState.SUCCEEDED.value, 0)
    if succeeded != total:
        pending = total - len(finals)
        raise RuntimeError(
            f"{system} {at(rate)}: {succeeded:,} of {total:,} commands SUCCEEDED ({counts}, {pending:,} with no "
            f"terminal state {LATENCY_TIMEOUT_S:.0f} s after the last publish); see {site.lab.logs}"
        )
    latencies = [(finals[c].received_ms - master.first_published_ms[c]) / 1000 for c in ids]
    return {
        f"{system} offered {at(rate)}": (total - 1) / max(1e-9, last - first),
        f"{system} p50 {at(rate)}": percentile(latencies, 50),
        f"{system} p99 {at(rate)}": percentile(latencies, 99),
        f"{system} succeeded {at(rate)}": succeeded,
    }


def measure_peer_latency(peer: PeerSite, rate: float, per_device: int) -> dict[str, float]:
    pacer = Pacer(rate)
    ids = []
    first = time.time()
    for i in range(per_device):
        for device in peer.devices:
            request_id = f"lat-{rate:.0f}-{i:02d}-{device}"
            pacer.wait()
            peer.requester.request(request_id, device, OP, ARGS, int(LATENCY_EXPIRES_S))
            ids.append(request_id)
    last = time.time()
    wait_until(lambda: len(peer.requester.latencies_s(ids)) == len(ids), PEER_TIMEOUT_S, interval_s=0.1)
    latencies = peer.requester.latencies_s(ids)
    print(f"    peer {at(rate)}: {len(latencies):,}/{len(ids):,} answered", flush=True)
    if len(latencies) != len(ids):
        raise RuntimeError(f"peer {at(rate)}: {len(latencies):,} of {len(ids):,} requests answered")
    return {
        f"peer offered {at(rate)}": (len(ids) - 1) / max(1e-9, last - first),
        f"peer p50 {at(rate)}": percentile(latencies, 50),
        f"peer p99 {at(rate)}": percentile(latencies, 99),
        f"peer answered {at(rate)}": len(latencies),
    }


def logged(log_path: Path, event: str) -> dict[str, list[float]]:
    """When each cmd_id had `event` in a service's JSON log (`command_run`: the journal ran its op;
    `command_held`: the gateway holds it), in seconds since the epoch, to the log's millisecond."""
    marker = f'"{event}"'
    seen: dict[str, list[float]] = {}
    with log_path.open(errors="replace") as log:
        for line in log:
            if marker not in line:
                continue
            try:
                doc = json.loads(line)
                when = (
                    calendar.timegm(time.strptime(doc["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + int(doc["ts"][20:23]) / 1000
                )
            except (ValueError, KeyError, TypeError):
                continue
            if doc.get("event") == event:
                seen.setdefault(str(doc.get("cmd_id")), []).append(when)
    return seen


def rate_of(times: Sequence[float]) -> float:
    """Events per second from the first to the last."""
    if len(times) < 2:
        return math.nan
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else math.nan


def succeeded_reports(sink_path: Path) -> Tally[str]:
    """SUCCEEDED `cmdres` messages stored per cmd_id: more than one is a duplicate delivery the
    journal answered again, without running the op."""
    with sqlite3.connect(f"file:{sink_path}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            "SELECT json_extract(envelope, '$.cmd.cmd_id'), COUNT(*) FROM messages WHERE kind = 'cmdres'"
            " AND json_extract(envelope, '$.cmd.state') = 'succeeded' GROUP BY 1"
        ).fetchall()
    return Tally({str(cmd_id): int(n) for cmd_id, n in rows})


def publish_peer_backlog(peer: PeerSite, per_device: int, expires_s: float) -> list[str]:
    ids = []
    for i in range(per_device):
        for device in peer.devices:
            request_id = f"drain-{i:03d}-{device}"
            peer.requester.request(request_id, device, OP, ARGS, int(expires_s))
            ids.append(request_id)
    return ids


def measure_drain(site: OurSite, master: Master, peer: PeerSite, per_device: int, outage_s: float) -> dict[str, float]:
    cloud_pid = broker_pid(site.cloud)
    rss_before = rss_mb(cloud_pid)
    site.forwarder.stop()
    peer.responders.stop()
    outage_started = time.monotonic()
    expires_s = outage_s + 3600
    rollouts = [f"drain-{i:03d}" for i in range(per_device)]
    ids = [c for r in rollouts for c in master.create(r, site.devices, expires_s).values()]
    total = len(ids)
    publishes_before = master.publishes_total
    master.round(rollouts)
    publish_s = time.monotonic() - outage_started
    peer_ids = publish_peer_backlog(peer, per_device, expires_s)
    print(f"    gateway offline: {total:,} commands published in {publish_s:.1f} s; peer's too", flush=True)
    rss_peak = rss_before
    while time.monotonic() < outage_started + outage_s:
        time.sleep(POLL_S)
        master.round(rollouts)
        rss_peak = max(rss_peak, rss_mb(cloud_pid))
    queued = stored_messages(site.cloud)
    published_in_outage = master.publishes_total - publishes_before

    publishes_before = master.publishes_total
    returned_ms = int(time.time() * 1000)
    site.forwarder.start()
    timeline: list[tuple[float, int]] = []
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    done = 0
    while done < total and time.monotonic() < deadline:
        time.sleep(POLL_S)
        master.round(rollouts)
        done = len(master.states.finals(rollouts))
        timeline.append((time.time(), done))
        if len(timeline) % 10 == 0:
            print(f"    drain: {done:,}/{total:,} terminal after {time.time() - returned_ms / 1000:.0f} s", flush=True)
    resent_in_drain = master.publishes_total - publishes_before
    finals = master.states.finals(rollouts)
    counts = state_counts(finals)
    drain_s = (max(r.received_ms for r in finals) - returned_ms) / 1000 if len(finals) == total else math.nan
    gateway = site.gateway_counters()
    held = logged(site.lab.layout.log_path("forwarder"), "command_held")
    ran = logged(site.swarm_log, "command_run")
    held_rate = rate_of([min(held[c]) for c in ids if c in held])
    run_rate = rate_of([min(ran[c]) for c in ids if c in ran])
    print(f"    ours drain: {len(finals):,}/{total:,} terminal in {drain_s:.1f} s, by state {counts}", flush=True)

    peer_returned = time.time()
    peer.start_responders()
    wait_until(lambda: peer.requester.answered() >= len(peer.requester.published_s), PEER_TIMEOUT_S, 0.1)
    answered = {r: peer.requester.answered_s[r] for r in peer_ids if r in peer.requester.answered_s}
    peer_drain_s = max(answered.values()) - peer_returned if len(answered) == len(peer_ids) else math.nan
    print(f"    peer drain: {len(answered):,}/{len(peer_ids):,} answered in {peer_drain_s:.1f} s", flush=True)
    return {
        "outage": outage_s,
        "drain commands": total,
        "ours publish time": publish_s,
        "ours publishes in the outage": published_in_outage,
        "cloud broker queue at the outage's end": queued,
        "cloud broker RSS growth in the outage": rss_peak - rss_before,
        "ours drain time": drain_s,
        "ours resends in the drain": resent_in_drain,
        "ours drain commands/s": total / drain_s if drain_s > 0 else math.nan,
        "ours drain sustained commands/s": rate_between(timeline, total),
        "gateway held commands/s in the drain": held_rate,
        "devices ran commands/s in the drain": run_rate,
        "ours drain succeeded": counts.get(CommandState.SUCCEEDED.value, 0),
        "ours drain lost": total - len(finals),
        "gateway commands from the cloud": float(str(gateway.get("commands_received_total", math.nan))),
        "gateway duplicates from the cloud": float(str(gateway.get("commands_redelivered_from_cloud_total", math.nan))),
        "gateway deliveries to devices": float(str(gateway.get("commands_delivered_total", math.nan))),
        "peer drain time": peer_drain_s,
        "peer drain commands/s": len(peer_ids) / peer_drain_s if peer_drain_s > 0 else math.nan,
        "peer drain lost": len(peer_ids) - len(answered),
    }


def audit(site: OurSite, master: Master, peer: PeerSite) -> dict[str, float]:
    """Every command of the run, latency and drain: how often each ran, and was reported."""
    ids = list(master.first_published_ms)
    runs = logged(site.swarm_log, "command_run")
    reports = succeeded_reports(site.sink_path)
    return {
        "ours commands in the run": len(ids),
        "ours run twice": sum(1 for c in ids if len(runs.get(c, ())) > 1),
        "ours never run": sum(1 for c in ids if not runs.get(c)),
        "ours reported twice": sum(1 for c in ids if reports[c] > 1),
        "ours duplicate deliveries at the devices": site.swarm_counter("commands_duplicates_total"),
        "peer answered twice": peer.requester.answers_total - len(peer.requester.answered_s),
    }


@dataclass(frozen=True, slots=True)
class Plan:
    """One run's sizes: `latency_per_device` commands to each device at each rate, then
    `drain_per_device` each through an outage of `outage_s`."""

    devices: int
    latency_per_device: int
    drain_per_device: int
    outage_s: float
    keep_files: bool

    @classmethod
    def of(cls, options: BenchOptions) -> Plan:
        devices = options.size(100, 10)
        return cls(
            devices=devices,
            latency_per_device=options.size(1000, 100) // devices,
            drain_per_device=options.size(100, 10),
            outage_s=options.outage(FULL_OUTAGE_S, QUICK_OUTAGE_S),
            keep_files=options.keep_files,
        )


def measure_run(plan: Plan, run: int, runs: int) -> dict[str, float]:
    signing_pem, public_key = generate_key()
    row: dict[str, float] = {}
    with our_site(plan.devices, public_key, plan.keep_files) as site, peer_site(plan.devices, plan.keep_files) as peer:
        master = site.lab.track(Master(site.lab, site.cloud.port, site.sink_path, signing_pem))
        for rate in RATES:
            print(f"  commands run {run}/{runs} {at(rate)}: ours, then the peer", flush=True)
            row |= measure_ours_latency(site, master, rate, plan.latency_per_device)
            row |= measure_peer_latency(peer, rate, plan.latency_per_device)
        # What the forwarder's quiet cycle costs a command: the same again with the loop reading
        # both links as data comes.
        site.restart_forwarder(cycle_ms=0)
        for rate in RATES:
            print(f"  commands run {run}/{runs} {at(rate)}: {OURS_NO_CYCLE}", flush=True)
            row |= measure_ours_latency(site, master, rate, plan.latency_per_device, OURS_NO_CYCLE)
            print(f"    {latency_summary(row, rate)}", flush=True)
        site.restart_forwarder(cycle_ms=None)
        print(f"  commands run {run}/{runs}: a {plan.outage_s:.0f} s gateway outage, then the drain", flush=True)
        row |= measure_drain(site, master, peer, plan.drain_per_device, plan.outage_s)
        row |= audit(site, master, peer)
    print(
        f"    run twice {row['ours run twice']:.0f}, never run {row['ours never run']:.0f}, reported twice "
        f"{row['ours reported twice']:.0f} of {row['ours commands in the run']:,.0f}",
        flush=True,
    )
    return row


def latency_summary(row: Mapping[str, float], rate: float) -> str:
    def get(name: str) -> float:
        return row[f"{name} {at(rate)}"]

    return "; ".join(
        f"{system} p50 {get(f'{system} p50') * 1000:,.0f} ms, p99 {get(f'{system} p99') * 1000:,.0f} ms"
        for system in (OURS, OURS_NO_CYCLE, PEER)
    )


LATENCY_FIGURES = {
    OURS: {
        "offered": ("commands/s", "first publishes over their span, paced evenly by the bench"),
        "p50": ("s", "publish on the cloud broker to the ingester's receipt of the terminal cmdres"),
        "p99": ("s", ""),
        "succeeded": ("commands", "every one must be SUCCEEDED, or the bench fails"),
    },
    OURS_NO_CYCLE: {
        "offered": ("commands/s", ""),
        "p50": ("s", "the same, the forwarder reading both links as data comes instead of once a cycle"),
        "p99": ("s", ""),
        "succeeded": ("commands", ""),
    },
    PEER: {
        "offered": ("commands/s", ""),
        "p50": ("s", "publish to the answer's arrival at the requester"),
        "p99": ("s", ""),
        "answered": ("commands", ""),
    },
}
DRAIN_FIGURES = {
    "outage": ("s", "forwarder stopped; its session, and what is queued for it, kept by the cloud broker"),
    "drain commands": ("commands", "a rollout of one command to every device per command each device gets"),
    "ours publish time": ("s", "the master's first sends of them all"),
    "ours publishes in the outage": ("publishes", "first sends and the master's resends every resend_s"),
    "cloud broker queue at the outage's end": ("messages", "$SYS/broker/store/messages/count, at most 10 s old"),
    "cloud broker RSS growth in the outage": ("MB", "peak during the outage minus before"),
    "ours drain time": ("s", "forwarder started to the last terminal state received by the ingester"),
    "ours resends in the drain": ("publishes", "what no hop had answered for resend_s, published again"),
    "ours drain commands/s": ("commands/s", "commands / drain time"),
    "ours drain sustained commands/s": ("commands/s", "from 10% to 90% of the terminal states"),
    "gateway held commands/s in the drain": ("commands/s", "first to last `command held` in the forwarder's log"),
    "devices ran commands/s in the drain": (
        "commands/s",
        "first to last `command run` in the swarm's log: its one thread",
    ),
    "ours drain succeeded": ("commands", ""),
    "ours drain lost": ("commands", "no terminal state in the sink at the end"),
    "gateway commands from the cloud": ("commands", "taken after the outage (new and duplicate)"),
    "gateway duplicates from the cloud": ("commands", "the master's resends, recognised by cmd_id and dropped"),
    "gateway deliveries to devices": ("publishes", "first and again, on the site broker"),
    "peer drain time": ("s", "responders back to the last answer"),
    "peer drain commands/s": ("commands/s", ""),
    "peer drain lost": ("commands", "never answered"),
}
AUDIT_FIGURES = {
    "ours commands in the run": ("commands", "latency at both rates, and the drain"),
    "ours run twice": ("commands", "more than one `command run` in the swarm's log"),
    "ours never run": ("commands", ""),
    "ours reported twice": ("commands", "more than one SUCCEEDED cmdres stored: a duplicate the journal answered"),
    "ours duplicate deliveries at the devices": ("deliveries", "answered from the journal, not run"),
    "peer answered twice": ("commands", "a QoS 1 redelivery runs again: the peer has no journal"),
}


def figure_table() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for rate in RATES:
        for system, figures in LATENCY_FIGURES.items():
            table |= {f"{system} {name} {at(rate)}": spec for name, spec in figures.items()}
    return table | DRAIN_FIGURES | AUDIT_FIGURES


def run(options: BenchOptions) -> BenchReport:
    plan = Plan.of(options)
    rows = [measure_run(plan, i + 1, options.runs) for i in range(options.runs)]
    devices, outage_s, drain_per_device = plan.devices, plan.outage_s, plan.drain_per_device
    # A full-size run with another outage than the full one is no result for the targets.
    quick = options.quick or outage_s != FULL_OUTAGE_S
    report = BenchReport(NAME, TITLE, environment(quick), figures_from_table(rows, figure_table()))
    for system, what in (
        (OURS, "end to end through store-and-forward / plain MQTT request-response"),
        (OURS_NO_CYCLE, "the same, without the forwarder's quiet cycle"),
    ):
        for rate in RATES:
            for pct in ("p50", "p99"):
                report.ratios.append(
                    ratio(
                        f"{system}/peer {pct} {at(rate)}",
                        report.value(f"{system} {pct} {at(rate)}"),
                        report.value(f"{PEER} {pct} {at(rate)}"),
                        what,
                    )
                )
    report.ratios.append(
        ratio(
            "ours/peer drain time",
            report.value("ours drain time"),
            report.value("peer drain time"),
            f"after a {outage_s:.0f} s outage, {drain_per_device * devices:,} commands",
        )
    )
    report.notes += [*notes(plan), cycle_note(report)]
    return report


def cycle_note(report: BenchReport) -> str:
    """How much of our latency is the forwarder's quiet cycle, in this run's figures."""

    def p50(system: str, rate: float) -> str:
        return fmt(report.value(f"{system} p50 {at(rate)}"))

    parts = [f"p50 {p50(OURS, r)} s with it, {p50(OURS_NO_CYCLE, r)} s without it {at(r)}" for r in RATES]
    return (
        "At a site's rate the forwarder reads each link once a cycle (cycle_ms 1000, the formula's), so a "
        "command waits for the next read of the uplink and its result for the next read of the site broker: "
        f"{'; '.join(parts)}. The cycle is there to save wake-ups and commits at a site's rate (gateway/loop.py)."
    )


def notes(plan: Plan) -> list[str]:
    devices, latency_per_device = plan.devices, plan.latency_per_device
    drain_per_device, outage_s = plan.drain_per_device, plan.outage_s
    return [
        "No peer publishes comparable end-to-end figures for commands through store-and-forward: AWS IoT Jobs, "
        "ThingsBoard's persistent RPC and Azure IoT Hub's cloud-to-device messages give no latency or drain "
        "figures for a command held through an offline gateway. So the peer is our own plain-RPC baseline: "
        "the same requests at the same rate through one Mosquitto to a paho responder per device, no "
        "store-and-forward, no journal, no signature.",
        f"Latency: {latency_per_device} rollouts of one `{OP}` to each of {devices} devices "
        f"({latency_per_device * devices:,} commands), published back to back, evenly paced by the bench (the "
        "master's own --max-per-minute sends a second's share at once); ours ends at the ingester's receipt "
        "of the terminal cmdres (stored in that batch's transaction, within its 20 ms batch interval), the "
        "peer's at the answer's arrival at the requester. Each device also reads every "
        f"{READING_INTERVAL_S:.0f} s ({devices / READING_INTERVAL_S:.0f} readings/s).",
        f"Drain: the forwarder stopped for {outage_s:.0f} s, its persistent session kept by the cloud broker; "
        f"{drain_per_device * devices:,} commands ({drain_per_device} per device) published at its start, and "
        f"the master stepping every rollout each {POLL_S:.0f} s, as `cmd send --watch` does, resending every "
        f"unanswered command each {RESEND_S:.0f} s (the formula's resend_s). The peer's devices were away for "
        "the outage and our drain, their sessions persistent: a plain broker's queue does not grow with time.",
        "Brokers as the formula renders them (saltmarsh.ops.localfleet.mosquitto: max_queued_messages "
        "10,000,000, max_inflight_messages 1000, persistence), without its TLS, passwords and ACLs: loopback "
        f"only. Forwarder with the formula's defaults (cycle_ms 1000, redeliver_s 30, drain_rate_limit "
        f"{DRAIN_RATE_LIMIT:,.0f}).",
        f"The {devices} devices are one swarm process (as in tests/test_command_abort.py): one command thread "
        "runs every device's commands in turn, where 100 real devices would run theirs side by side, and its "
        "command queue is the process's, so the bench gives it queue_max 100 per device (the formula renders "
        "none: 100 for the whole swarm).",
    ]
