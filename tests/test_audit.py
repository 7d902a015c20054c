"""The audit as a table: stored keys (and what each sensor says it sent) in, losses and duplicates out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from saltmarsh.ops.audit import AuditReport, Expectations, Gap, format_report, format_whereabouts, run_audit
from saltmarsh.runtime.status import ServiceStatus
from saltmarsh.sinks.base import StoredKey

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def keys(device: str, boot: str, *seqs: int) -> list[StoredKey]:
    return [StoredKey(device, boot, seq, T0 + seq * 1000) for seq in seqs]


@dataclass(frozen=True)
class Case:
    name: str
    stored: list[StoredKey]
    expectations: Expectations | None
    # device -> (count, gaps, duplicates)
    devices: dict[str, tuple[int, tuple[Gap, ...], int]]
    lost: int
    duplicated: int
    boots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    suspicious: tuple[Gap, ...] = ()  # every device's, in device order


CASES = [
    Case("nothing stored, nothing expected", [], None, {}, 0, 0),
    Case("no gaps", keys("a", "b1", 1, 2, 3), None, {"a": (3, (), 0)}, 0, 0),
    Case("gap in the middle", keys("a", "b1", 1, 2, 5, 6), None, {"a": (4, (Gap("b1", 3, 4),), 0)}, 2, 0),
    Case(
        "several gaps",
        keys("a", "b1", 2, 4, 7),
        None,
        {"a": (3, (Gap("b1", 1, 1), Gap("b1", 3, 3), Gap("b1", 5, 6)), 0)},
        4,
        0,
    ),
    Case("lost head: seqs start at 1", keys("a", "b1", 4, 5), None, {"a": (2, (Gap("b1", 1, 3),), 0)}, 3, 0),
    Case("tail unknown without expectations", keys("a", "b1", 1, 2), None, {"a": (2, (), 0)}, 0, 0),
    Case(
        "tail loss with expectation",
        keys("a", "b1", 1, 2, 3),
        {"a": ("b1", 10)},
        {"a": (3, (Gap("b1", 4, 10),), 0)},
        7,
        0,
    ),
    Case("expectation met exactly", keys("a", "b1", 1, 2, 3), {"a": ("b1", 3)}, {"a": (3, (), 0)}, 0, 0),
    Case("expectation behind what is stored", keys("a", "b1", 1, 2, 3), {"a": ("b1", 2)}, {"a": (3, (), 0)}, 0, 0),
    Case("duplicates", keys("a", "b1", 1, 2, 2, 3, 3, 3), None, {"a": (3, (), 3)}, 0, 3),
    Case("duplicate next to a gap", keys("a", "b1", 1, 1, 4), None, {"a": (2, (Gap("b1", 2, 3),), 1)}, 2, 1),
    Case(
        "several boots each from 1",
        keys("a", "b1", 1, 2, 3) + keys("a", "b2", 1, 2),
        {"a": ("b2", 2)},
        {"a": (5, (), 0)},
        0,
        0,
        boots={"a": ("b1", "b2")},
    ),
    Case(
        "gap in the second boot and tail of the expected one",
        keys("a", "b1", 1, 2) + keys("a", "b2", 1, 3),
        {"a": ("b2", 5)},
        {"a": (4, (Gap("b2", 2, 2), Gap("b2", 4, 5)), 0)},
        3,
        0,
    ),
    Case(
        "expected boot that stored nothing",
        keys("a", "b1", 1, 2),
        {"a": ("b3", 4)},
        {"a": (2, (Gap("b3", 1, 4),), 0)},
        4,
        0,
        boots={"a": ("b1", "b3")},
    ),
    Case(
        "missing device",
        keys("a", "b1", 1, 2),
        {"a": ("b1", 2), "z": ("b7", 5)},
        {"a": (2, (), 0), "z": (0, (Gap("b7", 1, 5),), 0)},
        5,
        0,
        boots={"z": ("b7",)},
    ),
    Case("device expected at seq 0 sent nothing", [], {"z": ("b1", 0)}, {"z": (0, (), 0)}, 0, 0),
    # seq jumps no real loss explains: listed apart, not lost
    Case(
        "int64 seq",
        keys("a", "b1", 1, 2, 2**63 - 1),
        None,
        {"a": (3, (), 0)},
        0,
        0,
        suspicious=(Gap("b1", 3, 2**63 - 2),),
    ),
    Case(
        "jump past a million",
        keys("a", "b1", 1, 1_000_003),
        None,
        {"a": (2, (), 0)},
        0,
        0,
        suspicious=(Gap("b1", 2, 1_000_002),),
    ),
    Case(
        "jump of a million is a loss",
        keys("a", "b1", 1, 1_000_002),
        None,
        {"a": (2, (Gap("b1", 2, 1_000_001),), 0)},
        1_000_000,
        0,
    ),
    Case(
        "big gap in a big boot is a loss",
        keys("a", "b1", *range(1, 2001), 1_500_000),
        None,
        {"a": (2001, (Gap("b1", 2001, 1_499_999),), 0)},
        1_497_999,
        0,
    ),
    Case(
        "jump past the sensor's last seq",
        keys("a", "b1", 1, 2, 3, 90),
        {"a": ("b1", 3)},
        {"a": (4, (), 0)},
        0,
        0,
        suspicious=(Gap("b1", 4, 89),),
    ),
    Case(
        "jump straddling the last seq",
        keys("a", "b1", 1, 2, 90),
        {"a": ("b1", 5)},
        {"a": (3, (Gap("b1", 3, 5),), 0)},
        3,
        0,
        suspicious=(Gap("b1", 6, 89),),
    ),
    Case(
        "small gap past a stale last seq",
        keys("a", "b1", 1, 2, 3, 4, 6),
        {"a": ("b1", 3)},
        {"a": (5, (Gap("b1", 5, 5),), 0)},
        1,
        0,
    ),
    Case(
        "jump in another boot than expected",
        keys("a", "b1", 1, 2**53 - 1) + keys("a", "b2", 1),
        {"a": ("b2", 1)},
        {"a": (3, (), 0)},
        0,
        0,
        boots={"a": ("b1", "b2")},
        suspicious=(Gap("b1", 2, 2**53 - 2),),
    ),
    Case(
        "several devices",
        keys("a", "b1", 1, 2) + keys("b", "b1", 1, 3) + keys("c", "x", 1),
        None,
        {"a": (2, (), 0), "b": (2, (Gap("b1", 2, 2),), 0), "c": (1, (), 0)},
        1,
        0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_audit(case: Case) -> None:
    report = run_audit(case.stored, case.expectations)
    got = {d.device: (d.count, d.gaps, d.duplicates) for d in report.devices}
    assert got == case.devices
    assert (report.lost, report.duplicated) == (case.lost, case.duplicated)
    assert report.ok == (case.lost == 0 and case.duplicated == 0)
    assert report.readings == sum(count for count, _, _ in case.devices.values())
    for device, boots in case.boots.items():
        assert report.device(device).boots == boots
    assert tuple(gap for d in report.devices for gap in d.suspicious) == case.suspicious
    assert report.suspicious == len(case.suspicious)


def test_first_and_last_ts_span_all_boots() -> None:
    stored = [StoredKey("a", "b1", 1, T0 + 500), StoredKey("a", "b1", 2, T0 + 100), StoredKey("a", "b2", 1, T0 + 900)]
    entry = run_audit(stored).device("a")
    assert (entry.first_ts_ms, entry.last_ts_ms) == (T0 + 100, T0 + 900)
    assert run_audit([], {"z": ("b1", 3)}).device("z").first_ts_ms is None


@pytest.mark.parametrize(
    "stored",
    [
        keys("a", "b1", 3, 2),
        keys("a", "b1", 1) + keys("b", "b1", 1) + keys("a", "b1", 2),
        keys("a", "b1", 1) + keys("a", "b2", 1) + keys("a", "b1", 2),
    ],
    ids=["seq goes back", "device comes back", "boot comes back"],
)
def test_unordered_keys_are_refused(stored: list[StoredKey]) -> None:
    with pytest.raises(ValueError, match="out of order"):
        run_audit(stored)


def test_audit_streams_a_generator() -> None:
    stream = (StoredKey(f"d{d}", "b1", seq, T0) for d in range(3) for seq in range(1, 1001))
    report = run_audit(stream)
    assert (len(report.devices), report.readings, report.ok) == (3, 3000, True)


def test_format_report_table_and_summary() -> None:
    stored = keys("probe-1", "b1", 1, 2, 3) + keys("probe-2", "b1", 1, 2, 2, 5)
    report = run_audit(stored, {"probe-1": ("b1", 3), "probe-3": ("b9", 2)}, {"malformed_json": 2, "not_utf8": 1})
    lines = format_report(report).splitlines()
    assert lines[0].split() == ["device", "boots", "count", "lost", "dup", "first", "ts", "last", "ts"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["probe-1", "1", "3", "0", "0", "2023-11-14T22:13:21.000Z", "2023-11-14T22:13:23.000Z"]
    assert lines[3].split() == ["probe-2", "1", "3", "2", "1", "2023-11-14T22:13:21.000Z", "2023-11-14T22:13:25.000Z"]
    assert lines[4].split() == ["probe-3", "1", "0", "2", "0", "-", "-"]
    assert "gap: probe-2 boot b1 seq 3..4 (2 lost)" in lines
    assert "gap: probe-3 boot b9 seq 1..2 (2 lost)" in lines
    assert "dead letters: 3 (malformed_json 2, not_utf8 1)" in lines
    assert lines[-1] == "audit: 3 devices, 6 readings, 4 lost, 1 duplicated"


def test_format_report_all_good_and_empty() -> None:
    good = format_report(run_audit(keys("a", "b1", 1, 2)))
    assert good.splitlines()[-1] == "audit: 1 device, 2 readings, 0 lost, 0 duplicated"
    assert "gap:" not in good and "dead letters" not in good
    assert format_report(AuditReport(())) == "audit: 0 devices, 0 readings, 0 lost, 0 duplicated"


def test_format_report_caps_the_gap_list() -> None:
    stored = keys("a", "b1", *range(1, 200, 2))
    text = format_report(run_audit(stored), max_gaps=5)
    assert sum(line.startswith("gap: a ") for line in text.splitlines()) == 5
    assert "gap: ... and 94 more" in text


def test_format_report_lists_suspicious_jumps_apart_from_losses() -> None:
    report = run_audit(keys("probe-1", "b1", 1, 3, 2**53 - 1))
    assert (report.lost, report.suspicious, report.ok) == (1, 1, False)
    lines = format_report(report).splitlines()
    assert lines[2].split()[:5] == ["probe-1", "1", "3", "1", "0"]
    assert "gap: probe-1 boot b1 seq 2..2 (1 lost)" in lines
    assert (
        "suspicious: probe-1 boot b1 seq 4..9007199254740990 missing (9007199254740987): "
        "more than any real loss explains; not counted as lost"
    ) in lines
    assert lines[-1] == "audit: 1 device, 3 readings, 1 lost, 0 duplicated, 1 suspicious seq jump"
    assert run_audit(keys("probe-1", "b1", 1, 2, 2**53 - 1)).ok


def status(service: str, instance: str, **counters: object) -> ServiceStatus:
    return ServiceStatus(service, instance, pid=1, updated_ms=T0, counters=counters)


@pytest.mark.parametrize(
    ("statuses", "line"),
    [
        pytest.param(
            [],
            "in flight: evicted under quota 0; resent copies the sink absorbed 0",
            id="nothing running",
        ),
        pytest.param(
            [
                status("sensor", "s1", unconfirmed=3, oldest_unconfirmed_age_s=0.5, spool_depth=40),
                status("sensor", "s2", unconfirmed=2, oldest_unconfirmed_age_s=1.25, spool_depth=2),
                status(
                    "forwarder", "gw1", unconfirmed=700, oldest_unconfirmed_age_s=2.0, spool_depth=900, evicted_total=12
                ),
                status("ingester", "i1", duplicates_total=5),
                status("ingester", "i2", duplicates_total=1),
            ],
            "in flight: sensors hold 42 spooled, 5 sent and unconfirmed (oldest 1.2 s); forwarders hold 900 "
            "spooled, 700 sent and unconfirmed (oldest 2.0 s); evicted under quota 12; resent copies the sink "
            "absorbed 6",
            id="a site with a slow sink",
        ),
        pytest.param(
            [status("sensor", "s1", unconfirmed="many", spool_depth=True), status("forwarder", "gw1")],
            "in flight: sensors hold 0 spooled, 0 sent and unconfirmed (oldest 0.0 s); forwarders hold 0 spooled, "
            "0 sent and unconfirmed (oldest 0.0 s); evicted under quota 0; resent copies the sink absorbed 0",
            id="counters that are not counts count as none",
        ),
    ],
)
def test_whereabouts_says_where_unstored_readings_are(statuses: list[ServiceStatus], line: str) -> None:
    assert format_whereabouts(statuses) == line
