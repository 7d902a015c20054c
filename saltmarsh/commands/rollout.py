"""A rollout on the master: one op to an explicit list of targets, dispatched, and followed to the end.

In: the targets Salt's matcher resolved (kept with the rollout, so membership cannot drift), the
op and its args, a deadline and the rollout's limits; then, as they come, each target's outcome
(from the sink's command state). Out: which targets to publish next (`due`), within
`max_per_minute` and unless the rollout was aborted or canceled; the summary `saltmarsh cmd
status` prints (the count per state, the oldest pending age, p50 and p95 from send to result).

The master is the durable owner of a command until a gateway holds it: a target stays SENT,
published again, until an outcome from further down arrives (AT_GATEWAY or later): first after
`resend_s`, then after twice as long each time, `RESEND_MAX_S` at the most (`resend_wait_ms`). A
broker that holds the gateway's session already has the copy; the resend is for one that lost
it, and a gateway cut off for five minutes then gets five copies, not ten. The backoff lasts only
while the site is silent: once a hop of the target's site answers for any of the rollout's
targets after this one's last send, the site is reachable again, and the target is sent again
`resend_s` after its last send, as at first, rather than minutes later.
Past its deadline a target that was never published is EXPIRED(hop=cloud), here; so is one
published that no hop answered by the deadline plus the op's run timeout: the cloud broker
drops a command at its message expiry, so a gateway whose uplink stayed cut never got it. That
second verdict is the master's inference, as TIMED_OUT is: a gateway that did take the command
just before its uplink went may still report, and an outcome from further down replaces it.
States only move forward, by the contract's rank rule.

Each target also keeps the terminal state last announced on the master's bus (`announced`,
written by the relay's announcer, saltmarsh.relay.commands): a TIMED_OUT a late result replaces
is announced again, in its new state.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.contract.command import new_cmd_id
from saltmarsh.contract.command_state import CommandState, Hop, Scalar, advances
from saltmarsh.contract.errors import ConfigError
from saltmarsh.runtime.sqlite_wait import execute_waiting

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout         TEXT PRIMARY KEY,
    op              TEXT NOT NULL,
    args            TEXT NOT NULL,
    target          TEXT NOT NULL,
    target_type     TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    not_after_ms    INTEGER NOT NULL,
    run_timeout_s   REAL NOT NULL,
    coalesce_key    TEXT,
    max_per_minute  REAL,
    abort_after_pct REAL,
    abort_min       INTEGER NOT NULL,
    status          TEXT NOT NULL,   -- dispatching, aborted, canceled
    reason          TEXT
);
CREATE TABLE IF NOT EXISTS targets (
    rollout     TEXT NOT NULL,
    device      TEXT NOT NULL,
    site        TEXT NOT NULL,
    minion      TEXT NOT NULL,
    cmd_id      TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    hop         TEXT,
    reason      TEXT,
    sent_ms     INTEGER,
    result_ms   INTEGER,
    PRIMARY KEY (rollout, device)
) WITHOUT ROWID;
"""

# Added after the first stores were made; `_add_columns` gives older stores the column. The
# partial index holds only the targets not yet announced in their present state, so finding the
# rollouts to poll costs nothing once every target is announced.
ANNOUNCED_INDEX = "CREATE INDEX IF NOT EXISTS targets_unannounced ON targets (rollout) WHERE announced IS NOT state"

DISPATCHING, ABORTED, CANCELED = "dispatching", "aborted", "canceled"
FAILURES = frozenset((CommandState.FAILED, CommandState.REJECTED, CommandState.EXPIRED, CommandState.TIMED_OUT))
RESEND_MAX_S = 600.0  # a gateway cut off for hours gets a copy every ten minutes, not every thirty seconds


@dataclass(frozen=True, slots=True)
class Target:
    """One device a rollout goes to: resolved on the master, from its minion's grains."""

    minion: str
    site: str
    device: str


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    rollout: str
    op: str
    args: Mapping[str, Scalar]
    target: str  # as the operator typed it, with its type: kept for `cmd status`
    target_type: str
    created_ms: int
    not_after_ms: int
    run_timeout_s: float
    coalesce: str | None = None
    max_per_minute: float | None = None
    abort_after_pct: float | None = None
    abort_min: int = 10  # results before --abort-after may stop a rollout

    def __post_init__(self) -> None:
        if self.max_per_minute is not None and not self.max_per_minute > 0:
            raise ConfigError("max_per_minute", f"{self.max_per_minute} is not a positive rate")
        if self.abort_after_pct is not None and not 0 < self.abort_after_pct <= 100:
            raise ConfigError("abort_after", f"{self.abort_after_pct} is not a percentage in (0, 100]")
        if self.abort_min < 1:
            raise ConfigError("abort_min", f"{self.abort_min} is below 1")


@dataclass(frozen=True, slots=True)
class Pending:
    """A target to publish now: its own cmd_id, kept across resends."""

    cmd_id: str
    target: Target
    first: bool  # not published before


@dataclass(frozen=True, slots=True)
class Summary:
    rollout: str
    status: str
    targets: int
    counts: Mapping[str, int]
    oldest_pending_s: float | None
    p50_s: float | None
    p95_s: float | None

    @property
    def finished(self) -> bool:
        return sum(n for state, n in self.counts.items() if CommandState(state).terminal) == self.targets


@dataclass(frozen=True, slots=True)
class Unannounced:
    """A target in a terminal state not yet announced on the master's bus."""

    rollout: str
    op: str
    cmd_id: str
    target: Target
    state: CommandState
    hop: str | None
    reason: str | None
    sent_ms: int | None
    result_ms: int | None

    @property
    def send_to_result_s(self) -> float | None:
        if self.sent_ms is None or self.result_ms is None:
            return None
        return max(0, self.result_ms - self.sent_ms) / 1000


def _added_columns() -> tuple[tuple[str, str, str, tuple[str, ...]], ...]:
    """The columns added after the first stores were made: (name, type, how an older store's rows
    are filled, its parameters)."""
    terminal = tuple(s.value for s in CommandState if s.terminal)
    return (
        # Its terminal targets count as announced: an upgrade must not replay a store's history
        # onto the bus for reactors to act on.
        (
            "announced",
            "TEXT",
            f"UPDATE targets SET announced = state WHERE state IN ({', '.join('?' * len(terminal))})",
            terminal,
        ),
        # When each was last published, for the resend; `sent_ms` keeps the first, for the latency.
        ("last_sent_ms", "INTEGER", "UPDATE targets SET last_sent_ms = sent_ms", ()),
        # When a hop of its site last answered for it (any state from a gateway or a device), so
        # that a site heard from again ends the resend backoff of its other targets.
        ("answered_ms", "INTEGER", "UPDATE targets SET answered_ms = result_ms", ()),
    )


def _add_columns(conn: sqlite3.Connection) -> None:
    """Give a store made before them the columns added since."""

    def missing() -> list[tuple[str, str, str, tuple[str, ...]]]:
        present = {row[1] for row in conn.execute("PRAGMA table_info(targets)")}
        return [column for column in _added_columns() if column[0] not in present]

    if missing():
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked again under the write lock: the CLI and the relay may open the store at once.
            for name, kind, fill, params in missing():
                conn.execute(f"ALTER TABLE targets ADD COLUMN {name} {kind}")
                conn.execute(fill, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    conn.execute(ANNOUNCED_INDEX)


def _replaces(stored: CommandState, stored_hop: str | None, incoming: CommandState) -> bool:
    """The rank rule, but for the master's own EXPIRED(hop=cloud): only a guess, like TIMED_OUT,
    that a terminal outcome from further down replaces."""
    if stored is CommandState.EXPIRED and stored_hop == Hop.CLOUD.value:
        return incoming.terminal and incoming is not CommandState.TIMED_OUT
    return advances(stored, incoming)


def _percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest rank, as the benches report it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def resend_wait_ms(first_sent_ms: int, last_sent_ms: int, resend_s: float, max_s: float = RESEND_MAX_S) -> float:
    """How long after its last send a target no hop answered is sent again: `resend_s`, then as long
    as it has been waiting since its first send (so the gaps double), `max_s` at the most."""
    return min(max(resend_s * 1000, last_sent_ms - first_sent_ms), max(resend_s, max_s) * 1000)


def _allowance(max_per_minute: float, first_sent_ms: Sequence[int | None], now_ms: int) -> float:
    """How many more may go now: within the minute's rate, and paced across it, so that
    `--max-per-minute 120` sends 2 a second rather than 120 at once (an abort threshold must
    see results before the whole minute's share is out). Resends do not count: the rate is of
    targets reached."""
    sent = [int(at) for at in first_sent_ms if at is not None]
    last_minute = sum(1 for at in sent if now_ms - at < 60_000)
    window_ms = max(1000.0, 60_000 / max_per_minute)  # one send at least per window
    per_window = max(1, math.floor(max_per_minute * window_ms / 60_000))
    in_window = sum(1 for at in sent if now_ms - at < window_ms)
    return min(max_per_minute - last_minute, per_window - in_window)


# `saltmarsh cmd` and the relay engine share the store on the master.
BUSY_TIMEOUT_S = 5.0


class RolloutStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> RolloutStore:
        """The store in `path` (created if need be); ":memory:" for one that keeps nothing."""
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        execute_waiting(conn, "PRAGMA journal_mode=WAL", BUSY_TIMEOUT_S)
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        _add_columns(conn)
        return cls(conn)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def create(self, spec: RolloutSpec, targets: Sequence[Target]) -> dict[str, str]:
        """Keep the rollout and its explicit targets, each QUEUED with its own cmd_id: device -> cmd_id."""
        devices = [t.device for t in targets]
        if len(set(devices)) != len(devices):
            raise ConfigError("targets", "a device is listed twice")
        ids: dict[str, str] = {}
        with self._write() as conn:
            conn.execute(
                "INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    spec.rollout,
                    spec.op,
                    json.dumps(dict(spec.args), sort_keys=True),
                    spec.target,
                    spec.target_type,
                    spec.created_ms,
                    spec.not_after_ms,
                    spec.run_timeout_s,
                    spec.coalesce,
                    spec.max_per_minute,
                    spec.abort_after_pct,
                    spec.abort_min,
                    DISPATCHING,
                ),
            )
            for target in targets:
                cmd_id = ids[target.device] = new_cmd_id(spec.created_ms)
                conn.execute(
                    "INSERT INTO targets (rollout, device, site, minion, cmd_id, state) VALUES (?, ?, ?, ?, ?, ?)",
                    (spec.rollout, target.device, target.site, target.minion, cmd_id, CommandState.QUEUED.value),
                )
        return ids

    def spec(self, rollout: str) -> RolloutSpec:
        row = self._conn.execute(
            "SELECT rollout, op, args, target, target_type, created_ms, not_after_ms, run_timeout_s, coalesce_key,"
            " max_per_minute, abort_after_pct, abort_min FROM rollouts WHERE rollout = ?",
            (rollout,),
        ).fetchone()
        if row is None:
            raise ConfigError("rollout", f"{rollout!r} is not a rollout on this master")
        name, op, args, target, target_type, created, not_after, timeout, coalesce, rate, pct, minimum = row
        return RolloutSpec(
            name, op, json.loads(args), target, target_type, created, not_after, timeout, coalesce, rate, pct, minimum
        )

    def status(self, rollout: str) -> str:
        row = self._conn.execute("SELECT status FROM rollouts WHERE rollout = ?", (rollout,)).fetchone()
        if row is None:
            raise ConfigError("rollout", f"{rollout!r} is not a rollout on this master")
        return str(row[0])

    def due(self, rollout: str, now_ms: int, *, resend_s: float = 30.0) -> list[Pending]:
        """What to publish now: QUEUED targets within the rate (counted over the last minute), and
        SENT ones no hop has answered since their last send, for `resend_wait_ms`. Past the
        deadline, QUEUED ones are EXPIRED here (hop=cloud) and SENT ones are left to the hops that
        may hold them."""
        spec = self.spec(rollout)
        if self.status(rollout) != DISPATCHING:
            return []
        rows = self._conn.execute(
            "SELECT cmd_id, minion, site, device, state, sent_ms, last_sent_ms, answered_ms FROM targets"
            " WHERE rollout = ? ORDER BY device",
            (rollout,),
        ).fetchall()
        if now_ms >= spec.not_after_ms:
            self._expire_queued(rollout)
            return []
        first_sent = [row[5] for row in rows]
        allowance = math.inf if spec.max_per_minute is None else _allowance(spec.max_per_minute, first_sent, now_ms)
        heard_ms: dict[str, int] = {}
        for row in rows:
            if row[7] is not None:
                heard_ms[row[2]] = max(heard_ms.get(row[2], 0), int(row[7]))
        due: list[Pending] = []
        for cmd_id, minion, site, device, state, first_sent_ms, last_sent_ms, _ in rows:
            target = Target(minion, site, device)
            if state == CommandState.SENT.value and now_ms - int(last_sent_ms) >= (
                resend_s * 1000
                if heard_ms.get(site, 0) > int(last_sent_ms)
                else resend_wait_ms(int(first_sent_ms), int(last_sent_ms), resend_s)
            ):
                due.append(Pending(cmd_id, target, first=False))
            elif state == CommandState.QUEUED.value and allowance >= 1:
                allowance -= 1
                due.append(Pending(cmd_id, target, first=True))
        return due

    def _expire_queued(self, rollout: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE targets SET state = ?, hop = ? WHERE rollout = ? AND state = ?",
                (CommandState.EXPIRED.value, Hop.CLOUD.value, rollout, CommandState.QUEUED.value),
            )

    def mark_sent(self, cmd_ids: Sequence[str], now_ms: int) -> None:
        """Published: SENT from now (a resend keeps its first time, for the latency, and is the
        last one the next resend counts from)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE targets SET state = ?, sent_ms = COALESCE(sent_ms, ?), last_sent_ms = ?"
                " WHERE cmd_id = ? AND state IN (?, ?)",
                [
                    (CommandState.SENT.value, now_ms, now_ms, c, CommandState.QUEUED.value, CommandState.SENT.value)
                    for c in cmd_ids
                ],
            )

    def record(self, rollout: str, outcomes: Mapping[str, tuple[CommandState, str | None, str | None, int]]) -> None:
        """Outcomes from further down, by device: (state, hop, reason, when); only forward."""
        rows = {
            device: (state, hop)
            for device, state, hop in self._conn.execute(
                "SELECT device, state, hop FROM targets WHERE rollout = ?", (rollout,)
            )
        }
        updates = []
        for device, (state, hop, reason, when_ms) in outcomes.items():
            stored = rows.get(device)
            if stored is None or not _replaces(CommandState(stored[0]), stored[1], state):
                continue
            # The cloud's own expiry is no word from the site; anything else came from its gateway or device.
            answered = None if hop == Hop.CLOUD.value else when_ms
            updates.append((state.value, hop, reason, when_ms if state.terminal else None, answered, rollout, device))
        if updates:
            with self._write() as conn:
                conn.executemany(
                    "UPDATE targets SET state = ?, hop = ?, reason = ?, result_ms = ?,"
                    " answered_ms = COALESCE(?, answered_ms) WHERE rollout = ? AND device = ?",
                    updates,
                )
        self._maybe_abort(rollout)

    def _maybe_abort(self, rollout: str) -> None:
        spec = self.spec(rollout)
        if spec.abort_after_pct is None or self.status(rollout) != DISPATCHING:
            return
        states = [
            CommandState(s) for (s,) in self._conn.execute("SELECT state FROM targets WHERE rollout = ?", (rollout,))
        ]
        results = [s for s in states if s.terminal]
        failed = sum(1 for s in results if s in FAILURES)
        if len(results) >= spec.abort_min and 100 * failed / len(results) >= spec.abort_after_pct:
            why = f"{failed} of {len(results)} results failed (abort after {spec.abort_after_pct:g}%)"
            self._stop(rollout, ABORTED, why)

    def time_out(self, rollout: str, now_ms: int) -> int:
        """No result by the deadline plus the op's run timeout: EXPIRED(hop=cloud) where no hop
        ever answered, TIMED_OUT where one did (either replaced by a late outcome from further
        down). Returns how many."""
        spec = self.spec(rollout)
        if now_ms < spec.not_after_ms + spec.run_timeout_s * 1000:
            return 0
        held = tuple(s.value for s in CommandState if not s.terminal and s.rank > CommandState.SENT.rank)
        marks = ", ".join("?" * len(held))
        with self._write() as conn:
            before = conn.total_changes
            conn.execute(
                "UPDATE targets SET state = ?, hop = ?, result_ms = ? WHERE rollout = ? AND state = ?",
                (CommandState.EXPIRED.value, Hop.CLOUD.value, now_ms, rollout, CommandState.SENT.value),
            )
            conn.execute(
                f"UPDATE targets SET state = ?, result_ms = ? WHERE rollout = ? AND state IN ({marks})",
                (CommandState.TIMED_OUT.value, now_ms, rollout, *held),
            )
            return conn.total_changes - before

    def cancel(self, rollout: str) -> int:
        """The operator's cancel: what has not been published is CANCELED; returns how many."""
        return self._stop(rollout, CANCELED, "canceled by the operator")

    def _stop(self, rollout: str, status: str, why: str) -> int:
        with self._write() as conn:
            conn.execute("UPDATE rollouts SET status = ?, reason = ? WHERE rollout = ?", (status, why, rollout))
            before = conn.total_changes
            conn.execute(
                "UPDATE targets SET state = ?, reason = ? WHERE rollout = ? AND state = ?",
                (CommandState.CANCELED.value, status, rollout, CommandState.QUEUED.value),
            )
            return conn.total_changes - before

    def reason(self, rollout: str) -> str | None:
        row = self._conn.execute("SELECT reason FROM rollouts WHERE rollout = ?", (rollout,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def summary(self, rollout: str, now_ms: int) -> Summary:
        status = self.status(rollout)
        rows = self._conn.execute(
            "SELECT state, sent_ms, result_ms FROM targets WHERE rollout = ?", (rollout,)
        ).fetchall()
        counts: dict[str, int] = {}
        pending_since: list[int] = []
        latencies: list[float] = []
        for state, sent_ms, result_ms in rows:
            counts[state] = counts.get(state, 0) + 1
            terminal = CommandState(state).terminal
            if not terminal and sent_ms is not None:
                pending_since.append(int(sent_ms))
            if terminal and sent_ms is not None and result_ms is not None:
                latencies.append(max(0, int(result_ms) - int(sent_ms)) / 1000)
        oldest = None if not pending_since else max(0.0, (now_ms - min(pending_since)) / 1000)
        return Summary(
            rollout, status, len(rows), counts, oldest, _percentile(latencies, 50), _percentile(latencies, 95)
        )

    def targets(self, rollout: str) -> list[tuple[Target, str, str]]:
        """(target, cmd_id, state) for each target, by device."""
        rows = self._conn.execute(
            "SELECT minion, site, device, cmd_id, state FROM targets WHERE rollout = ? ORDER BY device", (rollout,)
        ).fetchall()
        return [(Target(m, s, d), c, st) for m, s, d, c, st in rows]

    def rollouts_to_announce(self) -> list[str]:
        """Rollouts with a target not yet announced in its present state: one still on its way
        (its state is still to collect) or a terminal one (to announce)."""
        rows = self._conn.execute(
            "SELECT DISTINCT rollout FROM targets INDEXED BY targets_unannounced"
            " WHERE announced IS NOT state ORDER BY rollout"
        ).fetchall()
        return [str(rollout) for (rollout,) in rows]

    def unannounced(self, rollout: str) -> list[Unannounced]:
        """The rollout's terminal targets not yet announced in their present state, by device."""
        terminal = tuple(s.value for s in CommandState if s.terminal)
        rows = self._conn.execute(
            "SELECT r.op, t.cmd_id, t.minion, t.site, t.device, t.state, t.hop, t.reason, t.sent_ms, t.result_ms"
            " FROM targets t JOIN rollouts r ON r.rollout = t.rollout"
            f" WHERE t.rollout = ? AND t.announced IS NOT t.state AND t.state IN ({', '.join('?' * len(terminal))})"
            " ORDER BY t.device",
            (rollout, *terminal),
        ).fetchall()
        return [
            Unannounced(rollout, op, cmd_id, Target(minion, site, device), CommandState(state), hop, reason, sent, res)
            for op, cmd_id, minion, site, device, state, hop, reason, sent, res in rows
        ]

    def mark_announced(self, announced: Sequence[Unannounced]) -> None:
        """Announced in the state each was announced in: a target whose state moved on since is
        still unannounced in its new one."""
        if not announced:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE targets SET announced = ? WHERE rollout = ? AND device = ?",
                [(a.state.value, a.rollout, a.target.device) for a in announced],
            )

    def close(self) -> None:
        self._conn.close()
