"""The lab's state file: what `lab up` made, written before it makes it, so `lab down` can undo a
crashed run as well as a finished one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_NAME = "lab.json"
DEFAULT_DIR = Path(os.environ.get("SALTMARSH_LAB_DIR", "/tmp/saltmarsh-lab"))

SINKS = ("sqlite", "elasticsearch")  # the ingester's store of record in the lab


@dataclass
class LabState:
    base: Path
    fleet: dict[str, Any] = field(default_factory=dict)  # the fleet document the lab was built from
    namespaces: list[str] = field(default_factory=list)
    anchors: dict[str, int] = field(default_factory=dict)  # node id -> anchor pid
    service_user: str = ""
    elasticsearch_pid: int = 0
    sensor_interval_s: float = 1.0
    swarm: int = 0  # devices per sensor node (a swarm host); 0: each sensor node is one device
    sink: str = "sqlite"  # the ingester's store of record: sqlite, or elasticsearch (the emulator)
    phase: str = "planned"

    @property
    def path(self) -> Path:
        return self.base / STATE_NAME

    def save(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        doc = {**asdict(self), "base": str(self.base)}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.path)

    @classmethod
    def load(cls, base: Path) -> LabState | None:
        try:
            doc = json.loads((base / STATE_NAME).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            base=base,
            fleet=dict(doc.get("fleet", {})),
            namespaces=list(doc.get("namespaces", [])),
            anchors={str(k): int(v) for k, v in doc.get("anchors", {}).items()},
            service_user=str(doc.get("service_user", "")),
            elasticsearch_pid=int(doc.get("elasticsearch_pid", 0)),
            sensor_interval_s=float(doc.get("sensor_interval_s", 1.0)),
            swarm=int(doc.get("swarm", 0)),
            sink=str(doc.get("sink", "sqlite")),
            phase=str(doc.get("phase", "")),
        )
