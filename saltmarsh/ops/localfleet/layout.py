"""Where one local fleet's files go, under one base directory.

`etc/<name>.toml` for each service's config, `logs/<name>.log` for its output, `state/<name>/`
for its spool, one `status/` directory that every service writes its counters to, and
`brokers/` for the Mosquitto configs, persistence and logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Layout:
    base: Path

    @property
    def status_dir(self) -> Path:
        return self.base / "status"

    @property
    def brokers_dir(self) -> Path:
        return self.base / "brokers"

    @property
    def logs_dir(self) -> Path:
        return self.base / "logs"

    def config_path(self, name: str) -> Path:
        return self.base / "etc" / f"{name}.toml"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def state_dir(self, name: str) -> Path:
        return self.base / "state" / name
