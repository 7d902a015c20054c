"""saltmarsh_svc's per-unit supervisor, against real processes: the unit's settings applied, spawn
failures failing the start, Restart= after a kill, the start limit, and stop's SIGTERM-then-SIGKILL.

Each test writes small units whose ExecStart is /bin/sh or /bin/sleep (the venv's python lives
under /root, which User=nobody cannot execute). Waits poll with generous deadlines: the machine
may be loaded. The `units` fixture stops every unit by PID when the test ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_salt_modules import load_salt_module

svc = load_salt_module("_modules/saltmarsh_svc.py", "saltmarsh_svc_supervisor_under_test")

RESTART_SEC = 0.2
DEADLINE_S = 20.0
# Every main process carries this in its environment, so the finalizer finds what escaped.
MARK = "SALTMARSH_SVC_TEST"
PROBE = (
    """/bin/sh -c 'printf "PROBE|uid=%s|gid=%s|groups=%s|cwd=%s|umask=%s|B=%s|C=%s|D=%s|PATH=%s|USER=%s|HOME=%s\\n" """
    """"$(id -u)" "$(id -g)" "$(id -G)" "$(pwd)" "$(umask)" "$B" "$C" "$D" "$PATH" "$USER" "$HOME"; exec sleep 60'"""
)

running_as_root = pytest.mark.skipif(os.geteuid() != 0, reason="User=/Group= need root")


def wait_for(predicate: Callable[[], Any], timeout_s: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Units:
    tmp: Path
    unit_dir: Path
    state_dir: Path
    names: list[str] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)

    def write(self, name: str, service: str, unit: str = "") -> str:
        # The test's own lines come last: they override these defaults.
        defaults = f"Environment={MARK}={self.tmp}\nRestartSec={RESTART_SEC}\nTimeoutStopSec=2\n"
        (self.unit_dir / f"{name}.service").write_text(f"[Unit]\n{unit}\n[Service]\n{defaults}{service}\n")
        self.names.append(name)
        return name

    def start(self, name: str) -> bool:
        started = bool(svc.start(name))
        self.track(name)
        return started

    def track(self, name: str) -> None:
        """Remember the unit's process group (its supervisor's pid), for the finalizer."""
        if (supervisor := svc.supervisorpid(name)) is not None:
            self.groups.add(supervisor)

    def log(self, name: str) -> str:
        path = self.state_dir / f"{name}.service.log"
        return path.read_text() if path.exists() else ""

    def probe(self, name: str) -> dict[str, str]:
        assert wait_for(lambda: "PROBE|" in self.log(name)), self.log(name)
        line = next(line for line in self.log(name).splitlines() if line.startswith("PROBE|"))
        fields = dict(part.split("=", 1) for part in line.split("|")[1:])
        fields["groups"] = " ".join(sorted(fields["groups"].split(), key=int))
        return fields


def _marked_processes(tmp: Path) -> list[int]:
    marker = f"{MARK}={tmp}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.append(int(entry))
    return pids


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Units]:
    lab = Units(tmp_path, tmp_path / "units", tmp_path / "state")
    lab.unit_dir.mkdir()
    config = {"saltmarsh_svc:unit_dirs": [str(lab.unit_dir)], "saltmarsh_svc:state_dir": str(lab.state_dir)}
    monkeypatch.setattr(svc, "__salt__", {"config.get": config.get}, raising=False)
    try:
        yield lab
    finally:
        for name in lab.names:
            with contextlib.suppress(Exception):
                svc.stop(name)
        for group in lab.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for pid in _marked_processes(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("5s", 5.0),
        ("500ms", 0.5),
        (" 0.25 s ", 0.25),
        ("1min 30s", 90.0),
        ("2h", 7200.0),
        ("100us", 1e-4),
        ("infinity", math.inf),
    ],
)
def test_timespan(value: str, seconds: float) -> None:
    assert svc.parse_timespan(value, "RestartSec") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "fast", "5 parsecs", "-1", "5s later"])
def test_timespan_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="RestartSec"):
        svc.parse_timespan(value, "RestartSec")


@pytest.mark.parametrize(
    ("restart", "returncode", "restarts"),
    [
        ("on-failure", 0, False),
        ("on-failure", 1, True),
        ("on-failure", -signal.SIGKILL, True),
        ("on-failure", -signal.SIGSEGV, True),
        ("on-failure", -signal.SIGTERM, False),
        ("on-failure", -signal.SIGINT, False),
        ("on-failure", -signal.SIGHUP, False),
        ("on-failure", -signal.SIGPIPE, False),
        ("no", 1, False),
        ("no", -signal.SIGKILL, False),
        ("always", 0, True),
        ("always", -signal.SIGTERM, True),
        ("on-success", 0, True),
        ("on-success", 1, False),
        ("on-abnormal", 1, False),
        ("on-abnormal", -signal.SIGKILL, True),
        ("on-abort", -signal.SIGTERM, False),
    ],
)
def test_restart_decision(restart: str, returncode: int, restarts: bool) -> None:
    assert svc.restart_wanted(restart, svc.exit_kind(returncode)) is restarts


@pytest.mark.parametrize(
    ("returncode", "described"),
    [
        (0, "code=exited, status=0/SUCCESS"),
        (1, "code=exited, status=1/FAILURE"),
        (42, "code=exited, status=42"),
        (-signal.SIGKILL, "code=killed, status=9/KILL"),
    ],
)
def test_exit_described_as_systemd_does(returncode: int, described: str) -> None:
    assert svc.describe_exit(returncode) == described


@pytest.mark.parametrize(
    ("interval_s", "burst", "start_times", "allowed"),
    [
        (10.0, 3, [0, 1, 2, 3], [True, True, True, False]),
        (10.0, 3, [0, 1, 2, 11, 12], [True, True, True, True, True]),
        (10.0, 1, [0, 5, 10.5], [True, False, True]),
        (0.0, 3, [0, 0, 0, 0], [True, True, True, True]),
        (10.0, 0, [0, 0, 0], [True, True, True]),
    ],
)
def test_start_limit(interval_s: float, burst: int, start_times: list[float], allowed: list[bool]) -> None:
    limit = svc.StartLimit(interval_s, burst)
    answers = []
    for now in start_times:
        ok, limit = svc.start_allowed(limit, now)
        answers.append(ok)
    assert answers == allowed


def test_unit_spec_reads_both_sections() -> None:
    unit = "[Unit]\nStartLimitIntervalSec=1min\nStartLimitBurst=7\n[Service]\nExecStart=/bin/true\nRestart=always\n"
    dropin = "[Service]\nRestartSec=500ms\nTimeoutStopSec=infinity\nSupplementaryGroups=a b\nSupplementaryGroups=c\n"
    sections = svc.parse_unit([unit, dropin])
    assert sections["Unit"] == {"StartLimitIntervalSec": ["1min"], "StartLimitBurst": ["7"]}
    spec = svc.unit_spec("x.service", sections, "/state", {"PATH": "/bin"})
    assert (spec.restart, spec.restart_sec, spec.timeout_stop_sec) == ("always", 0.5, math.inf)
    assert (spec.start_limit_interval_sec, spec.start_limit_burst) == (60.0, 7)
    assert spec.supplementary_groups == ["a", "b", "c"]
    assert svc.parse_service_section([unit, dropin])["Restart"] == ["always"]


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("Restart=sometimes", "Restart='sometimes'"),
        ("RestartSec=soon", "RestartSec='soon'"),
        ("TimeoutStopSec=5 fortnights", "TimeoutStopSec"),
        ("UMask=rwx", "UMask='rwx'"),
    ],
)
def test_unit_spec_names_the_bad_key(service: str, message: str) -> None:
    sections = svc.parse_unit([f"[Service]\nExecStart=/bin/true\n{service}\n"])
    with pytest.raises(ValueError, match=message):
        svc.unit_spec("x.service", sections, "/state", {})


# -- real processes ---------------------------------------------------------------------------


SETTINGS_CASES = [
    pytest.param(
        'Environment="B=two words" C=3\nEnvironmentFile=-/nonexistent/env\nEnvironmentFile={tmp}/env',
        {"B": "two words", "C": "from-file", "D": "quoted value", "PATH": svc.SYSTEMD_PATH, "USER": ""},
        id="environment-and-files",
    ),
    pytest.param("", {"cwd": "/", "umask": "0022", "USER": ""}, id="defaults"),
    pytest.param("WorkingDirectory={tmp}\nUMask=0027", {"cwd": "{tmp}", "umask": "0027"}, id="directory-and-umask"),
    pytest.param(
        "User=nobody",
        {"uid": "65534", "gid": "65534", "groups": "65534", "USER": "nobody", "HOME": "/nonexistent"},
        id="user",
        marks=running_as_root,
    ),
    pytest.param(
        "User=nobody\nGroup=dialout\nSupplementaryGroups=nogroup",
        {"uid": "65534", "gid": "20", "groups": "20 65534"},
        id="user-group-supplementary",
        marks=running_as_root,
    ),
]


@pytest.mark.parametrize(("service", "expected"), SETTINGS_CASES)
def test_unit_runs_with_its_settings(units: Units, service: str, expected: dict[str, str]) -> None:
    (units.tmp / "env").write_text('# comment\nC=from-file\nD="quoted value"\n')
    name = units.write("probe", f"ExecStart={PROBE}\n{service.format(tmp=units.tmp)}")
    assert units.start(name), units.log(name)
    probe = units.probe(name)
    assert {key: probe[key] for key in expected} == {key: v.format(tmp=units.tmp) for key, v in expected.items()}


@pytest.mark.parametrize(
    ("service", "logged"),
    [
        pytest.param("ExecStart=/bin/sleep 60\nUser=saltmarsh-no-such-user", "status=217/USER", id="unknown-user"),
        pytest.param("ExecStart=/bin/sleep 60\nGroup=saltmarsh-no-such-group", "status=216/GROUP", id="unknown-group"),
        pytest.param("ExecStart=/bin/sleep 60\nWorkingDirectory=/nonexistent/dir", "status=200/CHDIR", id="no-dir"),
        pytest.param("ExecStart=/nonexistent/binary", "status=203/EXEC", id="no-binary"),
        pytest.param(
            "ExecStart=/bin/sleep 60\nEnvironmentFile=/nonexistent/env", "result 'resources'", id="no-env-file"
        ),
        pytest.param("ExecStart=/bin/sh -c 'exit 3'", "code=exited, status=3", id="exits-at-once"),
        pytest.param("ExecStart=/bin/sh -c 'kill -SEGV $$'", "code=killed, status=11/SEGV", id="crashes-at-once"),
    ],
)
def test_a_failed_first_start_fails_and_leaves_nothing(units: Units, service: str, logged: str) -> None:
    # Restart=on-failure would retry in the background under systemd: here the state fails, and
    # nothing is left running.
    name = units.write("broken", f"{service}\nRestart=on-failure")
    assert units.start(name) is False
    log = units.log(name)
    assert logged in log and "start failed" in log, log
    assert (svc.status(name), svc.mainpid(name), svc.supervisorpid(name)) == (False, None, None)


@pytest.mark.parametrize(
    ("restart", "signo", "restarts"),
    [
        ("on-failure", signal.SIGKILL, True),
        ("no", signal.SIGKILL, False),
        ("on-failure", signal.SIGTERM, False),
        ("always", signal.SIGTERM, True),
    ],
)
def test_main_process_killed(units: Units, restart: str, signo: int, restarts: bool) -> None:
    name = units.write("sleeper", f"ExecStart=/bin/sleep 60\nRestart={restart}")
    assert units.start(name), units.log(name)
    first, supervisor = svc.mainpid(name), svc.supervisorpid(name)
    assert first is not None and supervisor is not None
    killed_at = time.monotonic()
    os.kill(first, signo)
    if restarts:
        assert wait_for(lambda: svc.mainpid(name) not in (None, first)), units.log(name)
        assert time.monotonic() - killed_at >= RESTART_SEC
        assert not alive(first) and svc.supervisorpid(name) == supervisor
        assert f"restarting in {RESTART_SEC:g} s" in units.log(name)
    else:
        assert wait_for(lambda: svc.supervisorpid(name) is None), units.log(name)
        assert (svc.status(name), svc.mainpid(name)) == (False, None)
        assert "not restarting" in units.log(name)


def test_a_kill_from_outside_during_the_start_is_left_to_restart(units: Units) -> None:
    # A chaos run's (or the OOM killer's) kill -9 right after a reactor's restart is no bad config:
    # the start succeeds and Restart=on-failure brings the unit back, as under systemd.
    marker = units.tmp / "killed-once"
    script = f"if [ ! -e {marker} ]; then touch {marker}; kill -9 $$; fi; exec sleep 60"
    name = units.write("killed-at-start", f"ExecStart=/bin/sh -c '{script}'\nRestart=on-failure")
    assert units.start(name) is True, units.log(name)
    assert wait_for(lambda: svc.mainpid(name) is not None), units.log(name)
    log = units.log(name)
    assert "code=killed, status=9/KILL" in log and "left to Restart=" in log and "start failed" not in log, log


def test_start_limit_gives_up(units: Units) -> None:
    # The first run lives (start() must succeed); every later one crashes at once.
    marker = units.tmp / "ran-once"
    script = f"if [ -e {marker} ]; then exit 1; fi; touch {marker}; exec sleep 60"
    name = units.write(
        "crasher",
        f"ExecStart=/bin/sh -c '{script}'\nRestart=on-failure",
        unit="StartLimitIntervalSec=60\nStartLimitBurst=3",
    )
    assert units.start(name), units.log(name)
    first = svc.mainpid(name)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: svc.supervisorpid(name) is None), units.log(name)
    log = units.log(name)
    assert "start limit hit" in log and log.count("started main process") == 3, log
    assert (svc.status(name), svc.mainpid(name)) == (False, None)


def test_killing_the_supervisor_group_leaves_the_unit_dead(units: Units) -> None:
    name = units.write("given-up", "ExecStart=/bin/sleep 60\nRestart=always")
    assert units.start(name), units.log(name)
    main, supervisor = svc.mainpid(name), svc.supervisorpid(name)
    assert main is not None and supervisor is not None
    os.killpg(supervisor, signal.SIGKILL)
    assert wait_for(lambda: not alive(main) and not alive(supervisor))
    assert (svc.status(name), svc.mainpid(name), svc.supervisorpid(name)) == (False, None, None)
    assert units.start(name), units.log(name)  # a fresh start works, as after reset-failed


STUBBORN_MAIN = "trap '' TERM\necho $$ > {tmp}/stubborn.pid\nexec sleep 60\n"
STUBBORN_CHILD = "/bin/sh -c \"trap '' TERM; echo \\$\\$ > {tmp}/stubborn.pid; exec sleep 60\" &\nwait\n"


@pytest.mark.parametrize("script", [STUBBORN_MAIN, STUBBORN_CHILD], ids=["main-ignores-term", "child-ignores-term"])
def test_stop_kills_what_ignores_sigterm_and_never_restarts(units: Units, script: str) -> None:
    (units.tmp / "stubborn.sh").write_text(script.format(tmp=units.tmp))
    name = units.write("stubborn", f"ExecStart=/bin/sh {units.tmp}/stubborn.sh\nRestart=always\nTimeoutStopSec=1")
    assert units.start(name), units.log(name)
    pid_file = units.tmp / "stubborn.pid"
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    stubborn = int(pid_file.read_text())
    stopping_at = time.monotonic()
    assert svc.stop(name)
    assert time.monotonic() - stopping_at >= 0.9  # TimeoutStopSec=1, less the clock's jitter
    assert wait_for(lambda: not alive(stubborn))
    log = units.log(name)
    assert "sending SIGKILL" in log and log.rstrip().endswith("stopped") and "restarting" not in log, log
    assert (svc.status(name), svc.mainpid(name), svc.supervisorpid(name)) == (False, None, None)


def test_start_is_idempotent_and_restart_replaces_the_main_process(units: Units) -> None:
    name = units.write("steady", "ExecStart=/bin/sleep 60\nRestart=on-failure")
    assert units.start(name)
    first, supervisor = svc.mainpid(name), svc.supervisorpid(name)
    assert units.start(name) and (svc.mainpid(name), svc.supervisorpid(name)) == (first, supervisor)
    assert svc.get_running() == [name]
    assert svc.restart(name)
    units.track(name)
    assert svc.mainpid(name) not in (None, first) and first is not None and not alive(first)
    assert (units.state_dir / f"{name}.service.pid").read_text().split()[0] == str(svc.mainpid(name))
