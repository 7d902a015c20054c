"""Salt execution module: the `service` interface over plain processes, for machines without systemd.

A minion configured with

    providers:
      service: saltmarsh_svc
    saltmarsh_svc:
      unit_dirs: [/srv/sandbox/etc/systemd/system]   # where the formula wrote its units
      state_dir: /srv/sandbox/var/lib/saltmarsh-svc  # pid files, logs, "enabled" markers

runs each unit's `ExecStart` (with drop-ins in `<unit>.service.d/*.conf` applied, `ExecStart=`
resetting as in systemd) as a detached process in its own session, tracked by a pid file. Salt's
`service.running` / `service.dead` states then work unchanged, in tests, containers and the lab.

Not emulated: `User=`/`Group=` (the process runs as the minion's user), `ExecStartPre=`, the
sandboxing directives, and `Restart=` supervision.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

__virtualname__ = "saltmarsh_svc"

DEFAULT_UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
DEFAULT_STATE_DIR = "/var/lib/saltmarsh-svc"
START_GRACE_S = 1.0


def __virtual__() -> str:
    return __virtualname__


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


def parse_service_section(texts: list[str]) -> dict[str, list[str]]:
    """`[Service]` keys across a unit and its drop-ins; an empty assignment resets a list."""
    values: dict[str, list[str]] = {}
    for text in texts:
        section = ""
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
                section = line[1:-1]
                continue
            if section != "Service" or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            if value == "":
                values[key] = []
            else:
                values.setdefault(key, []).append(value)
    return values


def _service(name: str) -> dict[str, list[str]]:
    return parse_service_section([path.read_text() for path in _unit_files(name)])


def _argv(name: str) -> list[str]:
    exec_start = _service(name).get("ExecStart", [])
    if not exec_start:
        raise ValueError(f"{_unit_name(name)} has no ExecStart")
    # systemd's prefixes: '-' ignore failure, '@' argv0, '+' '!' privileges; none matter here.
    return shlex.split(exec_start[-1].lstrip("-@+!:"))


def _environment(name: str) -> dict[str, str]:
    env = dict(os.environ)
    for assignment in _service(name).get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _pid_file(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.pid"


def _enabled_marker(name: str) -> Path:
    return _state_dir() / f"{_unit_name(name)}.enabled"


def _pid(name: str) -> int | None:
    """The live pid of the service, or None; a zombie or a recycled pid counts as not running."""
    try:
        pid = int(_pid_file(name).read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
        started = _pid_file(name).read_text().split()[1]
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z" or fields[19] != started:
        return None
    return pid


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


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
    if _pid(name) is not None:
        return True
    argv = _argv(name)
    log_path = _state_dir() / f"{_unit_name(name)}.log"
    working_dir = _service(name).get("WorkingDirectory", [None])[-1]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=working_dir,
            env=_environment(name),
            start_new_session=True,
        )
    _pid_file(name).write_text(f"{process.pid} {_start_time(process.pid)}\n")
    # A service that dies on a bad config should fail the state, not look started.
    deadline = time.monotonic() + START_GRACE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(name).unlink(missing_ok=True)
            return False
        time.sleep(0.05)
    return True


def stop(name: str, **kwargs: Any) -> bool:
    pid = _pid(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)
        return True
    timeout_s = 30.0
    for value in _service(name).get("TimeoutStopSec", []):
        with contextlib.suppress(ValueError):
            timeout_s = float(value.rstrip("s"))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid(name) is not None:
        _reap(pid)
        time.sleep(0.1)
    if _pid(name) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    _pid_file(name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    # The process is our child only when started by this same job (restart); else init reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


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
