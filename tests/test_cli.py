"""The CLI verbs that need no fleet: exit codes and what they print."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import Channel
from saltmarsh.ops import cli
from saltmarsh.runtime.status import write_status
from saltmarsh.sinks import Delivery, SqliteSink

REPO = Path(__file__).resolve().parent.parent


def _store(db: Path, seqs: list[int]) -> None:
    sink = SqliteSink(db)
    envs = [Envelope(Channel.READING, "d1", "s", "b1", seq, 1_700_000_000_000 + seq, {"t": 1.0}) for seq in seqs]
    sink.write([Delivery(e, received_ms=e.ts_ms) for e in envs], ())
    sink.close()


AUDIT_CASES = [
    # stored seqs, the sensor's last seq, exit code, summary
    ([1, 2, 3], 3, 0, "3 readings, 0 lost, 0 duplicated"),
    ([1, 3], 3, 1, "2 readings, 1 lost, 0 duplicated"),
    ([1, 2], 4, 1, "2 readings, 2 lost, 0 duplicated"),
]


@pytest.mark.parametrize("case", AUDIT_CASES, ids=["clean", "gap", "tail"])
def test_audit_exit_code_follows_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[list[int], int, int, str]
) -> None:
    stored, last_seq, code, summary = case
    db = tmp_path / "sink.db"
    _store(db, stored)
    write_status(tmp_path / "status", "sensor", "d1", {"boot": "b1", "last_seq": last_seq})
    assert cli.main(["audit", "--db", str(db), "--status-dir", str(tmp_path / "status")]) == code
    assert summary in capsys.readouterr().out


def test_audit_needs_exactly_one_source(tmp_path: Path) -> None:
    assert cli.main(["audit"]) == 2


def test_status_lists_every_service_and_json_is_machine_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path, "forwarder", "gw1", {"spool_depth": 12, "oldest_unsent_age_s": 3.5})
    write_status(tmp_path, "ingester", "i1", {"written_total": 40})
    assert cli.main(["status", "--status-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "forwarder-gw1" in out and "spool_depth" in out and "ingester-i1" in out
    assert cli.main(["status", "--status-dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} == {"forwarder-gw1", "ingester-i1"}
    assert {row["state"] for row in rows} == {"live"}  # written by this very process


def test_status_says_stopped_when_the_pid_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"service": "forwarder", "instance": "gw1", "pid": _reaped_pid(), "updated_ms": 0, "counters": {}}
    (tmp_path / "forwarder-gw1.json").write_text(json.dumps(doc))
    assert cli.main(["status", "--status-dir", str(tmp_path)]) == 0
    assert f"forwarder-gw1  pid {doc['pid']}  stopped" in capsys.readouterr().out


def _reaped_pid() -> int:
    """The PID of a child that has exited and been reaped, so no process has it now."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_status_with_no_services_exits_1(tmp_path: Path) -> None:
    assert cli.main(["status", "--status-dir", str(tmp_path)]) == 1


def test_status_names_a_damaged_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path, "ingester", "i1", {"written_total": 40})
    (tmp_path / "forwarder-gw1.json").write_bytes(b"\xff{")
    assert cli.main(["status", "--status-dir", str(tmp_path)]) == 0
    assert f"skipped {tmp_path / 'forwarder-gw1.json'}" in capsys.readouterr().err


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _not_sqlite(path: Path) -> Path:
    path.write_bytes(b"device,boot,seq\n" * 100)
    return path


def _execute(path: Path, statement: str, *params: object) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(statement, params)
    conn.commit()
    conn.close()
    return path


def _other_schema(path: Path) -> Path:
    return _execute(path, "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL)")


def _text_seqs(path: Path) -> Path:
    _store(path, [1])
    return _execute(path, "UPDATE messages SET seq = 'one'")


def _non_utf8_config(path: Path) -> Path:
    path.write_bytes(b'ingester_id = "\xff"\n')
    return path


def _missing(path: Path) -> Path:
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _a_file(path: Path) -> Path:
    path.write_text("x")
    return path


# Files the verb cannot use: exit 2 and a message naming the file, never a traceback or exit 1.
BAD_FILES = [
    ("audit empty db", ["audit", "--db", "{p}"], _empty, "not a saltmarsh sink database"),
    ("audit non-sqlite db", ["audit", "--db", "{p}"], _not_sqlite, "not a saltmarsh sink database"),
    ("audit other schema", ["audit", "--db", "{p}"], _other_schema, "not a saltmarsh sink database"),
    ("audit text seqs", ["audit", "--db", "{p}"], _text_seqs, "cannot audit its stored keys"),
    ("audit missing db", ["audit", "--db", "{p}"], _missing, "no such file"),
    ("audit db is a directory", ["audit", "--db", "{p}"], _directory, "not a file"),
    ("audit missing status dir", ["audit", "--db", "{db}", "--status-dir", "{p}"], _missing, "does not exist"),
    ("audit status dir is a file", ["audit", "--db", "{db}", "--status-dir", "{p}"], _a_file, "is not a directory"),
    ("audit non-utf8 config", ["audit", "--config", "{p}"], _non_utf8_config, "not UTF-8"),
    ("audit missing config", ["audit", "--config", "{p}"], _missing, "cannot read"),
    ("status missing dir", ["status", "--status-dir", "{p}"], _missing, "does not exist"),
    ("status dir is a file", ["status", "--status-dir", "{p}", "--json"], _a_file, "is not a directory"),
    ("es-templates non-utf8 config", ["es-templates", "--config", "{p}"], _non_utf8_config, "not UTF-8"),
    ("es-templates missing config", ["es-templates", "--config", "{p}"], _missing, "cannot read"),
    ("new-site missing pillar dir", ["pillar", "new-site", "x", "--pillar-dir", "{p}"], _missing, "does not exist"),
]


@pytest.mark.parametrize(("argv", "make", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_exit_2_naming_the_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    make: Callable[[Path], Path],
    message: str,
) -> None:
    db = tmp_path / "good.db"
    _store(db, [1, 2])
    path = make(tmp_path / "input")
    assert cli.main([arg.format(p=path, db=db) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


BAD_ARGUMENTS = [
    ("demo zero sensors", ["demo", "--sensors", "0"]),
    ("demo negative rate", ["demo", "--rate", "-1"]),
    ("demo NaN duration", ["demo", "--duration", "nan"]),
    ("demo infinite outage", ["demo", "--outage", "inf"]),
    ("demo text drain rate", ["demo", "--drain-rate", "fast"]),
    ("new-site zero sensors", ["pillar", "new-site", "x", "--sensors", "0"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in BAD_ARGUMENTS], ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_a_forged_seq_is_suspicious_not_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "sink.db"
    _store(db, [1, 2, 3])
    # Written before the contract bounded seq at 2**53-1, or by something else.
    _execute(
        db,
        "INSERT INTO messages SELECT device, boot, ?, site, kind, ts_ms, received_ms, gateway, name, metrics, envelope"
        " FROM messages WHERE seq = 3",
        2**63 - 1,
    )
    assert cli.main(["audit", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "4 readings, 0 lost, 0 duplicated, 1 suspicious seq jump" in out
    assert "suspicious: d1 boot b1 seq 4..9223372036854775806" in out


def test_pillar_new_site_writes_secret_files_readable_by_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pillar = tmp_path / "pillar"
    shutil.copytree(REPO / "pillar", pillar)
    assert cli.main(["pillar", "new-site", "brisbane", "--sensors", "3", "--pillar-dir", str(pillar)]) == 0
    secrets = sorted((pillar / "secrets" / "brisbane").iterdir())
    assert len(secrets) == 5  # forwarder, uplink, three sensors
    assert all(path.stat().st_mode & 0o077 == 0 for path in secrets)
    assert "brisbane" in (pillar / "fleet.yaml").read_text()


def test_pillar_new_site_refuses_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pillar", "new-site", "bad site", "--pillar-dir", str(tmp_path)]) == 2
    assert "'bad site'" in capsys.readouterr().err
