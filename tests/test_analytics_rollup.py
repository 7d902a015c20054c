"""Rollups from stored readings: the aggregates per scope, minute and metric, order-free, and the
minute's provisional/final state with late readings counted as reopens."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltmarsh.analytics.rollup import (
    MINUTE_MS,
    MinuteMark,
    MinuteState,
    RollupKey,
    Scope,
    StoredReading,
    compute,
    minute_of,
    state_at,
)

T0 = 1_767_225_600_000  # a minute boundary
GRACE = 3_600_000


def reading(
    device: str, seq: int, ts_ms: int, value: float, *, place: str | None = "shed", boot: str = "b1"
) -> StoredReading:
    return StoredReading(device, boot, seq, "marsh", place, ts_ms, {"temperature": value})


@pytest.mark.parametrize(
    ("ts_ms", "minute"),
    [(T0, T0), (T0 + 59_999, T0), (T0 + 60_000, T0 + 60_000), (T0 - 1, T0 - 60_000)],
)
def test_a_reading_belongs_to_the_minute_it_falls_in(ts_ms: int, minute: int) -> None:
    assert minute_of(ts_ms) == minute


def test_count_min_max_sum_mean_and_last_per_device_and_place() -> None:
    rows = [
        reading("s1", 1, T0 + 1_000, 20.0),
        reading("s1", 2, T0 + 30_000, 22.0),
        reading("s1", 3, T0 + 10_000, 19.0),  # late in arrival, not the last in time
        reading("s2", 1, T0 + 20_000, 25.0),
        reading("s3", 1, T0 + 5_000, 30.0, place=None),  # no place: its device's rollup only
        reading("s1", 4, T0 + MINUTE_MS, 21.0),  # the next minute
    ]
    got = compute(rows)
    s1 = got[RollupKey(Scope.DEVICE, "s1", T0, "temperature")]
    assert (s1.count, s1.min, s1.max, s1.sum, s1.last, s1.last_ts_ms) == (3, 19.0, 22.0, 61.0, 22.0, T0 + 30_000)
    assert s1.mean == pytest.approx(61.0 / 3)
    shed = got[RollupKey(Scope.PLACE, "marsh/shed", T0, "temperature")]
    assert (shed.count, shed.min, shed.max, shed.last) == (4, 19.0, 25.0, 22.0)
    assert RollupKey(Scope.PLACE, "marsh/shed", T0 + MINUTE_MS, "temperature") in got
    assert len(got) == 6  # s1, s2, s3, shed in the first minute; s1 and shed in the next


def test_two_readings_at_one_millisecond_have_one_last() -> None:
    a = reading("s1", 7, T0, 1.0, boot="b2")
    b = reading("s1", 9, T0, 2.0, boot="b2")
    for rows in ([a, b], [b, a]):
        assert compute(rows)[RollupKey(Scope.DEVICE, "s1", T0, "temperature")].last == 2.0


@given(st.lists(st.tuples(st.integers(0, 3 * MINUTE_MS), st.floats(-40, 60)), min_size=1, max_size=60), st.randoms())
def test_the_order_readings_come_in_changes_no_rollup(values: list[tuple[int, float]], rnd: random.Random) -> None:
    rows = [reading("s1", n + 1, T0 + ts, v) for n, (ts, v) in enumerate(values)]
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert compute(rows) == compute(shuffled)
    for key, rollup in compute(rows).items():
        mine = [r.metrics["temperature"] for r in rows if minute_of(r.ts_ms) == key.minute_ms]
        assert (rollup.count, rollup.min, rollup.max) == (len(mine), min(mine), max(mine))
        assert rollup.sum == pytest.approx(sum(mine))


@pytest.mark.parametrize(
    ("now_ms", "state"),
    [
        (T0, MinuteState.PROVISIONAL),
        (T0 + MINUTE_MS + GRACE - 1, MinuteState.PROVISIONAL),
        (T0 + MINUTE_MS + GRACE, MinuteState.FINAL),
    ],
)
def test_a_minute_is_final_once_its_grace_has_passed(now_ms: int, state: MinuteState) -> None:
    assert state_at(T0, now_ms, GRACE) is state


@pytest.mark.parametrize(
    ("mark", "now_ms", "after"),
    [
        ("in time", T0 + 10_000, MinuteMark(MinuteState.PROVISIONAL, 0)),
        ("late, not yet marked final", T0 + MINUTE_MS + GRACE, MinuteMark(MinuteState.FINAL, 1)),
        ("after final", T0 + 3 * GRACE, MinuteMark(MinuteState.FINAL, 1)),
    ],
)
def test_a_reading_after_the_grace_reopens_its_minute_and_is_counted(mark: str, now_ms: int, after: MinuteMark) -> None:
    start = MinuteMark(MinuteState.FINAL if mark == "after final" else MinuteState.PROVISIONAL)
    assert start.after_landing(T0, now_ms, GRACE) == after, mark
    assert MinuteMark(MinuteState.FINAL, 2).after_landing(T0, now_ms + 1, GRACE).reopened == 3


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("seq", {"seq": 0}), ("metrics", {"metrics": {"temperature": float("nan")}})],
)
def test_a_stored_reading_that_is_not_one_is_refused(field: str, kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "device": "s1", "boot": "b1", "seq": 1, "site": "marsh", "place": None, "ts_ms": T0, "metrics": {"t": 1.0},
    }  # fmt: skip
    with pytest.raises(ValueError, match=field):
        StoredReading(**{**base, **kwargs})  # type: ignore[arg-type]
