"""The unconfirmed tracker alone, time driven by hand: what a confirmation releases, and when a message goes again.

The three resend rules of `saltmarsh.runtime.unconfirmed`: overtaken by a confirmed copy, a probe
after a silence (capped exponential, reset by progress), and everything after a reconnect.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from saltmarsh.contract.confirmation import MAX_RANGES, Confirmation
from saltmarsh.contract.envelope import MAX_SEQ
from saltmarsh.runtime.backoff import BackoffPolicy
from saltmarsh.runtime.spool import Lane, Segment
from saltmarsh.runtime.unconfirmed import OpenSegment, Unconfirmed

RUN = "run-1"
OVERTAKEN_S = 10.0
SILENCE = BackoffPolicy(60.0, 600.0, jitter=False)


def tracker(overtaken_s: float = OVERTAKEN_S) -> Unconfirmed[str]:
    return Unconfirmed(overtaken_s=overtaken_s, silence=SILENCE, run=RUN)


def send(u: Unconfirmed[str], count: int, now: float, nbytes: int = 10) -> list[int]:
    """First copies of `count` new messages, keyed "m<number>"."""
    first = u.reserve(count)
    numbers = list(range(first, first + count))
    for n in numbers:
        u.sent(n, f"m{n}", nbytes, now)
    return numbers


def confirm(u: Unconfirmed[str], *ranges: tuple[int, int], now: float = 0.0, run: str = RUN) -> list[tuple[int, str]]:
    return u.confirm(Confirmation(run, ranges), now)


def copy_all(u: Unconfirmed[str], numbers: list[int], now: float) -> dict[int, int]:
    """Publish a copy of each number picked; returns {old number: new number}."""
    out: dict[int, int] = {}
    for n in numbers:
        found = u.copy(n, now)
        assert found is not None
        out[n] = found[0]
    return out


# -- numbers, counts and the window ------------------------------------------------------------


def test_numbers_are_consecutive_and_never_reused() -> None:
    u = tracker()
    assert [u.reserve(3), u.reserve(1), u.reserve(2)] == [1, 4, 5]
    u.sent(1, "m1", 10, 0.0)
    assert u.due(100.0) == [1]  # silence: a probe
    assert u.copy(1, 100.0) == (7, "m1", 1), "a copy takes the next number, after every reserved one"
    assert u.reserve(1) == 8


def test_a_run_is_new_for_every_tracker() -> None:
    assert tracker().run == RUN
    assert Unconfirmed[str](overtaken_s=1, silence=SILENCE).run != Unconfirmed[str](overtaken_s=1, silence=SILENCE).run


@pytest.mark.parametrize(
    ("count", "nbytes", "max_messages", "max_bytes", "full"),
    [
        (0, 10, 1, 0, False),
        (2, 10, 3, 0, False),
        (3, 10, 3, 0, True),
        (4, 10, 3, 0, True),
        (2, 10, 100, 25, False),
        (3, 10, 100, 25, True),  # 30 bytes of 25
        (3, 10, 100, 30, True),
        (3, 10, 100, 31, False),
        (100, 10, 1000, 0, False),  # max_bytes 0: no byte limit
    ],
    ids=[
        "empty",
        "below max_messages",
        "at max_messages",
        "above max_messages",
        "below max_bytes",
        "past max_bytes",
        "at max_bytes",
        "a byte under",
        "no byte limit",
    ],
)
def test_full(count: int, nbytes: int, max_messages: int, max_bytes: int, full: bool) -> None:
    u = tracker()
    send(u, count, 0.0, nbytes)
    assert (u.count, len(u), u.nbytes) == (count, count, count * nbytes)
    assert u.full(max_messages, max_bytes) is full


# -- what a confirmation releases --------------------------------------------------------------

# Five messages, numbers 1..5, held; then one confirmation.
RELEASES: list[tuple[str, tuple[tuple[int, int], ...], list[int], int]] = [
    ("one", ((3, 3),), [3], 0),
    ("a range", ((2, 4),), [2, 3, 4], 0),
    ("several ranges", ((1, 1), (4, 5)), [1, 4, 5], 0),
    ("all", ((1, 5),), [1, 2, 3, 4, 5], 0),
    ("more than held", ((1, 10),), [1, 2, 3, 4, 5], 5),
    ("none held", ((6, 9),), [], 4),
    ("partly held", ((4, 7),), [4, 5], 2),
    ("the whole number space", ((1, MAX_SEQ),), [1, 2, 3, 4, 5], MAX_SEQ - 5),
]


@pytest.mark.parametrize(("ranges", "released", "stale"), [c[1:] for c in RELEASES], ids=[c[0] for c in RELEASES])
def test_a_confirmation_releases_exactly_what_it_names(
    ranges: tuple[tuple[int, int], ...], released: list[int], stale: int
) -> None:
    u = tracker()
    send(u, 5, 0.0)
    out = confirm(u, *ranges, now=1.0)
    assert sorted(out) == [(n, f"m{n}") for n in released]
    held = 5 - len(released)
    assert (u.count, u.nbytes, u.confirmed_total, u.stale_total) == (held, 10 * held, len(released), stale)
    assert confirm(u, *ranges, now=2.0) == [], "released once"
    assert u.stale_total == stale + Confirmation(RUN, ranges).count


def test_another_runs_confirmation_releases_nothing() -> None:
    u = tracker()
    send(u, 3, 0.0)
    assert confirm(u, (1, 3), run="run-0") == []
    assert (u.count, u.foreign_total, u.stale_total, u.confirmed_total) == (3, 1, 0, 0)


@pytest.mark.parametrize(
    ("numbers", "released"),
    [([1], [1]), ([1, 1], [1]), ([3, 99, 2], [3, 2]), ([], []), ([7], [])],
    ids=["one", "twice in one batch", "with an unknown number", "none", "unknown"],
)
def test_settle_releases_puback_numbers_once(numbers: list[int], released: list[int]) -> None:
    u = tracker()
    send(u, 3, 0.0)
    assert u.settle(numbers, 1.0) == [(n, f"m{n}") for n in released]
    assert (u.count, u.confirmed_total, u.stale_total) == (3 - len(released), len(released), 0)


def test_oldest_first_sent_follows_what_is_held() -> None:
    u = tracker()
    assert u.oldest_first_sent is None
    send(u, 1, 5.0)
    send(u, 1, 7.0)
    assert u.oldest_first_sent == 5.0
    confirm(u, (1, 1), now=8.0)
    assert u.oldest_first_sent == 5.0, "a plain attribute: refreshed by the owner about once a second"
    u.refresh_oldest()
    assert u.oldest_first_sent == 7.0
    assert u.due(1000.0) == [2]  # picked for a copy: still held, still the oldest
    u.refresh_oldest()
    assert u.oldest_first_sent == 7.0
    confirm(u, (2, 2), now=1001.0)
    assert u.oldest_first_sent is None, "nothing held"


# -- copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("confirmed", ["first copy", "second copy", "both copies"])
def test_a_confirmation_of_any_copy_releases_the_message_once(confirmed: str) -> None:
    u = tracker()
    send(u, 2, 0.0)
    assert u.resend_all() == [1, 2]
    copies = copy_all(u, [1, 2], 1.0)
    assert copies == {1: 3, 2: 4}
    assert (u.count, u.resent_total) == (2, 2), "a copy is the same message"
    numbers = {"first copy": [1], "second copy": [3], "both copies": [1, 3]}[confirmed]
    released = u.confirm(Confirmation.of(RUN, numbers), 2.0)
    assert released == [(1, "m1")], "the origin's number and key, whichever copy was confirmed"
    assert (u.count, u.confirmed_total, u.stale_total) == (1, 1, len(numbers) - 1)
    assert confirm(u, (1, 1), (3, 3), now=3.0) == [], "neither copy releases it again"
    assert u.resend_all() == [4], "only the message still held goes again, as its newest copy"


def test_a_copy_of_a_message_confirmed_meanwhile_is_not_sent() -> None:
    u = tracker()
    send(u, 2, 0.0)
    assert u.resend_all() == [1, 2]
    assert confirm(u, (1, 1), now=1.0) == [(1, "m1")], "a waiting message is still confirmable"
    assert u.copy(1, 1.0) is None
    assert u.copy(2, 1.0) == (3, "m2", 2)
    assert u.copy(2, 1.0) is None, "each pick is copied once"
    assert u.copy(99, 1.0) is None
    assert u.resent_total == 1


def test_a_third_copy_keeps_the_first_two_confirmable() -> None:
    u = tracker()
    send(u, 1, 0.0)
    assert u.resend_all() == [1]
    assert copy_all(u, [1], 1.0) == {1: 2}
    assert u.resend_all() == [2]
    assert copy_all(u, [2], 2.0) == {2: 3}
    assert confirm(u, (2, 2), now=3.0) == [(1, "m1")]
    assert (u.count, u.stale_total) == (0, 0)
    assert confirm(u, (1, 3), now=4.0) == []
    assert u.stale_total == 3


@pytest.mark.parametrize(
    ("state", "requeued"),
    [("current", True), ("older copy", False), ("already waiting", False), ("confirmed", False), ("unknown", False)],
)
def test_requeue_only_the_current_copy(state: str, requeued: bool) -> None:
    """A refused PUBACK sends the message again, unless a newer copy, or a confirmation, overtook it."""
    u = tracker()
    send(u, 1, 0.0)
    number = 1
    if state == "older copy":
        u.resend_all()
        copy_all(u, [1], 1.0)
    elif state == "already waiting":
        u.resend_all()
    elif state == "confirmed":
        confirm(u, (1, 1))
    elif state == "unknown":
        number = 42
    assert u.requeue(number) is requeued
    if requeued:
        assert u.copy(number, 2.0) == (2, "m1", 1)


# -- rule 1: overtaken -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overtaken_s", "due"),
    [(5.0, [1, 2]), (10.0, [1, 2]), (10.5, [1]), (15.0, [1]), (15.5, [])],
    ids=["5 s", "10 s: exactly 10 s after message 2", "10.5 s", "15 s: exactly after message 1", "15.5 s"],
)
def test_messages_sent_overtaken_s_before_a_confirmed_copy_go_again(overtaken_s: float, due: list[int]) -> None:
    u = tracker(overtaken_s)
    send(u, 1, 0.0)  # 1
    send(u, 1, 5.0)  # 2
    send(u, 1, 15.0)  # 3
    confirm(u, (3, 3), now=16.0)
    assert u.due(16.0) == due
    assert u.due(16.0) == [], "picked once, until copied"
    copy_all(u, due, 16.0)
    assert u.due(17.0) == [], "a fresh copy is not overtaken by what was confirmed before it went"
    assert u.resent_total == len(due)


def test_the_confirmed_copys_send_time_sets_the_mark_not_its_first() -> None:
    """A confirmed first copy says nothing about messages sent after it; a confirmed late copy does."""
    u = tracker()
    send(u, 1, 0.0)  # 1
    send(u, 1, 50.0)  # 2
    u.resend_all()
    copy_all(u, [1, 2], 100.0)  # 1 -> 3, 2 -> 4
    send(u, 1, 120.0)  # 5
    assert confirm(u, (1, 1), now=121.0) == [(1, "m1")], "the first copy, sent at 0"
    assert u.due(121.0) == []
    assert confirm(u, (5, 5), now=122.0) == [(5, "m5")], "sent at 120: the copy of 2 at 100 was lost"
    assert u.due(122.0) == [4]


def test_a_confirmation_of_an_older_copy_sets_the_mark_at_that_copys_send_time() -> None:
    u = tracker()
    send(u, 1, 0.0)  # 1
    send(u, 1, 30.0)  # 2
    u.resend_all()
    copy_all(u, [1], 40.0)  # 1 -> 3
    copy_all(u, [2], 40.0)  # 2 -> 4
    confirm(u, (1, 1), now=41.0)  # the copy sent at 0: nothing was sent 10 s before it
    assert u.due(41.0) == []


# -- rule 2: a probe after a silence -----------------------------------------------------------


def probe_times(u: Unconfirmed[str], until: float, step: float = 1.0) -> list[float]:
    """When `due` picks something, copying each pick at once, from t=0 to `until`."""
    times: list[float] = []
    now = 0.0
    while now <= until:
        picked = u.due(now)
        if picked:
            assert len(picked) == 1, "a probe is one message"
            times.append(now)
            copy_all(u, picked, now)
        now += step
    return times


def test_silence_probes_back_off_up_to_the_cap() -> None:
    u = tracker()
    send(u, 3, 0.0)
    # 60, then twice as long each time (120, 240, 480), capped at 600.
    assert probe_times(u, 2800.0) == [60.0, 180.0, 420.0, 900.0, 1500.0, 2100.0, 2700.0]
    assert (u.resent_total, u.count) == (7, 3)


def test_probes_take_the_message_waiting_longest() -> None:
    u = tracker()
    send(u, 3, 0.0)
    picks = []
    for now in (60.0, 180.0, 420.0, 900.0):
        picked = u.due(now)
        picks += picked
        copy_all(u, picked, now)
    assert picks == [1, 2, 3, 4], "1, 2 and 3, then 4: the copy of 1"


def test_any_confirmation_resets_the_silence() -> None:
    u = tracker()
    send(u, 5, 0.0)
    for now in (60.0, 180.0):
        copy_all(u, u.due(now), now)
    assert u.silence_s() == 240.0
    confirm(u, (5, 5), now=200.0)  # progress, with nothing overtaken (5 went at 0)
    assert u.silence_s() == 60.0
    assert u.due(259.0) == []
    assert u.due(260.0) == [3]


def test_silence_counts_from_the_first_message_after_an_idle_spell() -> None:
    u = tracker()
    send(u, 1, 0.0)
    confirm(u, (1, 1), now=1.0)
    assert u.due(5000.0) == [], "nothing held"
    send(u, 1, 5000.0)
    assert u.due(5059.0) == []
    assert u.due(5060.0) == [2]


def test_no_probe_while_one_waits_to_be_copied() -> None:
    u = tracker()
    send(u, 2, 0.0)
    assert u.due(60.0) == [1]
    assert u.due(10_000.0) == [], "the sender has not published the last pick yet"
    copy_all(u, [1], 10_000.0)
    assert u.due(10_120.0) == [2], "probes go on once it is published"


def test_a_confirmed_probe_overtakes_everything_sent_before_it() -> None:
    """Lost confirmations: the probe's copy is confirmed, and the rest goes again at once."""
    u = tracker()
    send(u, 4, 0.0)
    assert copy_all(u, u.due(60.0), 60.0) == {1: 5}
    assert confirm(u, (5, 5), now=60.5) == [(1, "m1")]
    assert u.due(60.5) == [2, 3, 4]


def test_after_a_sink_outage_the_first_copies_are_confirmed_in_order_and_nothing_piles_up() -> None:
    u = tracker()
    send(u, 4, 0.0)
    assert copy_all(u, u.due(60.0), 60.0) == {1: 5}
    # The sink comes back: the broker's queue drains in order, first copies first.
    assert confirm(u, (1, 4), now=70.0) == [(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4")]
    assert u.due(100.0) == []
    assert confirm(u, (5, 5), now=71.0) == []
    assert (u.count, u.resent_total, u.stale_total) == (0, 1, 1)


# -- rule 3: reconnected -----------------------------------------------------------------------


def test_resend_all_picks_every_held_message_once() -> None:
    u = tracker()
    send(u, 4, 0.0)
    confirm(u, (2, 2), now=1.0)
    assert u.due(61.0) == [1]  # a probe, not yet copied
    assert u.resend_all() == [1, 3, 4], "the waiting probe too, once"
    assert u.due(1000.0) == []
    assert copy_all(u, [1, 3, 4], 2.0) == {1: 5, 3: 6, 4: 7}
    assert u.resend_all() == [5, 6, 7]
    assert u.resend_all() == [5, 6, 7], "picked, not yet copied: the same picks"


def test_resend_all_with_nothing_held() -> None:
    assert tracker().resend_all() == []


# -- scale -------------------------------------------------------------------------------------


def test_a_range_over_the_whole_number_space_looks_only_at_what_is_held() -> None:
    u = tracker()
    u.reserve(10**12)  # a long run: the held numbers are far from 1
    send(u, 50, 0.0)
    started = time.perf_counter()
    released = confirm(u, (1, MAX_SEQ), now=1.0)
    elapsed = time.perf_counter() - started
    assert len(released) == 50
    assert (u.count, u.stale_total) == (0, MAX_SEQ - 50)
    assert elapsed < 0.5, f"{elapsed:.3f} s: the range was walked"


def test_many_ranges_release_exactly_their_numbers() -> None:
    u = tracker()
    send(u, 2 * MAX_RANGES, 0.0)
    odd = Confirmation.of(RUN, range(1, 2 * MAX_RANGES + 1, 2))
    assert len(odd.ranges) == MAX_RANGES
    started = time.perf_counter()
    released = u.confirm(odd, 1.0)
    elapsed = time.perf_counter() - started
    assert [n for n, _ in released] == list(range(1, 2 * MAX_RANGES + 1, 2))
    assert (u.count, u.confirmed_total, u.stale_total) == (MAX_RANGES, MAX_RANGES, 0)
    assert u.resend_all()[:3] == [2, 4, 6]
    assert elapsed < 1.0, f"{elapsed:.3f} s"


def test_many_ranges_next_to_a_full_window_cost_what_is_held_not_their_width() -> None:
    held = 500
    u = tracker()
    send(u, held, 0.0)
    # Ranges just narrower than the window, none of them naming a held number.
    ranges = tuple((held + 1 + i * held, held + i * held + held - 1) for i in range(held))
    confirmation = Confirmation(RUN, ranges)
    tracemalloc.start()
    try:
        released = u.confirm(confirmation, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (released, u.count) == ([], held)
    assert peak < 1_000_000, f"{peak} bytes to look up {held} held numbers"


# -- OpenSegment -------------------------------------------------------------------------------


def test_an_open_segment_maps_numbers_to_records_and_finishes_when_all_are_confirmed() -> None:
    records = [("saltmarsh/v1/s/d/reading", bytes([i])) for i in range(3)]
    seg = Segment(Lane.BULK, 7, 3, 99, 0)
    open_seg = OpenSegment(seg, records, base=41)
    assert (open_seg.remaining, open_seg.unconfirmed) == (3, 3)
    assert [open_seg.record(n) for n in (41, 42, 43)] == records
    open_seg.sent = 2
    assert open_seg.remaining == 1
    assert open_seg.release(2) is False, "all that went is confirmed, but one has not gone"
    open_seg.sent = 3
    assert open_seg.release() is True
