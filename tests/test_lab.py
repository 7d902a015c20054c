"""The lab, for real: two sites in network namespaces, a real salt-master and five real minions,
provisioned by the repo's states through `state.apply` by grain, then the chaos plans, the
security checks and the clean-up, each proved by counts.

One lab serves the module (it takes about two minutes to come up). The plans run at a fifth of
their length (`SCALE`): a 60 s cut becomes 12 s, still several beacon intervals and many
readings long; `saltmarsh lab chaos PLAN` runs them at full length.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from saltmarsh.ops.cli import main
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.ca import LabCA
from saltmarsh.ops.lab.chaos import ChaosReport, ChaosRun, beacon_depths, format_chaos_report, search_events
from saltmarsh.ops.lab.cli import find_plan
from saltmarsh.ops.lab.fleet import generated_fleet
from saltmarsh.ops.lab.lab import Lab, down, process_running
from saltmarsh.ops.lab.node import enter_argv, run_in
from saltmarsh.ops.lab.saltctl import BIN, StateRun
from saltmarsh.ops.localfleet.mosquitto import mosquitto_binary

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab makes namespaces and mounts: it needs root"),
    pytest.mark.timeout(900),
]

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "lab_probe.py"
SCALE = 0.2
SENSOR_INTERVAL_S = 0.2  # 5 readings a second per sensor: the plans run under load
UNITS = {
    "master": ["mosquitto.service", "saltmarsh-ingester-1.service"],
    "gateway": ["mosquitto.service", "saltmarsh-forwarder.service"],
    "sensor": ["saltmarsh-sensor.service"],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    try:
        built = Lab.up(base, generated_fleet(2, 1), say=print, sensor_interval_s=SENSOR_INTERVAL_S)
    except BaseException:
        down(base)
        raise
    try:
        yield built
    finally:
        anchors = dict(built.state.anchors)
        prefix = built.prefix
        report = down(base, keep_files=False)
        assert not report.failures, report.failures
        assert network.lab_namespaces(prefix) == []
        assert not any(process_running(pid) for pid in anchors.values())


def probe(lab: Lab, node: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = run_in(lab.anchor(node), [sys.executable, str(PROBE), json.dumps(spec)], timeout_s=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def node_toml(lab: Lab, node: str, path: str) -> dict[str, Any]:
    return tomllib.loads(lab.dirs(node).path(path).read_text())


def gateways(lab: Lab) -> list[str]:
    return [n.id for n in lab.fleet.with_role("gateway")]


# -- provisioning -----------------------------------------------------------------------------


def test_up_provisioned_every_node(lab: Lab) -> None:
    for node in lab.fleet.nodes:
        kind = "master" if node.has("master") else "gateway" if node.has("gateway") else "sensor"
        assert lab.units(node.id) == UNITS[kind], node.id
        for unit in UNITS[kind]:
            assert lab.unit_pid(node.id, unit) is not None, f"{node.id} {unit}"
    # Each node wrote its own files at the real paths, and only there.
    site01_gw = lab.fleet.gateway_of("site01").id
    forwarder = node_toml(lab, site01_gw, "/etc/saltmarsh/forwarder.toml")
    assert forwarder["gateway_id"] == site01_gw
    assert forwarder["uplink"]["host"] == str(lab.fleet.master.uplink)
    assert forwarder["uplink"]["tls"] is True
    assert not lab.dirs("site01-s001").path("/etc/saltmarsh/forwarder.toml").exists()
    assert (
        not Path("/etc/saltmarsh/forwarder.toml").exists()
        or "site01" not in Path("/etc/saltmarsh/forwarder.toml").read_text()
    )


def test_lab_salt_targets_by_grain(lab: Lab, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    rc = main(
        ["lab", "salt", "--dir", str(lab.base), "--", "--out", "json", "--static", "-G", "roles:gateway", "test.ping"]
    )
    out = capfd.readouterr().out
    assert rc == 0, out
    assert sorted(json.loads(out)) == sorted(gateways(lab))
    rc = main(
        [
            "lab",
            "salt",
            "--dir",
            str(lab.base),
            "--",
            "--out",
            "json",
            "--static",
            "-C",
            "G@roles:sensor and G@site:site02",
            "test.ping",
        ]
    )
    assert sorted(json.loads(capfd.readouterr().out)) == ["site02-s001"]


def test_a_second_run_changes_nothing(lab: Lab) -> None:
    """An operator's second run, every role at once (the first ran them in ROLE_ORDER)."""
    run = StateRun("*", lab.master.salt("*", "state.apply"))
    assert sorted(run.minions) == sorted(n.id for n in lab.fleet.nodes)
    assert run.failures() == []
    assert run.changed() == dict.fromkeys(run.minions, 0), "a second run changed something"


def test_status_shows_every_unit_live(lab: Lab, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    assert main(["lab", "status", "--dir", str(lab.base)]) == 0
    out = capfd.readouterr().out
    for node in lab.fleet.nodes:
        assert node.id in out
    assert out.count(" live ") >= len(lab.fleet.nodes), out


def test_every_service_writes_prometheus_text(lab: Lab) -> None:
    for node in lab.fleet.nodes:
        files = list(lab.dirs(node.id).path("/var/lib/prometheus/node-exporter").glob("saltmarsh_*.prom"))
        assert files, node.id
        assert "# TYPE saltmarsh_" in files[0].read_text()


# Salt's CLI flag for each target type saltmarsh cmd send takes.
SALT_FLAGS = {"glob": [], "grain": ["-G"], "compound": ["-C"], "nodegroup": ["-N"], "list": ["-L"]}
RESOLVE = """
import json, sys
import salt.config
from saltmarsh.commands.targeting import resolve
tgt, tgt_type, role = sys.argv[1:4]
targets, left_out = resolve(salt.config.master_config("/etc/salt/master"), tgt, tgt_type, role)
print(json.dumps({"targets": [[t.minion, t.site, t.device] for t in targets], "left_out": left_out}))
"""


@pytest.mark.parametrize(
    ("tgt", "tgt_type"),
    [
        ("roles:sensor", "grain"),
        ("G@roles:gateway and G@site:site01", "compound"),
        ("saltmarsh-sensors", "nodegroup"),
        ("site-site02", "nodegroup"),
        ("site01-*", "glob"),
        ("site01-gw1,site02-s001,nobody", "list"),
    ],
)
def test_command_targets_are_the_minions_salt_previews(lab: Lab, tgt: str, tgt_type: str) -> None:
    """saltmarsh cmd send resolves a target to exactly what `salt --preview-target` lists."""
    preview = lab.master.json("salt", ["--preview-target", *SALT_FLAGS[tgt_type], tgt], timeout_s=60)
    role = "gateway" if "gateway" in tgt or tgt.endswith("gw1") else "sensor"
    done = run_in(lab.anchor(lab.fleet.master.id), [sys.executable, "-c", RESOLVE, tgt, tgt_type, role], timeout_s=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    matched = {minion for minion, _, _ in got["targets"]} | {minion for minion, _ in got["left_out"]}
    assert sorted(matched) == sorted(preview) and preview, (tgt, preview, got)
    for minion, site, device in got["targets"]:
        node = lab.fleet.node(minion)
        assert (site, device) == (node.site, minion) and node.has(role), (minion, site, device)


# -- commands ---------------------------------------------------------------------------------------

# The cloud broker drops a client whose keepalive (the forwarder's uplink: 30 s) lapses by half
# again; only then does it hold a command for the session instead of writing it to a dead socket.
# A cut that long also stalls the gateway's salt-minion for minutes, for the tests after it, so
# the test has the broker see the cut at once instead: its end of the connection is destroyed
# (`ss -K`, as a middlebox's reset would), which is what the keepalive would do 45 s later.


def saltmarsh_cmd(lab: Lab, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`saltmarsh cmd ...` as the operator runs it on the master."""
    return run_in(lab.anchor(lab.fleet.master.id), [str(BIN / "saltmarsh"), "cmd", *args], timeout_s=timeout_s)


# Read inside the node: the host's view of a SQLite file in a node's upper layer is another inode
# to POSIX locks, and WAL breaks between the two (saltmarsh.ops.lab.sink_reader).
READ_ROWS = """
import json, os, sqlite3, sys
if not os.path.exists(sys.argv[1]):  # not made yet: nothing in it
    print("[]")
    sys.exit()
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(json.dumps(conn.execute(sys.argv[2], sys.argv[3:]).fetchall()))
"""


def node_rows(lab: Lab, node: str, db: str, query: str, *params: str) -> list[list[Any]]:
    done = run_in(lab.anchor(node), [sys.executable, "-c", READ_ROWS, db, query, *params], timeout_s=60)
    assert done.returncode == 0, done.stderr
    rows: list[list[Any]] = json.loads(done.stdout)
    return rows


def rollout_rows(lab: Lab, rollout: str) -> list[tuple[str, str, str, str | None]]:
    """(device, cmd_id, state, hop) per target, from the master's rollout store."""
    master = lab.fleet.master.id
    store = node_toml(lab, master, "/etc/saltmarsh/commander.toml")["store"]
    query = "SELECT device, cmd_id, state, hop FROM targets WHERE rollout = ? ORDER BY device"
    return [(d, c, s, h) for d, c, s, h in node_rows(lab, master, store, query, rollout)]


def journaled(lab: Lab, device: str) -> dict[str, str]:
    """What the device's command journal says it ran: cmd_id -> its result."""
    journal = node_toml(lab, device, "/etc/saltmarsh/sensor.toml")["state_dir"] + "/commands.db"
    return dict(node_rows(lab, device, journal, "SELECT cmd_id, result_json FROM command_journal"))


def test_a_command_to_a_cut_off_site_runs_when_its_link_returns_or_expires_at_the_cloud(lab: Lab) -> None:
    site01 = "G@roles:sensor and G@site:site01"
    (device,) = [n.id for n in lab.fleet.with_role("sensor", "site01")]
    gateway = lab.fleet.gateway_of("site01")
    link = network.uplink_of(lab.fleet, lab.prefix, gateway.id)
    network.run(network.link_state_commands(link, up=False))
    try:
        reset = run_in(lab.anchor(lab.fleet.master.id), ["ss", "-K", "dst", str(gateway.uplink), "sport", "=", ":8883"])
        assert reset.returncode == 0 and str(gateway.uplink) in reset.stdout, reset.stdout + reset.stderr
        time.sleep(1)
        for rollout, expires in (("r-lab-back", "150s"), ("r-lab-gone", "5s")):
            sent = saltmarsh_cmd(
                lab, "send", site01, "identify", "--tgt-type", "compound", "--expires-in", expires,
                "--run-timeout", "3", "--rollout", rollout,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert f"rollout {rollout}: identify to 1 devices" in sent.stdout
            assert "sent 1" in sent.stdout  # published: the master holds it until a hop answers
        time.sleep(5 + 3 + 1)  # past r-lab-gone's deadline and run timeout, still cut off
    finally:
        network.run(network.link_state_commands(link, up=True))

    back = saltmarsh_cmd(lab, "status", "r-lab-back", "--watch", "--interval", "1", timeout_s=150)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rollout r-lab-back: finished, 1 targets" in back.stdout and "succeeded 1" in back.stdout
    gone = saltmarsh_cmd(lab, "status", "r-lab-gone")
    assert gone.returncode == 1 and "expired 1" in gone.stdout, gone.stdout + gone.stderr
    [(_, back_id, _, _)] = rollout_rows(lab, "r-lab-back")
    # The cloud broker dropped it at its message expiry, so the gateway never held it.
    [(got_device, gone_id, state, hop)] = rollout_rows(lab, "r-lab-gone")
    assert (got_device, state, hop) == (device, "expired", "cloud")
    ran = journaled(lab, device)
    assert back_id in ran and '"succeeded"' in ran[back_id]
    assert gone_id not in ran


def test_a_send_stopped_midway_is_resumed_to_the_end(lab: Lab) -> None:
    sensors = sorted(n.id for n in lab.fleet.with_role("sensor"))
    # One every 3 s: Ctrl-C after the first leaves the rest queued.
    argv = ["send", "roles:sensor", "read_now", "--tgt-type", "grain", "--max-per-minute", "20"]
    argv += ["--rollout", "r-lab-resume"]
    sending = subprocess.Popen(
        enter_argv(lab.anchor(lab.fleet.master.id), [str(BIN / "saltmarsh"), "cmd", *argv]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while [s for _, _, s, _ in rollout_rows(lab, "r-lab-resume")].count("queued") != len(sensors) - 1:
            assert time.monotonic() < deadline and sending.poll() is None, sending.communicate()
            time.sleep(0.2)
        sending.send_signal(signal.SIGINT)
        _, err = sending.communicate(timeout=30)
    finally:
        if sending.poll() is None:
            sending.kill()
            sending.wait()
    print(err.replace("\r", "\n"))
    assert sending.returncode == 130, err
    assert "saltmarsh cmd resume r-lab-resume" in err
    assert [s for _, _, s, _ in rollout_rows(lab, "r-lab-resume")].count("queued") == len(sensors) - 1

    resumed = saltmarsh_cmd(lab, "resume", "r-lab-resume", "--watch")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"succeeded {len(sensors)}" in resumed.stdout
    rows = rollout_rows(lab, "r-lab-resume")
    assert [(d, s) for d, _, s, _ in rows] == [(d, "succeeded") for d in sensors]
    for device, cmd_id, _, _ in rows:
        assert cmd_id in journaled(lab, device), device  # each ran, once, under its own id

    canceled = saltmarsh_cmd(lab, "cancel", "r-lab-resume")
    assert canceled.returncode == 0 and "0 targets not yet sent are canceled" in canceled.stdout
    again = saltmarsh_cmd(lab, "resume", "r-lab-resume")
    assert again.returncode == 1 and "is canceled" in again.stderr


# -- security -----------------------------------------------------------------------------------


def test_a_sensor_cannot_speak_for_others_or_listen_in(lab: Lab) -> None:
    gw = lab.fleet.gateway_of("site01")
    config = node_toml(lab, "site01-s001", "/etc/saltmarsh/sensor.toml")
    creds = {
        "host": str(gw.lan),
        "port": config["broker"]["port"],
        "username": config["broker"]["username"],
        "password_file": config["broker"]["password_file"],
    }
    own = "saltmarsh/v1/site01/site01-s001"
    other = "saltmarsh/v1/site01/site01-gw1"
    got = probe(
        lab,
        "site01-s001",
        {
            **creds,
            "client_id": "probe-s001",
            "publish": [f"{other}/reading", "saltmarsh/v1/site02/site02-s001/reading", f"{own}/cmd", f"{own}/ack"],
            "subscribe": ["saltmarsh/v1/site01/#", f"{own}/reading", f"{own}/ack"],
            # The gateway confirms to each sensor every few seconds: proof that delivery works.
            "until_topic": f"{own}/ack",
            "listen_s": 30,
        },
    )
    assert got["connect"] == 0, got
    not_authorized = 0x87
    assert set(got["published"].values()) == {not_authorized}, got
    # Its own readings (5 a second) flow on the site's topics all along, yet none reach it.
    assert set(got["received"]) == {f"{own}/ack"}, got


@pytest.mark.parametrize("where", ["gateway", "cloud"])
def test_anonymous_clients_are_refused(lab: Lab, where: str) -> None:
    if where == "gateway":
        node, host, port = "site01-s001", str(lab.fleet.gateway_of("site01").lan), 1883
    else:
        node, host, port = lab.fleet.master.id, "127.0.0.1", 1883  # the ingesters' plain listener
    got = probe(lab, node, {"host": host, "port": port, "client_id": "anon"})
    assert got["connect"] not in (0, None), got


@pytest.fixture(scope="module")
def rogue_brokers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Two TLS brokers on the cloud's address that a gateway must refuse: one with a certificate
    from another CA of the same name (only the signature differs), one with an expired
    certificate from the lab's own fleet CA."""
    work = tmp_path_factory.mktemp("rogue")
    master = lab.fleet.master
    other = LabCA().issue(master.id, server=True, dns=(master.id,), ips=(master.address,))
    expired = LabCA.load(lab.base / "ca").issue(
        master.id, server=True, dns=(master.id,), ips=(master.address,), expired=True
    )
    started: list[subprocess.Popen[bytes]] = []
    ports = {"another-ca": 8884, "expired": 8885}
    for name, issued in (("another-ca", other), ("expired", expired)):
        (work / f"{name}.crt").write_text(issued.cert_pem)
        (work / f"{name}.key").write_text(issued.key_pem)
        log = work / f"{name}.log"
        (work / f"{name}.conf").write_text(
            f"listener {ports[name]} {master.address}\ncafile {work / f'{name}.crt'}\n"
            f"certfile {work / f'{name}.crt'}\nkeyfile {work / f'{name}.key'}\nallow_anonymous true\nuser root\n"
            f"log_dest file {log}\nlog_type all\n"
        )
        started.append(
            subprocess.Popen(
                enter_argv(lab.anchor(master.id), [mosquitto_binary(), "-c", str(work / f"{name}.conf")]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 20
        while "listen socket on port" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"rogue broker {name} did not start"
            time.sleep(0.1)
    try:
        yield ports
    finally:
        for process in started:
            process.kill()
            process.wait()


@pytest.mark.parametrize("broker", ["real", "another-ca", "expired"])
def test_the_uplink_pins_the_fleet_ca(lab: Lab, rogue_brokers: dict[str, int], broker: str) -> None:
    gw = lab.fleet.gateway_of("site01").id
    uplink = node_toml(lab, gw, "/etc/saltmarsh/forwarder.toml")["uplink"]
    spec = {
        "host": uplink["host"],
        "port": uplink["port"] if broker == "real" else rogue_brokers[broker],
        "username": uplink["username"],
        "password_file": uplink["password_file"],
        "ca_file": uplink["ca_file"],
        "cert_file": uplink["cert_file"],
        "key_file": uplink["key_file"],
        "client_id": f"probe-{broker}",
    }
    got = probe(lab, gw, spec)
    if broker == "real":
        assert got["connect"] == 0, got
    else:
        assert isinstance(got["connect"], str) and "CERTIFICATE_VERIFY_FAILED" in got["connect"], got
        if broker == "expired":
            assert "expired" in got["connect"], got


def test_an_unaccepted_minion_gets_no_pillar(lab: Lab, tmp_path: Path) -> None:
    gw = lab.fleet.gateway_of("site01")
    conf = tmp_path / "rogue"
    conf.mkdir()
    (conf / "minion").write_text(
        yaml.safe_dump(
            {
                "id": gw.id + "-rogue",
                "master": str(lab.fleet.master.address),
                "root_dir": str(tmp_path / "root"),
                "pki_dir": str(tmp_path / "pki"),
                "enable_fqdns_grains": False,
                "auth_tries": 1,
                "acceptance_wait_time": 1,
                "acceptance_wait_time_max": 1,
                "auth_timeout": 5,
            }
        )
    )
    done = run_in(
        lab.anchor(gw.id), [str(BIN / "salt-call"), "-c", str(conf), "--out", "json", "pillar.items"], timeout_s=120
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert not any(secret in output for secret in lab.secrets())
    assert gw.id + "-rogue" in lab.master.keys().get("minions_pre", []), "the key should wait, never be auto-accepted"
    lab.master.run("salt-key", ["-y", "-d", gw.id + "-rogue"])


def test_a_site_minion_sees_only_its_site(lab: Lab) -> None:
    site02_secrets = [
        value
        for path in (lab.pillar_root / "pillar" / "secrets" / "site02").glob("*.sls")
        for value in _strings(json.loads(path.read_text()))
    ]
    assert site02_secrets
    for minion in ("site01-gw1", "site01-s001"):
        items = lab.master.salt("-L", minion, "pillar.items")
        if minion not in items:  # a minion busy with the plans before may miss Salt's timeout: ask again
            items = lab.master.salt("-L", minion, "pillar.items", timeout_s=120)
        assert minion in items, f"{minion} did not answer pillar.items: {items}"
        pillar = items[minion]
        assert list(pillar["saltmarsh"]["sites"]) == ["site01"], minion
        dumped = json.dumps(pillar)
        assert not any(secret in dumped for secret in site02_secrets), minion
        if minion.endswith("-s001"):
            assert "forwarder_password" not in dumped and "uplink_password" not in dumped


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for value in doc.values():
            yield from _strings(value)
    elif isinstance(doc, str):
        yield doc.strip().splitlines()[1] if doc.startswith("-----BEGIN") else doc


# -- chaos ----------------------------------------------------------------------------------------


def _run_plan(lab: Lab, name: str, scale: float = SCALE) -> ChaosReport:
    report = ChaosRun(lab, find_plan(name).scaled(scale), print).run()
    print(format_chaos_report(report))
    assert report.audit is not None
    # Nothing lost but what a spool quota evicted and counted (some of which may have arrived:
    # see ChaosReport), nothing stored twice.
    assert report.audit.lost <= report.evicted and report.audit.duplicated == 0, format_chaos_report(report)
    assert report.relay_caught_up_s is not None, format_chaos_report(report)
    assert report.ok, format_chaos_report(report)
    return report


def _wait_for_beacons(lab: Lab, since_ms: int, gateway: str, done: Any, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    depths = beacon_depths(lab, since_ms).get(gateway, [])
    while not done(depths) and time.monotonic() < deadline:
        time.sleep(2.0)
        depths = beacon_depths(lab, since_ms).get(gateway, [])
    return depths


@pytest.mark.parametrize("plan", ["uplink-cuts", "restart-offline"])
def test_an_outage_is_spooled_seen_and_drained(lab: Lab, plan: str) -> None:
    since_ms = int(time.time() * 1000)
    _run_plan(lab, plan)
    gateway = lab.fleet.gateway_of("site01").id
    # The relay engine's index holds the beacons that saw the outage: the depth rose, then fell.
    depths = _wait_for_beacons(lab, since_ms, gateway, lambda d: bool(d) and max(d) > 0 and d[-1] < max(d))
    assert depths and max(depths) > 0 and depths[-1] < max(depths), depths


def test_bad_uplink_loses_nothing(lab: Lab) -> None:
    report = _run_plan(lab, "bad-uplink")
    # Where the kernel has no netem, the loss really happened through nftables (counted).
    assert report.impairment_drops > 0 or not report.notes, format_chaos_report(report)


def test_brokers_and_the_forwarder_killed_come_back_by_restart(lab: Lab) -> None:
    report = _run_plan(lab, "kill-brokers")
    gateway, cloud = lab.fleet.gateway_of("site01").id, lab.fleet.master.id
    came_back = {unit: len(times) for unit, times in report.come_back_s.items()}
    assert came_back == {
        f"{gateway}/saltmarsh-forwarder": 5,
        f"{gateway}/mosquitto": 2,
        f"{cloud}/mosquitto": 2,
    }, format_chaos_report(report)


def test_the_ingester_killed_and_its_sink_stopped(lab: Lab) -> None:
    # At 0.4 the sink stays locked for 12 s, past the ingester's 5 s SQLite busy timeout.
    report = _run_plan(lab, "ingester-and-sink", scale=0.4)
    cloud = lab.fleet.master.id
    assert len(report.come_back_s[f"{cloud}/saltmarsh-ingester-1"]) == 1
    # The sink really stopped answering: the ingester's writes failed, and were retried.
    (ingester,) = [s for s in lab.statuses(cloud) if s.service == "ingester"]
    assert int(ingester.counters["write_failures_total"]) > 0, ingester.counters


def test_the_reactor_restarts_a_dead_forwarder(lab: Lab) -> None:
    since_ms = int(time.time() * 1000)
    report = _run_plan(lab, "reactor-restart")
    gateway = lab.fleet.gateway_of("site01").id
    (took,) = report.come_back_s[f"{gateway}/saltmarsh-forwarder"]
    print(f"the reactor brought the forwarder back after {took:.1f} s")
    # Nothing on the node could have: the restart was the master's job, on the gateway's beacon.
    # Asked for by name, not among the last N events: the index holds every beacon of the module.
    query = {
        "size": 10,
        "query": {
            "bool": {
                "filter": [
                    {"term": {"fun": "service.restart"}},
                    {"term": {"minion_id": gateway}},
                    {"range": {"@timestamp": {"gte": since_ms}}},
                ]
            }
        },
    }

    def restarts() -> list[dict[str, Any]]:
        return [doc for doc in search_events(lab, query) if str(doc.get("tag", "")).startswith("salt/job/")]

    # The job's return reaches the index after the forwarder is back: wait for it.
    started = time.monotonic()
    while not restarts() and time.monotonic() < started + 90:
        time.sleep(1.0)
    assert restarts(), "the relay engine's index should hold the reactor's service.restart job"
    print(f"its service.restart job was indexed {time.monotonic() - started:.1f} s after the forwarder was back")


def test_the_master_down_stops_no_data(lab: Lab) -> None:
    report = _run_plan(lab, "master-down")
    written = dict(report.written_at)
    before, after = written["stop-master master"], written["end stop-master master"]
    assert before is not None and after is not None and after > before, report.written_at


def test_a_full_spool_quota_evicts_exactly_and_keeps_every_alert(lab: Lab) -> None:
    report = _run_plan(lab, "spool-quota")
    assert report.audit is not None and 0 < report.audit.lost <= report.evicted, format_chaos_report(report)
    assert report.alerts is not None and report.alerts[1] >= report.alerts[0] > 0, format_chaos_report(report)


def _gone(path: Path) -> bool:
    # An overlay marks a file deleted from its lower layer with a 0/0 character device.
    return not path.exists() or path.is_char_device()


def test_the_clean_states_remove_what_the_formula_made(lab: Lab) -> None:
    """The last Salt runs of the module: site02's sensor and gateway cleaned, their configs and
    units gone and stopped; the spools, which are data, kept."""
    sensor, gateway = lab.fleet.with_role("sensor", "site02")[0].id, lab.fleet.gateway_of("site02").id
    for minion, sls in ((sensor, "saltmarsh.sensor.clean"), (gateway, "saltmarsh.gateway.clean")):
        run = StateRun(minion, lab.master.salt("-L", minion, "state.apply", sls))
        assert minion in run.minions and not run.failures(), run.failures()
    made = {
        gateway: [
            "/etc/saltmarsh/forwarder.toml",
            "/etc/mosquitto/saltmarsh.acl",
            "/etc/mosquitto/saltmarsh.passwd",
            "/etc/systemd/system/saltmarsh-forwarder.service",
        ],
        sensor: ["/etc/saltmarsh/sensor.toml", "/etc/systemd/system/saltmarsh-sensor.service"],
    }
    for minion, paths in made.items():
        assert [p for p in paths if not _gone(lab.dirs(minion).path(p))] == [], minion
    assert [lab.unit_pid(gateway, u) for u in ("mosquitto", "saltmarsh-forwarder")] == [None, None]
    assert lab.unit_pid(sensor, "saltmarsh-sensor") is None
    assert lab.dirs(gateway).path("/var/lib/saltmarsh/forwarder").is_dir(), "clean keeps the spool"


def test_no_secret_in_any_log(lab: Lab) -> None:
    secrets = lab.secrets()
    logs = lab.log_files()
    assert len(secrets) >= 10 and len(logs) >= 10, (len(secrets), len(logs))
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = [s[:6] + "…" for s in secrets if s in text]
        assert not leaked, f"{path}: {leaked}"


# -- clean-up after a crash -------------------------------------------------------------------------


def test_down_recovers_a_crashed_up(tmp_path: Path) -> None:
    base = tmp_path / "crashed"
    cli = [sys.executable, "-m", "saltmarsh.ops.cli", "lab", "up", "--dir", str(base)]
    runner = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state_path = base / "lab.json"
    anchors: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_path.read_text())
                if state.get("phase") == "salt":
                    anchors = state["anchors"]
                    break
            time.sleep(0.1)
        time.sleep(3)  # the salt-master and some minions are starting
    finally:
        os.killpg(runner.pid, 9)  # the runner crashes; what it started lives on
        runner.wait()
    prefix = network.lab_prefix(base)
    assert anchors and network.lab_namespaces(prefix), "the crash should leave namespaces behind"
    report = down(base)
    assert report.processes >= len(anchors)
    assert network.lab_namespaces(prefix) == []
    # Dead: gone, or a zombie waiting for an init that reaps (the runner, their parent, died).
    assert not any(process_running(pid) for pid in anchors.values())
    assert not base.exists()
    assert shutil.which("ip")
