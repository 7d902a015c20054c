"""Running a chaos plan on the lab, then proving nothing was lost or stored twice.

`expand` turns a plan into timed events (pure); `ChaosRun` carries them out against a running
lab, waits for the fleet to drain, and reports: what happened when, the audit of the sink against
every sensor's own last seq, the forwarders' spool beacons that the relay engine indexed during
the run (depth rising, then draining), and how long each unit took to come back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from saltmarsh.config.ingester import load_sink_config
from saltmarsh.contract.errors import ConfigError, SaltmarshError
from saltmarsh.ops.audit import AuditReport, run_audit
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.lab import Lab
from saltmarsh.ops.lab.node import enter_argv, run_in
from saltmarsh.ops.lab.pillar import ELASTICSEARCH_URL
from saltmarsh.ops.lab.plan import Plan, Step
from saltmarsh.ops.lab.saltctl import BIN, SVC_STATE_DIR, StateRun, start_daemon
from saltmarsh.ops.lab.sink_reader import SinkTotals, read_lines
from saltmarsh.relay.sender import HEALTH_TAG
from saltmarsh.sinks import StoredKey

Say = Callable[[str], None]
COME_BACK_TIMEOUT_S = 180.0
INGESTER_CONFIG = "/etc/saltmarsh/ingester-1.toml"
# Another writer that takes the database and never commits: the ingester's writes time out as
# SinkUnavailable until stdin closes.
HOLD_SQLITE_LOCK = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "db.execute('ROLLBACK')\n"
)


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    label: str
    step: Step
    undo: bool = False


def expand(plan: Plan) -> list[Event]:
    """Every fault and every undo of the plan, in time order (undos first at the same instant)."""
    events: list[Event] = []
    for step in plan.steps:
        for repeat in range(step.times):
            start = step.at + repeat * step.every_s
            target = f"{step.node}/{step.unit}" if step.unit else step.node
            events.append(Event(start, f"{step.do} {target}", step))
            if step.duration_s > 0:
                events.append(Event(start + step.duration_s, f"end {step.do} {target}", step, undo=True))
    return sorted(events, key=lambda e: (e.at, not e.undo))


def resolve_node(lab: Lab, name: str) -> str:
    """A node id, or `cloud`, `gateway` (the first site's), `gateway:<site>` or `sensor:<site>:<n>`
    (the site's n-th sensor, from 1)."""
    fleet = lab.fleet
    if name.startswith("sensor:"):
        _, site, number = name.split(":", 2) if name.count(":") == 2 else (name, "", "")
        sensors = fleet.with_role("sensor", site)
        if not number.isdigit() or not 1 <= int(number) <= len(sensors):
            raise ConfigError("node", f"{name!r}: site {site!r} has {len(sensors)} sensors")
        return sensors[int(number) - 1].id
    if name in ("cloud", "master"):
        return fleet.master.id
    if name == "gateway":
        return fleet.gateway_of(fleet.sites[0]).id
    if name.startswith("gateway:"):
        return fleet.gateway_of(name.partition(":")[2]).id
    return fleet.node(name).id


@dataclass
class ChaosReport:
    plan: str
    timeline: list[tuple[float, str]] = field(default_factory=list)
    audit: AuditReport | None = None
    drained_s: float | None = None
    come_back_s: dict[str, list[float]] = field(default_factory=dict)  # "node/unit" -> seconds
    beacon_depths: dict[str, list[int]] = field(default_factory=dict)  # gateway -> depths seen
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the plan asked for that this machine could not do
    impairment_drops: int = 0  # packets the nftables fallback dropped
    relay_caught_up_s: float | None = None  # when the relay engine's spool was seen empty again
    relay_spooled: int = 0  # events the relay engine had to spool during the run
    evicted: int = 0  # readings the spool quotas evicted (the forwarders' evicted_total), all counted
    alerts: tuple[int, int] | None = None  # alerts the sensors raised, alerts in the sink
    written_at: list[tuple[str, int | None]] = field(default_factory=list)  # event -> sink's written_total

    @property
    def ok(self) -> bool:
        a = self.audit
        return a is not None and a.duplicated == 0 and a.lost <= self.evicted and not self.problems


class ChaosRun:
    def __init__(self, lab: Lab, plan: Plan, say: Say) -> None:
        self.lab = lab
        self.plan = plan
        self.say = say
        self.report = ChaosReport(plan.name)
        self._started = 0.0
        self._waiting: list[tuple[str, str, int | None, float]] = []  # node, unit, old pid, since
        self._nft_impaired: set[str] = set()
        self._sink_lock: subprocess.Popen[str] | None = None

    # -- the faults -----------------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        step = event.step
        node = resolve_node(self.lab, step.node)
        actions: dict[str, Callable[[str, Step, bool], None]] = {
            "cut-uplink": self._cut,
            "netem": self._netem,
            "kill9": self._kill9,
            "kill-unit": self._kill_unit,
            "pause": self._pause,
            "stop-unit": self._stop_unit,
            "restart-units": self._restart_units,
            "stop-master": self._stop_master,
            "pause-elasticsearch": self._pause_elasticsearch,
            "stop-sink": self._stop_sink,
            "spool-quota": self._spool_quota,
        }
        actions[step.do](node, step, event.undo)

    def _cut(self, node: str, step: Step, undo: bool) -> None:
        network.run(network.link_state_commands(network.uplink_of(self.lab.fleet, self.lab.prefix, node), up=undo))

    def _netem(self, node: str, step: Step, undo: bool) -> None:
        link = network.uplink_of(self.lab.fleet, self.lab.prefix, node)
        if undo:
            if link.node_ns in self._nft_impaired:
                self._nft_impaired.discard(link.node_ns)
                dropped = network.nft_clear(link)
                self.report.impairment_drops += dropped
                self._log(f"{node}: nftables dropped {dropped} packets")
            else:
                network.run(network.clear_netem_commands(link), check=False)
            return
        failures = network.run(network.netem_commands(link, step.loss_pct, step.delay_ms, step.rate_kbit), check=False)
        if not failures:
            return
        network.run(network.clear_netem_commands(link), check=False)
        if "qdisc kind is unknown" not in " ".join(failures):
            raise SaltmarshError("; ".join(failures))
        network.nft_impair(link, step.loss_pct, step.rate_kbit)
        self._nft_impaired.add(link.node_ns)
        note = f"this kernel has no netem: {step.loss_pct:g}% loss" + (" and the rate cap" if step.rate_kbit else "")
        note += " applied with nftables" + (f"; the {step.delay_ms:g} ms delay could not be" if step.delay_ms else "")
        self.report.notes.append(note)
        self._log(note)

    def _main_pid(self, node: str, unit: str) -> int:
        """The unit's running main pid; a fault meant for a running process waits for one (a
        plan's repeats may come faster than the unit's RestartSec)."""
        deadline = time.monotonic() + COME_BACK_TIMEOUT_S
        self._check_come_backs()  # the running pid may be an earlier kill's come-back: count it first
        while (pid := self.lab.unit_pid(node, unit)) is None:
            if time.monotonic() > deadline:
                raise SaltmarshError(f"{node}: {unit} is not running")
            self._check_come_backs()
            time.sleep(0.1)
        return pid

    def _kill9(self, node: str, step: Step, undo: bool) -> None:
        pid = self._main_pid(node, step.unit)
        os.kill(pid, signal.SIGKILL)
        self._waiting.append((node, step.unit, pid, time.monotonic()))

    def _kill_unit(self, node: str, step: Step, undo: bool) -> None:
        """As if systemd gave up on the unit: nothing on the node brings it back; the reactor must."""
        pid = self._main_pid(node, step.unit)
        name = step.unit if step.unit.endswith(".service") else f"{step.unit}.service"
        supervisor = self.lab.dirs(node).path(f"{SVC_STATE_DIR}/{name}.supervisor")
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.killpg(int(supervisor.read_text().split()[0]), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._waiting.append((node, step.unit, pid, time.monotonic()))

    def _pause(self, node: str, step: Step, undo: bool) -> None:
        pid = self._main_pid(node, step.unit)
        os.kill(pid, signal.SIGCONT if undo else signal.SIGSTOP)

    def _salt_call(self, node: str, *args: str) -> None:
        # On the node itself, as an operator on the box would: its minion may be cut off from
        # the master (a restart while the uplink is down).
        done = run_in(self.lab.anchor(node), [str(BIN / "salt-call"), "--local", "--retcode-passthrough", *args], 180)
        if done.returncode != 0:
            raise SaltmarshError(f"{node}: salt-call {' '.join(args)}: {done.stdout[-500:]}{done.stderr[-500:]}")

    def _stop_unit(self, node: str, step: Step, undo: bool) -> None:
        self._salt_call(node, "service.start" if undo else "service.stop", step.unit)

    def _restart_units(self, node: str, step: Step, undo: bool) -> None:
        for unit in self.lab.units(node):
            self._salt_call(node, "service.restart", unit.removesuffix(".service"))

    def _stop_master(self, node: str, step: Step, undo: bool) -> None:
        if undo:
            start_daemon(self.lab.anchor(node), "salt-master")
            return
        pid_file = self.lab.dirs(node).path("/run/salt-master.pid")
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)

    def _pause_elasticsearch(self, node: str, step: Step, undo: bool) -> None:
        pid = self.lab.state.elasticsearch_pid
        if pid:
            os.kill(pid, signal.SIGCONT if undo else signal.SIGSTOP)

    def _stop_sink(self, node: str, step: Step, undo: bool) -> None:
        """The ingester's sink stops answering: the SQLite file held under an exclusive lock from
        inside the cloud node (another writer that never commits), or Elasticsearch paused."""
        sink = load_sink_config(self.lab.dirs(node).path(INGESTER_CONFIG))
        if sink.type != "sqlite" or sink.path is None:
            self._pause_elasticsearch(node, step, undo)
            return
        if undo:
            if self._sink_lock is not None:
                self._sink_lock.communicate(timeout=30)  # stdin closed: it rolls back and exits
                self._sink_lock = None
            return
        argv = [sys.executable, "-c", HOLD_SQLITE_LOCK, str(sink.path)]
        self._sink_lock = subprocess.Popen(
            enter_argv(self.lab.anchor(node), argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._sink_lock.stdout is not None
        if self._sink_lock.stdout.readline().strip() != "locked":
            self._sink_lock.kill()
            self._sink_lock.wait()
            self._sink_lock = None
            raise SaltmarshError(f"{node}: could not lock the sink {sink.path}")

    def _spool_quota(self, node: str, step: Step, undo: bool) -> None:
        """The gateway's formula run again from the master, with the quota as a pillar override
        (the forwarder restarts on its changed config); the undo runs it with the fleet's pillar."""
        args = ["-L", node, "state.apply", "saltmarsh.gateway"]
        if not undo:
            override = {"saltmarsh": {"gateway": {"forwarder": {"spool_quota_bytes": step.quota_bytes}}}}
            args.append(f"pillar={json.dumps(override)}")
        run = StateRun(node, self.lab.master.salt(*args) or {})
        if node not in run.minions or run.failures():
            raise SaltmarshError(f"{node}: state.apply saltmarsh.gateway: {run.failures() or 'no return'}")

    # -- the run --------------------------------------------------------------------------

    def _log(self, text: str) -> None:
        at = time.monotonic() - self._started
        self.report.timeline.append((round(at, 1), text))
        self.say(f"[{at:6.1f} s] {text}")

    def _check_come_backs(self) -> None:
        still: list[tuple[str, str, int | None, float]] = []
        for node, unit, old_pid, since in self._waiting:
            pid = self.lab.unit_pid(node, unit)
            if pid is not None and pid != old_pid:
                took = time.monotonic() - since
                self.report.come_back_s.setdefault(f"{node}/{unit}", []).append(round(took, 1))
                self._log(f"{node}/{unit} back as pid {pid} after {took:.1f} s")
            elif time.monotonic() - since > COME_BACK_TIMEOUT_S:
                self.report.problems.append(f"{node}/{unit} did not come back within {COME_BACK_TIMEOUT_S:.0f} s")
            else:
                still.append((node, unit, old_pid, since))
        self._waiting = still

    def run(self) -> ChaosReport:
        events = expand(self.plan)
        self._started = time.monotonic()
        start_ms = int(time.time() * 1000)
        self._log(f"plan {self.plan.name}: {len(events)} events over {self.plan.length_s:.0f} s")
        # The plan's clock stops while a step runs (a state run, a wait for a unit to be up), so a
        # fault lasts as long as the plan says however late it began.
        lag = 0.0
        for event in events:
            while time.monotonic() - self._started - lag < event.at:
                self._check_come_backs()
                time.sleep(0.2)
            began = time.monotonic()
            try:
                self._apply(event)
                self._log(event.label)
                self.report.written_at.append((event.label, self._written_total()))
            except SaltmarshError as err:
                self.report.problems.append(f"{event.label}: {err}")
                self._log(f"{event.label} FAILED: {err}")
            lag += time.monotonic() - began
        settle_deadline = time.monotonic() + self.plan.settle_s
        end_ms = int(time.time() * 1000)
        while self._waiting and time.monotonic() < settle_deadline:
            self._check_come_backs()
            time.sleep(0.2)
        self._check_come_backs()
        # What every sensor had produced when the plan ended: the sink must come to hold all of
        # it. The sensors go on producing; what they produce later is not waited for.
        # The readings a spool quota evicted are lost on purpose, and counted exactly: the
        # forwarders' evicted_total (kept across restarts) is what the audit may miss, no more.
        produced, alerts_raised = produced_so_far(self.lab)
        report, totals = audit_and_totals(self.lab, produced)
        evicted = evicted_total(self.lab)

        def waiting(report: AuditReport, totals: SinkTotals, evicted: int) -> bool:
            # With evictions, "lost <= evicted" can hold while messages are still on their way
            # (the evicted ones that reached the sink make room): the alerts, never evicted,
            # must all be there too before the sink is called drained.
            short_of_alerts = totals.alerts is not None and totals.alerts < alerts_raised
            return report.lost > evicted or short_of_alerts

        while waiting(report, totals, evicted) and time.monotonic() < settle_deadline:
            time.sleep(1.0)
            (report, totals), evicted = audit_and_totals(self.lab, produced), evicted_total(self.lab)
        self.report.audit, self.report.evicted = report, evicted
        if report.lost > evicted:
            self.report.problems.append(
                f"{report.lost - evicted} readings still missing {self.plan.settle_s:.0f} s after the plan"
                + (f" (besides the {evicted} the spool quota evicted)" if evicted else "")
            )
        else:
            if report.lost < evicted:
                # A forwarder that restarts forgets which of its spooled readings it had already
                # sent: evicting one of those counts it, though its copy may be in the sink.
                self.report.notes.append(
                    f"{evicted - report.lost} of the {evicted} evicted readings had been sent before a"
                    " forwarder restart and reached the sink anyway"
                )
            self.report.drained_s = round(time.monotonic() - self._started, 1)
            self._log(f"drained: the sink holds every reading produced up to the plan's end ({report.readings})")
        self._wait_for_relay(start_ms, end_ms, settle_deadline)
        self._check_alerts(alerts_raised, totals.alerts)
        return self.report

    def _check_alerts(self, raised: int, stored: int | None) -> None:
        """No alert is ever evicted or dropped: the sink holds every one raised by the plan's end
        (the drain waited for every seq up to then, the alerts' among them)."""
        if stored is None:
            return
        self.report.alerts = (raised, stored)
        if stored < raised:
            self.report.problems.append(f"the sensors raised {raised} alerts; the sink holds {stored}")

    def _written_total(self) -> int | None:
        """What the cloud's ingesters have written to the sink so far, by their own counters."""
        counts = [
            int(s.counters["written_total"])
            for s in self.lab.statuses(self.lab.fleet.master.id)
            if s.service == "ingester" and "written_total" in s.counters
        ]
        return sum(counts) if counts else None

    def _wait_for_relay(self, start_ms: int, end_ms: int, deadline: float) -> None:
        """The relay engine caught up: a health event from after the plan with its spool empty, a
        beacon from every gateway indexed since (the master may have been down), and every spool
        that rose during the plan seen draining."""
        gateways = {g.id for g in self.lab.fleet.with_role("gateway")}
        while True:
            health = relay_health(self.lab, end_ms)
            caught_up = [h for h in health if h.get("spool_depth") == 0 and h.get("queue_depth", 0) == 0]
            beaconed = set(beacon_depths(self.lab, end_ms))
            depths = beacon_depths(self.lab, start_ms)
            undrained = sorted(gw for gw, seen in depths.items() if not drained(seen))
            if (caught_up and gateways <= beaconed and not undrained) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        self.report.beacon_depths = depths
        if not gateways <= beaconed:
            self.report.problems.append(f"no spool beacon indexed after the plan from {sorted(gateways - beaconed)}")
        if undrained:
            self.report.problems.append(f"the spool beacons of {undrained} never showed the spool draining")
        self.report.relay_spooled = max((int(h.get("spooled", 0)) for h in health), default=0)
        dropped = max((int(h.get("dropped", 0)) for h in health), default=0)
        if dropped:
            self.report.problems.append(f"the relay engine dropped {dropped} events")
        if not caught_up:
            depth = health[-1].get("spool_depth") if health else "no health event"
            self.report.problems.append(f"the relay engine did not catch up after the plan (spool: {depth})")
        else:
            self.report.relay_caught_up_s = round(time.monotonic() - self._started, 1)


# -- after the run ----------------------------------------------------------------------------


def expectations(lab: Lab) -> dict[str, tuple[str, int]]:
    """Each sensor's own word on what it produced, across boots: device -> (boot, last seq)."""
    return produced_so_far(lab)[0]


def produced_so_far(lab: Lab) -> tuple[dict[str, tuple[str, int]], int]:
    """What the sensors produced (as `expectations`) and the alerts among it, from one reading of
    their status files: the alerts counted are among the seqs expected."""
    out: dict[str, tuple[str, int]] = {}
    alerts = 0
    for statuses in lab.all_statuses().values():
        for s in statuses:
            if s.service == "sensor" and "boot" in s.counters and "last_seq" in s.counters:
                out[s.instance] = (str(s.counters["boot"]), int(s.counters["last_seq"]))
                alerts += int(s.counters.get("alerts_total", 0))
    return out, alerts


def read_sink(lab: Lab, totals: SinkTotals) -> Iterator[StoredKey]:
    """The cloud's stored keys, read inside the cloud node (saltmarsh.ops.lab.sink_reader says why);
    its dead letters and alerts land in `totals` once the keys are read to the end."""
    argv = [sys.executable, "-m", "saltmarsh.ops.lab.sink_reader", INGESTER_CONFIG]
    reader = subprocess.Popen(
        enter_argv(lab.anchor(lab.fleet.master.id), argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stderr is not None
    try:
        yield from read_lines(reader.stdout, totals)
        error = reader.stderr.read()
        if reader.wait(timeout=60) != 0 or not totals.complete:
            raise SaltmarshError(f"reading the cloud's sink failed: {error.strip()[-500:]}")
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        reader.stdout.close()
        reader.stderr.close()


def audit_and_totals(lab: Lab, produced: dict[str, tuple[str, int]] | None = None) -> tuple[AuditReport, SinkTotals]:
    """`saltmarsh audit` of the cloud's sink, read through the ingester config Salt rendered, and
    the sink's alert count from the same read."""
    totals = SinkTotals()
    report = run_audit(read_sink(lab, totals), produced or expectations(lab))
    # The dead letters come after the keys; run_audit has read them all by now.
    return dataclasses.replace(report, dead_letters=totals.dead_letters), totals


def audit(lab: Lab, produced: dict[str, tuple[str, int]] | None = None) -> AuditReport:
    return audit_and_totals(lab, produced)[0]


def evicted_total(lab: Lab) -> int:
    """Readings the gateways' spool quotas evicted, by the forwarders' own exact counters."""
    return sum(
        int(s.counters.get("evicted_total", 0))
        for gateway in lab.fleet.with_role("gateway")
        for s in lab.statuses(gateway.id)
        if s.service == "forwarder"
    )


def search_events(lab: Lab, query: dict[str, Any]) -> list[dict[str, Any]]:
    """The relay engine's index, searched from inside the cloud node."""
    # From inside the cloud node, where the server listens; urllib, so the host needs no curl.
    fetch = (
        "import sys, urllib.request\n"
        "request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), "
        "headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=30).read().decode())\n"
    )
    url = f"{ELASTICSEARCH_URL}/saltmarsh-fleet-events-*/_search"
    argv = [sys.executable, "-c", fetch, url, json.dumps(query)]
    done = run_in(lab.anchor(lab.fleet.master.id), argv, timeout_s=60)
    try:
        hits = json.loads(done.stdout)["hits"]["hits"]
    except (ValueError, KeyError, TypeError):
        return []
    return [h["_source"] for h in hits if isinstance(h, dict) and "_source" in h]


def beacon_depths(lab: Lab, since_ms: int) -> dict[str, list[int]]:
    """Each gateway's spool depth, as its beacon reported it to the master, in time order."""
    docs = search_events(lab, {"size": 10000, "query": {"range": {"@timestamp": {"gte": since_ms}}}})
    depths: dict[str, list[tuple[str, int]]] = {}
    for doc in docs:
        tag = str(doc.get("tag", ""))
        data = doc.get("data")
        if "/saltmarsh_spool/" in tag and isinstance(data, dict) and "spool_depth" in data:
            depths.setdefault(str(doc.get("minion_id")), []).append(
                (str(doc.get("@timestamp")), int(data["spool_depth"]))
            )
    return {gw: [depth for _, depth in sorted(seen)] for gw, seen in depths.items()}


def drained(depths: list[int]) -> bool:
    """A spool that rose during the plan has been seen lower than its peak since, or never rose."""
    return not depths or depths[-1] < max(depths) or max(depths) == min(depths)


def relay_health(lab: Lab, since_ms: int) -> list[dict[str, Any]]:
    """The relay engine's own health events (its counters) that reached its index, in time order."""
    query = {"size": 1000, "query": {"range": {"@timestamp": {"gte": since_ms}}}}
    seen = [
        (str(doc.get("@timestamp")), doc["data"])
        for doc in search_events(lab, query)
        if doc.get("tag") == HEALTH_TAG and isinstance(doc.get("data"), dict)
    ]
    return [data for _, data in sorted(seen, key=lambda item: item[0])]


def format_chaos_report(report: ChaosReport) -> str:
    lines = [f"plan {report.plan}: {'OK' if report.ok else 'FAILED'}"]
    if report.audit is not None:
        a = report.audit
        lines.append(f"  audit: {a.readings} readings, {a.lost} lost, {a.duplicated} duplicated")
        if report.evicted:
            lines.append(f"  spool quota: {report.evicted} readings evicted and counted; the audit misses {a.lost}")
    if report.alerts is not None:
        lines.append(f"  alerts: {report.alerts[0]} raised by the sensors, {report.alerts[1]} in the sink")
    if report.drained_s is not None:
        lines.append(f"  drained {report.drained_s:.0f} s after the plan started")
    for unit, times in sorted(report.come_back_s.items()):
        lines.append(f"  {unit} came back after " + ", ".join(f"{t:.1f}" for t in times) + " s")
    for gateway, depths in sorted(report.beacon_depths.items()):
        peak = max(depths, default=0)
        lines.append(
            f"  {gateway} spool beacons: {len(depths)} events, peak depth {peak}, last {depths[-1] if depths else '-'}"
        )
    if report.relay_caught_up_s is not None:
        lines.append(
            f"  relay engine caught up {report.relay_caught_up_s:.0f} s after the plan started"
            f" ({report.relay_spooled} events spooled and sent later, 0 dropped)"
        )
    if report.impairment_drops:
        lines.append(f"  {report.impairment_drops} packets dropped on the impaired uplink")
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  problem: {p}" for p in report.problems]
    return "\n".join(lines)
