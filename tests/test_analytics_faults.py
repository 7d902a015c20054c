"""The detector's small parts, one table each: the score curve, the watches, the week clock, the
hour in progress, and state that refuses to load naming its key."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from saltmarsh.analytics.baseline import HOUR_VALUES_KEPT, HourInProgress
from saltmarsh.analytics.detector import SeriesDetector
from saltmarsh.analytics.faults import DropoutWatch, StuckWatch, squash
from saltmarsh.analytics.week_clock import LocalHour, bucket_label, local_hour

SQUASH_CASES = [(0.0, 0.0), (1.0, 0.5), (-1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]


@pytest.mark.parametrize(("ratio", "score"), SQUASH_CASES)
def test_squash(ratio: float, score: float) -> None:
    assert squash(ratio) == pytest.approx(score)


def feed_stuck(values: list[float], days: list[int], min_repeats: int = 5) -> StuckWatch:
    watch = StuckWatch()
    for value, day in zip(values, days, strict=True):
        watch = watch.advance(value, day, min_repeats)
    return watch


STUCK_CASES = [
    # (values, day of each, repeats, limit)
    pytest.param([1.0, 1.0, 1.0], [0, 0, 0], 2, None, id="unarmed-on-day-one"),
    pytest.param([1.0, 2.0, 2.0, 3.0] + [3.0] * 6, [0] * 4 + [1] * 6, 6, 5, id="armed-after-a-day-floor-5"),
    pytest.param([1.0] * 5 + [2.0] + [2.0] * 3, [0] * 6 + [1] * 3, 3, 8, id="limit-twice-the-longest-normal"),
    pytest.param([1.0] * 10 + [2.0, 3.0, 3.0], [0] * 1 + [1] * 9 + [2] * 3, 1, 5, id="an-alarmed-run-is-not-normal"),
]


@pytest.mark.parametrize(("values", "days", "repeats", "limit"), STUCK_CASES)
def test_stuck_watch(values: list[float], days: list[int], repeats: int, limit: int | None) -> None:
    watch = feed_stuck(values, days)
    assert (watch.repeats, watch.limit(5)) == (repeats, limit)
    assert StuckWatch.from_dict(watch.to_dict()) == watch


@pytest.mark.parametrize(("missing", "limit", "alarm"), [(4, 5, False), (5, 5, True), (1, 1, True), (0, 1, False)])
def test_dropout_watch(missing: int, limit: int, alarm: bool) -> None:
    watch = DropoutWatch()
    for _ in range(missing):
        watch = watch.advance(present=False)
    assert (watch.score(limit) >= 0.5) is alarm
    assert watch.advance(present=True).missing == 0


LONDON = ZoneInfo("Europe/London")
CLOCK_CASES = [
    # (epoch seconds, zone, label)
    (1_704_067_200.0, "UTC", "Mon 00:00"),
    (1_704_103_200.0, "Europe/London", "Mon 10:00"),  # winter: GMT
    (1_719_914_400.0, "Europe/London", "Tue 11:00"),  # 2024-07-02T10:00Z, BST
    (1_719_914_400.0, "Australia/Adelaide", "Tue 19:00"),  # +09:30: the half hour does not move the bucket
    (1_730_000_000.0, "Australia/Sydney", "Sun 14:00"),  # 2024-10-27T03:33:20Z, AEDT
]


@pytest.mark.parametrize(("timestamp_s", "zone", "label"), CLOCK_CASES)
def test_week_clock(timestamp_s: float, zone: str, label: str) -> None:
    assert local_hour(timestamp_s, ZoneInfo(zone)).label == label


def test_the_hour_repeated_at_fall_back_is_one_bucket_and_one_hour() -> None:
    first, second = (local_hour(t, LONDON) for t in (1_729_987_200.0, 1_729_990_800.0))  # 01:00 BST, 01:00 GMT
    assert first.label == second.label == "Sun 01:00"
    assert first.hour_key == second.hour_key


@pytest.mark.parametrize(("slot", "label"), [(0, "Mon 00:00"), (34, "Tue 10:00"), (167, "Sun 23:00")])
def test_bucket_label(slot: int, label: str) -> None:
    assert bucket_label(slot) == label


@pytest.mark.parametrize(("added", "kept"), [(10, 10), (64, 64), (65, 33), (600, 38), (3600, 57)])
def test_the_hour_in_progress_is_bounded_and_even(added: int, kept: int) -> None:
    hour = HourInProgress()
    hour.start(LocalHour(0, 0, 0))
    for i in range(added):
        hour.add(float(i))
    assert len(hour.values) == kept <= HOUR_VALUES_KEPT
    assert list(hour.values) == [float(i) for i in range(0, added, hour.stride)]


def broken(key: str, value: object) -> dict[str, object]:
    state = SeriesDetector(60).to_dict()
    state[key] = value
    return state


BAD_STATE = [
    (broken("zone", 3), "'zone'"),
    (broken("step_s", "60"), "'step_s'"),
    (broken("baseline", []), "'baseline'"),
    (broken("stuck", {"normal_longest": "x"}), "'normal_longest'"),
    (broken("level_alarm_steps", 1.5), "'level_alarm_steps'"),
]


@pytest.mark.parametrize(("state", "key"), BAD_STATE)
def test_bad_state_is_refused_naming_its_key(state: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SeriesDetector.from_dict(state)
