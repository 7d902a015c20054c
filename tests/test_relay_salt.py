"""The relay engine inside a real salt-master 3008, with a real minion, osmem-server and moto.

One master and one minion serve the whole module (they take about 20 s to start). The master
loads `salt/engines/saltmarsh_relay.py` from `engines_dirs`, configured inline, with
`plain_json = true` because osmem refuses the client's vendor media types. Every process is stopped by PID:
the Salt daemons by salt-factories, osmem and moto by their Popen handles.

The daemons forward their events to `tests.salt_support.EventRecorder`, not to salt-factories' own
listener, which races with itself under the flood (see EventRecorder), and only their warnings.

The outage test restarts osmem on the same port, and osmem keeps everything in memory, so it
runs last: after it the index holds only what was backfilled.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import osmem_server  # type: ignore[import-untyped]
import pytest
from elasticsearch import Elasticsearch

from saltmarsh.commands.rollout import RolloutSpec, RolloutStore, Target
from saltmarsh.config.commander import load_commander_config
from saltmarsh.contract.command_state import CommandOutcome, CommandState
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.ops.localfleet.processes import free_port
from saltmarsh.sinks.base import Delivery
from saltmarsh.sinks.elasticsearch.plain import PlainJsonNode
from saltmarsh.sinks.sqlite import SqliteSink
from tests.kinesis_support import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    create_stream,
    decoded,
    read_stream,
)
from tests.kinesis_support import moto_server as start_moto
from tests.salt_support import EventRecorder, forwarded_logs

REPO = Path(__file__).resolve().parent.parent
ENGINES_DIR = REPO / "salt" / "engines"
RUNNERS_DIR = REPO / "salt" / "runners"
PREFIX = f"relaytest-{uuid.uuid4().hex[:8]}"
STREAM = "relay-events"
HEALTH_TAG = "saltmarsh/relay/health"
FLOOD_EVENTS = 10_000
FIRE_SCRIPT = """
import json, sys
import salt.config, salt.utils.event
opts = salt.config.master_config(sys.argv[1])
bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
for tag, data in json.load(sys.stdin):
    if bus.fire_event(data, tag) is False:
        sys.exit(f"fire_event refused {tag}")
bus.destroy()
"""


@dataclass
class Osmem:
    """osmem-server on a fixed loopback port, so it can be stopped and started again there."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        args = [osmem_server.resolve_binary(), "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch", "-no-ja"]
        args += ["-parent-pid", str(os.getpid())]  # dies with pytest even if teardown never runs
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"osmem-server did not listen on {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@dataclass
class Fleet:
    master: Any  # saltfactories SaltMaster
    minion: Any  # saltfactories SaltMinion
    osmem: Osmem
    kinesis: Any  # boto3 Kinesis client on moto
    events: EventRecorder
    commander: Path  # the commander.toml the engine's [commands] reads: its store and sink are next to it

    def es(self) -> Elasticsearch:
        return Elasticsearch(self.osmem.url, node_class=PlainJsonNode, request_timeout=10)

    def count(self, query: dict[str, Any]) -> int:
        with contextlib.closing(self.es()) as client:
            client.indices.refresh(index=f"{PREFIX}-fleet-events-*", allow_no_indices=True)
            return int(client.count(index=f"{PREFIX}-fleet-events-*", query=query, allow_no_indices=True)["count"])

    def search(self, query: dict[str, Any], size: int = 100) -> list[dict[str, Any]]:
        with contextlib.closing(self.es()) as client:
            client.indices.refresh(index=f"{PREFIX}-fleet-events-*", allow_no_indices=True)
            hits = client.search(index=f"{PREFIX}-fleet-events-*", query=query, size=size, allow_no_indices=True)
            return [hit["_source"] for hit in hits["hits"]["hits"]]

    def salt(self, *args: str, timeout_s: int = 60) -> Any:
        ret = self.master.salt_cli(timeout=timeout_s).run(*args, minion_tgt=self.minion.id)
        assert ret.returncode == 0, ret
        return ret.data

    def fire_from_master(self, tags_and_data: list[tuple[str, dict[str, Any]]], processes: int = 1) -> None:
        """Fire on the master's bus with salt.utils.event from child processes (several, to fire
        faster than one synchronous publisher can): a Salt event object in the test process
        would leave sockets and an event loop behind, which pytest reports as leaks."""
        children = []
        for part in range(processes):
            child = subprocess.Popen(
                [sys.executable, "-c", FIRE_SCRIPT, str(self.master.config_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            children.append((child, json.dumps(tags_and_data[part::processes])))
        for child, payload in children:
            _, stderr = child.communicate(payload, timeout=300)
            assert child.returncode == 0, stderr[-2000:]

    def health_events(self, after: float) -> list[dict[str, Any]]:
        found = self.events.get_events([(self.master.id, HEALTH_TAG)], after_time=after)
        return [event.data for event in sorted(found, key=lambda e: e.stamp)]


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout_s: float = 60.0,
    every_s: float = 0.5,
    context: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; {context()}")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def fleet(
    salt_factories: Any, event_listener: EventRecorder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("relay-salt")
    osmem = Osmem(free_port())
    osmem.start()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(osmem.stop)
        moto = cleanup.enter_context(start_moto(work / "moto"))
        kinesis = moto.client()
        create_stream(kinesis, STREAM, 1)
        commander = write_commander(work)
        relay_options = {
            "elasticsearch": {
                "hosts": [osmem.url],
                "index_prefix": PREFIX,
                "retry_max": 1,
                "retry_backoff_base_s": 0.01,
                "retry_backoff_cap_s": 0.05,
                "request_timeout_s": 5.0,
                "plain_json": True,  # osmem refuses the client's vendor media types
            },
            "kinesis": {
                "stream_name": STREAM,
                "region": REGION,
                "endpoint_url": moto.endpoint_url,
                "access_key_id_env": "RELAY_TEST_AWS_KEY_ID",
                "secret_access_key_env": "RELAY_TEST_AWS_SECRET",
                "retry_max": 1,
                "backoff_base_ms": 10,
                "backoff_cap_ms": 50,
            },
            "forward_tags": ["saltmarsh/test/forward/*"],
            "queue_max": 500,  # small, so the flood also takes the spill-to-spool path
            "spool_dir": str(work / "relay-spool"),
            "flush_interval_ms": 100,
            "health_interval_s": 1.0,
            "sink_retry_s": 0.5,
            "commands": {"commander_config": str(commander), "poll_s": 0.2},
        }
        suffix = uuid.uuid4().hex[:6]
        master = salt_factories.salt_master_daemon(
            f"relay-master-{suffix}",
            overrides={
                "interface": "127.0.0.1",
                "engines_dirs": [str(ENGINES_DIR)],
                "runner_dirs": [str(RUNNERS_DIR)],
                "engines": [{"saltmarsh_relay": relay_options}],
                **forwarded_logs("master"),
            },
        )
        # The engine reads its AWS keys from these (access_key_id_env, secret_access_key_env).
        master.environ.update(RELAY_TEST_AWS_KEY_ID=ACCESS_KEY_ID, RELAY_TEST_AWS_SECRET=SECRET_ACCESS_KEY)
        minion = master.salt_minion_daemon(
            f"relay-minion-{suffix}",
            overrides={
                # Salt counts a beacon's interval in loop_interval steps (salt-factories sets 0.05 s)
                # while its beacon loop turns about once a second: 0.1 is every 2 turns, ~2 s. An
                # "interval": 2 would be 40 turns, and the test would wait 40 s for its beacon.
                "beacons": {"status": [{"interval": 0.1}]},
                "grains": {"roles": ["sensor"], "site": "marsh"},  # a sensor, for the command runner
                # No DNS here: the fqdn grains would cost seconds at every start.
                "enable_fqdns_grains": False,
                "acceptance_wait_time": 0.5,
                "random_reauth_delay": 0,
                **forwarded_logs("minion"),
            },
        )
        with master.started(), minion.started():
            yield Fleet(master, minion, osmem, kinesis, event_listener, commander)


def write_commander(work: Path) -> Path:
    """The master's commander.toml, for the engine's [commands]; no rollout store until a test makes one."""
    from saltmarsh.contract.signature import generate_key

    key = work / "command.key"
    key.write_bytes(generate_key()[0])
    key.chmod(0o600)
    config = work / "commander.toml"
    config.write_text(
        f'signing_key_file = "{key}"\nstore = "{work / "rollouts.db"}"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 1\n'
        f'[sink]\ntype = "sqlite"\npath = "{work / "sink.db"}"\n'
    )
    return config


def by_tag_prefix(prefix: str) -> dict[str, Any]:
    return {"prefix": {"tag": prefix}}


def test_minion_event_beacon_and_state_apply_are_indexed(fleet: Fleet) -> None:
    minion_id = fleet.minion.id
    assert fleet.salt("event.send", "saltmarsh/test/hello", 'data={"note.text": "hi", "n": 1}') is True
    with fleet.master.state_tree.base.temp_file("relay_ok.sls", "relay_ok:\n  test.succeed_without_changes\n"):
        ret = fleet.salt("state.apply", "relay_ok")
    assert all(state["result"] for state in ret.values())

    wait_for("the minion's event", lambda: fleet.count(by_tag_prefix("saltmarsh/test/hello")) == 1)
    [hello] = fleet.search(by_tag_prefix("saltmarsh/test/hello"))
    assert hello["minion_id"] == minion_id
    payload = hello["data"]["data"]  # event.send also puts the __pub_* job fields here
    assert (payload["note_text"], payload["n"]) == ("hi", 1)  # dots in keys made safe
    assert "note.text" not in payload

    def state_return() -> list[dict[str, Any]]:
        found = fleet.search({"term": {"fun": "state.apply"}})
        return [doc for doc in found if doc["tag"].startswith("salt/job/") and doc["minion_id"] == minion_id]

    wait_for("the state.apply return", lambda: len(state_return()) == 1)
    [job] = state_return()
    assert job["tag"] == f"salt/job/{job['jid']}/ret/{minion_id}"
    assert (job["success"], job["retcode"]) == (True, 0)

    wait_for("a status beacon event", lambda: fleet.count(by_tag_prefix(f"salt/beacon/{minion_id}/status")) > 0)
    [beacon] = fleet.search(by_tag_prefix(f"salt/beacon/{minion_id}/status"), size=1)
    assert beacon["minion_id"] == minion_id

    wait_for("the relay's own health event", lambda: fleet.count(by_tag_prefix(HEALTH_TAG)) > 0)
    health = fleet.health_events(after=0.0)[-1]
    assert health["received"] > 0 and health["relayed"] > 0
    assert health["dropped"] == 0 and health["sink_ok"] is True


def test_selected_tags_reach_kinesis(fleet: Fleet) -> None:
    tag = f"saltmarsh/test/forward/{uuid.uuid4().hex[:6]}"
    assert fleet.salt("event.send", tag, 'data={"door": "north"}') is True

    def forwarded() -> list[dict[str, Any]]:
        records = [doc for shard in read_stream(fleet.kinesis, STREAM).values() for doc in decoded(shard)]
        return [doc for doc in records if doc["tag"] == tag]

    wait_for("the forwarded record", lambda: len(forwarded()) == 1)
    [record] = forwarded()
    assert record["minion_id"] == fleet.minion.id
    assert record["data"]["data"]["door"] == "north"
    assert record["selected_by"] == {"rule": "forward_tags", "why": "tag ~ saltmarsh/test/forward/*"}
    wait_for("its Elasticsearch copy", lambda: fleet.count({"term": {"tag": tag}}) == 1)
    stream = read_stream(fleet.kinesis, STREAM)
    assert all(not doc["tag"].startswith("saltmarsh/test/hello") for shard in stream.values() for doc in decoded(shard))


def test_a_flood_neither_blocks_the_master_nor_loses_events(fleet: Fleet) -> None:
    pings: list[tuple[float, Any]] = []
    flooding = threading.Event()
    flooding.set()

    def ping_while_flooding() -> None:
        while flooding.is_set():
            started = time.monotonic()
            ret = fleet.master.salt_cli(timeout=30).run("test.ping", minion_tgt=fleet.minion.id)
            pings.append((time.monotonic() - started, ret.data))

    pinger = threading.Thread(target=ping_while_flooding, name="pinger")
    pinger.start()
    started = time.monotonic()
    try:
        events = [(f"saltmarsh/test/flood/{i % 10}", {"i": i, "run": PREFIX}) for i in range(FLOOD_EVENTS)]
        fleet.fire_from_master(events, processes=4)
        fired_s = time.monotonic() - started
        wait_for(
            f"{FLOOD_EVENTS} flood documents",
            lambda: fleet.count(by_tag_prefix("saltmarsh/test/flood/")) >= FLOOD_EVENTS,
            timeout_s=120,
            every_s=1.0,
        )
    finally:
        flooding.clear()
        pinger.join(60)
    relayed_s = time.monotonic() - started
    assert fleet.count(by_tag_prefix("saltmarsh/test/flood/")) == FLOOD_EVENTS
    assert pings, "no test.ping finished during the flood"
    assert all(data is True for _, data in pings), pings
    assert max(seconds for seconds, _ in pings) < 20, pings
    print(f"flood: fired in {fired_s:.1f} s, all indexed after {relayed_s:.1f} s, pings {pings}")


def test_an_outage_spools_and_backfills_without_loss(fleet: Fleet) -> None:
    outage_events = 300
    fleet.osmem.stop()
    stopped_at = time.time()
    events = [(f"saltmarsh/test/outage/{i % 3}", {"i": i}) for i in range(outage_events)]
    fleet.fire_from_master(events)
    assert fleet.salt("event.send", "saltmarsh/test/outage/minion", 'data={"during": "outage"}') is True

    def spooled() -> bool:
        health = fleet.health_events(after=stopped_at)
        return any(h["spool_depth"] >= outage_events + 1 and h["sink_ok"] is False for h in health)

    wait_for("the outage events in the spool", spooled, timeout_s=60)

    fleet.osmem.start()  # same port, empty: osmem keeps nothing across a restart
    restarted_at = time.time()
    wait_for(
        "the backfill",
        lambda: fleet.count(by_tag_prefix("saltmarsh/test/outage/")) >= outage_events + 1,
        timeout_s=60,
        context=lambda: (fleet.count(by_tag_prefix("saltmarsh/test/outage/")), fleet.health_events(restarted_at)[-2:]),
    )

    def drained() -> bool:
        health = fleet.health_events(after=restarted_at)
        return any(h["spool_depth"] == 0 and h["sink_ok"] is True for h in health)

    wait_for("an empty spool", drained, timeout_s=30)
    assert fleet.count(by_tag_prefix("saltmarsh/test/outage/")) == outage_events + 1
    assert fleet.count({"term": {"tag": "saltmarsh/test/outage/minion"}}) == 1
    last = fleet.health_events(after=restarted_at)[-1]
    assert last["dropped"] == 0


def test_the_saltmarsh_runner_targets_with_the_masters_own_matcher(fleet: Fleet, tmp_path: Path) -> None:
    """`salt-run saltmarsh.cmd` resolves its target from this master's minion data, and keeps the
    explicit list with the rollout (a dry run: nothing is published)."""
    from saltmarsh.contract.signature import generate_key

    key = tmp_path / "command.key"
    key.write_bytes(generate_key()[0])
    key.chmod(0o600)
    store = tmp_path / "rollouts.db"
    config = tmp_path / "commander.toml"
    config.write_text(
        f'signing_key_file = "{key}"\nstore = "{store}"\n'
        f'salt_master_config = "{fleet.master.config_dir}/master"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 1\n'
        f'[sink]\ntype = "sqlite"\npath = "{tmp_path / "sink.db"}"\n'
    )
    ret = fleet.master.salt_run_cli(timeout=120).run(
        "saltmarsh.cmd",
        "tgt=G@roles:sensor and G@site:marsh",
        "tgt_type=compound",
        "op=set_interval",
        "interval_s=30",
        "rollout=r-runner",
        f"config={config}",
        "dry_run=True",
    )
    assert ret.returncode == 0, (ret.stdout, ret.stderr)
    minion = fleet.minion.id
    assert "rollout r-runner: set_interval to 1 devices" in ret.stdout, ret.stdout
    assert f"  marsh/{minion} (minion {minion}): " in ret.stdout, ret.stdout
    assert not store.exists()  # a dry run keeps nothing


def test_a_terminal_command_state_is_announced_on_the_masters_bus(fleet: Fleet) -> None:
    """A device's SUCCEEDED, written to the sink as an ingester writes it, comes out of the engine
    as `saltmarsh/cmd/<rollout>/succeeded`, once, with the target and the time from send to result."""
    commander = load_commander_config(fleet.commander)
    rollout, minion, now_ms = f"r-salt-{uuid.uuid4().hex[:6]}", fleet.minion.id, int(time.time() * 1000)
    started = time.time()
    store = RolloutStore.open(commander.store)
    try:
        spec = RolloutSpec(rollout, "identify", {}, minion, "glob", now_ms, now_ms + 600_000, 30.0)
        cmd_id = store.create(spec, [Target(minion, "marsh", minion)])[minion]
        store.mark_sent([cmd_id], now_ms)
    finally:
        store.close()
    outcome = CommandOutcome(cmd_id, rollout, CommandState.SUCCEEDED)
    env = mint_cmdres(device=minion, site="marsh", boot="b1", seq=1, ts_ms=now_ms + 1_000, outcome=outcome)
    assert commander.sink.path is not None
    sink = SqliteSink(commander.sink.path)
    try:
        sink.write([Delivery(env, received_ms=now_ms + 1_500)], [])
    finally:
        sink.close()

    tag = f"saltmarsh/cmd/{rollout}/succeeded"

    def announced() -> list[Any]:
        return fleet.events.get_events([(fleet.master.id, f"saltmarsh/cmd/{rollout}/*")], after_time=started)

    wait_for(tag, lambda: len(announced()) == 1, timeout_s=30, every_s=0.1)
    [event] = announced()
    assert event.tag == tag
    assert event.data == {
        "rollout": rollout,
        "cmd_id": cmd_id,
        "site": "marsh",
        "device": minion,
        "minion": minion,
        "op": "identify",
        "state": "succeeded",
        "hop": None,
        "reason": None,
        "send_to_result_s": 1.5,
    }
    wait_for(
        "a health event counting it",
        lambda: any(h.get("cmd_announced_total", 0) >= 1 for h in fleet.health_events(after=started)),
        timeout_s=30,
        every_s=0.2,
    )
    assert len(announced()) == 1  # polled since, and not fired again
