"""Power cuts: a gateway in a qemu VM, its power cut by `kill -9` of qemu, again and again, audited.

`kill -9` of a process keeps the page cache, so it cannot show that an fsync is where it must be;
a power cut does. The guest (saltmarsh.ops.vm) runs what a gateway Pi runs: its Mosquitto, the
forwarder and two sensor agents (simulated DHTs at 20 Hz), their state on two data disks (the
forwarder's and broker's on vdb, the sensors' spools on vdc). The cloud broker and the ingester
with its SQLite sink run on the host, reached through one guestfwd port.

The plan: boot, cut at a random moment, boot again, once per phase of the plan, each cut in one of
four phases:
- load: a few seconds into steady traffic, mid-commit as likely as not;
- outage: the guest's next hop is stopped (the forwarder's cloud broker, or a sensor Pi's gateway
  broker), the guest spools what nobody confirms, and the power is cut while it does;
- drain: the same outage, ended, and the power cut while the backlog drains;
- boot: within seconds of the services starting, while spools are opened and recovered.
The same image also runs as a sensor Pi alone (SENSOR_PLAN), its gateway on the host.
Then a last boot drains everything, and the audit asks of the sink: every reading any sensor's
spool had committed (its `last_seq`, printed on the console twice a second, which is the host's
file and survives the cut) is stored, with no gap in any boot, exactly once.

Also measured: how long each boot took to come back (qemu start to the services reporting) and
to have everything committed before the cut in the sink; bytes written per reading on each
data disk (from the guest's /proc/diskstats: the SD card's wear); and each spool's integrity
after every cut (SQLite's `PRAGMA integrity_check` and diskcache's own `check()` of a copy taken
off the unmounted disk, its journal replayed).
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import diskcache

from bench.lab import Lab
from bench.options import BenchOptions
from bench.reading import SITE
from bench.results import BenchReport, environment, figures_from_table, ratio
from bench.scenarios.ingester import SINK_BENCHES
from bench.scenarios.topology import BRIDGE_CRASH_SAFE, OURS, bridge_spec, start_hop
from bench.services import INGESTER_ID, start_ingester
from saltmarsh.ops.audit import run_audit
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.vm.console import BootRecord
from saltmarsh.ops.vm.disks import copy_out, make_disk, recovered_copy
from saltmarsh.ops.vm.image import ensure_image
from saltmarsh.ops.vm.machine import GUEST_HOST, GuestFwd, Machine, MachineSpec
from saltmarsh.ops.vm.site import GUEST_GATEWAY_PORT, GUEST_UPLINK_PORT, GuestSite
from saltmarsh.sinks.base import StoredKey
from saltmarsh.sinks.sqlite import SqliteSink

NAME = "powercut"
TITLE = "power cuts of a gateway VM (kill -9 of qemu), audited end to end"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Plan:
    """One guest and the phases of its cuts, in order."""

    name: str  # the figures' prefix
    site: GuestSite
    phases: tuple[str, ...]
    quick_cuts: int
    peer: bool = False  # its losses are measured, not a failure


GATEWAY_PLAN = Plan(
    "gateway VM",
    GuestSite(site=SITE),
    ("load", "drain", "boot", "outage", "drain", "load", "boot", "drain", "outage", "load"),
    quick_cuts=3,
)
# A sensor Pi alone: its gateway (broker and forwarder) on the host; "outage" stops that broker,
# so the agent spools what nobody confirms, and the power is cut while it does.
SENSOR_PLAN = Plan("sensor VM", GuestSite.sensor_only(SITE), ("outage", "load", "outage", "boot", "outage"), 2)
# The peer: the same gateway Pi as plain Mosquitto runs one, its native bridge in the crash-safe
# configuration of the forwarder bench (bridge (b): persistence, autosave on every change), the
# sensors deleting a reading on the broker's PUBACK. The same cuts, the same audit.
BRIDGE_PLAN = Plan(
    "bridge VM",
    GuestSite.bridged(SITE, bridge_spec(BRIDGE_CRASH_SAFE, GUEST_UPLINK_PORT, remote_host=GUEST_HOST)),
    GATEWAY_PLAN.phases,
    quick_cuts=3,
    peer=True,
)
PLANS = (GATEWAY_PLAN, SENSOR_PLAN, BRIDGE_PLAN)
RECOVERY_STALL_S = 20.0  # the sink has not grown for this long: what is missing will not come
SERVICES_TIMEOUT_S = 120.0  # TCG: a boot is ~5 s to init, then three Pythons start
DRAIN_TIMEOUT_S = 240.0
OUTAGE_S = (6.0, 15.0)
LOAD_S = (1.0, 12.0)
BOOT_S = (0.0, 4.0)
DRAIN_CUT_S = (0.5, 4.0)
FINAL_CATCH_UP_S = 60.0

BootKey = tuple[str, str]  # (device, boot)


def committed(records: Iterable[BootRecord]) -> dict[BootKey, int]:
    """Each sensor boot's last committed seq, as last printed before its cut."""
    out: dict[BootKey, int] = {}
    for record in records:
        for key, seq in record.sensor_seqs.items():
            out[key] = max(out.get(key, 0), seq)
    return out


def highest_stored(keys: Iterable[tuple[str, str, int]]) -> dict[BootKey, int]:
    out: dict[BootKey, int] = {}
    for device, boot, seq in keys:
        if seq > out.get((device, boot), 0):
            out[(device, boot)] = seq
    return out


def missing(expected: Mapping[BootKey, int], stored: Mapping[BootKey, int]) -> dict[BootKey, int]:
    """Per sensor boot, how many committed readings are beyond the sink's highest seq."""
    return {key: last - stored.get(key, 0) for key, last in expected.items() if stored.get(key, 0) < last}


def spool_check(directory: Path) -> str:
    """diskcache's own check of a copied spool (SQLite's integrity_check, then its own files and
    counters): 'ok', or what it found."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cache = diskcache.Cache(str(directory))
            try:
                found = cache.check()
            finally:
                cache.close()
        except sqlite3.DatabaseError as err:
            return f"{type(err).__name__}: {err}"
    problems = [str(w.message) for w in [*found, *caught]]
    return "; ".join(problems) if problems else "ok"


@dataclass(slots=True)
class Tally:
    """What the plan has seen so far."""

    records: list[BootRecord] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    came_back_s: list[float] = field(default_factory=list)  # qemu start -> services reporting
    # by boot: qemu start -> every reading committed in earlier boots in the sink
    recovered_s: dict[int, float] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)
    spools_checked: int = 0

    def written(self, disk: str) -> int:
        return sum(r.last_disk.written_bytes.get(disk, 0) for r in self.records if r.last_disk is not None)

    def readings(self) -> int:
        """Readings committed over every boot (each boot's sensors number from 1)."""
        return sum(sum(committed([r]).values()) for r in self.records)


class PowerCutRun:
    def __init__(self, lab: Lab, plan: Plan, seed: int, progress: Callable[[str], None]) -> None:
        self.lab = lab
        self.plan = plan
        self.site = plan.site
        self.rng = random.Random(seed)
        self.progress = progress
        self.image = ensure_image(PROJECT_ROOT, progress=progress)
        self.cloud: Mosquitto = lab.broker("cloud")
        self.ingester = start_ingester(lab, self.cloud.port, SINK_BENCHES["sqlite"].sink_table(lab))
        if self.site.gateway:
            # What an outage takes away: the gateway guest's uplink.
            self.outage_broker = self.cloud
            forward = GuestFwd(GUEST_UPLINK_PORT, self.cloud.port)
        else:
            hop = start_hop(lab, OURS, self.cloud.port)
            self.outage_broker = hop.gateway  # the sensor guest's gateway
            forward = GuestFwd(GUEST_GATEWAY_PORT, hop.gateway.port)
        disks = lab.base / "disks"
        disks.mkdir()
        self.vdb = make_disk(disks / "gateway.img", self.site.gateway_files(), "sm-gateway")
        self.vdc = make_disk(disks / "sensor.img", self.site.sensor_files(), "sm-sensor")
        self.spec = MachineSpec(
            self.image.kernel, self.image.initramfs, self.image.rootfs, [self.vdb, self.vdc], [forward]
        )
        self.tally = Tally()
        self.boots = 0

    def sink_path(self) -> Path:
        return Path(str(SINK_BENCHES["sqlite"].sink_table(self.lab)["path"]))

    def stored_keys(self) -> list[tuple[str, str, int]]:
        path = self.sink_path()
        if not path.exists():
            return []
        sink = SqliteSink(path, read_only=True)
        try:
            return [(k.device, k.boot, k.seq) for k in sink.stored_keys()]
        finally:
            sink.close()

    def boot(self) -> Machine:
        self.boots += 1
        logs = self.lab.base / "guest"
        return Machine(self.spec, logs / f"console-{self.boots}.log", logs / f"services-{self.boots}.log").start()

    def wait_services(self, machine: Machine) -> BootRecord:
        """Until every service has reported, and each sensor has committed a reading this boot."""

        def up(record: BootRecord) -> bool:
            sensors = [
                c for (s, _), c in record.last_status.items() if s == "sensor" and int(c.get("last_seq") or 0) > 0
            ]
            forwarders = [c for (s, _), c in record.last_status.items() if s == "forwarder"]
            return len(sensors) == self.site.sensors and (bool(forwarders) or not self.site.forwarder)

        record = machine.wait_for(up, SERVICES_TIMEOUT_S)
        self.tally.came_back_s.append(time.monotonic() - machine.started_at)
        return record

    def wait_recovered(self, machine: Machine, timeout_s: float) -> bool:
        """Until every reading committed in earlier boots is in the sink, or the sink stops growing."""
        expected = committed(self.tally.records)
        deadline = time.monotonic() + timeout_s
        stored, grew_at = -1, time.monotonic()
        while time.monotonic() < deadline and machine.alive:
            keys = self.stored_keys()
            if not missing(expected, highest_stored(keys)):
                self.tally.recovered_s[self.boots] = time.monotonic() - machine.started_at
                return True
            if len(keys) != stored:
                stored, grew_at = len(keys), time.monotonic()
            elif self.plan.peer and time.monotonic() - grew_at > RECOVERY_STALL_S:
                return False  # a peer's lost readings never come; ours would still be waited for
            time.sleep(0.5)
        return False

    def cut(self, machine: Machine, phase: str) -> None:
        machine.cut_power()
        record = machine.record()
        self.tally.records.append(record)
        self.tally.phases.append(phase)
        self.check_spools()

    def check_spools(self) -> None:
        """Each spool's SQLite file, off a journal-replayed copy of each cut disk, through integrity_check."""
        into = self.lab.base / "spool-copies" / f"after-{self.boots}"
        into.mkdir(parents=True)
        wanted = {self.vdc: [f"/{self.site.device(i)}" for i in range(self.site.sensors)]}
        if self.site.forwarder:
            wanted[self.vdb] = ["/forwarder"]
        copies = []
        for disk, directories in wanted.items():
            copy = into / disk.name
            code, report = recovered_copy(disk, copy)
            if code > 1:
                self.tally.corrupt.append(f"boot {self.boots} {disk.name}: e2fsck exit {code}: {report[-300:]}")
            copies += [copy_out(copy, directory, into / disk.stem) for directory in directories]
            copy.unlink()
        for copy in copies:
            for db in copy.rglob("cache.db"):
                self.tally.spools_checked += 1
                verdict = spool_check(db.parent)
                if verdict != "ok":
                    self.tally.corrupt.append(f"boot {self.boots} {db.relative_to(into)}: {verdict}")

    def one_cut(self, index: int, phase: str) -> None:
        machine = self.boot()
        try:
            self.wait_services(machine)
            if phase == "boot":
                time.sleep(self.rng.uniform(*BOOT_S))
            else:
                self.wait_recovered(machine, DRAIN_TIMEOUT_S)
                if phase == "load":
                    time.sleep(self.rng.uniform(*LOAD_S))
                else:
                    self.outage_broker.stop()
                    time.sleep(self.rng.uniform(*OUTAGE_S))
                    if phase == "drain":
                        self.outage_broker.start()
                        time.sleep(self.rng.uniform(*DRAIN_CUT_S))
            self.cut(machine, phase)
        finally:
            machine.cut_power()
            if not self.outage_broker.alive():
                self.outage_broker.start()
        self.progress(
            f"    {self.plan.name}: cut {index + 1} ({phase}) after boot {self.boots}: "
            f"{sum(committed(self.tally.records).values()):,} readings committed so far"
        )

    def final_drain(self) -> float:
        """One more boot: until every reading committed before any cut is stored; then its own."""
        machine = self.boot()
        try:
            self.wait_services(machine)
            if not self.wait_recovered(machine, DRAIN_TIMEOUT_S) and not self.plan.peer:
                raise TimeoutError(f"not drained within {DRAIN_TIMEOUT_S:.0f} s: {machine.tail()}")
            drained = self.tally.recovered_s.get(self.boots, math.nan)
            # This boot's readings up to now, too, while it runs to deliver them; it is then cut
            # like the others, and what it committed after this record is not counted.
            record = machine.record()
            expected = committed([*self.tally.records, record])
            deadline = time.monotonic() + FINAL_CATCH_UP_S
            if not self.plan.peer:
                while missing(expected, highest_stored(self.stored_keys())) and time.monotonic() < deadline:
                    time.sleep(0.5)
            self.tally.records.append(record)
            self.tally.phases.append("final")
            return drained
        finally:
            machine.cut_power()

    def ingester_duplicates(self) -> int:
        status = self.lab.status("ingester", INGESTER_ID)
        return int(status.counters.get("duplicates_total", 0)) if status is not None else 0


def measure_run(plan: Plan, cuts: int, seed: int, keep_files: bool) -> dict[str, float]:
    with Lab(NAME, keep=keep_files) as lab:
        run = PowerCutRun(lab, plan, seed, lambda line: print(line, flush=True))
        for index, phase in enumerate(plan.phases[:cuts]):
            run.one_cut(index, phase)
        drained_s = run.final_drain()
        keys = run.stored_keys()
        expected = committed(run.tally.records)
        short = missing(expected, highest_stored(keys))
        audit = run_audit(StoredKey(d, b, s, 0) for d, b, s in keys)
        tally = run.tally
        for problem in tally.corrupt:
            print(f"    corrupt: {problem}", flush=True)
        readings = max(1, tally.readings())
        cut_boots = [seconds for boot, seconds in tally.recovered_s.items() if boot <= cuts]
        row = {
            "power cuts": float(cuts),
            "boots": float(run.boots),
            "readings committed by the sensors": float(sum(expected.values())),
            "readings stored": float(len(keys)),
            "lost": float(audit.lost + sum(short.values())),
            "duplicated in the sink": float(len(keys) - len(set(keys))),
            "duplicates absorbed by the sink": float(run.ingester_duplicates()),
            "spools checked": float(tally.spools_checked),
            "corrupt spools": float(len(tally.corrupt)),
            "came back (median)": _median(tally.came_back_s),
            "recovered (median)": _median(cut_boots),
            "final drain": drained_s,
            "sensor disk bytes/reading": tally.written("vdc") / readings,
        }
        if plan.site.gateway:
            row["gateway disk bytes/reading"] = tally.written("vdb") / readings
        row["kept"] = 1.0 - row["lost"] / max(1.0, row["readings committed by the sensors"])
        return {f"{plan.name} {name}": value for name, value in row.items()}


def _median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


UNITS = {
    "power cuts": ("cuts", "kill -9 of qemu at a random moment in a load, drain or boot phase"),
    "boots": ("boots", "the cuts' boots and the last one, which drains"),
    "readings committed by the sensors": ("readings", "each boot's last_seq as last printed before its cut"),
    "readings stored": ("readings", "rows in the SQLite sink at the end"),
    "lost": ("readings", "committed by a sensor's spool, not in the sink: gaps, and boots short of their last_seq"),
    "duplicated in the sink": ("readings", "keys stored more than once"),
    "duplicates absorbed by the sink": ("readings", "copies sent again after a cut, refused by (device, boot, seq)"),
    "spools checked": ("spools", "SQLite integrity_check of each spool after each cut"),
    "corrupt spools": ("spools", ""),
    "came back (median)": ("s", "qemu start to every service reporting (TCG: several times a Pi's boot)"),
    "recovered (median)": ("s", "qemu start to every reading committed before the cut stored in the sink"),
    "final drain": ("s", "the last boot, qemu start to everything committed before stored"),
    "gateway disk bytes/reading": ("bytes", "vdb (forwarder spool, Mosquitto) written per reading, /proc/diskstats"),
    "sensor disk bytes/reading": ("bytes", "vdc (the sensors' spools) written per reading: the SD card's wear"),
    "kept": ("fraction", "of the readings the sensors committed, stored in the sink"),
}


def run(options: BenchOptions) -> BenchReport:
    rows = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        for plan in PLANS:
            cuts = plan.quick_cuts if options.quick else len(plan.phases)
            seed = int(time.time())
            print(f"  powercut run {i + 1}/{options.runs}, {plan.name}: {cuts} cuts, seed {seed}", flush=True)
            row |= measure_run(plan, cuts, seed, options.keep_files)
        rows.append(row)
    table = {
        f"{plan.name} {name}": spec
        for plan in PLANS
        for name, spec in UNITS.items()
        if plan.site.gateway or not name.startswith("gateway disk")
    }
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_table(rows, table))

    report.ratios.append(
        ratio(
            "kept, gateway VM / bridge VM",
            report.value(f"{GATEWAY_PLAN.name} kept"),
            report.value(f"{BRIDGE_PLAN.name} kept"),
            "the same cuts: the forwarder with end-to-end confirmations vs Mosquitto's crash-safe bridge",
        )
    )
    report.notes += [
        "The peer, bridge VM: the same guest and the same cuts, its Mosquitto bridging to the cloud broker "
        "itself in the forwarder bench's crash-safe configuration (bridge (b): persistence, autosave on every "
        "change), the sensors deleting each reading on the gateway broker's PUBACK (confirmations.mode = broker). "
        "Its losses are measured, not a failure.",
        "The guests: Debian bookworm (debootstrap) on the Debian 6.1 kernel, qemu TCG, 1 vCPU, 512 MB, root "
        "image read-only. The gateway VM runs its Mosquitto, the forwarder and two sensor agents at 20 Hz "
        "(about 15/s each under TCG); the sensor VM one agent, its gateway (Mosquitto and forwarder) on the host.",
        "Bytes per reading are what the guest's kernel sent to each data disk: SQLite's WAL frames and "
        "checkpoints, and ext4's journal, for a commit per reading at the sensor and a group commit at the "
        "forwarder.",
    ]
    return report
