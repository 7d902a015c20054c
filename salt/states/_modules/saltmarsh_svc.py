"""Salt execution module: the `service` interface over plain processes, for machines without systemd.

A minion configured with

    providers:
      service: saltmarsh_svc
    saltmarsh_svc:
      unit_dirs: [/srv/sandbox/etc/systemd/system]   # where the formula wrote its units
      state_dir: /srv/sandbox/var/lib/saltmarsh-svc  # pid files, logs, "enabled" markers

runs each unit the way systemd would run a `Type=simple` service, so that Salt's `service.running`
/ `service.dead` states work unchanged in tests, containers and the lab, and a unit that is wrong
fails there as it would under systemd.

`start(name)` launches one supervisor per unit: this same file run as a script (`python -I
saltmarsh_svc.py supervise`, the unit's settings as JSON on stdin: Salt syncs only this file to
a minion, so it imports nothing but the standard library). The supervisor runs in its own session;
its process group stands in for the unit's cgroup: the main process and everything it forks
(unless they call setsid) belong to it. It emulates:

- `ExecStart=`: the last one after drop-ins (`<unit>.service.d/*.conf`; an empty `ExecStart=`
  resets, as in systemd), its `-@+!:` prefixes stripped;
- the environment systemd gives a service: `PATH` (systemd's), the minion's `LANG`/`LC_*`,
  `USER`/`LOGNAME`/`HOME`/`SHELL` when `User=` is set, then `Environment=`, then
  `EnvironmentFile=` (`-` prefix: optional), which wins, as in systemd;
- `WorkingDirectory=` (`-` prefix, `~`; `/` when unset, as in systemd) and `UMask=` (0022);
- `User=`, `Group=`, `SupplementaryGroups=` when the minion runs as root (the user's groups from
  /etc/group are added, as initgroups does). A user or group that does not exist fails the
  start with systemd's `status=217/USER` / `216/GROUP`; not as root, only the minion's own
  user and groups can be asked for;
- `Restart=` (no, on-success, on-failure, on-abnormal, on-abort, always; a clean exit is status 0
  or SIGHUP/SIGINT/SIGTERM/SIGPIPE), `RestartSec=` (default 100ms), and `[Unit]`
  `StartLimitIntervalSec=` / `StartLimitBurst=` (default 10 s, 5): when a start would be the
  Burst+1th within the interval the supervisor logs "start limit hit" and exits: the unit is
  failed. A start() after that begins a fresh count, as `reset-failed` + `start` would;
- stopping: SIGTERM (and SIGCONT) to every process of the group, SIGKILL to those left after
  `TimeoutStopSec=` (default 90 s, `infinity` waits forever), and the same when the main process
  exits on its own (systemd's `KillMode=control-group`). A stop never triggers a restart.

Files in `state_dir`, per unit (`<unit>` is e.g. `mosquitto.service`), written atomically:

- `<unit>.pid`: "<main pid> <start time>" (field 22 of /proc/<pid>/stat: a recycled pid does not
  match it), present while the main process runs. `status()` is "that process is alive", and
  `mainpid()` returns it. An outside tool may `kill -9` it: with `Restart=on-failure` the
  supervisor starts a new main process after `RestartSec=`;
- `<unit>.supervisor`: "<supervisor pid> <start time>", present while the supervisor runs
  (`supervisorpid()`). Its pid is also the unit's process group: `kill -9 -<pid>` kills the unit
  and its supervisor at once, as a unit systemd gave up on (status() False, nothing restarts it).
  The main process is not a group leader: `kill -<main pid>` finds no group;
- `<unit>.log`: the main process's stdout and stderr, and one line per supervisor decision
  (started pid, exited status, restarting in N s, start limit hit, stopping, stopped);
- `<unit>.exit`: "<pid> <start time> <returncode>" of the last main process that exited;
- `<unit>.enabled`: the "enabled" marker; `<unit>.lock`: serialises start() and stop().

start() returns once `<unit>.pid` exists, and returns False (leaving nothing running) when the
first main process cannot be spawned or exits or crashes within START_GRACE_S: a bad config must
fail the state. Under systemd such a unit would go on restarting in the background until its
start limit. A first main process killed from outside in that time (SIGKILL, or a clean stop
signal: a chaos test, an operator, the OOM killer) is no bad config: start() succeeds and
Restart= decides, as under systemd.

Not emulated: `Type=` other than simple (no readiness: notify, forking and oneshot behave as
simple), `ExecStartPre=`/`ExecStartPost=`/`ExecStop=`/`ExecReload=` (reload is a restart),
`KillMode=`/`KillSignal=` (always control-group, SIGTERM), `SuccessExitStatus=`,
`RestartPreventExitStatus=`, specifiers (`%i`) and `$VAR` expansion in `ExecStart=`, resource
limits (`MemoryMax=`, `CPUQuota=`) and the sandboxing directives (`ProtectSystem=`, ...), the
pre-v230 `[Service]` `StartLimitInterval=`, and a process that leaves the group with setsid.
Stricter than systemd: a value it would ignore with a warning (`Restart=sometimes`,
`RestartSec=soon`) fails start() with the key named. Looser: `WorkingDirectory=` is entered
before the switch to `User=`, so a directory only root may enter does not fail with 200/CHDIR.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import grp
import json
import math
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__virtualname__ = "saltmarsh_svc"

DEFAULT_UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DEFAULT_STATE_DIR = "/var/lib/saltmarsh-svc"
START_GRACE_S = 1.0
# The supervisor reports its first spawn well within this, even on a loaded Pi.
SUPERVISOR_REPORT_TIMEOUT_S = 30.0
# stop() waits TimeoutStopSec plus this for the supervisor, which SIGKILLs at TimeoutStopSec.
STOP_MARGIN_S = 5.0
GROUP_POLL_S = 0.05

# systemd's own defaults (systemd-system.conf, systemd.service).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_RESTART_SEC = 0.1
DEFAULT_TIMEOUT_STOP_SEC = 90.0
DEFAULT_START_LIMIT_INTERVAL_SEC = 10.0
DEFAULT_START_LIMIT_BURST = 5
DEFAULT_UMASK = 0o022

# Which outcomes each Restart= value restarts after. "success" is exit 0 or a clean signal,
# "exit-code" a non-zero exit (or a spawn failure), "signal" death by any other signal.
RESTART_ON: dict[str, frozenset[str]] = {
    "no": frozenset(),
    "on-success": frozenset({"success"}),
    "on-failure": frozenset({"exit-code", "signal"}),
    "on-abnormal": frozenset({"signal"}),
    "on-abort": frozenset({"signal"}),
    "on-watchdog": frozenset(),
    "always": frozenset({"success", "exit-code", "signal"}),
}
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
EXIT_STATUS_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION"}
# systemd's exit statuses for a main process that could not be spawned.
SPAWN_STEPS = {"CHDIR": 200, "EXEC": 203, "GROUP": 216, "USER": 217}

TIMESPAN_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_TIMESPAN_TERM = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")

# The supervisor blocks these and takes them with sigtimedwait: no handler runs mid-write.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
WAKE_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD, signal.SIGHUP}


def __virtual__() -> str:
    return __virtualname__


# -- unit files: pure parsing ----------------------------------------------------------------


def parse_unit(texts: list[str]) -> dict[str, dict[str, list[str]]]:
    """Every section's keys across a unit and its drop-ins; an empty assignment resets a list."""
    sections: dict[str, dict[str, list[str]]] = {}
    for text in texts:
        values: dict[str, list[str]] | None = None
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                values = sections.setdefault(line[1:-1], {})
                continue
            if values is None or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            if value == "":
                values[key] = []
            else:
                values.setdefault(key, []).append(value)
    return sections


def parse_service_section(texts: list[str]) -> dict[str, list[str]]:
    """`[Service]` keys across a unit and its drop-ins; an empty assignment resets a list."""
    return parse_unit(texts).get("Service", {})


def parse_timespan(value: str, key: str) -> float:
    """A systemd time span in seconds: "5", "5s", "500ms", "1min 30s", "infinity"."""
    text = value.strip().lower()
    if text == "infinity":
        return math.inf
    total, pos = 0.0, 0
    while pos < len(text):
        term = _TIMESPAN_TERM.match(text, pos)
        if term is None or term[2] not in TIMESPAN_UNITS:
            raise ValueError(f"{key}={value!r}: not a time span (e.g. 5, 5s, 500ms, 1min 30s, infinity)")
        total += float(term[1]) * TIMESPAN_UNITS[term[2]]
        pos = term.end()
    if not text:
        raise ValueError(f"{key}=: empty time span")
    return total


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads them: comments, blank lines, one level of quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


class UnitSpec(NamedTuple):
    """What the supervisor needs from a unit, resolved by the minion and sent as JSON."""

    unit: str
    state_dir: str
    argv: list[str]
    base_environment: dict[str, str]
    environment: dict[str, str]
    environment_files: list[str]
    working_directory: str | None
    user: str | None
    group: str | None
    supplementary_groups: list[str]
    umask: int
    restart: str
    restart_sec: float
    timeout_stop_sec: float
    start_limit_interval_sec: float
    start_limit_burst: int

    @property
    def pid_file(self) -> Path:
        return Path(self.state_dir) / f"{self.unit}.pid"

    @property
    def supervisor_file(self) -> Path:
        return Path(self.state_dir) / f"{self.unit}.supervisor"

    @property
    def log_file(self) -> Path:
        return Path(self.state_dir) / f"{self.unit}.log"

    @property
    def exit_file(self) -> Path:
        return Path(self.state_dir) / f"{self.unit}.exit"


def _last(values: Mapping[str, list[str]], key: str) -> str | None:
    return values[key][-1] if values.get(key) else None


def unit_spec(
    unit: str, sections: Mapping[str, Mapping[str, list[str]]], state_dir: str, base_environment: Mapping[str, str]
) -> UnitSpec:
    """The unit's settings, validated here so that a bad value fails the start with its key named."""
    service = sections.get("Service", {})
    unit_section = sections.get("Unit", {})
    exec_start = service.get("ExecStart", [])
    if not exec_start:
        raise ValueError(f"{unit} has no ExecStart")
    restart = _last(service, "Restart") or "no"
    if restart not in RESTART_ON:
        raise ValueError(f"{unit}: Restart={restart!r}: expected one of {', '.join(RESTART_ON)}")
    environment: dict[str, str] = {}
    for assignment in service.get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            environment[key] = value

    def timespan(values: Mapping[str, list[str]], key: str, default: float) -> float:
        value = _last(values, key)
        return default if value is None else parse_timespan(value, f"{unit}: {key}")

    def integer(values: Mapping[str, list[str]], key: str, default: int, base: int = 10) -> int:
        value = _last(values, key)
        try:
            return default if value is None else int(value, base)
        except ValueError:
            raise ValueError(f"{unit}: {key}={value!r}: not a number") from None

    argv = shlex.split(exec_start[-1].lstrip("-@+!:"))
    return UnitSpec(
        unit=unit,
        state_dir=state_dir,
        # systemd's prefixes: '-' ignore failure, '@' argv0, '+' '!' privileges; none matter here.
        argv=argv,
        base_environment=dict(base_environment),
        environment=environment,
        environment_files=list(service.get("EnvironmentFile", [])),
        working_directory=_last(service, "WorkingDirectory"),
        user=_last(service, "User"),
        group=_last(service, "Group"),
        supplementary_groups=[g for value in service.get("SupplementaryGroups", []) for g in value.split()],
        umask=integer(service, "UMask", DEFAULT_UMASK, 8),
        restart=restart,
        restart_sec=timespan(service, "RestartSec", DEFAULT_RESTART_SEC),
        timeout_stop_sec=timespan(service, "TimeoutStopSec", DEFAULT_TIMEOUT_STOP_SEC),
        start_limit_interval_sec=timespan(unit_section, "StartLimitIntervalSec", DEFAULT_START_LIMIT_INTERVAL_SEC),
        start_limit_burst=integer(unit_section, "StartLimitBurst", DEFAULT_START_LIMIT_BURST),
    )


# -- supervision decisions: pure -------------------------------------------------------------


def exit_kind(returncode: int) -> str:
    """The outcome Restart= looks at ("success", "exit-code", "signal") from a Popen returncode."""
    if returncode == 0 or (returncode < 0 and -returncode in CLEAN_SIGNALS):
        return "success"
    return "exit-code" if returncode > 0 else "signal"


def killed_from_outside(returncode: int) -> bool:
    """SIGKILL or a clean stop signal: someone else ended the process; a crash or an exit did not."""
    return returncode < 0 and (-returncode == signal.SIGKILL or -returncode in CLEAN_SIGNALS)


def restart_wanted(restart: str, kind: str) -> bool:
    return kind in RESTART_ON[restart]


def describe_exit(returncode: int) -> str:
    """As systemd logs it: "code=exited, status=1/FAILURE", "code=killed, status=9/KILL"."""
    if returncode >= 0:
        name = EXIT_STATUS_NAMES.get(returncode)
        return f"code=exited, status={returncode}" + (f"/{name}" if name else "")
    try:
        name = signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        name = str(-returncode)
    return f"code=killed, status={-returncode}/{name}"


class StartLimit(NamedTuple):
    """systemd's start rate limit: a fixed window opened by its first start, Burst starts in it."""

    interval_s: float
    burst: int
    window_start: float | None = None
    starts: int = 0


def start_allowed(limit: StartLimit, now: float) -> tuple[bool, StartLimit]:
    if limit.interval_s <= 0 or limit.burst <= 0:
        return True, limit  # either at 0 turns the limit off, as in systemd
    if limit.window_start is None or now > limit.window_start + limit.interval_s:
        limit = limit._replace(window_start=now, starts=0)
    if limit.starts < limit.burst:
        return True, limit._replace(starts=limit.starts + 1)
    return False, limit


# -- processes and records -------------------------------------------------------------------


class SpawnError(Exception):
    """The main process could not be started; `status` is systemd's, e.g. "217/USER"."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.status = f"{SPAWN_STEPS[step]}/{step}" if step in SPAWN_STEPS else step


class Credentials(NamedTuple):
    """Who the main process runs as; None keeps the supervisor's own."""

    uid: int | None
    gid: int | None
    groups: list[int] | None
    environment: dict[str, str]
    home: str | None


def _group_id(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise SpawnError("GROUP", f"no such group {name!r}") from None


def _credentials(user: str | None, group: str | None, supplementary: list[str], euid: int) -> Credentials:
    account: pwd.struct_passwd | None = None
    if user is not None:
        try:
            account = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise SpawnError("USER", f"no such user {user!r}") from None
    gid = _group_id(group) if group is not None else (account.pw_gid if account else None)
    extra = [_group_id(name) for name in supplementary]
    env: dict[str, str] = {}
    if account is not None:
        env = {"USER": account.pw_name, "LOGNAME": account.pw_name, "HOME": account.pw_dir, "SHELL": account.pw_shell}
    home = account.pw_dir if account else None
    if euid != 0:
        # Only root can switch; any other minion may ask only for what it already is.
        if account is not None and account.pw_uid != euid:
            raise SpawnError("USER", f"cannot run as {user!r}: the minion is not root")
        held = {os.getegid(), *os.getgroups()}
        for name, wanted in zip([group, *supplementary], [gid, *extra], strict=True):
            if name is not None and wanted not in held:
                raise SpawnError("GROUP", f"cannot run with group {name!r}: the minion is not root")
        return Credentials(None, None, None, env, home)
    if account is None:
        return Credentials(None, gid, extra or None, env, home)
    primary = account.pw_gid if gid is None else gid
    groups = sorted({*os.getgrouplist(account.pw_name, primary), *extra})  # what initgroups would set
    return Credentials(account.pw_uid, primary, groups, env, home)


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [0] state, [2] process group, [19] start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str:
    return _stat_fields(pid)[19]


def _alive(pid: int, started: str) -> bool:
    """The process still runs and is the one recorded: a zombie or a recycled pid is not."""
    try:
        fields = _stat_fields(pid)
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X") and fields[19] == started


def _read_record(path: Path) -> tuple[int, str] | None:
    try:
        pid, started = path.read_text().split()[:2]
        return int(pid), started
    except (OSError, ValueError):
        return None


def _live_pid(path: Path) -> int | None:
    record = _read_record(path)
    return record[0] if record is not None and _alive(*record) else None


def _write_record(path: Path, pid: int, started: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{pid} {started}\n")
    os.replace(tmp, path)


def _remove_record(path: Path, pid: int) -> None:
    """Remove the record if it is still ours: a newer supervisor may have written its own."""
    record = _read_record(path)
    if record is not None and record[0] == pid:
        path.unlink(missing_ok=True)


def _append_log(path: Path, unit: str, message: str) -> None:
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
    with path.open("a") as log:
        log.write(f"{stamp} saltmarsh_svc[{os.getpid()}]: {unit}: {message}\n")


def _group_members(pgid: int, exclude: int) -> list[int]:
    """Live processes of a process group, zombies left out."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            fields = _stat_fields(int(entry))
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry))
    return members


def _signal_all(pids: list[int], signals: tuple[int, ...]) -> None:
    for pid in pids:
        for signo in signals:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)


def _terminate_group(
    pgid: int, exclude: int, timeout_s: float, pause: Callable[[float], None], log: Callable[[str], None]
) -> None:
    """systemd's stop of a cgroup: SIGTERM + SIGCONT to all, SIGKILL to what is left at the timeout.

    Signals go to each member rather than killpg, so that the supervisor (`exclude`) can stay in
    the group it leads without signalling itself.
    """
    targets = _group_members(pgid, exclude)
    if not targets:
        return
    log(f"sending SIGTERM to {_pids(targets)}")
    _signal_all(targets, (signal.SIGTERM, signal.SIGCONT))
    deadline = time.monotonic() + timeout_s
    while left := _group_members(pgid, exclude):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log(f"TimeoutStopSec={timeout_s:g}s expired: sending SIGKILL to {_pids(left)}")
            for _ in range(100):  # a process forking as fast as we kill it is not worth waiting on
                _signal_all(left, (signal.SIGKILL,))
                pause(GROUP_POLL_S)
                if not (left := _group_members(pgid, exclude)):
                    break
            return
        pause(min(GROUP_POLL_S, remaining))


def _pids(pids: list[int]) -> str:
    return ("pid " if len(pids) == 1 else "pids ") + " ".join(map(str, pids))


# -- the supervisor: this file run as a script -----------------------------------------------


def _unblock_signals() -> None:
    # Runs in the main process before exec: it must not inherit the supervisor's blocked signals.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class Supervisor:
    """Runs one unit's main process and restarts it by the unit's Restart= policy."""

    def __init__(self, spec: UnitSpec) -> None:
        self.spec = spec
        self.stop_requested = False
        self.reported = False

    def run(self) -> int:
        # A service starts with every signal at its default, whatever the minion ignored (exec
        # keeps an ignored signal ignored). SIGPIPE stays ignored here: start() may have gone from
        # the report pipe; Popen restores it for the main process.
        for signo in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signo, signal.SIG_IGN if signo == signal.SIGPIPE else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
        me = os.getpid()
        _write_record(self.spec.supervisor_file, me, _start_time(me))
        try:
            return self._supervise()
        finally:
            _remove_record(self.spec.supervisor_file, me)

    def _supervise(self) -> int:
        spec = self.spec
        limit = StartLimit(spec.start_limit_interval_sec, spec.start_limit_burst)
        while True:
            allowed, limit = start_allowed(limit, time.monotonic())
            if not allowed:
                self.log(
                    f"start limit hit ({spec.start_limit_burst} starts within {spec.start_limit_interval_sec:g} s):"
                    " giving up, unit failed"
                )
                self.report("failed start limit hit")
                return 1
            kind = self._run_once()
            if self.stop_requested:
                self.log("stopped")
                return 0
            if not restart_wanted(spec.restart, kind):
                verdict = "unit inactive" if kind == "success" else f"unit failed with result '{kind}'"
                self.log(f"{verdict}, not restarting (Restart={spec.restart})")
                return 0 if kind == "success" else 1
            self.log(f"restarting in {spec.restart_sec:g} s (Restart={spec.restart})")
            if self._pause_unless_stopped(spec.restart_sec):
                self.log("stopped")
                return 0

    def _run_once(self) -> str:
        """One main process, from spawn to exit and the cleanup of its group: its exit kind."""
        try:
            process = self._spawn()
        except SpawnError as error:
            if error.step in SPAWN_STEPS:
                self.log(f"failed at step {error.step} spawning {self.spec.argv[0]}: {error}")
                self.log(f"main process exited, code=exited, status={error.status}")
            else:  # systemd fails these before forking: no exit status, only a result
                self.log(f"failed to start: {error}, result '{error.status}'")
            self.report(f"failed {error} (status={error.status})")
            return "exit-code"
        started = _start_time(process.pid)
        _write_record(self.spec.pid_file, process.pid, started)
        self.log(f"started main process {process.pid}: {shlex.join(self.spec.argv)}")
        self.report(f"started {process.pid} {started}")
        returncode = self._wait_for_exit(process)
        if returncode is None:
            self.log("stopping")
        else:
            self.log(f"main process {process.pid} exited, {describe_exit(returncode)}")
            _write_record(self.spec.exit_file, process.pid, f"{started} {returncode}")
            _remove_record(self.spec.pid_file, process.pid)
        # On a stop the whole group goes; after an exit, what the main process left behind goes
        # too, as systemd does with the unit's cgroup.
        _terminate_group(os.getpgrp(), os.getpid(), self.spec.timeout_stop_sec, self._pause, self.log)
        if returncode is None:
            returncode = process.wait()
            self.log(f"main process {process.pid} exited, {describe_exit(returncode)}")
            _write_record(self.spec.exit_file, process.pid, f"{started} {returncode}")
            _remove_record(self.spec.pid_file, process.pid)
        return exit_kind(returncode)

    def _spawn(self) -> subprocess.Popen[bytes]:
        spec = self.spec
        who = _credentials(spec.user, spec.group, spec.supplementary_groups, os.geteuid())
        env = {**spec.base_environment, **who.environment, **spec.environment}
        for entry in spec.environment_files:
            path = entry.removeprefix("-")
            try:
                env.update(parse_environment_file(Path(path).read_text()))
            except OSError as error:
                if not entry.startswith("-"):
                    raise SpawnError("resources", f"failed to load environment file {path}: {error.strerror}") from None
        directory = spec.working_directory or "/"
        optional = directory.startswith("-")
        directory = directory.removeprefix("-")
        if directory == "~":
            directory = who.home or "/"
        if not os.path.isdir(directory):
            if not optional:
                raise SpawnError("CHDIR", f"{directory}: no such directory")
            directory = "/"
        try:
            return subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),  # the unit log, which start() opened for the supervisor
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=env,
                user=who.uid,
                group=who.gid,
                extra_groups=who.groups,
                umask=spec.umask,
                preexec_fn=_unblock_signals,  # noqa: PLW1509  # the supervisor has one thread
            )
        except OSError as error:
            raise SpawnError("EXEC", f"{error.strerror}: {error.filename or spec.argv[0]}") from None

    def _wait_for_exit(self, process: subprocess.Popen[bytes]) -> int | None:
        """The main process's returncode, or None when a stop was asked for first."""
        while (returncode := process.poll()) is None:
            if self._next_signal(None) in STOP_SIGNALS:
                self.stop_requested = True
                return None
        return returncode

    def _pause_unless_stopped(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and (remaining := deadline - time.monotonic()) > 0:
            self._pause(remaining)
        return self.stop_requested

    def _pause(self, seconds: float) -> None:
        """Sleep until `seconds` pass or a signal comes; a stop signal is remembered."""
        if self._next_signal(seconds) in STOP_SIGNALS:
            self.stop_requested = True

    def _next_signal(self, timeout_s: float | None) -> int | None:
        if timeout_s is None or math.isinf(timeout_s):
            return signal.sigwaitinfo(WAKE_SIGNALS).si_signo
        info = signal.sigtimedwait(WAKE_SIGNALS, max(timeout_s, 0.0))
        return None if info is None else info.si_signo

    def log(self, message: str) -> None:
        _append_log(self.spec.log_file, self.spec.unit, message)

    def report(self, line: str) -> None:
        """Tell start() how the first spawn went, once; stdout is its pipe, then /dev/null."""
        if self.reported:
            return
        self.reported = True
        with contextlib.suppress(OSError):
            os.write(1, f"{line}\n".encode())
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def _supervise_command() -> int:
    spec = UnitSpec(**json.load(sys.stdin))
    # Fork once more so that the supervisor is no minion job's child (init reaps it), then lead a
    # session of its own: its process group is the unit's.
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return Supervisor(spec).run()


# -- the Salt module -------------------------------------------------------------------------


def _config(key: str, default: Any) -> Any:
    return __salt__["config.get"](f"saltmarsh_svc:{key}", default)  # type: ignore[name-defined]  # noqa: F821


def _unit_dirs() -> list[Path]:
    return [Path(d) for d in _config("unit_dirs", list(DEFAULT_UNIT_DIRS))]


def _state_dir() -> Path:
    path = Path(_config("state_dir", DEFAULT_STATE_DIR))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unit_name(name: str) -> str:
    return name if name.endswith(".service") else f"{name}.service"


def _unit_files(name: str) -> list[Path]:
    """The unit file first (first directory wins, as in systemd), then its drop-ins in name order."""
    unit = _unit_name(name)
    files: list[Path] = []
    for directory in _unit_dirs():
        if (directory / unit).is_file():
            files.append(directory / unit)
            break
    dropins: dict[str, Path] = {}
    for directory in reversed(_unit_dirs()):
        for conf in sorted((directory / f"{unit}.d").glob("*.conf")):
            dropins[conf.name] = conf
    return files + [dropins[key] for key in sorted(dropins)]


def _sections(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit([path.read_text() for path in _unit_files(name)])


def _service(name: str) -> dict[str, list[str]]:
    return _sections(name).get("Service", {})


def _argv(name: str) -> list[str]:
    exec_start = _service(name).get("ExecStart", [])
    if not exec_start:
        raise ValueError(f"{_unit_name(name)} has no ExecStart")
    return shlex.split(exec_start[-1].lstrip("-@+!:"))


def _base_environment() -> dict[str, str]:
    """What systemd itself gives every service: its PATH and the system's locale."""
    env = {"PATH": SYSTEMD_PATH}
    env.update({key: value for key, value in os.environ.items() if key == "LANG" or key.startswith("LC_")})
    return env


def _spec(name: str) -> UnitSpec:
    return unit_spec(_unit_name(name), _sections(name), str(_state_dir()), _base_environment())


def _pid_file(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.pid"


def _supervisor_file(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.supervisor"


def _log_file(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.log"


def _enabled_marker(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.enabled"


@contextlib.contextmanager
def _unit_lock(name: str) -> Iterator[None]:
    """One start() or stop() of a unit at a time, across Salt's job processes."""
    with (_state_dir() / f"{_unit_name(name)}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pid(name: str) -> int | None:
    """The live pid of the service's main process, or None; a zombie or a recycled pid is not."""
    return _live_pid(_pid_file(name))


def mainpid(name: str) -> int | None:
    """The unit's main process, as systemd's MainPID: what `<unit>.pid` holds, if it is alive."""
    return _pid(name)


def supervisorpid(name: str) -> int | None:
    """The unit's supervisor, also the unit's process group: what `<unit>.supervisor` holds, if alive."""
    return _live_pid(_supervisor_file(name))


def available(name: str) -> bool:
    return bool(_unit_files(name)) and "ExecStart" in _service(name)


def missing(name: str) -> bool:
    return not available(name)


def get_all() -> list[str]:
    names: set[str] = set()
    for directory in _unit_dirs():
        names.update(p.name.removesuffix(".service") for p in directory.glob("*.service") if p.is_file())
    return sorted(n for n in names if available(n))


def status(name: str, sig: str | None = None) -> bool:
    return _pid(name) is not None


def start(name: str, **kwargs: Any) -> bool:
    with _unit_lock(name):
        return _start_locked(name)


def _start_locked(name: str) -> bool:
    if _pid(name) is not None:
        return True
    if supervisorpid(name) is not None:
        # Between two runs (RestartSec): the supervisor starts the next one; systemctl start waits too.
        deadline = time.monotonic() + SUPERVISOR_REPORT_TIMEOUT_S
        while supervisorpid(name) is not None and time.monotonic() < deadline:
            if _pid(name) is not None:
                return True
            time.sleep(GROUP_POLL_S)
        _stop_locked(name)
    spec = _spec(name)
    report = _launch_supervisor(spec)
    word, _, rest = report.partition(" ")
    if word != "started":
        _append_log(spec.log_file, spec.unit, f"start failed: {rest or report}")
        _stop_locked(name)
        return False
    pid, started = rest.split()
    # A service that dies on a bad config should fail the state, not look started. The same
    # process must live through the grace period: a quick restart does not count.
    deadline = time.monotonic() + START_GRACE_S
    while time.monotonic() < deadline:
        if not _alive(int(pid), started):
            returncode = _exit_status(spec, int(pid), started)
            if returncode is not None and killed_from_outside(returncode):
                # kill -9 (or a clean stop signal) from outside is not the unit's fault: Restart=
                # decides, as systemd would once `systemctl start` had returned.
                _append_log(spec.log_file, spec.unit, f"main process {pid} killed during its start: left to Restart=")
                return True
            _append_log(spec.log_file, spec.unit, f"start failed: main process died within {START_GRACE_S:g} s")
            _stop_locked(name)
            return False
        time.sleep(GROUP_POLL_S)
    return True


def _exit_status(spec: UnitSpec, pid: int, started: str) -> int | None:
    """The returncode the supervisor recorded for that main process; None if it recorded none."""
    deadline = time.monotonic() + SUPERVISOR_REPORT_TIMEOUT_S
    while True:
        try:
            fields = spec.exit_file.read_text().split()
            if fields[:2] == [str(pid), started]:
                return int(fields[2])
        except (OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline or _live_pid(spec.supervisor_file) is None:
            return None
        time.sleep(GROUP_POLL_S)


def _launch_supervisor(spec: UnitSpec) -> str:
    """Start the unit's supervisor; its first report: "started <pid> <start time>" or "failed <why>"."""
    argv = [sys.executable, "-I", str(Path(__file__).resolve()), "supervise"]
    with spec.log_file.open("ab") as log:
        launcher = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd="/", start_new_session=True
        )
    try:
        out, _ = launcher.communicate(json.dumps(spec._asdict()).encode(), timeout=SUPERVISOR_REPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()
        return f"failed the supervisor did not report within {SUPERVISOR_REPORT_TIMEOUT_S:g} s"
    report = out.decode(errors="replace").strip()
    return report or f"failed the supervisor exited ({launcher.returncode}) before starting anything"


def stop(name: str, **kwargs: Any) -> bool:
    with _unit_lock(name):
        _stop_locked(name)
    return True


def _timeout_stop_s(name: str) -> float:
    # The unit file may be gone or broken by now (a clean state): stop anyway.
    try:
        return _spec(name).timeout_stop_sec
    except (OSError, ValueError):
        return DEFAULT_TIMEOUT_STOP_SEC


def _stop_locked(name: str) -> None:
    timeout_s = _timeout_stop_s(name)
    record = _read_record(_supervisor_file(name))
    if record is not None and _alive(*record):
        supervisor, started = record
        # The supervisor stops the group itself: SIGTERM, then SIGKILL at TimeoutStopSec.
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s + STOP_MARGIN_S
        while _alive(supervisor, started) and time.monotonic() < deadline:
            time.sleep(GROUP_POLL_S)
        if _alive(supervisor, started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor, signal.SIGKILL)
    main = _pid(name)
    if main is not None:
        # No supervisor (killed alone, or a unit started before there was one): stop its group here.
        try:
            pgid = os.getpgid(main)
        except ProcessLookupError:
            pgid = main
        if pgid == os.getpgrp():
            pgid = main  # never signal the minion's own group
        log_file, unit = _log_file(name), _unit_name(name)
        _terminate_group(pgid, os.getpid(), timeout_s, time.sleep, lambda line: _append_log(log_file, unit, line))
    _pid_file(name).unlink(missing_ok=True)
    _supervisor_file(name).unlink(missing_ok=True)


def restart(name: str, **kwargs: Any) -> bool:
    stop(name)
    return start(name)


def reload_(name: str, **kwargs: Any) -> bool:
    return restart(name)


def force_reload(name: str, **kwargs: Any) -> bool:
    return restart(name)


def full_restart(name: str, **kwargs: Any) -> bool:
    return restart(name)


def enabled(name: str, **kwargs: Any) -> bool:
    return _enabled_marker(name).exists()


def disabled(name: str, **kwargs: Any) -> bool:
    return not enabled(name)


def enable(name: str, **kwargs: Any) -> bool:
    _enabled_marker(name).touch()
    return True


def disable(name: str, **kwargs: Any) -> bool:
    _enabled_marker(name).unlink(missing_ok=True)
    return True


def get_enabled() -> list[str]:
    return sorted(p.name.removesuffix(".service.enabled") for p in _state_dir().glob("*.service.enabled"))


def get_disabled() -> list[str]:
    return sorted(set(get_all()) - set(get_enabled()))


def get_running() -> list[str]:
    return sorted(
        p.name.removesuffix(".service.pid") for p in _state_dir().glob("*.service.pid") if status(p.name[:-4])
    )


# The provider overlays the host's own service module (systemd's, even where systemd is not
# running), so every function the service state may call must be defined here, or the
# systemd one answers: its offline() would put every state into "OFFLINE mode".
def offline() -> bool:
    return False


def masked(name: str, runtime: bool = False, **kwargs: Any) -> bool:
    return False


def mask(name: str, runtime: bool = False, **kwargs: Any) -> bool:
    return True


def unmask_(name: str, runtime: bool = False, **kwargs: Any) -> bool:
    return True


def systemctl_reload() -> bool:
    return True


def get_static() -> list[str]:
    return []


def show(name: str) -> dict[str, list[str]]:
    return _service(name)


def execs() -> dict[str, str]:
    return {name: shlex.join(_argv(name)) for name in get_all()}


__func_alias__ = {"reload_": "reload", "unmask_": "unmask"}


if __name__ == "__main__":
    if sys.argv[1:] != ["supervise"]:
        sys.exit(f"usage: {sys.argv[0]} supervise < unit-spec.json")
    sys.exit(_supervise_command())
