"""The device's command executor: what it refuses silently (counted), what it reports, and that an
op runs once however often its command arrives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.commands.executor import Addressee, CommandExecutor, OpFailed
from saltmarsh.commands.journal import CommandJournal
from saltmarsh.contract.command import Command
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop, Scalar
from saltmarsh.contract.signature import generate_key, load_private_key, load_public_key, sign

NOW_MS = 1_700_000_000_000
PEM, PUBLIC = generate_key()
OTHER_PEM, _ = generate_key()
KEY, OTHER_KEY = load_private_key(PEM), load_private_key(OTHER_PEM)
ME = Addressee(role="sensor", site="marsh-1", device="probe-7")
TOPIC = "saltmarsh/v1/marsh-1/probe-7/cmd"


def command(**changes: Any) -> Command:
    base = Command(
        cmd_id="01HF7YAT00XGHYZ3KT8V94F16P",
        rollout="r-1",
        site="marsh-1",
        device="probe-7",
        op="set_interval",
        args={"interval_s": 30.0},
        issued_at_ms=NOW_MS,
        not_after_ms=NOW_MS + 600_000,
        run_timeout_s=10,
    )
    return replace(base, **changes)


def signed(**changes: Any) -> bytes:
    return sign(command(**changes), KEY).encode()


@dataclass
class Device:
    executor: CommandExecutor
    reports: list[CommandOutcome] = field(default_factory=list)
    runs: list[tuple[str, Mapping[str, Scalar]]] = field(default_factory=list)
    now_ms: int = NOW_MS

    def states(self) -> list[tuple[CommandState, str | None]]:
        return [(r.state, r.reason) for r in self.reports]


def _handler(device_ref: list[Device], op: str, fail: Exception | None = None) -> Callable[..., Mapping[str, Scalar]]:
    def run(args: Mapping[str, Scalar], timeout_s: float) -> Mapping[str, Scalar]:
        device_ref[0].runs.append((op, dict(args)))
        if fail is not None:
            raise fail
        return {"ok": True, **args}

    return run


def make_device(journal_path: Path, failing: Mapping[str, Exception] | None = None) -> Device:
    ref: list[Device] = []
    failing = failing or {}
    journal = CommandJournal.open(journal_path)
    ops = ("set_interval", "read_now", "identify", "restart_agent")
    handlers = {op: _handler(ref, op, failing.get(op)) for op in ops}
    reports: list[CommandOutcome] = []
    executor = CommandExecutor(
        ME,
        [load_public_key(PUBLIC)],
        journal,
        handlers=handlers,
        report=reports.append,
        clock=lambda: ref[0].now_ms / 1000,
    )
    ref.append(Device(executor, reports))
    return ref[0]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path / "journal.db")
    yield made
    made.executor.journal.close()


Reports = list[tuple[CommandState, str | None]]
SUCCEEDED: Reports = [(CommandState.RUNNING, None), (CommandState.SUCCEEDED, None)]

# (case, topic, payload, retained, remaining_ms, counter that moves, reports)
Case = tuple[str, str, bytes, bool, int | None, str, Reports]
CASES: list[Case] = [
    ("runs", TOPIC, signed(), False, None, "succeeded_total", SUCCEEDED),
    ("broadcast", "saltmarsh/v1/marsh-1/_all/cmd", signed(device="_all"), False, None, "succeeded_total", SUCCEEDED),
    ("retained", TOPIC, signed(), True, None, "retained_total", []),
    ("not json", TOPIC, b"{", False, None, "invalid_total", []),
    ("unknown field", TOPIC, signed()[:-1] + b',"x":1}', False, None, "invalid_total", []),
    ("topic mismatch", "saltmarsh/v1/marsh-1/probe-8/cmd", signed(), False, None, "invalid_total", []),
    ("unsigned", TOPIC, command().encode(), False, None, "forged_total", []),
    ("another key", TOPIC, sign(command(), OTHER_KEY).encode(), False, None, "forged_total", []),
    (
        "tampered args",
        TOPIC,
        signed().replace(b'"interval_s":30.0', b'"interval_s":1.0'),
        False,
        None,
        "forged_total",
        [],
    ),
    (
        "another device",
        "saltmarsh/v1/marsh-1/probe-8/cmd",
        signed(device="probe-8"),
        False,
        None,
        "misaddressed_total",
        [],
    ),
    (
        "another site's broadcast",
        "saltmarsh/v1/marsh-2/_all/cmd",
        signed(site="marsh-2", device="_all"),
        False,
        None,
        "misaddressed_total",
        [],
    ),
    (
        "expired by the clock",
        TOPIC,
        signed(issued_at_ms=NOW_MS - 60_000, not_after_ms=NOW_MS),
        False,
        None,
        "expired_total",
        [(CommandState.EXPIRED, None)],
    ),
    # The gateway's remaining time wins over the device's clock, both ways.
    ("expired by the gateway", TOPIC, signed(), False, 0, "expired_total", [(CommandState.EXPIRED, None)]),
    (
        "alive by the gateway",
        TOPIC,
        signed(issued_at_ms=NOW_MS - 60_000, not_after_ms=NOW_MS),
        False,
        5_000,
        "succeeded_total",
        SUCCEEDED,
    ),
    (
        "unknown op",
        TOPIC,
        signed(op="reboot", args={}),
        False,
        None,
        "rejected_total",
        [
            (
                CommandState.REJECTED,
                "op: 'reboot' is not a sensor op; known: set_interval, read_now, identify, restart_agent",
            )
        ],
    ),
    (
        "a gateway op",
        TOPIC,
        signed(op="flush_backlog_now", args={}),
        False,
        None,
        "rejected_total",
        [
            (
                CommandState.REJECTED,
                "op: 'flush_backlog_now' is not a sensor op; known: set_interval, read_now, identify, restart_agent",
            )
        ],
    ),
    (
        "an arg of the wrong type",
        TOPIC,
        signed(args={"interval_s": "fast"}),
        False,
        None,
        "rejected_total",
        [(CommandState.REJECTED, "args.interval_s: expected number, got str")],
    ),
    (
        "a missing arg",
        TOPIC,
        signed(args={}),
        False,
        None,
        "rejected_total",
        [(CommandState.REJECTED, "args.interval_s: is required by set_interval")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_message_is_refused_or_answered(device: Device, case: Case) -> None:
    _, topic, payload, retained, remaining_ms, counter, reports = case
    device.executor.handle(topic, payload, retained=retained, remaining_ms=remaining_ms)
    counters = device.executor.status_counters()
    assert counters[f"commands_{counter}"] == 1
    moved = {k for k, v in counters.items() if v and k.startswith("commands_") and k != "commands_received_total"}
    assert moved == {f"commands_{counter}"}
    assert device.states() == reports
    assert len(device.runs) == (1 if counter == "succeeded_total" else 0)
    if reports and reports[0][0] is CommandState.EXPIRED:
        assert device.reports[0].hop is Hop.DEVICE


def test_the_op_runs_with_its_validated_args(device: Device) -> None:
    device.executor.handle(TOPIC, signed(op="identify", args={}))
    assert device.runs == [("identify", {"duration_s": 10.0})]
    assert device.reports[-1].result == {"ok": True, "duration_s": 10.0}


def test_three_deliveries_one_run_one_answer(device: Device) -> None:
    for _ in range(3):
        device.executor.handle(TOPIC, signed(op="read_now", args={}))
    assert len(device.runs) == 1
    finals = [r for r in device.reports if r.state.terminal]
    assert len(finals) == 3 and all(f == finals[0] for f in finals)
    assert device.executor.counters.duplicates_total == 2


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(OpFailed("no sensor on the bus"), "no sensor on the bus"), (RuntimeError("bug"), "RuntimeError: bug")],
)
def test_a_failing_op_is_failed_with_its_reason_and_not_run_again(
    tmp_path: Path, failure: Exception, reason: str
) -> None:
    device = make_device(tmp_path / "journal.db", {"read_now": failure})
    try:
        device.executor.handle(TOPIC, signed(op="read_now", args={}))
        device.executor.handle(TOPIC, signed(op="read_now", args={}))
        assert device.states() == [
            (CommandState.RUNNING, None),
            (CommandState.FAILED, reason),
            (CommandState.FAILED, reason),
        ]
        assert len(device.runs) == 1
    finally:
        device.executor.journal.close()


@pytest.mark.parametrize(
    ("op", "args", "states", "runs"),
    [
        # Not idempotent: the intent without a result means it may have run; it never runs again.
        ("read_now", {}, [(CommandState.FAILED, "interrupted")], 0),
        # Idempotent: running it again is safe, so it is.
        ("set_interval", {"interval_s": 30.0}, SUCCEEDED, 1),
    ],
)
def test_after_a_crash_between_intent_and_result(
    tmp_path: Path, op: str, args: dict[str, Scalar], states: list[tuple[CommandState, str | None]], runs: int
) -> None:
    from saltmarsh.contract.ops import find_op

    # The process that died: its intent is in the journal, its result never was.
    crashed = CommandJournal.open(tmp_path / "journal.db")
    spec = find_op(op)
    crashed.begin(command().cmd_id, op, spec.idempotent, NOW_MS + 600_000, NOW_MS)
    crashed.close()
    device = make_device(tmp_path / "journal.db")
    try:
        device.executor.handle(TOPIC, signed(op=op, args=args))
        assert device.states() == states
        assert len(device.runs) == runs
    finally:
        device.executor.journal.close()
