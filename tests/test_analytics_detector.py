"""The time-of-week detector on synthetic series: the office week, DST, gaps, the simulated
driver's faults (event-level precision and recall per kind), determinism and its state's size."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from saltmarsh.analytics import THRESHOLD, Assessment, SeriesDetector, SeriesKey, explain
from saltmarsh.config.sensor import Anomaly as InjectedFault
from saltmarsh.config.sensor import DriverConfig
from sensor.drivers.simulated import simulate

HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY = 1_704_067_200.0  # 2024-01-01T00:00:00Z, a Monday


def office_value(timestamp_s: float, zone: ZoneInfo, rng: random.Random) -> float:
    """22 °C weekdays 9-17 local time, 18 °C nights and weekends, noise of 0.1 °C."""
    local = datetime.fromtimestamp(timestamp_s, UTC).astimezone(zone)
    working = local.weekday() < 5 and 9 <= local.hour < 17
    return round((22.0 if working else 18.0) + rng.gauss(0.0, 0.1), 2)


def office_series(
    start_s: float, end_s: float, step_s: float, zone: ZoneInfo, seed: int
) -> Iterator[tuple[float, float]]:
    rng = random.Random(seed)
    t = start_s
    while t < end_s:
        yield t, office_value(t, zone, rng)
        t += step_s


def local_midnight(year: int, month: int, day: int, zone: ZoneInfo) -> float:
    return datetime(year, month, day, tzinfo=zone).timestamp()


# --- "this is not fine for 10 am on Tuesday" ---------------------------------------------------

LONDON = ZoneInfo("Europe/London")
WEEK9 = MONDAY + 8 * WEEK  # after 8 weeks of history (January-February: no DST change)
TEN_AM_CASES = [
    # (when, reading, alarm?)
    pytest.param(WEEK9 + 1 * DAY + 10 * HOUR, 22.0, False, id="tuesday-10am-22C-is-fine"),
    pytest.param(WEEK9 + 6 * DAY + 10 * HOUR, 22.0, True, id="sunday-10am-22C-is-not"),
    pytest.param(WEEK9 + 6 * DAY + 10 * HOUR, 18.0, False, id="sunday-10am-18C-is-fine"),
    pytest.param(WEEK9 + 1 * DAY + 3 * HOUR, 22.0, True, id="tuesday-3am-22C-is-not"),
]
OFFICE_STEP_S = 300.0


@functools.cache
def office_detector_before(when_s: float) -> str:
    """The state (JSON) of a detector fed the office series up to `when_s`."""
    detector = SeriesDetector(OFFICE_STEP_S, LONDON)
    for t, value in office_series(MONDAY, when_s, OFFICE_STEP_S, LONDON, seed=10):
        detector.observe(t, value)
    return json.dumps(detector.to_dict())


@pytest.mark.parametrize(("when_s", "reading", "alarm"), TEN_AM_CASES)
def test_ten_am_tuesday(when_s: float, reading: float, alarm: bool) -> None:
    detector = SeriesDetector.from_dict(json.loads(office_detector_before(when_s)))
    assessment = detector.observe(when_s, reading)
    assert (assessment.anomaly_score >= THRESHOLD) is alarm, assessment
    assert assessment.source == "week"
    if alarm:
        anomaly = explain(assessment, SeriesKey("d1", "brisbane", "level 2 office", "temperature"))
        assert anomaly is not None
        assert anomaly.bucket == assessment.bucket
        assert anomaly.band is not None and not anomaly.band[0] <= reading <= anomaly.band[1]


def test_ten_am_scores_as_reported() -> None:
    """The figures the detector's docs quote: Sunday 10:00 at 22 °C far above the threshold,
    Tuesday 10:00 at 22 °C near zero."""
    tuesday, sunday = (
        SeriesDetector.from_dict(json.loads(office_detector_before(when))).observe(when, 22.0)
        for when in (WEEK9 + DAY + 10 * HOUR, WEEK9 + 6 * DAY + 10 * HOUR)
    )
    assert (tuesday.bucket, sunday.bucket) == ("Tue 10:00", "Sun 10:00")
    assert tuesday.anomaly_score < 0.05
    assert sunday.anomaly_score > 0.9
    assert sunday.expected == pytest.approx(18.0, abs=0.1)


# --- DST and gaps: no alarm ----------------------------------------------------------------------


def alarms(detector: SeriesDetector, rows: Iterator[tuple[float, float | None]]) -> list[Assessment]:
    return [a for a in (detector.observe(t, v) for t, v in rows) if a.anomaly_score >= THRESHOLD]


DST_CASES = [
    # (zone, the Sunday the clocks change): 8 weeks of history, then the week from that Sunday on
    pytest.param("Europe/London", (2024, 3, 31), id="london-spring-forward"),
    pytest.param("Europe/London", (2024, 10, 27), id="london-fall-back"),
    pytest.param("Australia/Sydney", (2024, 4, 7), id="sydney-fall-back"),
    pytest.param("Australia/Sydney", (2024, 10, 6), id="sydney-spring-forward"),
]


def dst_week_alarms(zone: ZoneInfo, change_day: tuple[int, int, int], clock: ZoneInfo) -> list[Assessment]:
    change = local_midnight(*change_day, zone)
    detector = SeriesDetector(OFFICE_STEP_S, clock)
    rows = office_series(change - 8 * WEEK, change + WEEK + DAY, OFFICE_STEP_S, zone, seed=11)
    return [a for a in alarms(detector, rows) if a.timestamp_s >= change]


@pytest.mark.parametrize(("zone_name", "change_day"), DST_CASES)
def test_a_dst_week_raises_no_alarm(zone_name: str, change_day: tuple[int, int, int]) -> None:
    zone = ZoneInfo(zone_name)
    assert dst_week_alarms(zone, change_day, clock=zone) == []


def test_a_utc_clock_would_have_alarmed_in_the_same_week() -> None:
    """The control: bucketed in UTC, the week after London springs forward alarms at 08:00 UTC."""
    found = dst_week_alarms(LONDON, (2024, 3, 31), clock=ZoneInfo("UTC"))
    assert "08:00" in {a.bucket[4:] for a in found}


def office_rows(begin: float, end: float) -> list[tuple[float, float | None]]:
    return list(office_series(begin, end, OFFICE_STEP_S, LONDON, seed=12))


OUTAGE_START = MONDAY + 6 * WEEK + 2 * DAY + 13 * HOUR  # a Wednesday afternoon
OUTAGE_END = OUTAGE_START + 3 * DAY
SERIES_END = OUTAGE_END + 4 * DAY


def lost_backlog() -> list[tuple[float, float | None]]:
    """Nothing for 3 days, then the series goes on: the backlog never came."""
    rows = office_rows(MONDAY, SERIES_END)
    return [(t, v) for t, v in rows if not OUTAGE_START <= t < OUTAGE_END]


def drained_in_order() -> list[tuple[float, float | None]]:
    """The backlog drains in timestamp order: the same rows, fed after 3 days' silence."""
    return office_rows(MONDAY, SERIES_END)


def drained_live_first() -> list[tuple[float, float | None]]:
    """Live data first: an hour of live rows after the outage, then the 3-day backlog, late."""
    rows = office_rows(MONDAY, SERIES_END)
    before = [r for r in rows if r[0] < OUTAGE_START]
    backlog = [r for r in rows if OUTAGE_START <= r[0] < OUTAGE_END]
    live = [r for r in rows if OUTAGE_END <= r[0] < OUTAGE_END + HOUR]
    after = [r for r in rows if r[0] >= OUTAGE_END + HOUR]
    return before + live + backlog + after


@pytest.mark.parametrize("rows", [lost_backlog, drained_in_order, drained_live_first])
def test_a_three_day_gap_and_its_backlog_raise_no_alarm(rows: Callable[[], list[tuple[float, float | None]]]) -> None:
    detector = SeriesDetector(OFFICE_STEP_S, LONDON)
    assert alarms(detector, iter(rows())) == []


def test_the_drained_backlog_scores_as_it_would_have_live() -> None:
    """No wall clock, no staleness: the catch-up is scored as if it had never been late."""
    live = [SeriesDetector(OFFICE_STEP_S, LONDON) for _ in range(2)]
    uninterrupted = [live[0].observe(t, v) for t, v in drained_in_order()]
    rows = drained_in_order()
    first = [live[1].observe(t, v) for t, v in rows if t < OUTAGE_START]
    state = json.dumps(live[1].to_dict())  # the service is down for 3 days, and restarts from it
    restored = SeriesDetector.from_dict(json.loads(state))
    rest = [restored.observe(t, v) for t, v in rows if t >= OUTAGE_START]
    assert first + rest == uninterrupted


# --- the simulated driver's faults ---------------------------------------------------------------

FAULT_STEP_S = 60.0
CLEAN_WEEKS = 3
FAULTS = 10
LAG_S = 15 * 60  # an alarm this soon after a window ends still counts as detecting it
MERGE_S = 30 * 60  # alarms closer than this are one alarm event
FAULT_SHAPES = {
    # kind: (duration, |magnitude|)
    "stuck": (HOUR, 0.0),
    "spike": (3 * 60, 3.0),
    "drift": (8 * HOUR, 3.0),
    "dropout": (30 * 60, 0.0),
}


@dataclass(frozen=True)
class Quality:
    precision: float
    recall: float
    detected_kind: dict[str, int]


def injected(kind: str, seed: int) -> tuple[InjectedFault, ...]:
    """`FAULTS` faults of one kind in week 4, about 16 hours apart, at seeded offsets."""
    rng = random.Random(seed)
    duration, magnitude = FAULT_SHAPES[kind]
    return tuple(
        InjectedFault(
            kind,
            start_s=CLEAN_WEEKS * WEEK + i * 16 * HOUR + rng.randrange(0, 4 * HOUR, 60),
            duration_s=duration,
            magnitude=rng.choice((-1, 1)) * magnitude,
        )
        for i in range(FAULTS)
    )


@functools.cache
def fault_quality(kind: str, seed: int = 5) -> Quality:
    faults = injected(kind, seed)
    cfg = DriverConfig(seed=seed, anomalies=faults)
    detector = SeriesDetector(FAULT_STEP_S)
    alarm_times: list[float] = []
    kinds: dict[str, int] = {}
    for i in range((CLEAN_WEEKS + 1) * 7 * 1440):
        t = MONDAY + i * FAULT_STEP_S
        sample = simulate(t, MONDAY, seed, cfg)
        assessment = detector.observe(t, None if sample is None else sample.metrics["temperature"])
        if assessment.anomaly_score >= THRESHOLD:
            alarm_times.append(t - MONDAY)
            kinds[assessment.kind] = kinds.get(assessment.kind, 0) + 1
    windows = [(f.start_s, f.start_s + f.duration_s + LAG_S) for f in faults]
    events: list[list[float]] = []
    for t in alarm_times:
        if events and t - events[-1][1] <= MERGE_S:
            events[-1][1] = t
        else:
            events.append([t, t])
    detected = sum(any(start <= t <= end for t in alarm_times) for start, end in windows)
    true_events = sum(any(start <= first <= end for start, end in windows) for first, _ in events)
    return Quality(true_events / len(events) if events else 0.0, detected / len(windows), kinds)


@pytest.mark.parametrize("kind", sorted(FAULT_SHAPES))
def test_each_fault_kind_is_found_with_precision_and_recall_of_90_percent(kind: str) -> None:
    quality = fault_quality(kind)
    assert quality.recall >= 0.9, quality
    assert quality.precision >= 0.9, quality
    # The alarms say what they are: the kind's own label is among them (a spike is a young level alarm).
    assert kind in quality.detected_kind, quality


def test_same_scores_on_every_run() -> None:
    def scores() -> list[float]:
        detector = SeriesDetector(OFFICE_STEP_S, LONDON)
        return [
            detector.observe(t, v).anomaly_score for t, v in office_series(MONDAY, MONDAY + 2 * WEEK, 300, LONDON, 3)
        ]

    assert scores() == scores()


# --- the state a service keeps -------------------------------------------------------------------


def test_state_is_bounded_and_reported() -> None:
    """Bytes per series: about 7.5 kB raw (so 10,000 devices x 4 metrics is about 300 MB), and
    about 10 kB as the JSON a service would store. It does not grow with age or sensor rate."""
    detector = SeriesDetector(FAULT_STEP_S)
    sizes = []
    for t, value in office_series(MONDAY, MONDAY + 10 * WEEK, 600, LONDON, 4):
        detector.observe(t, value)
        if t % WEEK == MONDAY % WEEK:
            sizes.append(len(json.dumps(detector.to_dict())))
    assert detector.nbytes <= 7_600
    assert max(sizes) <= 10_500
    assert abs(sizes[-1] - sizes[-3]) <= 40  # full rings: no growth with age (only digits vary)
