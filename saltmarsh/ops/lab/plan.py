"""A chaos plan: timed faults for the lab, read from YAML or TOML.

    name: uplink-cuts
    description: cut a gateway's uplink for 60 s, twice, under load
    settle_s: 300             # after the last fault, how long the fleet may take to drain
    steps:
      - {at: 10, do: cut-uplink, node: gw1, for: 60}
      - {at: 100, do: cut-uplink, node: gw1, for: 60}
      - {at: 10, do: netem, node: gw1, for: 120, loss_pct: 20, delay_ms: 200}
      - {at: 5, do: kill9, node: gw1, unit: saltmarsh-forwarder, times: 5, every: 20}

Each step is one fault at `at` seconds from the start; `for` undoes it that much later. The
actions (`ACTIONS`) name what a node or a unit suffers; `node` is a node id of the lab, or
`gateway:<site>` / `sensor:<site>:<n>` so one plan fits any fleet. `scale` stretches or shrinks
every time in the plan (the test suite runs the repo's plans at a fraction of their length).
Parsing is pure: a bad plan is a PlanError naming the step and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from saltmarsh.contract.errors import ConfigError

# action -> (needs `for`, needs `unit`)
ACTIONS: dict[str, tuple[bool, bool]] = {
    "cut-uplink": (True, False),  # both ends of the gateway's uplink veth down
    "netem": (True, False),  # loss/delay/rate on the gateway's uplink, both ways
    "kill9": (False, True),  # kill -9 the unit's main process; its supervisor restarts it
    "kill-unit": (False, True),  # kill -9 the unit and its supervisor: dead until the reactor acts
    "pause": (True, True),  # SIGSTOP the unit's main process, SIGCONT after `for`
    "stop-unit": (True, True),  # stop the unit through the node's own salt-call, start it after `for`
    "restart-units": (False, False),  # restart every unit of the node through salt-call
    "stop-master": (True, False),  # the salt-master down, started again after `for`
    "pause-elasticsearch": (True, False),  # the cloud's Elasticsearch stops answering
    "stop-sink": (True, False),  # the ingester's sink stops answering: SQLite locked, or ES paused
    "spool-quota": (True, False),  # the forwarder's spool quota set to `bytes` (a state run), then restored
}
MAX_STEPS = 200
MAX_TIMES = 100


class PlanError(ConfigError):
    pass


@dataclass(frozen=True, slots=True)
class Step:
    at: float
    do: str
    node: str
    duration_s: float = 0.0
    unit: str = ""
    times: int = 1
    every_s: float = 0.0
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    rate_kbit: float | None = None
    quota_bytes: int = 0

    @property
    def ends_at(self) -> float:
        return self.at + self.duration_s + self.every_s * (self.times - 1)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    settle_s: float = 300.0

    @property
    def length_s(self) -> float:
        return max((step.ends_at for step in self.steps), default=0.0)

    def scaled(self, scale: float) -> Plan:
        """Every time in the plan times `scale`; `netem` rates and counts are left as they are."""
        if scale <= 0:
            raise PlanError("scale", f"{scale} must be above 0")
        return replace(
            self,
            steps=tuple(
                replace(s, at=s.at * scale, duration_s=s.duration_s * scale, every_s=s.every_s * scale)
                for s in self.steps
            ),
        )


def _number(value: Any, field: str, lo: float = 0.0, hi: float = 86_400.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanError(field, f"{value!r} is not a number")
    if not lo <= float(value) <= hi:
        raise PlanError(field, f"{value} is not between {lo:g} and {hi:g}")
    return float(value)


def _step(index: int, doc: Any) -> Step:
    where = f"steps[{index}]"
    if not isinstance(doc, Mapping):
        raise PlanError(where, "must be a mapping with at, do and node")
    known = {"at", "do", "node", "for", "unit", "times", "every", "loss_pct", "delay_ms", "rate_kbit", "bytes"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise PlanError(f"{where}.{unknown[0]}", f"is not a step field ({', '.join(sorted(known))})")
    action = doc.get("do")
    if action not in ACTIONS:
        raise PlanError(f"{where}.do", f"{action!r} is not one of {', '.join(ACTIONS)}")
    needs_for, needs_unit = ACTIONS[action]
    node = doc.get("node", "master" if action in ("stop-master", "pause-elasticsearch") else None)
    if not isinstance(node, str) or not node:
        raise PlanError(f"{where}.node", "must name a node")
    if needs_for and (
        not isinstance(doc.get("for"), int | float) or isinstance(doc.get("for"), bool) or doc["for"] <= 0
    ):
        # `for: 0` would leave the fault in place for good: a cut never mended, a master never back.
        raise PlanError(f"{where}.for", f"{action} needs a duration above 0 seconds, got {doc.get('for')!r}")
    if not needs_for and "for" in doc:
        raise PlanError(f"{where}.for", f"{action} takes no duration")
    unit = doc.get("unit", "")
    if needs_unit and (not isinstance(unit, str) or not unit):
        raise PlanError(f"{where}.unit", f"{action} needs the unit it acts on")
    times = doc.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_TIMES:
        raise PlanError(f"{where}.times", f"{times!r} is not a whole number from 1 to {MAX_TIMES}")
    every = _number(doc.get("every", 0.0), f"{where}.every")
    if times > 1 and every <= 0:
        raise PlanError(f"{where}.every", "a repeated step needs the seconds between repeats")
    if action != "netem" and any(k in doc for k in ("loss_pct", "delay_ms", "rate_kbit")):
        raise PlanError(where, "loss_pct, delay_ms and rate_kbit belong to netem steps")
    quota = doc.get("bytes", 0)
    if (action == "spool-quota") != ("bytes" in doc):
        raise PlanError(f"{where}.bytes", "a spool-quota step needs bytes, and only it takes them")
    if isinstance(quota, bool) or not isinstance(quota, int) or not (quota > 0 or action != "spool-quota"):
        raise PlanError(f"{where}.bytes", f"{quota!r} is not a whole number of bytes above 0")
    rate = doc.get("rate_kbit")
    step = Step(
        at=_number(doc.get("at"), f"{where}.at"),
        do=str(action),
        node=node,
        duration_s=_number(doc.get("for", 0.0), f"{where}.for"),
        unit=str(unit),
        times=times,
        every_s=every,
        loss_pct=_number(doc.get("loss_pct", 0.0), f"{where}.loss_pct", hi=100.0),
        delay_ms=_number(doc.get("delay_ms", 0.0), f"{where}.delay_ms", hi=60_000.0),
        rate_kbit=None if rate is None else _number(rate, f"{where}.rate_kbit", lo=1.0, hi=10_000_000.0),
        quota_bytes=quota,
    )
    if action == "netem" and step.loss_pct == 0 and step.delay_ms == 0 and step.rate_kbit is None:
        raise PlanError(where, "a netem step needs loss_pct, delay_ms or rate_kbit")
    return step


def parse_plan(doc: Any, default_name: str = "plan") -> Plan:
    if not isinstance(doc, Mapping):
        raise PlanError("plan", "must be a mapping with steps")
    steps_doc = doc.get("steps")
    if not isinstance(steps_doc, list) or not steps_doc:
        raise PlanError("steps", "must be a non-empty list")
    if len(steps_doc) > MAX_STEPS:
        raise PlanError("steps", f"{len(steps_doc)} steps; at most {MAX_STEPS}")
    unknown = sorted(set(doc) - {"name", "description", "settle_s", "steps"})
    if unknown:
        raise PlanError(unknown[0], "is not a plan field (name, description, settle_s, steps)")
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise PlanError("name", f"{name!r} is not a name")
    return Plan(
        name=name,
        description=str(doc.get("description", "")),
        settle_s=_number(doc.get("settle_s", 300.0), "settle_s", lo=1.0),
        steps=tuple(_step(i, s) for i, s in enumerate(steps_doc)),
    )


def load_plan(path: Path) -> Plan:
    try:
        text = path.read_text()
        doc = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PlanError(str(path), str(err)) from err
    return parse_plan(doc, default_name=path.stem)
