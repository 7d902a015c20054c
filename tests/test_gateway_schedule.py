"""Which segment goes up next: live before backlog, KEEP before BULK, oldest first."""

from __future__ import annotations

import pytest

from gateway.schedule import Phase, SendQueue, batch_size
from saltmarsh.runtime.spool import Lane, Segment

K, B = Lane.KEEP, Lane.BULK


def seg(segno: int, lane: Lane = B, count: int = 10) -> Segment:
    return Segment(lane, segno, count, count * 100, 0)


def drain(queue: SendQueue, backlog_allowed: bool = True) -> list[tuple[Phase, int]]:
    out: list[tuple[Phase, int]] = []
    while True:
        live = queue.next_live()
        if live is not None:
            out.append((Phase.LIVE, live.segno))
            continue
        backlog = queue.next_backlog() if backlog_allowed else None
        if backlog is None:
            return out
        out.append((Phase.BACKLOG, backlog.segno))


L, G = Phase.LIVE, Phase.BACKLOG

# (spooled before the uplink came up, spooled after it, expected send order)
ORDER_CASES = [
    pytest.param([], [], [], id="nothing"),
    pytest.param([], [seg(1), seg(2)], [(L, 1), (L, 2)], id="only-live"),
    pytest.param([seg(1), seg(2)], [], [(G, 1), (G, 2)], id="only-backlog-oldest-first"),
    pytest.param([seg(1), seg(2)], [seg(3)], [(L, 3), (G, 1), (G, 2)], id="live-before-backlog"),
    pytest.param(
        [seg(1, B), seg(2, K), seg(3, B), seg(4, K)], [], [(G, 2), (G, 4), (G, 1), (G, 3)], id="keep-before-bulk"
    ),
    pytest.param(
        [seg(1, B), seg(2, K)], [seg(3, B), seg(4, K)], [(L, 3), (L, 4), (G, 2), (G, 1)], id="live-keeps-spool-order"
    ),
    pytest.param([seg(2), seg(1)], [], [(G, 1), (G, 2)], id="pending-sorted-by-segno"),
]


@pytest.mark.parametrize(("before", "after", "order"), ORDER_CASES)
def test_send_order(before: list[Segment], after: list[Segment], order: list[tuple[Phase, int]]) -> None:
    queue = SendQueue()
    queue.restart(before)
    for s in after:
        assert queue.offer(s)
    assert drain(queue) == order


def test_offer_ignores_what_restart_already_saw() -> None:
    queue = SendQueue()
    queue.restart([seg(1), seg(2)])
    assert not queue.offer(seg(2))  # the committer's notice arriving after the snapshot
    assert queue.offer(seg(3))
    assert drain(queue) == [(L, 3), (G, 1), (G, 2)]


def test_reconnect_turns_unsent_live_into_backlog() -> None:
    queue = SendQueue()
    queue.restart([seg(1)])
    queue.offer(seg(2))
    queue.clear()  # the uplink dropped: the spool still holds 1 and 2
    assert drain(queue) == []
    queue.restart([seg(1), seg(2), seg(3)])
    queue.offer(seg(4))
    assert drain(queue) == [(L, 4), (G, 1), (G, 2), (G, 3)]


def test_boundary_covers_segments_in_flight() -> None:
    queue = SendQueue()
    queue.restart([seg(1)])
    queue.mark_boundary(5)  # 5 was leased, so not in `pending`, yet it predates the reconnect
    assert not queue.offer(seg(5))
    assert queue.offer(seg(6))


def test_retry_goes_to_the_front_of_its_lane() -> None:
    queue = SendQueue()
    queue.restart([seg(3, B), seg(4, K)])
    queue.retry(seg(1, B))
    assert drain(queue) == [(G, 4), (G, 1), (G, 3)]


def test_backlog_waits_when_not_allowed() -> None:
    queue = SendQueue()
    queue.restart([seg(1)])
    queue.offer(seg(2))
    assert drain(queue, backlog_allowed=False) == [(L, 2)]
    assert queue.has_backlog()
    assert not queue.has_live()


def test_message_counts_follow_the_queue() -> None:
    queue = SendQueue()
    queue.restart([seg(1, count=5), seg(2, K, count=7)])
    queue.offer(seg(3, count=11))
    assert (queue.live_messages, queue.backlog_messages) == (11, 12)
    queue.next_live()
    queue.next_backlog()
    assert (queue.live_messages, queue.backlog_messages) == (0, 5)
    queue.clear()
    assert (queue.live_messages, queue.backlog_messages) == (0, 0)


@pytest.mark.parametrize(
    ("phase", "room", "remaining", "tokens", "size"),
    [
        (Phase.LIVE, 100, 10, 0, 10),  # live ignores the bucket
        (Phase.LIVE, 5, 10, 0, 5),  # but never exceeds the PUBACK window
        (Phase.LIVE, 0, 10, 99, 0),
        (Phase.BACKLOG, 100, 10, 3, 3),
        (Phase.BACKLOG, 2, 10, 3, 2),
        (Phase.BACKLOG, 100, 10, 50, 10),
        (Phase.BACKLOG, 100, 10, 0, 0),
        (Phase.BACKLOG, -5, 10, 10, 0),  # a window shrunk below what is in flight
    ],
)
def test_batch_size(phase: Phase, room: int, remaining: int, tokens: int, size: int) -> None:
    assert batch_size(phase, room, remaining, tokens) == size


def test_recently_spooled_segments_count_as_live_at_restart() -> None:
    """What arrived while the uplink was reconnecting is the present: it goes before the backlog."""
    queue = SendQueue()
    old_keep, old_bulk = Segment(K, 1, 10, 1000, 1_000), Segment(B, 2, 10, 1000, 2_000)
    recent, newest = Segment(B, 3, 10, 1000, 9_000), Segment(K, 4, 10, 1000, 9_500)
    queue.restart([newest, old_bulk, recent, old_keep], live_since_ms=8_000)
    assert (queue.live_messages, queue.backlog_messages, queue.boundary) == (20, 20, 4)
    assert not queue.offer(newest)
    assert queue.offer(seg(5))
    assert drain(queue) == [(L, 3), (L, 4), (L, 5), (G, 1), (G, 2)]
