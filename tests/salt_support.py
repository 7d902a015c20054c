"""Running the saltmarsh formula with real Salt 3008: `salt-call --local` in a throwaway config dir.

Every call gets its own minion config (id, grains, file_roots = salt/states, pillar_roots = a
pillar tree), so a test picks which minion it is and which pillar it sees, and nothing touches
/etc/salt. Sandbox pillar overrides point `saltmarsh:root` at a temp dir and make the services
run as the current user, so applying states writes only under that dir.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STATES = REPO / "salt" / "states"
PILLAR = REPO / "pillar"
BIN = Path(sys.executable).parent
SALT_CALL = BIN / "salt-call"
CPUARCHES = ("armv6l", "armv7l", "aarch64", "x86_64")

# Which example minion plays which roles, and the sls trees each must render.
ROLE_MINIONS: dict[str, tuple[list[str], list[str]]] = {
    "sensor1": (["sensor"], ["saltmarsh.common", "saltmarsh.sensor", "saltmarsh.sensor.clean"]),
    "gw1": (["gateway"], ["saltmarsh.common", "saltmarsh.gateway", "saltmarsh.gateway.clean"]),
    "master": (
        ["cloud", "master"],
        ["saltmarsh", "saltmarsh.cloud", "saltmarsh.master", "saltmarsh.cloud.clean", "saltmarsh.master.clean"],
    ),
}


def current_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def sandbox_pillar(root: Path, **extra: Any) -> dict[str, Any]:
    """Pillar that confines the formula to `root` and runs everything as the current user."""
    user, group = getpass.getuser(), current_group()
    settings: dict[str, Any] = {
        "root": str(root),
        "user": {"manage": False, "name": user, "group": group},
        # The project is already installed here, editable: the units run it from this venv.
        "install": {"enabled": False, "venv": str(BIN.parent)},
        "gateway": {"mosquitto": {"user": user, "group": group}},
        "master": {"manage_service": False},
    }
    return {"saltmarsh": _merge(settings, extra)}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class LocalMinion:
    """One `salt-call --local` identity: minion id, grains, and the pillar tree it reads."""

    base_dir: Path
    minion_id: str
    grains: dict[str, Any]
    pillar_root: Path = PILLAR
    opts: dict[str, Any] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.base_dir / "conf"

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "id": self.minion_id,
            "root_dir": str(self.base_dir / "root"),
            "file_client": "local",
            "file_roots": {"base": [str(STATES)]},
            "pillar_roots": {"base": [str(self.pillar_root)]},
            "grains": self.grains,
            "log_level": "error",
            "log_level_logfile": "error",
            **self.opts,
        }
        # JSON is YAML: no YAML emitter needed in the tests.
        (self.config_dir / "minion").write_text(json.dumps(config))

    def call(self, *args: str, pillar: Mapping[str, Any] | None = None, timeout_s: float = 120) -> Result:
        self.write_config()
        argv = [str(SALT_CALL), "--local", "--config-dir", str(self.config_dir), "--retcode-passthrough"]
        argv += ["--out", "json", *args]
        if pillar is not None:
            argv.append(f"pillar={json.dumps(pillar)}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        return Result(argv, done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Result:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def data(self) -> Any:
        return json.loads(self.stdout)["local"] if self.stdout.strip() else None

    def explain(self) -> str:
        command = " ".join(self.argv)
        out, err = self.stdout[-4000:], self.stderr[-4000:]
        return f"$ {command}\nrc={self.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def grains_for(roles: list[str], cpuarch: str = "x86_64", site: str = "example") -> dict[str, Any]:
    return {"roles": roles, "site": site, "cpuarch": cpuarch, "os_family": "Debian"}


def failed_states(result: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value.get("comment")) for key, value in result.items() if value.get("result") is False}


def changed_states(result: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, value in result.items() if value.get("changes"))
