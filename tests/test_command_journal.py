"""The device's command journal: at most one run per cmd_id, across duplicates, restarts and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.commands.journal import (
    DEFAULT_PRUNE_MARGIN_MS,
    INTERRUPTED_RESULT,
    Begin,
    CommandJournal,
    Decision,
    JournalEntry,
)
from saltmarsh.contract.errors import JournalError
from tests import command_journal_crash as crash

CMD = "01J9Z3M4X6QK8V2B7N5T0R1WYA"  # a ULID
OP = "set_interval"
NOT_AFTER_MS = 5_000
NOW_MS = 1_000
DONE: Mapping[str, Any] = {"state": "SUCCEEDED", "detail": {"interval_s": 30}}
OTHER: Mapping[str, Any] = {"state": "FAILED", "reason": "late second result"}
FAILED_INTERRUPTED = dict(INTERRUPTED_RESULT)
RUN = Begin(Decision.RUN, None)
RUNNING = Begin(Decision.RUNNING, None)
CACHED_DONE = Begin(Decision.CACHED, DONE)
CACHED_FAILED = Begin(Decision.CACHED, FAILED_INTERRUPTED)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "commands" / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[CommandJournal]:
    opened = CommandJournal.open(path)
    yield opened
    opened.close()


def totals(journal: CommandJournal) -> tuple[int, int]:
    counters = journal.counters()
    return counters["duplicates_total"], counters["interrupted_total"]


@dataclass(frozen=True)
class Case:
    name: str
    # Steps before the begin under test: "begin" (as idempotent as the case), "begin idempotent",
    # "begin not idempotent", "finish" (with DONE), "restart" (close and reopen without finishing:
    # what the next process sees; the real kill -9 is below).
    history: tuple[str, ...]
    idempotent: bool
    expected: Begin
    duplicates: int
    interrupted: int


CASES = [
    Case("new", (), False, RUN, 0, 0),
    Case("new, idempotent", (), True, RUN, 0, 0),
    Case("finished", ("begin", "finish"), False, CACHED_DONE, 1, 0),
    Case("finished, idempotent: never again either", ("begin", "finish"), True, CACHED_DONE, 1, 0),
    Case("finished, then restarted", ("begin", "finish", "restart"), False, CACHED_DONE, 1, 0),
    Case("running in this process", ("begin",), False, RUNNING, 1, 0),
    Case("running in this process, idempotent", ("begin",), True, RUNNING, 1, 0),
    Case("interrupted", ("begin", "restart"), False, CACHED_FAILED, 0, 1),
    Case("interrupted, idempotent", ("begin", "restart"), True, RUN, 0, 1),
    Case("interrupted, asked again", ("begin", "restart", "begin"), False, CACHED_FAILED, 1, 1),
    Case("interrupted, asked after a restart", ("begin", "restart", "begin", "restart"), False, CACHED_FAILED, 1, 1),
    Case("interrupted twice, idempotent", ("begin", "restart", "begin", "restart"), True, RUN, 0, 2),
    Case("interrupted, idempotent, rerun finished", ("begin", "restart", "begin", "finish"), True, CACHED_DONE, 1, 1),
    Case("idempotent now, not when first run", ("begin not idempotent", "restart"), True, CACHED_FAILED, 0, 1),
    Case("idempotent when first run, not now", ("begin idempotent", "restart"), False, CACHED_FAILED, 0, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision(path: Path, case: Case) -> None:
    journal = CommandJournal.open(path)
    try:
        for step in case.history:
            if step == "finish":
                journal.finish(CMD, DONE, NOW_MS + 2)
            elif step == "restart":
                journal.close()
                journal = CommandJournal.open(path)
            else:
                idempotent = {"begin": case.idempotent, "begin idempotent": True, "begin not idempotent": False}[step]
                journal.begin(CMD, OP, idempotent, NOT_AFTER_MS, NOW_MS + 1)
        assert journal.begin(CMD, OP, case.idempotent, NOT_AFTER_MS, NOW_MS + 3) == case.expected
        assert totals(journal) == (case.duplicates, case.interrupted)
        entry = journal.lookup(CMD)
        assert entry is not None
        assert entry.result == case.expected.result
        assert entry.intent_ms == NOW_MS + (1 if case.history else 3), "intent_ms is the first begin's"
    finally:
        journal.close()


def test_the_interrupted_result_is_recorded_when_it_is_decided(journal: CommandJournal, path: Path) -> None:
    journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    journal.close()
    reopened = CommandJournal.open(path)
    try:
        reopened.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS + 7)
        assert reopened.lookup(CMD) == JournalEntry(
            CMD, OP, False, NOT_AFTER_MS, NOW_MS, FAILED_INTERRUPTED, NOW_MS + 7
        )
    finally:
        reopened.close()


FINISH_CASES = {
    # name: (history before the two finishes, what both finishes return)
    "second result is ignored": ((), DONE),
    "a late result after FAILED(interrupted)": (("restart", "begin"), FAILED_INTERRUPTED),
}


@pytest.mark.parametrize("case", sorted(FINISH_CASES))
def test_first_result_wins(path: Path, case: str) -> None:
    history, kept = FINISH_CASES[case]
    journal = CommandJournal.open(path)
    try:
        journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
        for step in history:
            if step == "restart":
                journal.close()
                journal = CommandJournal.open(path)
            else:
                journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS + 1)
        assert journal.finish(CMD, DONE, NOW_MS + 2) == kept
        assert journal.finish(CMD, OTHER, NOW_MS + 3) == kept
        entry = journal.lookup(CMD)
        assert entry is not None
        assert entry.result == kept
        assert entry.result_ms == (NOW_MS + 1 if history else NOW_MS + 2)
        assert journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS + 4) == Begin(Decision.CACHED, kept)
    finally:
        journal.close()


def test_finish_returns_the_result_as_stored(journal: CommandJournal) -> None:
    journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    stored = journal.finish(CMD, {"state": "SUCCEEDED", "values": (1, 2.5, None), "nested": {"ok": True}}, NOW_MS)
    assert stored == {"state": "SUCCEEDED", "values": [1, 2.5, None], "nested": {"ok": True}}
    assert journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS) == Begin(Decision.CACHED, stored)


def test_a_running_duplicate_gets_the_result_once_it_is_finished(journal: CommandJournal) -> None:
    assert journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS) == RUN
    assert journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS).decision is Decision.RUNNING
    journal.finish(CMD, DONE, NOW_MS)
    assert journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS) == Begin(Decision.CACHED, DONE)
    assert journal.counters()["running"] == 0


def test_concurrent_deliveries_run_once(journal: CommandJournal) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    decisions: list[Decision] = []

    def deliver() -> None:
        barrier.wait()
        decisions.append(journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS).decision)

    workers = [threading.Thread(target=deliver) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(decisions) == sorted([Decision.RUN] + [Decision.RUNNING] * (threads - 1))


PRUNE_CASES = {
    # name: (margin_ms or None for the default, now_ms, pruned)
    "before the deadline": (100, NOT_AFTER_MS - 1, False),
    "within the margin": (100, NOT_AFTER_MS + 99, False),
    "at deadline plus margin: kept": (100, NOT_AFTER_MS + 100, False),
    "one ms past deadline plus margin": (100, NOT_AFTER_MS + 101, True),
    "no margin, at the deadline": (0, NOT_AFTER_MS, False),
    "no margin, past the deadline": (0, NOT_AFTER_MS + 1, True),
    "default margin, at its end": (None, NOT_AFTER_MS + DEFAULT_PRUNE_MARGIN_MS, False),
    "default margin, past its end": (None, NOT_AFTER_MS + DEFAULT_PRUNE_MARGIN_MS + 1, True),
}


@pytest.mark.parametrize("case", sorted(PRUNE_CASES))
@pytest.mark.parametrize("finished", [True, False], ids=["finished", "left by a crash"])
def test_prune_boundaries(path: Path, case: str, finished: bool) -> None:
    margin_ms, now_ms, pruned = PRUNE_CASES[case]
    journal = CommandJournal.open(path)
    try:
        journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
        journal.begin("later", OP, False, NOT_AFTER_MS + DEFAULT_PRUNE_MARGIN_MS + 2, NOW_MS)
        if finished:
            journal.finish(CMD, DONE, NOW_MS)
        journal.close()
        journal = CommandJournal.open(path)
        margin = {} if margin_ms is None else {"margin_ms": margin_ms}
        assert journal.prune(now_ms, **margin) == int(pruned)
        assert (journal.lookup(CMD) is None) is pruned
        assert journal.lookup("later") is not None
        assert journal.counters()["pruned_total"] == int(pruned)
    finally:
        journal.close()


def test_prune_keeps_what_this_process_is_running(journal: CommandJournal) -> None:
    journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    assert journal.prune(NOT_AFTER_MS + 10, margin_ms=0) == 0
    assert journal.finish(CMD, DONE, NOT_AFTER_MS + 11) == DONE
    assert journal.prune(NOT_AFTER_MS + 12, margin_ms=0) == 1


def test_counters_and_everything_survive_a_reopen(path: Path) -> None:
    journal = CommandJournal.open(path)
    for n in range(5):
        journal.begin(f"c{n}", OP, n % 2 == 0, NOT_AFTER_MS + n, NOW_MS + n)
    for n in (0, 1):
        journal.finish(f"c{n}", {"state": "SUCCEEDED", "n": n}, NOW_MS + 10)
    journal.begin("c0", OP, True, NOT_AFTER_MS, NOW_MS + 11)  # duplicate of a finished one
    journal.begin("c2", OP, True, NOT_AFTER_MS + 2, NOW_MS + 11)  # duplicate of a running one
    assert journal.prune(NOT_AFTER_MS + 1, margin_ms=0) == 1  # c0; c1 is finished, at its deadline
    expected = {"entries": 4, "running": 3, "duplicates_total": 2, "interrupted_total": 0, "pruned_total": 1}
    assert journal.counters() == expected
    before = [journal.lookup(f"c{n}") for n in range(5)]
    journal.close()

    journal = CommandJournal.open(path)
    try:
        assert journal.counters() == expected, "running: left by the process that closed, until asked again"
        assert [journal.lookup(f"c{n}") for n in range(5)] == before
        assert before[0] is None
        assert before[1] == JournalEntry(
            "c1", OP, False, NOT_AFTER_MS + 1, NOW_MS + 1, {"state": "SUCCEEDED", "n": 1}, NOW_MS + 10
        )
        journal.begin("c3", OP, False, NOT_AFTER_MS, NOW_MS + 20)
        journal.begin("c4", OP, True, NOT_AFTER_MS, NOW_MS + 20)
        assert journal.counters() == expected | {"running": 2, "interrupted_total": 2}
    finally:
        journal.close()


def _duplicates_on_disk(path: Path) -> int:
    con = sqlite3.connect(path)  # a second reader: WAL lets it read while the journal is open
    try:
        row = con.execute("SELECT value FROM journal_counter WHERE name = 'duplicates_total'").fetchone()
    finally:
        con.close()
    return 0 if row is None else int(row[0])


def test_a_duplicate_writes_nothing_and_is_counted_with_the_next_write(path: Path) -> None:
    journal = CommandJournal.open(path)
    try:
        journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
        journal.finish(CMD, DONE, NOW_MS)
        for _ in range(3):
            journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
        assert (journal.counters()["duplicates_total"], _duplicates_on_disk(path)) == (3, 0)
        journal.begin("next", OP, False, NOT_AFTER_MS, NOW_MS)
        assert (journal.counters()["duplicates_total"], _duplicates_on_disk(path)) == (3, 3)
        journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    finally:
        journal.close()
    assert _duplicates_on_disk(path) == 4, "close writes what no write has carried yet"


GOOD_BEGIN: dict[str, Any] = {
    "cmd_id": CMD,
    "op": OP,
    "idempotent": False,
    "not_after_ms": NOT_AFTER_MS,
    "now_ms": NOW_MS,
}
BAD_BEGIN = [
    ("empty cmd_id", {"cmd_id": ""}, ValueError, "cmd_id is empty"),
    ("cmd_id not a str", {"cmd_id": 42}, TypeError, "cmd_id must be a str, not int"),
    ("cmd_id bytes", {"cmd_id": CMD.encode()}, TypeError, "cmd_id must be a str, not bytes"),
    ("cmd_id too long", {"cmd_id": "x" * 257}, ValueError, "cmd_id has 257 characters"),
    ("cmd_id with a newline", {"cmd_id": "a\nb"}, ValueError, "cmd_id 'a\\nb' holds unprintable"),
    ("cmd_id lone surrogate", {"cmd_id": "a\ud800"}, ValueError, "cmd_id 'a\\ud800' holds unprintable"),
    ("empty op", {"op": ""}, ValueError, "op is empty"),
    ("op None", {"op": None}, TypeError, "op must be a str, not NoneType"),
    ("idempotent as int", {"idempotent": 1}, TypeError, "idempotent must be a bool, not int"),
    ("idempotent as str", {"idempotent": "yes"}, TypeError, "idempotent must be a bool, not str"),
    ("not_after_ms as float", {"not_after_ms": 5.0}, TypeError, "not_after_ms must be an int (ms), not float"),
    ("not_after_ms as bool", {"not_after_ms": True}, TypeError, "not_after_ms must be an int (ms), not bool"),
    ("not_after_ms negative", {"not_after_ms": -1}, ValueError, "not_after_ms is -1, below 0"),
    ("now_ms as str", {"now_ms": "1000"}, TypeError, "now_ms must be an int (ms), not str"),
    ("now_ms None", {"now_ms": None}, TypeError, "now_ms must be an int (ms), not NoneType"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), [c[1:] for c in BAD_BEGIN], ids=[c[0] for c in BAD_BEGIN])
def test_begin_rejects(
    journal: CommandJournal, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        journal.begin(**(GOOD_BEGIN | overrides))
    assert message in str(raised.value)
    assert journal.counters()["entries"] == 0


GOOD_FINISH: dict[str, Any] = {"cmd_id": CMD, "result": DONE, "now_ms": NOW_MS}
BAD_FINISH = [
    ("empty cmd_id", {"cmd_id": ""}, ValueError, "cmd_id is empty"),
    ("result a list", {"result": [1, 2]}, TypeError, "result must be a mapping, not list"),
    ("result a str", {"result": "SUCCEEDED"}, TypeError, "result must be a mapping, not str"),
    ("result None", {"result": None}, TypeError, "result must be a mapping, not NoneType"),
    ("NaN", {"result": {"state": "SUCCEEDED", "t": float("nan")}}, ValueError, "result['t'] is nan: JSON has no NaN"),
    ("infinity deep", {"result": {"a": [1, {"b": float("inf")}]}}, ValueError, "result['a'][1]['b'] is inf"),
    ("int key", {"result": {1: "x"}}, TypeError, "result has the key 1 of type int: JSON keys are str"),
    ("nested tuple key", {"result": {"a": {(1, 2): "x"}}}, TypeError, "result['a'] has the key (1, 2) of type tuple"),
    ("a set", {"result": {"ids": {1, 2}}}, TypeError, "result['ids'] is a set, which JSON cannot carry"),
    ("bytes", {"result": {"raw": b"\x00"}}, TypeError, "result['raw'] is a bytes, which JSON cannot carry"),
    ("an object", {"result": {"when": object()}}, TypeError, "result['when'] is a object, which JSON cannot carry"),
    ("now_ms negative", {"now_ms": -5}, ValueError, "now_ms is -5, below 0"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), [c[1:] for c in BAD_FINISH], ids=[c[0] for c in BAD_FINISH])
def test_finish_rejects(
    journal: CommandJournal, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    with pytest.raises(error) as raised:
        journal.finish(**(GOOD_FINISH | overrides))
    assert message in str(raised.value)
    assert journal.counters()["running"] == 1, "nothing recorded"


def test_finish_without_intent_and_a_self_holding_result(journal: CommandJournal) -> None:
    with pytest.raises(JournalError, match="finish 'never-begun': no intent was recorded"):
        journal.finish("never-begun", DONE, NOW_MS)
    journal.begin(CMD, OP, False, NOT_AFTER_MS, NOW_MS)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="result is nested too deeply, or holds itself"):
        journal.finish(CMD, loop, NOW_MS)


def test_prune_rejects(journal: CommandJournal) -> None:
    with pytest.raises(ValueError, match="margin_ms is -1, below 0"):
        journal.prune(NOW_MS, margin_ms=-1)
    with pytest.raises(TypeError, match="now_ms must be an int"):
        journal.prune(float(NOW_MS))  # type: ignore[arg-type]


def test_open_creates_parents_in_wal_mode(path: Path) -> None:
    CommandJournal.open(path).close()
    assert path.is_file()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        con.close()


def _garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database " * 200)


def _damaged_page(path: Path) -> None:
    journal = CommandJournal.open(path)
    for n in range(300):
        journal.begin(f"cmd-{n:04d}", OP, False, NOT_AFTER_MS, NOW_MS)
    journal.close()
    with path.open("r+b") as f:  # page 3 of 4 KiB, within the table's b-tree
        f.seek(2 * 4096)
        f.write(b"\xa5" * 4096)


def _newer_schema(path: Path) -> None:
    CommandJournal.open(path).close()
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA user_version=99")
    finally:
        con.close()


UNOPENABLE = {
    "not a database": (_garbage, "is unreadable (DatabaseError: file is not a database)"),
    "a damaged page": (_damaged_page, "is unreadable"),
    "a newer schema": (_newer_schema, "schema version 99 is newer than this saltmarsh's 1"),
}


@pytest.mark.parametrize("case", sorted(UNOPENABLE))
def test_open_refuses_and_leaves_the_file_in_place(path: Path, case: str) -> None:
    spoil, message = UNOPENABLE[case]
    spoil(path)
    before = path.read_bytes()
    with pytest.raises(JournalError) as raised:
        CommandJournal.open(path)
    assert f"command journal {path}" in str(raised.value)
    assert message in str(raised.value)
    assert path.read_bytes() == before, "the file is left for an operator, not moved or rewritten"
    assert sorted(p.name for p in path.parent.iterdir()) == ["journal.db", "journal.db.lock"]
    CommandJournal.open(path.with_name("other.db")).close()  # the lock was released with the failure


def test_one_process_at_a_time_and_closed_is_closed(path: Path) -> None:
    journal = CommandJournal.open(path)
    with pytest.raises(JournalError, match=r"in use by another process \(.*journal.db.lock is locked\)"):
        CommandJournal.open(path)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="lookup 'x': the journal is closed"):
        journal.lookup("x")
    CommandJournal.open(path).close()


KILL_CASES = {
    # name: (idempotent, where it is killed, what the next process's begin gets)
    "after intent, not idempotent": (False, "intent", Begin(Decision.CACHED, FAILED_INTERRUPTED)),
    "after intent, idempotent": (True, "intent", RUN),
    "after result, not idempotent": (False, "result", Begin(Decision.CACHED, crash.RESULT)),
    "after result, idempotent": (True, "result", Begin(Decision.CACHED, crash.RESULT)),
}


@pytest.mark.parametrize("case", sorted(KILL_CASES))
def test_kill_9(path: Path, case: str) -> None:
    idempotent, stop, expected = KILL_CASES[case]
    helper = Path(crash.__file__)
    proc = subprocess.Popen(
        [sys.executable, str(helper), str(path), CMD, OP, "1" if idempotent else "0", stop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == f"{stop}\n", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    journal = CommandJournal.open(path)
    try:
        now = crash.NOW_MS + 10
        assert journal.begin(CMD, OP, idempotent, crash.NOT_AFTER_MS, now) == expected
        if expected.decision is Decision.CACHED:
            assert journal.begin(CMD, OP, idempotent, crash.NOT_AFTER_MS, now + 1) == expected, "the same, every time"
        else:
            assert journal.finish(CMD, DONE, now + 1) == DONE
        entry = journal.lookup(CMD)
        assert entry is not None
        assert entry.intent_ms == crash.NOW_MS
    finally:
        journal.close()
