"""The relay's command announcer: each target's terminal state fired once on the master's bus as
`saltmarsh/cmd/<rollout>/<state>`, across restarts, then marked announced; what fails is counted
and tried again at the next poll. A real RolloutStore and a real SQLite sink, a fake firer."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.commands.dispatch import collect
from saltmarsh.commands.rollout import SCHEMA, RolloutStore, Target
from saltmarsh.commands.states import state_reader
from saltmarsh.config.commander import load_commander_config
from saltmarsh.config.relay import CommandsConfig
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.relay.commands import CommandAnnouncer
from saltmarsh.sinks.base import Delivery
from saltmarsh.sinks.sqlite import SqliteSink
from tests.support import rollout_spec

T0 = 1_700_000_000_000
S = CommandState


@dataclass
class FakeFirer:
    """The master's bus as the announcer sees it; `fail` makes the next fires raise or refuse."""

    fired: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: list[str] = field(default_factory=list)  # "raise", "refuse" or "ok", one per fire, in order
    destroyed: int = 0

    def fire_event(self, data: dict[str, Any], tag: str, timeout: int = 1000) -> bool:
        how = self.fail.pop(0) if self.fail else "ok"
        if how == "raise":
            raise OSError("the master's publisher is gone")
        if how == "refuse":
            return False
        self.fired.append((tag, data))
        return True

    def destroy(self) -> None:
        self.destroyed += 1

    def tags(self) -> list[str]:
        return [tag for tag, _ in self.fired]


@dataclass
class Master:
    """A commander.toml, its store and its sink, in tmp; and an announcer's clock."""

    config: Path
    store_path: Path
    sink_path: Path
    firer: FakeFirer = field(default_factory=FakeFirer)
    now_s: float = T0 / 1000

    def announcer(self) -> CommandAnnouncer:
        return CommandAnnouncer(CommandsConfig(self.config, poll_s=0.05), lambda: self.firer, clock=lambda: self.now_s)

    def rollout(self, n: int, rollout: str = "r-1", *, sent: int | None = None, **changes: Any) -> dict[str, str]:
        """A rollout to `n` devices, the first `sent` of them (all by default) published at T0."""
        store = RolloutStore.open(self.store_path)
        try:
            spec = rollout_spec(T0, rollout=rollout, **changes)
            ids = store.create(spec, [Target(f"m-{d}", "marsh", d) for d in devices(n)])
            store.mark_sent([ids[d] for d in devices(n)[:sent]], T0)
        finally:
            store.close()
        return ids

    def report(self, ids: dict[str, str], *outcomes: tuple[str, CommandState], rollout: str = "r-1") -> None:
        """cmdres from the devices, as an ingester writes them to the sink, 2 s after the send."""
        deliveries = []
        for seq, (device, state) in enumerate(outcomes, start=1):
            outcome = CommandOutcome(
                ids[device],
                rollout,
                state,
                hop=Hop.DEVICE if state is S.EXPIRED else None,
                reason="no reading" if state is S.FAILED else None,
            )
            env = mint_cmdres(device=device, site="marsh", boot="b1", seq=seq, ts_ms=T0 + 1_900, outcome=outcome)
            deliveries.append(Delivery(env, received_ms=T0 + 2_000))
        sink = SqliteSink(self.sink_path)
        try:
            sink.write(deliveries, [])
        finally:
            sink.close()

    def store(self) -> RolloutStore:
        return RolloutStore.open(self.store_path)


def devices(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def write_commander(tmp_path: Path, store: Path, sink: Path) -> Path:
    key = tmp_path / "command.key"
    key.write_text("not read by the relay")
    key.chmod(0o600)
    config = tmp_path / "commander.toml"
    config.write_text(
        f'signing_key_file = "{key}"\nstore = "{store}"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 8883\n'
        f'[sink]\ntype = "sqlite"\npath = "{sink}"\n'
    )
    return config


@pytest.fixture
def master(tmp_path: Path) -> Master:
    store, sink = tmp_path / "rollouts.db", tmp_path / "sink.db"
    return Master(write_commander(tmp_path, store, sink), store, sink)


@pytest.fixture
def announcer(master: Master) -> Iterator[CommandAnnouncer]:
    opened = master.announcer()
    yield opened
    opened.close()


def test_each_terminal_state_fires_once_with_what_a_reactor_needs(master: Master, announcer: CommandAnnouncer) -> None:
    ids = master.rollout(5)
    master.report(
        ids,
        ("s000", S.SUCCEEDED),
        ("s001", S.FAILED),
        ("s002", S.REJECTED),
        ("s003", S.EXPIRED),
        ("s004", S.RUNNING),
    )
    assert announcer.poll() == 4
    assert master.firer.tags() == [
        "saltmarsh/cmd/r-1/succeeded",
        "saltmarsh/cmd/r-1/failed",
        "saltmarsh/cmd/r-1/rejected",
        "saltmarsh/cmd/r-1/expired",
    ]
    assert master.firer.fired[1][1] == {
        "rollout": "r-1",
        "cmd_id": ids["s001"],
        "site": "marsh",
        "device": "s001",
        "minion": "m-s001",
        "op": "set_interval",
        "state": "failed",
        "hop": None,
        "reason": "no reading",
        "send_to_result_s": 2.0,
    }
    assert master.firer.fired[3][1]["hop"] == "device"
    assert announcer.poll() == 0 and len(master.firer.fired) == 4
    assert announcer.health() == {
        "cmd_announced_total": 4,
        "cmd_announce_errors_total": 0,
        "cmd_last_error": None,
    }


def test_a_restarted_announcer_fires_nothing_twice(master: Master) -> None:
    ids = master.rollout(3)
    master.report(ids, ("s000", S.SUCCEEDED), ("s001", S.FAILED))
    first = master.announcer()
    assert first.poll() == 2
    first.close()

    second = master.announcer()  # the engine restarted: a new announcer on the same store
    try:
        assert second.poll() == 0
        master.report(ids, ("s000", S.SUCCEEDED), ("s002", S.SUCCEEDED))  # s000 again, as a replayed batch
        assert second.poll() == 1
    finally:
        second.close()
    assert master.firer.tags() == [
        "saltmarsh/cmd/r-1/succeeded",
        "saltmarsh/cmd/r-1/failed",
        "saltmarsh/cmd/r-1/succeeded",
    ]
    assert [data["device"] for _, data in master.firer.fired] == ["s000", "s001", "s002"]


def test_states_on_the_way_fire_nothing_and_keep_the_rollout_polled(
    master: Master, announcer: CommandAnnouncer
) -> None:
    ids = master.rollout(3)
    master.report(ids, ("s000", S.AT_GATEWAY), ("s001", S.DELIVERED), ("s002", S.RUNNING))
    assert announcer.poll() == 0 and master.firer.fired == []
    store = master.store()
    try:
        assert store.rollouts_to_announce() == ["r-1"]
        assert store.summary("r-1", T0).counts == {"at_gateway": 1, "delivered": 1, "running": 1}  # collected
    finally:
        store.close()


def test_the_stores_own_terminal_states_fire_too(master: Master, announcer: CommandAnnouncer) -> None:
    master.rollout(2)
    master.rollout(3, rollout="r-2", sent=1)
    store = master.store()
    try:
        assert store.cancel("r-2") == 2  # the two not yet sent
    finally:
        store.close()
    assert announcer.poll() == 2
    assert master.firer.tags() == ["saltmarsh/cmd/r-2/canceled"] * 2
    assert {data["reason"] for _, data in master.firer.fired} == {"canceled"}

    # Past the deadline and the run timeout, with no hop's answer: the announcer expires them at
    # the cloud itself.
    master.now_s = (T0 + 600_000 + 10_000) / 1000
    assert announcer.poll() == 3
    assert sorted(master.firer.tags()[2:]) == ["saltmarsh/cmd/r-1/expired"] * 2 + ["saltmarsh/cmd/r-2/expired"]
    expired = master.firer.fired[2][1]
    assert (expired["hop"], expired["send_to_result_s"]) == ("cloud", 610.0)


def test_a_late_result_after_a_timeout_is_announced_in_its_new_state(
    master: Master, announcer: CommandAnnouncer
) -> None:
    ids = master.rollout(1)
    master.report(ids, ("s000", S.AT_GATEWAY))
    master.now_s = (T0 + 700_000) / 1000
    assert announcer.poll() == 1 and master.firer.tags() == ["saltmarsh/cmd/r-1/timed_out"]
    store = master.store()
    try:
        assert store.rollouts_to_announce() == []  # idle now
    finally:
        store.close()
    master.report(ids, ("s000", S.SUCCEEDED))
    assert announcer.poll() == 0  # not polled: the late result is not read until someone collects it
    store = master.store()
    try:
        collect(store, "r-1", state_reader(load_commander_config(master.config).sink)("r-1"))  # `cmd status`
    finally:
        store.close()
    assert announcer.poll() == 1
    assert master.firer.tags() == ["saltmarsh/cmd/r-1/timed_out", "saltmarsh/cmd/r-1/succeeded"]


def test_a_deadline_at_the_cloud_fires_expired_with_its_hop(master: Master, announcer: CommandAnnouncer) -> None:
    ids = master.rollout(2, sent=1)
    store = master.store()
    try:
        assert store.due("r-1", T0 + 600_000) == []  # past the deadline: the unsent one expires here
    finally:
        store.close()
    master.report(ids, ("s000", S.SUCCEEDED))
    assert announcer.poll() == 2
    by_device = {data["device"]: data for _, data in master.firer.fired}
    assert (by_device["s001"]["state"], by_device["s001"]["hop"]) == ("expired", "cloud")
    assert by_device["s001"]["send_to_result_s"] is None  # never sent
    assert by_device["s000"]["state"] == "succeeded"


@pytest.mark.parametrize("how", ["raise", "refuse"])
def test_a_failing_bus_leaves_its_targets_for_the_next_poll(
    master: Master, announcer: CommandAnnouncer, how: str
) -> None:
    ids = master.rollout(3)
    master.report(ids, ("s000", S.SUCCEEDED), ("s001", S.SUCCEEDED), ("s002", S.FAILED))
    master.firer.fail = [how]  # the first fire fails
    assert announcer.poll() == 0
    assert announcer.counters.errors_total == 1 and "bus" in str(announcer.counters.last_error)
    assert master.firer.destroyed == 1  # dropped, to be opened again

    assert announcer.poll() == 3
    assert [data["device"] for _, data in master.firer.fired] == ["s000", "s001", "s002"]
    assert announcer.poll() == 0 and len(master.firer.fired) == 3


def test_a_bus_failing_mid_rollout_keeps_what_it_took(master: Master, announcer: CommandAnnouncer) -> None:
    ids = master.rollout(3)
    master.report(ids, ("s000", S.SUCCEEDED), ("s001", S.SUCCEEDED), ("s002", S.SUCCEEDED))
    master.firer.fail = ["ok", "refuse"]
    assert announcer.poll() == 1
    assert announcer.poll() == 2
    assert [data["device"] for _, data in master.firer.fired] == ["s000", "s001", "s002"]  # each once


def test_a_crash_between_the_fire_and_the_mark_fires_again(
    master: Master, announcer: CommandAnnouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At least once: the bus took the events but the store never heard."""
    ids = master.rollout(2)
    master.report(ids, ("s000", S.SUCCEEDED), ("s001", S.FAILED))

    def store_gone(self: RolloutStore, announced: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(RolloutStore, "mark_announced", store_gone)
        assert announcer.poll() == 0
    assert announcer.counters.errors_total == 1 and "store" in str(announcer.counters.last_error)
    assert announcer.poll() == 2
    assert master.firer.tags() == ["saltmarsh/cmd/r-1/succeeded", "saltmarsh/cmd/r-1/failed"] * 2
    assert announcer.poll() == 0


def test_an_unreadable_sink_is_counted_and_the_stores_own_states_still_go(
    master: Master, announcer: CommandAnnouncer
) -> None:
    ids = master.rollout(2)
    master.rollout(1, rollout="r-2")
    master.rollout(1, rollout="r-3", sent=0)
    store = master.store()
    try:
        store.cancel("r-3")
    finally:
        store.close()
    master.sink_path.write_bytes(b"not a database, a half-copied backup" * 100)
    master.now_s = (T0 + 700_000) / 1000  # past every deadline: nothing is given up on states unseen
    assert announcer.poll() == 1
    assert master.firer.tags() == ["saltmarsh/cmd/r-3/canceled"]
    assert announcer.counters.errors_total == 3  # r-1, r-2 and r-3 each tried the sink
    assert "sink" in str(announcer.counters.last_error)

    master.sink_path.unlink()
    master.report(ids, ("s000", S.SUCCEEDED))
    assert announcer.poll() == 3  # the result, and the rest expired now that the sink is read
    assert sorted(master.firer.tags()[1:]) == [
        "saltmarsh/cmd/r-1/expired",
        "saltmarsh/cmd/r-1/succeeded",
        "saltmarsh/cmd/r-2/expired",
    ]


def test_an_idle_store_is_not_read_at_all(master: Master, announcer: CommandAnnouncer) -> None:
    ids = master.rollout(1)
    master.report(ids, ("s000", S.SUCCEEDED))
    assert announcer.poll() == 1
    master.sink_path.write_bytes(b"garbage")  # would fail any read of the sink
    for _ in range(3):
        assert announcer.poll() == 0
    assert announcer.counters.errors_total == 0


def test_no_store_yet_is_not_an_error_and_is_not_created(master: Master, announcer: CommandAnnouncer) -> None:
    assert announcer.poll() == 0
    assert announcer.counters.errors_total == 0 and not master.store_path.exists()
    master.report(master.rollout(1), ("s000", S.SUCCEEDED))  # the commander's first rollout
    assert announcer.poll() == 1


def test_a_missing_or_bad_commander_config_is_counted_naming_the_key(tmp_path: Path) -> None:
    firer = FakeFirer()
    missing = CommandAnnouncer(CommandsConfig(tmp_path / "nope.toml", 1.0), lambda: firer)
    assert missing.poll() == 0 and missing.poll() == 0
    assert missing.counters.errors_total == 2 and "cannot read" in str(missing.counters.last_error)

    config = write_commander(tmp_path, tmp_path / "rollouts.db", tmp_path / "sink.db")
    config.write_text(config.read_text().replace("[broker]", "resend_s = 0\n[broker]"))
    bad = CommandAnnouncer(CommandsConfig(config, 1.0), lambda: firer)
    assert bad.poll() == 0
    assert "config key 'resend_s'" in str(bad.counters.last_error)


def test_a_store_from_before_the_column_does_not_replay_its_history(master: Master) -> None:
    old = sqlite3.connect(master.store_path)
    old.executescript(SCHEMA)  # the schema as it was: no `announced`
    old.execute(
        "INSERT INTO rollouts VALUES ('r-old', 'identify', '{}', '*', 'glob', ?, ?, 10, NULL, NULL, NULL, 10,"
        " 'dispatching', NULL)",
        (T0, T0 + 600_000),
    )
    for device, state in (("done", "succeeded"), ("waiting", "sent")):
        old.execute(
            "INSERT INTO targets (rollout, device, site, minion, cmd_id, state, sent_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("r-old", device, "marsh", device, f"01HF7YAT00XGHYZ3KT8V94F1{len(device):02d}", state, T0),
        )
    old.commit()
    old.close()
    announcer = master.announcer()
    try:
        master.now_s = (T0 + 700_000) / 1000
        assert announcer.poll() == 1
        assert master.firer.tags() == ["saltmarsh/cmd/r-old/expired"]
        assert master.firer.fired[0][1]["device"] == "waiting"
    finally:
        announcer.close()


def test_the_thread_polls_until_stopped(master: Master) -> None:
    ids = master.rollout(1)
    master.report(ids, ("s000", S.SUCCEEDED))
    announcer = master.announcer()
    announcer.start()
    try:
        deadline = time.monotonic() + 10
        while not master.firer.fired and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        announcer.stop()
    assert master.firer.tags() == ["saltmarsh/cmd/r-1/succeeded"]
