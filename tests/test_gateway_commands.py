"""The gateway's command relay alone, on a real store and a hand-driven clock: what it holds and
acknowledges, what it delivers when, what it reports on its own sequence, and what a restart
brings back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.command_store import CommandStore
from gateway.commands import GatewayCommands, Outbox, delivery_properties
from saltmarsh.contract.command import Command
from saltmarsh.contract.command_state import CommandOutcome, CommandState
from saltmarsh.contract.envelope import parse
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.contract.signature import generate_key, load_private_key, load_public_key, sign
from saltmarsh.mqtt.codec import read_properties
from saltmarsh.mqtt.wire import Publish

PEM, PUBLIC = generate_key()
OTHER_PEM, _ = generate_key()
KEY, OTHER = load_private_key(PEM), load_private_key(OTHER_PEM)
T0_MS = 1_700_000_000_000
SITE, GW = "marsh", "gw-1"


@dataclass
class Clock:
    ms: int = T0_MS

    def wall(self) -> float:
        return self.ms / 1000

    def mono(self) -> float:
        return self.ms / 1000 - T0_MS / 1000 + 100.0


def command(n: int = 0, **changes: Any) -> Command:
    base = Command(
        cmd_id=f"01HF7YAT00XGHYZ3KT8V94F1{n:02d}",
        rollout="r-1",
        site=SITE,
        device="pi-1",
        op="set_interval",
        args={"interval_s": 30.0 + n},
        issued_at_ms=T0_MS,
        not_after_ms=T0_MS + 60_000,
        run_timeout_s=10,
    )
    return replace(base, **changes)


def publish(cmd: Command, key: Any = KEY, *, packet_id: int = 1, retain: bool = False) -> Publish:
    return Publish(str(cmd.topic), sign(cmd, key).encode(), 1, packet_id, False, retain, ())


class Relay:
    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.open()

    def open(self) -> None:
        self.store = CommandStore.open(self.path)
        self.relay = GatewayCommands(
            gateway_id=GW,
            site=SITE,
            boot="gb1",
            store=self.store,
            public_keys=[load_public_key(PUBLIC)],
            redeliver_s=5,
            clock=self.clock.wall,
            monotonic=self.clock.mono,
        )

    def reopen(self) -> None:
        self.store.close()
        self.open()

    def reports(self, *, spool: bool = True) -> list[tuple[str, str, str | None, str | None, str | None]]:
        """The gateway's own outcomes so far: (cmd_id, state, target, hop, reason); spooled, as the loop does."""
        outbox = self.relay.take_outbox() or Outbox()
        found = []
        for topic, payload in outbox.records:
            env = parse(topic, payload, self.clock.ms)
            assert (env.device, env.site) == (GW, SITE)
            outcome = env.cmd
            assert outcome is not None
            hop = None if outcome.hop is None else outcome.hop.value
            found.append((outcome.cmd_id, outcome.state.value, outcome.target, hop, outcome.reason))
        if spool:
            for then in outbox.then:
                then()
        return found

    def delivered(self) -> list[str]:
        return [json.loads(d.payload)["cmd_id"] for d in self.relay.due()]

    def presence(self, device: str, state: str) -> None:
        payload = json.dumps({"v": 1, "kind": "status", "device": device, "site": SITE, "boot": "b", "state": state})
        self.relay.observe(Publish(f"saltmarsh/v1/{SITE}/{device}/status", payload.encode(), 1, 0, False, True, ()))

    def device_says(self, cmd: Command, state: CommandState, seq: int = 1) -> None:
        env = mint_cmdres(
            device=cmd.device,
            site=SITE,
            boot="b",
            seq=seq,
            ts_ms=self.clock.ms,
            outcome=CommandOutcome(cmd.cmd_id, cmd.rollout, state),
        )
        self.relay.observe(Publish(str(env.topic), env.encode(), 1, 0, False, False, ()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def relay(tmp_path: Path, clock: Clock) -> Iterator[Relay]:
    built = Relay(tmp_path / "commands.db", clock)
    yield built
    built.store.close()


def test_held_acked_reported_delivered_and_released_on_the_final_answer(relay: Relay, clock: Clock) -> None:
    cmd = command()
    assert relay.relay.take([publish(cmd, packet_id=7)]) == [7]
    assert relay.reports() == [(cmd.cmd_id, "at_gateway", "pi-1", None, None)]
    assert relay.delivered() == [cmd.cmd_id]
    assert relay.delivered() == []  # not again at once
    clock.ms += 5_000
    assert relay.delivered() == []  # not before the op's run timeout either (10 s > redeliver_s)
    clock.ms += 5_000
    assert relay.delivered() == [cmd.cmd_id]
    relay.device_says(cmd, CommandState.RUNNING)
    held = relay.store.get(cmd.cmd_id)
    assert held is not None and held.status == "running"
    relay.device_says(cmd, CommandState.SUCCEEDED, seq=2)
    assert relay.store.depth() == 0 and relay.relay.counters.done_total == 1
    clock.ms += 60_000
    assert relay.delivered() == [] and relay.reports() == []


def test_the_delivery_carries_the_time_left(relay: Relay, clock: Clock) -> None:
    cmd = command()
    relay.relay.take([publish(cmd)])
    clock.ms += 12_345
    (delivery,) = relay.relay.due()
    assert delivery.payload == sign(cmd, KEY).encode()  # as signed: not re-encoded
    assert delivery.props == delivery_properties(47_655)
    values, user = read_properties(delivery.props, 1, len(delivery.props))
    assert values[0x02] == 48 and dict(user) == {"remaining_ms": "47655"}


TAMPERED = sign(command(), KEY).encode().replace(b"30.0", b"31.0")


@pytest.mark.parametrize(
    ("name", "message", "counter"),
    [
        ("retained", publish(command(), retain=True), "retained_total"),
        ("another key", publish(command(), OTHER), "forged_total"),
        ("unsigned", Publish(str(command().topic), command().encode(), 1, 1, False, False, ()), "forged_total"),
        ("tampered", Publish(str(command().topic), TAMPERED, 1, 1, False, False, ()), "forged_total"),
        ("not JSON", Publish(str(command().topic), b"{", 1, 1, False, False, ()), "invalid_total"),
        ("another site", publish(command(site="fen")), "misaddressed_total"),
    ],
)  # fmt: skip
def test_what_cannot_be_trusted_is_acked_counted_and_neither_held_nor_reported(
    relay: Relay, name: str, message: Publish, counter: str
) -> None:
    assert relay.relay.take([message]) == [1], name  # acked: the cloud must not resend it for ever
    assert getattr(relay.relay.counters, counter) == 1, (name, relay.relay.counters)
    assert relay.store.depth() == 0 and relay.reports() == [] and relay.delivered() == []


def test_a_command_past_its_deadline_on_arrival_is_expired_at_the_gateway(relay: Relay, clock: Clock) -> None:
    cmd = command()
    clock.ms = cmd.not_after_ms
    assert relay.relay.take([publish(cmd)]) == [1]
    assert relay.reports() == [(cmd.cmd_id, "expired", "pi-1", "gateway", None)]
    assert relay.store.depth() == 0


def test_a_redelivery_from_the_cloud_is_held_once(relay: Relay) -> None:
    cmd = command()
    relay.relay.take([publish(cmd, packet_id=1)])
    assert relay.relay.take([publish(cmd, packet_id=2)]) == [2]
    assert [r[1] for r in relay.reports()] == ["at_gateway"]
    assert relay.relay.counters.redelivered_from_cloud_total == 1 and relay.store.depth() == 1


def test_an_offline_device_waits_for_its_presence(relay: Relay, clock: Clock) -> None:
    relay.presence("pi-1", "offline")
    cmd = command()
    relay.relay.take([publish(cmd)])
    assert relay.delivered() == []
    clock.ms += 30_000
    assert relay.delivered() == []
    relay.presence("pi-1", "online")
    assert relay.delivered() == [cmd.cmd_id]


def test_the_deadline_expires_it_at_the_gateway_and_releases_it_once_spooled(relay: Relay, clock: Clock) -> None:
    relay.presence("pi-1", "offline")
    cmd = command()
    relay.relay.take([publish(cmd)])
    relay.reports()
    clock.ms = cmd.not_after_ms + 1
    relay.relay.sweep()
    assert relay.reports(spool=False) == [(cmd.cmd_id, "expired", "pi-1", "gateway", None)]
    assert relay.store.depth() == 1  # not spooled yet: a crash now reports it again
    relay.reopen()
    relay.relay.sweep()
    assert relay.reports() == [(cmd.cmd_id, "expired", "pi-1", "gateway", None)]
    assert relay.store.depth() == 0


def test_five_coalesced_commands_leave_the_last_and_four_superseded(relay: Relay) -> None:
    relay.presence("pi-1", "offline")
    sent = [command(n, coalesce="interval") for n in range(5)]
    for n, cmd in enumerate(sent):
        relay.relay.take([publish(cmd, packet_id=n + 1)])
    got = relay.reports()
    assert [r for r in got if r[1] == "canceled"] == [
        (c.cmd_id, "canceled", "pi-1", None, "superseded") for c in sent[:4]
    ]
    assert [r[0] for r in got if r[1] == "at_gateway"] == [c.cmd_id for c in sent]
    assert [h.cmd_id for h in relay.store.all()] == [sent[4].cmd_id]
    relay.presence("pi-1", "online")
    assert relay.delivered() == [sent[4].cmd_id]


def test_a_late_arrival_is_superseded_by_the_newer_one_already_held(relay: Relay) -> None:
    older, newer = command(1, coalesce="k"), command(2, coalesce="k")
    relay.relay.take([publish(newer)])
    relay.relay.take([publish(older)])
    assert relay.reports()[-1] == (older.cmd_id, "canceled", "pi-1", None, "superseded")
    assert [h.cmd_id for h in relay.store.all()] == [newer.cmd_id]


def test_a_running_command_is_not_superseded(relay: Relay) -> None:
    first, second = command(1, coalesce="k"), command(2, coalesce="k")
    relay.relay.take([publish(first)])
    relay.device_says(first, CommandState.RUNNING)
    relay.relay.take([publish(second)])
    assert "canceled" not in [r[1] for r in relay.reports()]
    assert sorted(h.cmd_id for h in relay.store.all()) == [first.cmd_id, second.cmd_id]


def test_a_restart_delivers_what_was_held_and_reports_what_was_superseded(relay: Relay) -> None:
    relay.presence("pi-1", "offline")
    first, second = command(1, coalesce="k"), command(2, coalesce="k")
    relay.relay.take([publish(first), publish(second, packet_id=2)])
    relay.relay.take_outbox()  # the forwarder died before it spooled them
    relay.reopen()
    assert relay.reports() == [(first.cmd_id, "canceled", "pi-1", None, "superseded")]
    assert relay.delivered() == [second.cmd_id]  # presence unknown after a restart: try


def test_a_store_that_fails_acks_nothing(relay: Relay) -> None:
    relay.store.close()
    assert relay.relay.take([publish(command())]) == []  # the cloud broker delivers it again
    assert relay.relay.counters.store_failures_total == 1
    relay.open()


def test_a_broadcast_is_held_until_its_deadline(relay: Relay, clock: Clock) -> None:
    cmd = command(device="_all")
    relay.relay.take([publish(cmd)])
    assert relay.reports() == [(cmd.cmd_id, "at_gateway", "_all", None, None)]
    assert relay.delivered() == [cmd.cmd_id]
    relay.device_says(replace(cmd, device="pi-1"), CommandState.SUCCEEDED)
    assert relay.store.depth() == 1  # one device's answer does not end it
    relay.presence("pi-2", "online")
    assert relay.delivered() == [cmd.cmd_id]
    clock.ms = cmd.not_after_ms
    relay.relay.sweep()
    assert relay.reports() == [] and relay.store.depth() == 0
