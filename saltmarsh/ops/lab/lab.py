"""`saltmarsh lab`: a whole fleet in network namespaces on this machine, provisioned by real Salt.

`Lab.up` wires the nodes (network), opens each node's namespaces (node), writes the pillar from
a fresh CA (pillar, ca), starts a real salt-master and one real minion per node, accepts their
keys by id and runs `state.apply` by grain, cloud first, then gateways, then sensors (saltctl).
Every service then runs from what Salt rendered, started by Salt's service states. `Lab.down`
undoes it from the state file, whether `up` finished or crashed half way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.config.sensor import DriverConfig
from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.ca import LabCA
from saltmarsh.ops.lab.fleet import REPO, Fleet, fleet_document, parse_fleet
from saltmarsh.ops.lab.node import NodeDirs, enter_argv, keep, reap_started, start_anchor
from saltmarsh.ops.lab.pillar import COMMAND_KEY, ELASTICSEARCH_URL, LabSettings, write_command_key, write_lab_pillar
from saltmarsh.ops.lab.saltctl import BIN, SVC_STATE_DIR, Master, StateRun, apply_role, start_daemon, write_salt_configs
from saltmarsh.ops.lab.state import SINKS, LabState
from saltmarsh.ops.localfleet.processes import wait_until
from saltmarsh.runtime.status import ServiceStatus, read_statuses
from sensor.drivers.simulated import clean_signal

# The order an operator provisions a fleet in: the cloud (and its master config) before the
# gateways that connect to it, the gateways before the sensors that connect to them.
ROLE_ORDER = ("cloud", "gateway", "sensor")
STATUS_DIR = "/run/saltmarsh/status"
SECRETS_FILE = "secrets.list"

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def service_user_for(paths: list[Path]) -> str:
    """`saltmarsh` when a service user can reach the code (every parent o+x), else `root`."""
    for path in paths:
        for part in [path, *path.parents]:
            with contextlib.suppress(OSError):
                if not os.stat(part).st_mode & stat.S_IXOTH:
                    return "root"
    return "saltmarsh"


@dataclass(frozen=True, slots=True)
class ServiceRow:
    node: str
    unit: str
    pid: int | None


class Lab:
    def __init__(self, state: LabState) -> None:
        self.state = state
        self.fleet: Fleet = parse_fleet(state.fleet)

    @property
    def base(self) -> Path:
        return self.state.base

    @property
    def prefix(self) -> str:
        return network.lab_prefix(self.base)

    @classmethod
    def attach(cls, base: Path) -> Lab:
        state = LabState.load(base)
        if state is None or not state.fleet:
            raise SaltmarshError(f"no lab is up under {base} (no {base / 'lab.json'}): run `saltmarsh lab up`")
        return cls(state)

    def dirs(self, node_id: str) -> NodeDirs:
        return NodeDirs(self.base / "nodes" / node_id)

    def anchor(self, node_id: str) -> int:
        try:
            return self.state.anchors[node_id]
        except KeyError as err:
            raise SaltmarshError(f"node {node_id} is not up") from err

    @property
    def master(self) -> Master:
        return Master(self.anchor(self.fleet.master.id))

    @property
    def pillar_root(self) -> Path:
        return self.base / "pillar"

    # -- up ---------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        base: Path,
        fleet: Fleet,
        say: Say = _quiet,
        *,
        sensor_interval_s: float = 1.0,
        swarm: int = 0,
        sink: str = "sqlite",
    ) -> Lab:
        if sink not in SINKS:
            raise SaltmarshError(f"sink {sink!r}: expected one of {', '.join(SINKS)}")
        existing = LabState.load(base)
        if existing is not None:
            raise SaltmarshError(f"a lab is already up under {base}: run `saltmarsh lab down` first")
        if shutil.which("nsenter") is None or shutil.which("unshare") is None:
            raise SaltmarshError("nsenter and unshare (util-linux) are needed")
        if os.geteuid() != 0:
            raise SaltmarshError("the lab makes network namespaces and mounts: run it as root")
        state = LabState(base=base, fleet=fleet_document(fleet))
        state.namespaces = [network.netns_name(n, network.lab_prefix(base)) for n in fleet.nodes]
        state.sensor_interval_s = sensor_interval_s
        state.swarm = swarm
        state.sink = sink
        state.service_user = service_user_for([BIN.parent, REPO, Path(os.path.realpath(sys.executable))])
        state.save()  # before anything is made, so `down` can undo a crash from here on
        lab = cls(state)
        try:
            lab._build(say)
        except BaseException:
            say("lab up failed: run `saltmarsh lab down` to remove what it made")
            raise
        return lab

    def _build(self, say_plain: Say) -> None:
        fleet = self.fleet
        started = time.monotonic()

        def say(text: str) -> None:
            say_plain(f"[{time.monotonic() - started:5.1f} s] {text}")

        say(f"network: {len(fleet.nodes)} namespaces, uplink {fleet.uplink}, {len(fleet.sites)} site LANs")
        network.run(network.build_commands(fleet, self.prefix))
        self.pillar_root.mkdir(parents=True, exist_ok=True)
        ca = LabCA()
        ca.save(self.base / "ca")
        command_public_key, command_secret = write_command_key(self.dirs(fleet.master.id).path(COMMAND_KEY))
        settings = LabSettings(
            str(BIN.parent),
            self.state.service_user,
            sensor_interval_s=self.state.sensor_interval_s,
            swarm=self.state.swarm,
            sink=self.state.sink,
            alert_above_temperature=clean_signal(time.time(), DriverConfig())["temperature"],
            command_public_key=command_public_key,
        )
        pillar = write_lab_pillar(self.pillar_root / "pillar", fleet, settings, ca)
        pillar.secrets.append(command_secret)
        secrets_path = self.base / SECRETS_FILE
        secrets_path.write_text("\n".join(pillar.secrets) + "\n")
        secrets_path.chmod(0o600)
        for node in fleet.nodes:
            dirs = self.dirs(node.id)
            write_salt_configs(node, fleet, dirs)
            self.state.anchors[node.id] = start_anchor(
                node.id, network.netns_name(node, self.prefix), dirs, REPO, self.pillar_root
            )
            self.state.save()
        self.state.phase = "salt"
        self.state.save()
        self.state.elasticsearch_pid = start_elasticsearch(self.anchor(fleet.master.id), self.dirs(fleet.master.id))
        self.state.save()
        say("salt: starting the master and one minion per node")
        start_daemon(self.anchor(fleet.master.id), "salt-master")
        master = self.master
        _wait(lambda: master.run("salt-key", ["-L"], timeout_s=30).returncode == 0, 60, "the salt-master to answer")
        for node in fleet.nodes:
            start_daemon(self.anchor(node.id), "salt-minion")
        ids = [n.id for n in fleet.nodes]
        master.accept(ids)
        say(f"salt: accepted {len(ids)} minion keys by id")
        master.wait_for_minions(ids)
        # No saltutil.sync_all first: a highstate syncs the formula's modules (the service
        # provider among them) before it runs a state.
        for role in ROLE_ORDER:
            self.apply(role, say)
            if role == "cloud":
                self.restart_master(say)
        self.state.phase = "up"
        self.state.save()
        say(f"lab up in {time.monotonic() - started:.0f} s")

    def apply(self, role: str, say: Say = _quiet) -> StateRun:
        expected = [n.id for n in self.fleet.with_role(role)]
        run = apply_role(self.master, role, expected)
        failures = run.failures()
        if failures:
            raise SaltmarshError(f"state.apply on roles:{role} failed:\n  " + "\n  ".join(failures[:20]))
        states = run.states()
        say(
            f"salt -G 'roles:{role}' state.apply: {len(run.minions)} minions, "
            f"{sum(states.values())} states, {sum(run.changed().values())} changed, 0 failed"
        )
        return run

    def restart_master(self, say: Say = _quiet) -> None:
        """master.d (the relay engine, the reactor) is read only at start, as on a real master."""
        master_id = self.fleet.master.id
        pid_file = self.dirs(master_id).path("/run/salt-master.pid")
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        _wait(lambda: not _alive_pid_file(pid_file), 60, "the salt-master to stop")
        start_daemon(self.anchor(master_id), "salt-master")
        master = self.master
        _wait(lambda: master.run("salt-key", ["-L"], timeout_s=30).returncode == 0, 60, "the salt-master to answer")
        master.wait_for_minions([n.id for n in self.fleet.nodes])
        say("salt-master restarted with saltmarsh's engine and reactor")

    # -- what runs --------------------------------------------------------------------------

    def unit_pid(self, node_id: str, unit: str) -> int | None:
        """The main pid of a unit the node's service provider started, if it is alive."""
        name = unit if unit.endswith(".service") else f"{unit}.service"
        pid_file = self.dirs(node_id).path(f"{SVC_STATE_DIR}/{name}.pid")
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_running(pid) else None

    def units(self, node_id: str) -> list[str]:
        svc_dir = self.dirs(node_id).path(SVC_STATE_DIR)
        return sorted(p.name.removesuffix(".enabled") for p in svc_dir.glob("*.service.enabled"))

    def services(self) -> Iterator[ServiceRow]:
        for node in self.fleet.nodes:
            for unit in self.units(node.id):
                yield ServiceRow(node.id, unit, self.unit_pid(node.id, unit))

    def statuses(self, node_id: str) -> list[ServiceStatus]:
        return read_statuses(self.dirs(node_id).path(STATUS_DIR))

    def all_statuses(self) -> dict[str, list[ServiceStatus]]:
        return {node.id: self.statuses(node.id) for node in self.fleet.nodes}

    def secrets(self) -> list[str]:
        path = self.base / SECRETS_FILE
        return [line for line in path.read_text().splitlines() if line] if path.exists() else []

    def log_files(self) -> list[Path]:
        """Every log the lab's nodes wrote: services' output, Salt's and Mosquitto's logs."""
        found: list[Path] = []
        for node in self.fleet.nodes:
            dirs = self.dirs(node.id)
            for top in ("var", "run"):
                found += [p for p in dirs.upper(top).rglob("*.log") if p.is_file()]
            found += [p for p in (dirs.upper("var") / "log").rglob("*") if p.is_file()]
        return sorted(set(found))


def start_elasticsearch(anchor_pid: int, dirs: NodeDirs) -> int:
    """osmem-server in the cloud node, where the relay engine's default URL points: the lab's
    stand-in for the fleet's Elasticsearch cluster, which Salt does not manage."""
    import osmem_server  # type: ignore[import-untyped]  # a test extra: only the lab needs it

    argv = [osmem_server.resolve_binary(), "-addr", ELASTICSEARCH_URL.removeprefix("http://"), "-no-stdin-watch"]
    with (dirs.root / "elasticsearch.log").open("ab") as log:
        # nsenter enters no pid namespace, so it execs: this pid is the server's own.
        process = subprocess.Popen(
            enter_argv(anchor_pid, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return keep(process)


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a dead runner's children wait for an init that reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _alive_pid_file(pid_file: Path) -> bool:
    try:
        return process_running(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not wait_until(predicate, timeout_s, interval_s=0.25):
        raise SaltmarshError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# -- down -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownReport:
    namespaces: int
    processes: int
    failures: list[str]


def down(base: Path, keep_files: bool = False, say: Say = _quiet) -> DownReport:
    """Kill every process in every lab namespace, then delete the namespaces (their veths, bridges
    and, with the last process of each node, its mounts go with them). Works from the state
    file, and also finds namespaces a lost state file no longer names."""
    state = LabState.load(base)
    prefix = network.lab_prefix(base)
    namespaces = sorted(set(state.namespaces if state else []) | set(network.lab_namespaces(prefix)))
    killed = 0
    for _ in range(20):  # a dying minion may still fork: go round until the namespaces are empty
        pids = [pid for ns in namespaces for pid in network.namespace_pids(ns)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    if state is not None:
        for pid in state.anchors.values():  # an anchor whose namespace went first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reap_started()
    failures = network.run(
        network.teardown_commands([ns for ns in namespaces if ns in network.namespaces()]), check=False
    )
    if not keep_files:
        shutil.rmtree(base, ignore_errors=True)
    elif state is not None:
        state.path.unlink(missing_ok=True)
    say(f"lab down: {killed} processes killed, {len(namespaces)} namespaces removed")
    return DownReport(len(namespaces), killed, failures)
