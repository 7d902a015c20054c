"""The master's rollout store: explicit targets, dispatch within the rate, resends until a hop
answers, expiry at the cloud, abort and cancel, and a summary whose states sum to the targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.commands.rollout import ABORTED, CANCELED, RolloutSpec, RolloutStore, Target, resend_wait_ms
from saltmarsh.contract.command_state import CommandState
from saltmarsh.contract.errors import ConfigError
from tests.support import rollout_spec

T0 = 1_700_000_000_000
S = CommandState


def spec(**changes: Any) -> RolloutSpec:
    return rollout_spec(T0, **changes)


def targets(n: int) -> list[Target]:
    return [Target(f"s{i:03d}", "marsh", f"s{i:03d}") for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RolloutStore]:
    opened = RolloutStore.open(tmp_path / "rollouts.db")
    yield opened
    opened.close()


def test_dispatch_keeps_to_the_rate_and_resends_what_no_hop_answered(store: RolloutStore) -> None:
    ids = store.create(spec(max_per_minute=2), targets(5))
    assert len(set(ids.values())) == 5
    # 2 a minute is one every 30 s, not both at once.
    first = store.due("r-1", T0)
    assert [p.target.device for p in first] == ["s000"] and all(p.first for p in first)
    store.mark_sent([p.cmd_id for p in first], T0)
    assert store.due("r-1", T0 + 1_000) == []
    store.record("r-1", {"s000": (S.AT_GATEWAY, None, None, T0 + 2_000)})
    second = store.due("r-1", T0 + 30_000)
    assert [p.target.device for p in second] == ["s001"]
    store.mark_sent([p.cmd_id for p in second], T0 + 30_000)
    later = store.due("r-1", T0 + 60_000)
    # s001 had no answer for 30 s: sent again, with its own cmd_id; and the next one in the rate.
    assert [(p.target.device, p.first) for p in later] == [("s001", False), ("s002", True)]
    assert next(p.cmd_id for p in later if p.target.device == "s001") == ids["s001"]
    store.mark_sent([p.cmd_id for p in later], T0 + 60_000)
    # Counted from the last send: not again every step, and once more 30 s on.
    assert [p.target.device for p in store.due("r-1", T0 + 61_000)] == []
    assert [(p.target.device, p.first) for p in store.due("r-1", T0 + 90_000)] == [
        ("s001", False), ("s002", False), ("s003", True),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("first_s", "last_s", "wait_s"),
    [
        (0, 0, 30),  # first resend: resend_s
        (0, 30, 30),  # then as long as it has waited since the first: 30, 60, 120 ...
        (0, 60, 60),
        (0, 120, 120),
        (0, 240, 240),
        (0, 480, 480),
        (0, 960, 600),  # RESEND_MAX_S at the most
        (0, 86_400, 600),
    ],
)
def test_resends_of_an_unanswered_command_back_off_to_a_ceiling(first_s: int, last_s: int, wait_s: int) -> None:
    assert resend_wait_ms(first_s * 1000, last_s * 1000, 30.0) == wait_s * 1000


def test_a_five_minute_outage_costs_five_copies_of_a_command(store: RolloutStore) -> None:
    store.create(spec(), targets(1))
    sends = 0
    for now_ms in range(T0, T0 + 300_000, 1_000):
        due = store.due("r-1", now_ms)
        sends += len(due)
        store.mark_sent([p.cmd_id for p in due], now_ms)
    assert sends == 5  # at 0, 30, 60, 120 and 240 s


def sends_by_device(store: RolloutStore, start_ms: int, end_ms: int) -> dict[str, list[int]]:
    """Step the store each second from `start_ms` to `end_ms`: when (s after T0) each device was sent."""
    sent: dict[str, list[int]] = {}
    for now_ms in range(start_ms, end_ms, 1_000):
        due = store.due("r-1", now_ms)
        for p in due:
            sent.setdefault(p.target.device, []).append((now_ms - T0) // 1000)
        store.mark_sent([p.cmd_id for p in due], now_ms)
    return sent


def test_a_site_heard_from_again_ends_the_backoff_of_its_silent_targets(store: RolloutStore) -> None:
    # Two targets at a cut site, one at another cut site; all sent at 0, then backed off.
    store.create(spec(), [*targets(2), Target("far", "fen", "far")])
    assert sends_by_device(store, T0, T0 + 250_000) == {d: [0, 30, 60, 120, 240] for d in ("s000", "s001", "far")}
    # At 250 s marsh's gateway is back and answers for s000: s001 goes 30 s after its last send
    # (270 s), not at 480 s; with no word since, it is back on its backoff (next at 540 s). The
    # fen is still silent and stays on its backoff.
    store.record("r-1", {"s000": (S.AT_GATEWAY, None, None, T0 + 250_000)})
    assert sends_by_device(store, T0 + 250_000, T0 + 500_000) == {"s001": [270], "far": [480]}
    # Each new word from the site sends it again at once (its last send is over resend_s ago).
    store.record("r-1", {"s000": (S.RUNNING, None, None, T0 + 500_000)})
    assert sends_by_device(store, T0 + 500_000, T0 + 540_000) == {"s001": [500]}
    # An expiry at the cloud is no word from the site.
    store.record("r-1", {"far": (S.EXPIRED, "cloud", None, T0 + 500_000)})
    assert "far" not in sends_by_device(store, T0 + 500_000, T0 + 560_000)


def test_states_only_move_forward_and_the_summary_adds_up(store: RolloutStore) -> None:
    store.create(spec(), targets(4))
    store.mark_sent([p.cmd_id for p in store.due("r-1", T0)], T0)
    store.record(
        "r-1",
        {
            "s000": (S.SUCCEEDED, None, None, T0 + 1_000),
            "s001": (S.SUCCEEDED, None, None, T0 + 3_000),
            "s002": (S.FAILED, None, "no reading", T0 + 2_000),
        },
    )
    store.record("r-1", {"s000": (S.RUNNING, None, None, T0 + 5_000), "s002": (S.SUCCEEDED, None, None, T0 + 6_000)})
    summary = store.summary("r-1", T0 + 10_000)
    assert summary.counts == {"succeeded": 2, "failed": 1, "sent": 1}
    assert sum(summary.counts.values()) == summary.targets == 4 and not summary.finished
    assert (summary.p50_s, summary.p95_s, summary.oldest_pending_s) == (2.0, 3.0, 10.0)


def test_a_deadline_expires_what_was_never_sent_at_the_cloud(store: RolloutStore) -> None:
    store.create(spec(max_per_minute=1, not_after_ms=T0 + 90_000), targets(3))
    store.mark_sent([p.cmd_id for p in store.due("r-1", T0)], T0)
    assert store.due("r-1", T0 + 90_000) == []
    summary = store.summary("r-1", T0 + 90_000)
    assert summary.counts == {"sent": 1, "expired": 2}
    assert {state for _, _, state in store.targets("r-1")} == {"sent", "expired"}


@pytest.mark.parametrize(
    ("answered", "verdict", "hop"),
    [
        (None, S.EXPIRED, "cloud"),  # no hop ever answered: the cloud broker dropped it at its expiry
        (S.AT_GATEWAY, S.TIMED_OUT, None),
        (S.DELIVERED, S.TIMED_OUT, None),
        (S.RUNNING, S.TIMED_OUT, None),
    ],
)
def test_past_the_deadline_and_run_timeout_the_master_names_where_it_stopped(
    store: RolloutStore, answered: CommandState | None, verdict: CommandState, hop: str | None
) -> None:
    store.create(spec(not_after_ms=T0 + 60_000, run_timeout_s=10), targets(1))
    store.mark_sent([p.cmd_id for p in store.due("r-1", T0)], T0)
    if answered is not None:
        store.record("r-1", {"s000": (answered, None, None, T0 + 1_000)})
    assert store.time_out("r-1", T0 + 69_999) == 0  # the op may still be running at the deadline
    assert store.time_out("r-1", T0 + 70_000) == 1
    [row] = store.unannounced("r-1")
    assert (row.state, row.hop) == (verdict, hop)


@pytest.mark.parametrize(
    ("late", "stands"),
    [
        # The gateway took it just before its uplink went, and its outcome comes late.
        ((S.SUCCEEDED, None), ("succeeded", None)),
        ((S.EXPIRED, "gateway"), ("expired", "gateway")),
        # Non-terminal news and another guess leave the verdict as it is.
        ((S.AT_GATEWAY, None), ("expired", "cloud")),
        ((S.TIMED_OUT, None), ("expired", "cloud")),
    ],
)
def test_the_masters_expired_at_the_cloud_gives_way_to_an_outcome_from_further_down(
    store: RolloutStore, late: tuple[CommandState, str | None], stands: tuple[str, str | None]
) -> None:
    store.create(spec(not_after_ms=T0 + 60_000, run_timeout_s=10), targets(1))
    store.mark_sent([p.cmd_id for p in store.due("r-1", T0)], T0)
    store.time_out("r-1", T0 + 70_000)
    store.record("r-1", {"s000": (late[0], late[1], None, T0 + 80_000)})
    [row] = store.unannounced("r-1")
    assert (row.state.value, row.hop) == stands


def test_a_rollout_with_a_fifth_failing_stops_dispatching_at_its_threshold(store: RolloutStore) -> None:
    """100 devices, every fifth fails; --abort-after 15% once 10 results are in."""
    store.create(spec(max_per_minute=20, abort_after_pct=15, abort_min=10), targets(100))
    now = T0
    while store.status("r-1") == "dispatching" and now < T0 + 3_600_000:
        batch = store.due("r-1", now)
        store.mark_sent([p.cmd_id for p in batch], now)
        outcomes = {
            p.target.device: (S.FAILED if int(p.target.device[1:]) % 5 == 4 else S.SUCCEEDED, None, None, now + 500)
            for p in batch
        }
        store.record("r-1", outcomes)
        now += 3_000  # 20 a minute: one every 3 s
    summary = store.summary("r-1", now)
    assert summary.status == ABORTED and "abort after 15%" in str(store.reason("r-1"))
    assert sum(summary.counts.values()) == 100 and summary.finished
    assert summary.counts["canceled"] == 90  # never dispatched: it stopped at its 10th result
    assert (summary.counts["succeeded"], summary.counts["failed"]) == (8, 2)
    assert store.due("r-1", now) == []


def test_cancel_stops_what_has_not_been_sent(store: RolloutStore) -> None:
    store.create(spec(max_per_minute=2), targets(5))
    store.mark_sent([p.cmd_id for p in store.due("r-1", T0)], T0)
    assert store.cancel("r-1") == 4
    assert store.status("r-1") == CANCELED and store.due("r-1", T0 + 120_000) == []
    assert store.summary("r-1", T0).counts == {"sent": 1, "canceled": 4}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"max_per_minute": 0}, "max_per_minute"),
        ({"abort_after_pct": 0}, "abort_after"),
        ({"abort_after_pct": 101}, "abort_after"),
        ({"abort_min": 0}, "abort_min"),
    ],
)
def test_bad_rollout_limits_name_the_option(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        spec(**changes)
    assert caught.value.key == key


def test_a_device_listed_twice_and_an_unknown_rollout_are_refused(store: RolloutStore) -> None:
    with pytest.raises(ConfigError, match="twice"):
        store.create(spec(), [Target("a", "marsh", "d1"), Target("b", "marsh", "d1")])
    with pytest.raises(ConfigError, match="not a rollout"):
        store.summary("r-404", T0)


# -- the dispatcher ---------------------------------------------------------------------------


def test_the_dispatcher_signs_the_same_command_each_time_and_follows_the_sink(store: RolloutStore) -> None:
    from saltmarsh.commands.dispatch import Dispatcher
    from saltmarsh.contract.command import parse_command
    from saltmarsh.contract.signature import generate_key, load_private_key, load_public_key, verify
    from saltmarsh.sinks.command_state import CommandRecord

    pem, public = generate_key()
    published: list[tuple[str, bytes, int]] = []
    sink: list[CommandRecord] = []
    clock = [T0 / 1000]
    dispatcher = Dispatcher(
        store,
        load_private_key(pem),
        lambda topic, payload, left: published.append((topic, payload, left)),
        lambda rollout: [r for r in sink if r.rollout == rollout],
        resend_s=30,
        clock=lambda: clock[0],
    )
    store.create(spec(max_per_minute=120, not_after_ms=T0 + 120_000), targets(2))
    assert dispatcher.step("r-1") == 2
    topic, payload, left = published[0]
    cmd = parse_command(topic, payload)
    verify(cmd, [load_public_key(public)])
    assert (topic, cmd.device, cmd.op, dict(cmd.args), left) == (
        "saltmarsh/v1/marsh/s000/cmd", "s000", "set_interval", {"interval_s": 30.0}, 120,
    )  # fmt: skip

    def answer(device: str, state: str, at_s: float) -> None:
        ids = {t.device: c for t, c, _ in store.targets("r-1")}
        sink.append(CommandRecord(ids[device], device, "r-1", "marsh", state, CommandState(state).rank,
                                  CommandState(state).final, None, None, "{}", 0, int(at_s * 1000), "x"))  # fmt: skip

    answer("s000", "succeeded", clock[0] + 2)
    clock[0] += 31  # s001: no hop answered for 30 s: the same bytes again
    assert dispatcher.step("r-1") == 1 and published[-1][1] == published[1][1]
    answer("s001", "running", clock[0])
    clock[0] += 120 + 10  # past the deadline and the run timeout, still running: timed out
    dispatcher.step("r-1")
    assert store.summary("r-1", int(clock[0] * 1000)).counts == {"succeeded": 1, "timed_out": 1}
    answer("s001", "succeeded", clock[0] + 1)  # a late result is kept
    dispatcher.step("r-1")
    assert store.summary("r-1", int(clock[0] * 1000)).counts == {"succeeded": 2}
