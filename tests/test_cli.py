"""The CLI verbs that need no fleet: exit codes and what they print."""

from __future__ import annotations

import json
import shutil
import subprocess
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
    assert cli.main(["status", "--status-dir", str(tmp_path / "none")]) == 1


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
