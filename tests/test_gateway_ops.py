"""The gateway's own ops, through the command relay as the forwarder's loop drives it: a real
command store and journal, a real spool and sender on a fake uplink, time driven by hand.

What each op changes in the running forwarder, what it reports on the gateway's own sequence,
that a duplicate delivery gets the journal's answer and no second run, and that a commanded
restart waits until its result is spooled."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.command_store import CommandStore
from gateway.commands import GatewayCommands, Outbox
from gateway.ops import GatewayOps, own_executor
from gateway.sender import Sender
from saltmarsh.config.gateway import GatewayConfig, gateway_config
from saltmarsh.config.table import Table
from saltmarsh.contract.command import Command
from saltmarsh.contract.envelope import parse
from saltmarsh.contract.signature import generate_key, load_private_key, load_public_key, sign
from saltmarsh.mqtt.codec import encode_publish
from saltmarsh.mqtt.wire import ConnAck, Publish, WireClient
from saltmarsh.runtime.spool import Lane, Spool

PEM, PUBLIC = generate_key()
KEY = load_private_key(PEM)
T0_MS = 1_700_000_000_000
SITE, GW = "marsh", "gw-1"


class FakeUplink:
    def __init__(self) -> None:
        self.published = 0
        self._packet_id = 0

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, props: bytes = b"\x00") -> int:
        encode_publish(topic, payload, qos, 1, props=props)  # what the real one would send
        self.published += 1
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

    def ack(self, packet_id: int) -> None:
        pass

    def close(self, linger_s: float = 0.0) -> None:
        pass


def command(op: str, n: int = 0, **args: Any) -> Command:
    return Command(
        cmd_id=f"01HF7YAT00XGHYZ3KT8V94F1{n:02d}",
        rollout="r-gw",
        site=SITE,
        device=GW,
        op=op,
        args=args,
        issued_at_ms=T0_MS,
        not_after_ms=T0_MS + 60_000,
        run_timeout_s=10,
    )


@dataclass
class Gateway:
    tmp: Path
    cfg: GatewayConfig
    spool: Spool
    sender: Sender
    restarts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.store = CommandStore.open(self.tmp / "commands.db")
        self.commands = GatewayCommands(
            gateway_id=GW,
            site=SITE,
            boot=f"boot{len(self.restarts)}",
            store=self.store,
            public_keys=[load_public_key(PUBLIC)],
            clock=lambda: T0_MS / 1000,
        )
        self.ops = GatewayOps(self.sender, lambda: self.restarts.append(1))
        executor = own_executor(
            site=SITE,
            gateway_id=GW,
            public_keys=[load_public_key(PUBLIC)],
            journal_path=self.tmp / "journal.db",
            ops=self.ops,
            report=self.commands.report,
            clock=lambda: T0_MS / 1000,
        )
        self.commands.serve_own(executor, self.ops.spooled)

    def reopen(self) -> None:
        self.commands.close()
        self.open()

    def send(self, cmd: Command, packet_id: int = 1) -> list[int]:
        return self.commands.take([Publish(str(cmd.topic), sign(cmd, KEY).encode(), 1, packet_id, False, False, ())])

    def outcomes(self, *, spool: bool = True) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(state, reason, result) of each outcome the gateway reported; spooled, as the loop does."""
        outbox = self.commands.take_outbox() or Outbox()
        found = []
        for topic, payload in outbox.records:
            env = parse(topic, payload, T0_MS)
            assert (env.device, env.site, env.cmd is not None) == (GW, SITE, True)
            assert env.cmd is not None
            found.append((env.cmd.state.value, env.cmd.reason, dict(env.cmd.result)))
        if spool:
            for then in outbox.then:
                then()
        return found


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    cfg = gateway_config(
        Table(
            {
                "gateway_id": GW,
                "site": SITE,
                "state_dir": str(tmp_path / "state"),
                "status_dir": str(tmp_path / "status"),
                "drain_rate_limit": 10,
                "drain_burst": 10,
                "local": {},
                "uplink": {},
            },
            "test",
        )
    )
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    built = Gateway(tmp_path, cfg, spool, Sender(cfg, spool, clock=lambda: 1000.0))
    yield built
    built.commands.close()
    spool.close()


def test_set_drain_rate_changes_the_limit_at_once_and_a_duplicate_gets_the_same_answer(gateway: Gateway) -> None:
    assert gateway.send(command("set_drain_rate", messages_per_s=250)) == [1]
    assert gateway.sender.drain_rate_limit == 250
    assert gateway.outcomes() == [
        ("running", None, {}),
        ("succeeded", None, {"messages_per_s": 250, "was": 10.0}),
    ]
    gateway.sender.set_drain_rate(40)  # so a second run would show
    assert gateway.send(command("set_drain_rate", messages_per_s=250), packet_id=2) == [2]
    assert gateway.sender.drain_rate_limit == 40
    assert gateway.outcomes() == [("succeeded", None, {"messages_per_s": 250, "was": 10.0})]
    counters = gateway.commands.status_counters()
    assert (counters["own_commands_succeeded_total"], counters["own_commands_duplicates_total"]) == (1, 1)


@pytest.mark.parametrize(
    ("op", "args", "reason"),
    [
        ("set_drain_rate", {"messages_per_s": 0}, "args.messages_per_s: 0 is below the minimum 1"),
        ("set_drain_rate", {"messages_per_s": "fast"}, "args.messages_per_s: expected integer, got str"),
        ("set_drain_rate", {}, "args.messages_per_s: is required by set_drain_rate"),
        ("flush_backlog_now", {"now": True}, "args.now: is not an arg of flush_backlog_now"),
        ("set_interval", {"interval_s": 5}, "op: 'set_interval' is not a gateway op"),
    ],
)
def test_bad_args_or_a_sensors_op_are_rejected_naming_the_field(
    gateway: Gateway, op: str, args: dict[str, Any], reason: str
) -> None:
    assert gateway.send(command(op, **args)) == [1]
    ((state, why, _),) = gateway.outcomes()
    assert state == "rejected"
    assert why is not None and why.startswith(reason), why
    assert gateway.sender.drain_rate_limit == 10


def _backlog(gateway: Gateway, messages: int) -> FakeUplink:
    """`messages` spooled, then a new uplink: all of them backlog."""
    records = [(f"saltmarsh/v1/{SITE}/pi-1/reading", b"x" * 8) for _ in range(messages)]
    for start in range(0, messages, 50):
        gateway.spool.append([(Lane.BULK, records[start : start + 50])])
    uplink = FakeUplink()
    gateway.sender.attach(cast(WireClient, uplink), ConnAck(False, 0, 65535))
    return uplink


def test_flush_backlog_now_drains_past_the_bucket_then_the_limit_applies_again(gateway: Gateway) -> None:
    uplink = _backlog(gateway, 200)
    gateway.sender.pump(1000.0)
    assert uplink.published == 10  # the bucket's burst, and the clock stands still
    gateway.send(command("flush_backlog_now"))
    assert gateway.outcomes()[-1] == ("succeeded", None, {"backlog_messages": 190})
    while gateway.sender.pump(1000.0):
        pass
    assert uplink.published == 200
    assert not gateway.sender.flushing
    _backlog(gateway, 100)  # a new connection: the 200 unconfirmed go again at once, the new backlog by the bucket
    assert gateway.sender.pump(1000.0) == 200 + 10


def test_a_commanded_restart_waits_for_its_result_to_be_spooled_and_runs_once(gateway: Gateway) -> None:
    restart = command("restart_forwarder")
    gateway.send(restart)
    assert gateway.outcomes(spool=False) == [("running", None, {}), ("succeeded", None, {"restarting": True})]
    assert gateway.restarts == []  # not before the spool has the result
    outbox = gateway.commands.take_outbox()
    assert outbox is None  # taken above, unspooled: a crash here is a resend, and the journal's answer
    gateway.ops.spooled()
    assert gateway.restarts == [1]
    gateway.reopen()  # the new boot
    gateway.send(restart, packet_id=7)
    assert gateway.outcomes() == [("succeeded", None, {"restarting": True})]
    assert gateway.restarts == [1]


def test_a_command_for_the_gateway_is_not_held_for_delivery(gateway: Gateway) -> None:
    gateway.send(command("flush_backlog_now"))
    gateway.outcomes()
    assert gateway.store.depth() == 0
    assert gateway.commands.due() == []


def test_another_commands_deadline_still_holds_it_for_its_device(gateway: Gateway) -> None:
    cmd = replace(command("set_interval", interval_s=5), device="pi-1")
    gateway.send(cmd)
    assert [state for state, _, _ in gateway.outcomes()] == ["at_gateway"]
    assert gateway.store.depth() == 1
